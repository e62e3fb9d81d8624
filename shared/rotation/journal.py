"""What every journaled change of a connection's credential shares, a rotation
(:mod:`shared.rotation.protocol`) as a migration to the federated method (:mod:`shared.rotation.migration`):
the worker's identity as lease owner, the crash-test checkpoints, the lease taken on the journal, one history
entry per attempt (``running`` when claimed, its outcome when it ends, ``interrupted`` when the next attempt
finds it unfinished), the audit of every removal from an application, and the test of a new credential retried
with back-off while Entra propagates it; while an HTTP request is served, that test stops in time for its answer, and
the attempt hands its journal to the rotation sweep (:meth:`Journaled._handed_over`). The steps themselves, and what a
failure undoes, are each journal's own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from shared.audit import AuditLog
from shared.azure.retry import jittered, time_to_answer
from shared.errors import (
    ConcurrentChange,
    CredentialRejected,
    LeaseLost,
    NotFound,
    ServiceError,
    UpstreamError,
    best_effort,
    detail_of,
)
from shared.ports import Adapters
from shared.records import MIGRATION_STEPS, STATUS_ROTATING, ConnectionRecord, RotationEvent, RotationState

Checkpoint = Callable[[str, ConnectionRecord], Awaitable[None]]
# Makes a removal audited: (object id, key id, the removal) -> the removal made, recorded before and after it.
RemovalAudit = Callable[[str, str, Callable[[], Awaitable[None]]], Awaitable[None]]
log = logging.getLogger(__name__)


async def _no_checkpoint(name: str, record: ConnectionRecord) -> None:
    return None


# A change of a journal step worked out from the record it is written over (its health state, say): a step that is
# written again over a concurrent edit that left the journal alone (a health check) keeps what that edit wrote.
Derived = Callable[[ConnectionRecord], object]


def evolved(record: ConnectionRecord, changes: dict[str, object | Derived]) -> ConnectionRecord:
    """``record`` with ``changes``, each :data:`Derived` change worked out from ``record``."""
    return record.evolve(**{name: change(record) if callable(change) else change for name, change in changes.items()})


@dataclass
class RotationOptions:
    test_timeout: float = 300.0
    test_first_delay: float = 1.0
    test_max_delay: float = 5.0

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.test_timeout + 600)


# While an HTTP request is served, a new credential's test starts no try later than this before the request's deadline
# (``time_to_answer``): room for the steps after it (finish and revoke: a few Table, Key Vault and Graph calls, whose
# retries stop at that deadline too), within the time Azure's front end waits past it.
ROOM_AFTER_TEST = 30.0
# The outcome of an attempt that handed its rotation to the sweep (its history entry, its audit record), as of one
# that stopped without an outcome: the next attempt resumes it.
INTERRUPTED = "interrupted"


class StillTesting(Exception):
    """The test of a new credential stopped because the HTTP request being served must be answered first (it has not
    failed: its timeout has not run out); ``last`` says why its last try did not work."""

    def __init__(self, last: ServiceError) -> None:
        super().__init__(last.detail)
        self.last = last


class Stopped(Exception):
    """A step failed; ``error`` says why (as the domain error a request would answer)."""

    def __init__(self, error: ServiceError) -> None:
        super().__init__(error.detail)
        self.error = error


def interrupted_attempt(state: RotationState) -> RotationState | None:
    """The journal as the attempt before left it, when that attempt stopped without an outcome."""
    return state if state.attempt_started_at is not None and state.status == STATUS_ROTATING else None


# A worker asks Graph to add or remove a credential only while its lease has at least this long to run by its own
# clock: more than a change in flight can take (its retries wait 30 s at most in all) and any clock skew between
# workers.
LEASE_MARGIN = timedelta(minutes=5)
T = TypeVar("T")


def removal_confirmation_wait(first_refused: datetime | None, now: datetime, window: timedelta) -> int | None:
    """The seconds Entra ID's refusal of a credential whose removal was sent must still hold before it counts as that
    removal: it counts only when it still comes ``window`` (REMOVAL_CONFIRMATION_SECONDS) after the first such
    refusal (``first_refused``, journaled; None: this one is the first). None once it counts, or at once when the
    window is 0. A credential just added reaches every part of Entra ID within minutes, and one it has not reached
    refuses it ("Time for federated credential changes to propagate", Entra's workload identity federation
    documentation; the same holds of secrets and keys), though its removal failed."""
    if window <= timedelta(0):
        return None
    first = first_refused or now
    if now - first >= window:
        return None
    return max(1, math.ceil((first + window - now).total_seconds()))


async def fenced(fence: Callable[[], None], change: Callable[[], Awaitable[T]]) -> T:
    """``change`` (one Graph is asked to make) between two looks at ``fence`` (:meth:`Journaled.lease_check`):
    right before it, and after it fails, since a call that outlived the lease may have failed because another
    worker owns the application now; the answer is then ``LeaseLost``, not the failure."""
    fence()
    try:
        return await change()
    except ServiceError:
        fence()
        raise


class Journaled:
    """The base of a worker that drives a journal on a connection record under its lease."""

    def __init__(self, adapters: Adapters, *, options: RotationOptions | None = None, owner: str | None = None,
                 checkpoint: Checkpoint | None = None) -> None:
        self.adapters = adapters
        self.options = options or RotationOptions()
        self.owner = owner or uuid.uuid4().hex
        self.checkpoint = checkpoint or _no_checkpoint
        self.audit = AuditLog(adapters.audit, adapters.clock)
        # The monotonic reading (adapters.monotonic) taken as this worker computed each lease it wrote, by the
        # lease's end (``lease_until``): the time it has held the lease since, whatever its wall clock did meanwhile.
        self._lease_taken: dict[datetime, float] = {}

    def now(self) -> datetime:
        return self.adapters.clock()

    def _lease_from(self, now: datetime) -> datetime:
        """The end of a lease this worker takes (or renews) at ``now``, with the monotonic reading of that moment
        noted for :meth:`lease_check` (taken before the lease is written: its count starts no later than the
        lease). Readings of leases run out by that count are forgotten."""
        taken = self.adapters.monotonic()
        length = self.options.lease.total_seconds()
        self._lease_taken = {until: at for until, at in self._lease_taken.items() if taken - at <= length}
        lease_until = now + self.options.lease
        self._lease_taken.setdefault(lease_until, taken)
        return lease_until

    def lease_check(self, state: RotationState) -> Callable[[], None]:
        """Called right before each change Graph is asked to make: a worker whose lease (``state``'s) runs out
        within ``LEASE_MARGIN`` stops there (``LeaseLost``). Another may take the journal over once it has run out,
        and a change in flight takes far less than the margin. No lease, no check.

        Two clocks are read. The wall clock, against ``lease_until`` (the one every worker reads the lease by); and
        the monotonic one, against the time since this worker took or renewed that lease (:meth:`_lease_from`;
        for a lease it did not take here, since this check was built, against what was left of it then), since a
        wall clock stepped back (an NTP correction) would let a worker held up past its lease change the
        application after another took the journal over."""
        if state.lease_until is None:
            return lambda: None
        deadline = state.lease_until - LEASE_MARGIN
        taken = self._lease_taken.get(state.lease_until) if state.lease_owner == self.owner else None
        if taken is not None:
            budget = (self.options.lease - LEASE_MARGIN).total_seconds()
        else:
            taken, budget = self.adapters.monotonic(), (deadline - self.now()).total_seconds()

        def check() -> None:
            if self.now() > deadline or self.adapters.monotonic() - taken > budget:
                raise LeaseLost("This worker was held up until its lease had nearly run out; it stopped before "
                                "changing the application.")

        return check

    def _leased(self, state: RotationState, now: datetime, **changes: object) -> RotationState:
        """``state`` claimed by this worker at ``now``: a new attempt under way, leased until the lease runs out."""
        return state.evolve(status=STATUS_ROTATING, last_attempt_at=now, attempt_started_at=now,
                            lease_owner=self.owner, lease_until=self._lease_from(now), **changes)

    async def _write_claim(self, record: ConnectionRecord,
                           state: RotationState) -> tuple[ConnectionRecord | None, ConnectionRecord | None]:
        """Write the claim ``state`` over ``record`` (guarded by its ETag): the record claimed, or None and the
        record as another change left it (None when deleted). A write that landed with its answer lost (the retry
        met its own ETag) is claimed all the same."""
        store = self.adapters.connections
        try:
            return await store.update(record.evolve(rotation=state)), None
        except (ConcurrentChange, NotFound):
            try:
                current: ConnectionRecord | None = await store.get(record.app, record.id)
            except NotFound:
                current = None
            if current is not None and current.rotation == state:
                return current, None
            return None, current

    async def _drop_entry(self, key: str | None) -> None:
        """Remove a schedule entry nothing points at. Best effort: the sweep that reads a stale one drops it."""
        with best_effort(lambda error: log.info("A schedule entry nothing points at is left for the sweep to drop "
                                                "(%s)", detail_of(error))):
            await self.adapters.schedule.remove(key)

    def _removal(self, record: ConnectionRecord) -> RemovalAudit:
        async def audit(object_id: str, key_id: str, remove: Callable[[], Awaitable[None]]) -> None:
            await self.audit.credential_changed("credential.remove", remove, app=record.app,
                                                connection_id=record.id, object_id=object_id, key_id=key_id)

        return audit

    async def close_interrupted(self, record: ConnectionRecord) -> None:
        """When the journal holds an attempt that stopped without an outcome: its history entry says so, and its
        audit record (for a DELETE, which forgets the journal once its removals are done)."""
        before = interrupted_attempt(record.rotation)
        if before is not None and before.rotation_id is not None:
            await self._close_interrupted(record, before, before.trigger or "")

    async def _close_interrupted(self, record: ConnectionRecord, before: RotationState, trigger: str) -> None:
        """The attempt before this one stopped without an outcome: its entry says so (unless it has one), and so
        does the audit log, whose ``started`` record of that attempt (``rotation.attempt``, or ``connection.migrate``
        for a migration's) gets its outcome, ``interrupted``, with the rotation's id, attempt and trigger; but not
        for one handed to the sweep, which gave up its lease and audited its own. Both written before the claim that
        closes it, so that they are written whatever becomes of that claim; the audit record first. (A worker only
        held up past its lease records its own outcome as well when it wakes.)"""
        assert before.rotation_id is not None
        assert before.attempt_started_at is not None
        entry = await self.adapters.history.get(record.id, before.attempt_started_at, before.rotation_id,
                                                before.attempt)
        if entry is not None and entry.outcome != "running":
            return
        if before.lease_until is not None:  # not handed over
            # Audited before the entry is closed: the entry closed is what tells a later claim the attempt was
            # dealt with, so an audit write failing after it would never be made again.
            action = "connection.migrate" if before.step in MIGRATION_STEPS else "rotation.attempt"
            await self.audit.record(action, INTERRUPTED, app=record.app, connection_id=record.id,
                                    connection_name=record.name,
                                    detail=f"rotation {before.rotation_id} attempt {before.attempt} "
                                           f"(trigger {trigger}): it did not end within its lease (its worker "
                                           "stopped or was held up)")
        await self.adapters.history.record(RotationEvent(
            rotation_id=before.rotation_id, attempt=before.attempt, connection_id=record.id, app=record.app,
            started_at=before.attempt_started_at, finished_at=None, outcome=INTERRUPTED, trigger=trigger,
            message="This attempt stopped before it ended; the next one resumed it."))

    async def _record_attempt(self, record: ConnectionRecord, outcome: str, *, trigger: str,
                              message: str | None = None, new_key_id: str | None = None,
                              revoked_key_id: str | None = None) -> None:
        """This attempt's history entry: ``running``, or its outcome (then with the time it ended)."""
        state = record.rotation
        assert state.rotation_id is not None
        assert state.attempt_started_at is not None
        await self.adapters.history.record(RotationEvent(
            rotation_id=state.rotation_id, attempt=state.attempt, connection_id=record.id, app=record.app,
            started_at=state.attempt_started_at, finished_at=None if outcome == "running" else self.now(),
            outcome=outcome, trigger=trigger, new_key_id=new_key_id, revoked_key_id=revoked_key_id,
            message=message))

    async def _until_it_works(self, test: Callable[[], Awaitable[object]], *,
                              answering: bool = False) -> ServiceError | None:
        """Run ``test`` until it passes, retried with jittered back-off while it is refused or Graph/Entra fail
        (a new credential takes a while to reach every Entra replica); None once it passed, else the last error
        when the next try would start after the options' ``test_timeout``. ``answering`` (a new credential's test):
        while an HTTP request is served, no try starts later than ``ROOM_AFTER_TEST`` before it must be answered;
        ``StillTesting`` then. The timers have no such deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.test_timeout
        delay = self.options.test_first_delay
        while True:
            try:
                await test()
                return None
            except (CredentialRejected, UpstreamError) as error:
                last: ServiceError = error
            if loop.time() + delay > deadline:
                return last
            pause = jittered(delay)
            left = time_to_answer() if answering else None
            if left is not None and pause + ROOM_AFTER_TEST > left:
                raise StillTesting(last)
            await self.adapters.sleep(pause)
            delay = min(delay * 2, self.options.test_max_delay)

    def _handed_over(self, state: RotationState, message: str) -> RotationState:
        """``state`` handed to the rotation sweep by an attempt whose test the request's deadline stopped: nothing
        failed and nothing is withdrawn; the journal stays at its step (status ``rotating``, this attempt's start
        kept, so the next attempt resumes it as one that stopped), the lease is given up and the connection is due
        now, with ``message`` as the rotation's message."""
        return state.evolve(message=message, lease_owner=None, lease_until=None, next_at=self.now())

    async def _record_handed_over(self, record: ConnectionRecord, trigger: str) -> None:
        """This attempt's history entry once it handed its journal (``record``'s) to the sweep: ``interrupted``, with
        the rotation's message; the attempt that resumes it leaves it so. Best effort: unwritten, it stays
        ``running``, and that attempt marks it ``interrupted``."""
        with best_effort(lambda error: log.info("Rotation of %s: the history entry of the attempt handed to the sweep "
                                                "is not written (%s)", record.id, detail_of(error))):
            await self._record_attempt(record, INTERRUPTED, trigger=trigger, message=record.rotation.message)
