"""The four-step rotation of a client secret: create, test, finish, revoke.

Each step is recorded on the connection entity (ETag-guarded) before the next one starts, and each is
idempotent, so a rotation interrupted anywhere is resumed by the next sweep:

1. create: ``addPassword`` (display name carries the connection and rotation ids, so an orphan left by
   a crash before it was recorded is found and removed), then the new value goes to Key Vault at once
   as a pending version;
2. test: a token is acquired with the pending secret, retried with back-off while Entra propagates it;
   a secret that never works is removed again and the current one is left untouched;
3. finish: the pending version becomes current;
4. revoke: ``removePassword`` of the previous Key ID, only now that its successor has worked.

The credential in use is never revoked before its successor has worked.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from shared import telemetry
from shared.apps import Method, find_app
from shared.azure.retry import jittered
from shared.credentials import acquire_token, build_credential
from shared.errors import Conflict, CredentialRejected, NotFound, ServiceError, UpstreamError
from shared.rotation.state import (
    BEGUN,
    CREATED,
    FINISHED,
    STATUS_FAILED,
    STATUS_ROTATING,
    STATUS_SUCCEEDED,
    TESTED,
    RotationState,
    read_state,
    with_state,
)
from shared.store.history import RotationEvent, RotationHistory
from shared.store.schedule import ScheduleIndex
from shared.store.tables import ConnectionRecord, ConnectionsTable
from shared.store.vault import SecretVault

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from shared.azure.clients import AzureClients
    from shared.azure.graph import GraphApps

log = logging.getLogger(__name__)

GRACE_DAYS = 3
FIRST_BACKOFF = timedelta(minutes=5)
MAX_BACKOFF = timedelta(days=1)

Checkpoint = Callable[[str, ConnectionRecord], Awaitable[None]]


async def _no_checkpoint(name: str, record: ConnectionRecord) -> None:
    return None


def backoff(failures: int) -> timedelta:
    """Exponential back-off for a failing connection: 5 min, 10 min, ... capped at one day."""
    delay: timedelta = FIRST_BACKOFF * 2 ** max(0, failures - 1)
    return min(MAX_BACKOFF, delay)


def marker(connection_id: str, rotation_id: str) -> str:
    return f"app-connections {connection_id} rotation {rotation_id}"


@dataclass
class RotationOptions:
    test_timeout: float = 300.0
    test_first_delay: float = 1.0
    test_max_delay: float = 5.0

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.test_timeout + 600)


class LeaseLost(Exception):
    """Another worker owns the rotation now; this one stops without touching anything."""


@dataclass
class _RunCache:
    """What one run of a rotation reads or builds once and reuses in its later steps (never beyond the run).

    - the secret material of a vault version: read once; the pending version's is Key Vault's answer to its
      write (Set Secret returns the stored value), so *test* reads nothing;
    - a Graph client per secret version, whose credential acquires its token once: *create*, an *abandon* and
      *revoke* share the one built with the secret that was current when the run began.
    """

    materials: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    graphs: dict[tuple[str, str], GraphApps] = field(default_factory=dict)
    closing: AsyncExitStack = field(default_factory=AsyncExitStack)

    def opened_graph(self, connection_id: str) -> GraphApps | None:
        return next((graph for (owner, _), graph in self.graphs.items() if owner == connection_id), None)


# The cache of the run under way in this task (the sweep runs each rotation in a task of its own).
_RUN: ContextVar[_RunCache | None] = ContextVar("rotation_run", default=None)


@asynccontextmanager
async def _run_cache() -> AsyncIterator[_RunCache]:
    cache = _RunCache()
    token = _RUN.set(cache)
    try:
        async with cache.closing:
            yield cache
    finally:
        _RUN.reset(token)


class Rotator:
    def __init__(
        self,
        clients: AzureClients,
        *,
        options: RotationOptions | None = None,
        now: Callable[[], datetime] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        owner: str | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.clients = clients
        self.table = ConnectionsTable(clients)
        self.vault = SecretVault(clients)
        self.index = ScheduleIndex(clients)
        self.history = RotationHistory(clients)
        self.options = options or RotationOptions()
        self.now = now or (lambda: datetime.now(UTC))
        self.sleep = sleep or asyncio.sleep
        self.owner = owner or uuid.uuid4().hex
        self.checkpoint = checkpoint or _no_checkpoint
        # Rotation ids this rotator's claims started, with the ETag of the entity each claim wrote: until create
        # begins, no version of the secret can be tagged with such an id (see _create).
        self._minted: dict[str, str | None] = {}

    # -- claiming ------------------------------------------------------------------------------
    async def claim(self, record: ConnectionRecord, trigger: str) -> ConnectionRecord | None:
        """Take the rotation lease (ETag-guarded); start a journal unless one is there to resume."""
        state = read_state(record)
        now = self.now()
        if state.leased(now) and state.lease_owner != self.owner:
            return None
        minted = state.rotation_id is None
        if state.rotation_id is None:
            state = state.evolve(
                rotation_id=str(uuid.uuid4()), step=BEGUN, trigger=trigger, started_at=now,
                previous_key_id=state.key_id, previous_version=record.secret_version,
            )
        state = state.evolve(
            status=STATUS_ROTATING, last_attempt_at=now, lease_owner=self.owner, lease_until=now + self.options.lease
        )
        try:
            claimed = await self.table.update(with_state(record, state))
        except Conflict:
            return None
        if minted and state.rotation_id is not None:
            self._minted[state.rotation_id] = claimed.etag
        return claimed

    async def _save(self, record: ConnectionRecord, state: RotationState, **changes: object) -> ConnectionRecord:
        """Write the next journal entry, guarded by the ETag of the entity this step started from."""
        for _ in range(3):
            target = with_state(record.evolve(**changes), state)
            try:
                return await self.table.update(target)
            except Conflict:
                pass
            # The entity changed under us. Three cases: our own write landed but its answer was lost (the
            # connection dropped and the retry met its own ETag); an edit that left the rotation and the secret
            # alone (a new name or description), on top of which this step is applied again; anything else
            # (another owner, a changed journal or secret), which means the rotation is no longer ours.
            try:
                current = await self.table.get(record.app, record.id)
            except NotFound:
                raise LeaseLost(record.id) from None
            if read_state(current) == state and current.secret_version == target.secret_version:
                return current
            if (read_state(current) != read_state(record) or current.secret_version != record.secret_version
                    or read_state(current).lease_owner != self.owner):
                raise LeaseLost(record.id)
            record = current
        raise LeaseLost(record.id)

    # -- running -------------------------------------------------------------------------------
    async def run(self, record: ConnectionRecord) -> ConnectionRecord:
        """Drive a claimed rotation from its recorded step to the end (or a recorded failure)."""
        started = read_state(record)
        attributes = {"app": record.app, "connection.id": record.id, "rotation.id": started.rotation_id,
                      "rotation.trigger": started.trigger}
        watch = telemetry.Stopwatch()
        outcome = "error"
        try:
            with telemetry.span("rotation", attributes) as span:
                async with _run_cache():
                    record = await self._drive(record, attributes)
                outcome = read_state(record).status or "unknown"
                span.set_attribute("outcome", outcome)
                return record
        except LeaseLost:
            outcome = "lease-lost"
            raise
        finally:
            telemetry.record_rotation(record.app, outcome, started.trigger, watch.seconds())

    async def _drive(self, record: ConnectionRecord, attributes: telemetry.Attributes) -> ConnectionRecord:
        try:
            while True:
                step = read_state(record).step
                action = _STEPS.get(step or "")
                if action is None:
                    return record
                name, method = action
                with telemetry.span(f"rotation.{name}", {**attributes, "rotation.step": name}) as span:
                    record = await method(self, record)
                    span.set_attribute("outcome", "failed" if read_state(record).status == STATUS_FAILED else "ok")
                if step == FINISHED:
                    return record
        except LeaseLost:
            log.warning("Rotation of %s stopped: another worker holds it now", record.id)
            raise
        except (ServiceError, OSError, TimeoutError) as error:
            return await self._failed(record, _describe(error))
        except Exception as error:
            from azure.core.exceptions import AzureError

            if not isinstance(error, AzureError):
                raise
            return await self._failed(record, _describe(error))

    async def _material(self, record: ConnectionRecord, version: str) -> dict[str, str]:
        """The secret material of a vault version: read once per run."""
        cache = _RUN.get()
        key = (record.id, version)
        if cache is not None and key in cache.materials:
            return cache.materials[key]
        material = await self.vault.get(record.secret_name, version)
        if cache is not None:
            cache.materials[key] = material
        return material

    @asynccontextmanager
    async def _graph(self, record: ConnectionRecord, version: str) -> AsyncIterator[GraphApps]:
        """Graph with the connection's credential of secret ``version``. Within a run it is built once (so its token
        is acquired once) and closed when the run ends; outside one, when the block ends."""
        from shared.azure.graph import GraphApps

        cache = _RUN.get()
        key = (record.id, version)
        if cache is not None and key in cache.graphs:
            yield cache.graphs[key]
            return
        material = await self._material(record, version)
        credential = build_credential(self.clients, Method.CLIENT_SECRET, record.tenant_id, record.client_id or "",
                                      material)
        if cache is None:
            async with credential:
                yield GraphApps(self.clients, credential)
            return
        await cache.closing.enter_async_context(credential)
        cache.graphs[key] = graph = GraphApps(self.clients, credential)
        yield graph

    async def _create(self, record: ConnectionRecord) -> ConnectionRecord:
        state = read_state(record)
        assert state.rotation_id is not None
        name = marker(record.id, state.rotation_id)
        # A rotation this rotator's claim started, on the very entity that claim wrote, still under its lease: no
        # create of it ran before, so no vault version carries its id and there is none to disable. Any other
        # case (a resumed rotation, another worker's, a lease run out) looks for them.
        minted = self._minted.pop(state.rotation_id, None)
        first_attempt = (minted is not None and minted == record.etag and state.lease_owner == self.owner
                         and state.leased(self.now()))
        cache = _RUN.get()
        await self.checkpoint("before-add-password", record)
        async with self._graph(record, record.secret_version) as graph:
            registration = await graph.find(record.client_id or "")
            for password in registration.passwords:  # an orphan of this rotation, left by a crash
                if password.display_name == name:
                    await graph.remove_password(registration.object_id, password.key_id)
            if not first_attempt:
                await self.vault.disable_tagged(record.secret_name, "rotationId", state.rotation_id)
            days = 2 * (state.interval_days or 30) + GRACE_DAYS
            added = await graph.add_password(registration.object_id, name, self.now() + timedelta(days=days))
        await self.checkpoint("after-add-password", record)
        stored = await self.vault.write(
            record.secret_name,
            {"clientSecret": added.secret_text},
            {"connectionId": record.id, "app": record.app, "method": record.method,
             "rotationId": state.rotation_id, "keyId": added.key_id},
        )
        version = stored.version
        if cache is not None and stored.material is not None:
            cache.materials[(record.id, version)] = stored.material
        await self.checkpoint("after-vault-write", record)
        return await self._save(record, state.evolve(step=CREATED, pending_key_id=added.key_id,
                                                     pending_version=version))

    async def _test(self, record: ConnectionRecord) -> ConnectionRecord:
        state = read_state(record)
        assert state.pending_version is not None
        app = find_app(record.app)
        assert app is not None
        material = await self._material(record, state.pending_version)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.test_timeout
        delay = self.options.test_first_delay
        last = "no attempt"
        while True:
            try:
                await acquire_token(self.clients, app, Method.CLIENT_SECRET, record.tenant_id,
                                    record.client_id or "", material)
                break
            except (CredentialRejected, UpstreamError) as error:
                last = error.detail
            if loop.time() + delay > deadline:
                return await self._abandon(record, state, last)
            await self.sleep(jittered(delay))
            delay = min(delay * 2, self.options.test_max_delay)
        await self.checkpoint("after-test", record)
        return await self._save(record, state.evolve(step=TESTED))

    async def _abandon(self, record: ConnectionRecord, state: RotationState, last: str) -> ConnectionRecord:
        """The new secret never worked: remove it, keep the current one, record the failure."""
        assert state.pending_key_id is not None
        assert state.pending_version is not None
        async with self._graph(record, record.secret_version) as graph:
            assert state.rotation_id is not None
            await _revoke_if_present(graph, record, state.pending_key_id, marker(record.id, state.rotation_id))
        await self.vault.disable(record.secret_name, state.pending_version)
        message = (
            f"The new client secret did not work within {self.options.test_timeout:.0f} s ({last}); it was removed "
            "and the current secret was left in place."
        )
        return await self._failed(record, message, abandoned=True)

    async def _finish(self, record: ConnectionRecord) -> ConnectionRecord:
        state = read_state(record)
        assert state.pending_version is not None
        record = await self._save(
            record, state.evolve(step=FINISHED, key_id=state.pending_key_id), secret_version=state.pending_version
        )
        await self.checkpoint("after-finish", record)
        return record

    async def _revoke(self, record: ConnectionRecord) -> ConnectionRecord:
        state = read_state(record)
        assert state.rotation_id is not None
        previous = state.previous_key_id if state.previous_key_id != state.key_id else None
        await self._revoke_previous(record, previous or "", marker(record.id, state.rotation_id), state.key_id)
        if state.previous_version and state.previous_version != record.secret_version:
            await self.vault.disable(record.secret_name, state.previous_version)
        await self.checkpoint("after-revoke", record)
        now = self.now()
        assert state.rotation_id is not None
        assert state.started_at is not None
        await self.history.record(
            RotationEvent(
                rotation_id=state.rotation_id, connection_id=record.id, app=record.app, started_at=state.started_at,
                finished_at=now, outcome=STATUS_SUCCEEDED, trigger=state.trigger or "", new_key_id=state.key_id,
                revoked_key_id=state.previous_key_id, message=None,
            )
        )
        schedule = state.schedule
        next_at = schedule.next_due(now) if schedule else None
        done = state.cleared_journal().evolve(
            status=STATUS_SUCCEEDED, message="Rotated: a new client secret is in use and the previous one is revoked.",
            last_rotated_at=now, failures=0, next_at=next_at,
        )
        return await self._reschedule(record, state, done)

    async def _revoke_previous(self, record: ConnectionRecord, key_id: str, marker_name: str,
                               keep: str | None) -> None:
        """removePassword of the previous Key ID, and of any stray password of this rotation's marker. In the run
        that created its successor, with the Graph client that run built with the previous secret: its token was
        acquired before the revocation and stays valid after it, so no token is requested, and a successor that
        Entra has not yet propagated everywhere cannot fail this step. A run that resumes here (the previous
        secret may be gone already) uses the current secret."""
        cache = _RUN.get()
        opened = cache.opened_graph(record.id) if cache is not None else None
        if opened is not None:
            await _revoke_if_present(opened, record, key_id, marker_name, keep)
            return
        async with self._graph(record, record.secret_version) as graph:
            await _revoke_if_present(graph, record, key_id, marker_name, keep)

    async def _reschedule(self, record: ConnectionRecord, old: RotationState, new: RotationState) -> ConnectionRecord:
        """Index the new due time first, then point the connection at it, then drop the old index entry."""
        key = await self.index.put(new.next_at, record.app, record.id) if new.next_at else None
        record = await self._save(record, new.evolve(schedule_key=key))
        if old.schedule_key and old.schedule_key != key:
            await self.index.remove(old.schedule_key)
        return record

    async def _failed(self, record: ConnectionRecord, message: str, abandoned: bool = False) -> ConnectionRecord:
        """Record a failure and back off. The journal is kept, so the next attempt resumes the same rotation
        (and finds any orphan of it by its marker), unless the rotation was abandoned and cleaned up."""
        try:
            current = await self.table.get(record.app, record.id)
        except NotFound:
            return record
        state = read_state(current)
        if state.leased(self.now()) and state.lease_owner != self.owner:
            return current
        failures = state.failures + 1
        now = self.now()
        if state.rotation_id and state.started_at:
            await self.history.record(
                RotationEvent(
                    rotation_id=state.rotation_id, connection_id=record.id, app=record.app,
                    started_at=state.started_at, finished_at=now, outcome=STATUS_FAILED,
                    trigger=state.trigger or "", new_key_id=None, revoked_key_id=None, message=message,
                )
            )
        base = state.cleared_journal() if abandoned else state
        new = base.evolve(
            status=STATUS_FAILED, message=message, failures=failures, next_at=now + backoff(failures),
            lease_owner=None, lease_until=None,
        )
        log.warning("Rotation of %s connection %s failed (attempt %d): %s", record.app, record.id, failures, message)
        try:
            return await self._reschedule(current, state, new)
        except LeaseLost:
            return current


_STEPS: dict[str, tuple[str, Callable[[Rotator, ConnectionRecord], Awaitable[ConnectionRecord]]]] = {
    BEGUN: ("create", Rotator._create),
    CREATED: ("test", Rotator._test),
    TESTED: ("finish", Rotator._finish),
    FINISHED: ("revoke", Rotator._revoke),
}


async def _revoke_if_present(graph: GraphApps, record: ConnectionRecord, key_id: str, marker_name: str | None = None,
                             keep: str | None = None) -> None:
    """removePassword of ``key_id`` unless it is already gone (Graph answers 400 for an unknown Key ID); with
    ``marker_name``, also of every other password of that rotation's marker but ``keep`` (one that an addPassword
    whose answer was lost may have made, and that Graph did not yet show when it was sent again)."""
    registration = await graph.find(record.client_id or "")
    doomed = {key_id.lower()} if key_id else set()
    if marker_name is not None:
        doomed |= {p.key_id for p in registration.passwords if p.display_name == marker_name}
    doomed.discard((keep or "").lower())
    for password in registration.passwords:
        if password.key_id in doomed:
            await graph.remove_password(registration.object_id, password.key_id)


def _describe(error: BaseException) -> str:
    if isinstance(error, ServiceError):
        return error.detail
    status = getattr(error, "status_code", None)
    return f"{type(error).__name__}" + (f" (status {status})" if status else "") + ": the call did not complete."
