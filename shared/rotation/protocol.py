"""The four-step rotation of a connection's credential (create, test, finish, revoke), and the retirement of
credentials the service created on an application a connection no longer uses.

What is rolled is a strategy, a :class:`~shared.rotation.rolls.CredentialRoll` (client secrets: addPassword /
removePassword; certificates: addKey / removeKey with proofs of possession; a migration to another method is a
roll too, see :mod:`shared.rotation.rolls`): this module holds the journal, the order of the steps and the
guarantees, the same for every kind.

Each step is recorded on the connection record (ETag-guarded) before the next one starts, and each is
idempotent, so a rotation interrupted anywhere is resumed by the next attempt:

1. create: the roll's ``add_successor`` (display name = the rotation's marker, so a credential left by a crash
   before it was recorded is found and removed), then its material goes to the vault at once as a pending
   version (``store_successor``);
2. test: the roll's ``test_successor`` acquires a token with the pending version, retried with back-off while
   Entra propagates it; a successor that never works is removed again and the current one is left untouched; one
   still being tested when the HTTP request it runs in must be answered is handed to the sweep at this step;
3. finish: the pending version becomes current;
4. revoke: the roll's ``remove_predecessor`` of the previous Key ID, only now that its successor has worked;
   superseded vault versions are disabled.

Every attempt has exactly one history entry: written as ``running`` when it is claimed, replaced by its outcome
when it ends; an attempt that died is marked ``interrupted`` by the attempt that resumes its rotation.

The credential in use is never revoked before its successor has worked, and every credential the service
created on an application is current, or recorded in the journal, or removed.
"""

from __future__ import annotations

import functools
import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from shared import telemetry
from shared.apps import Method, find_app
from shared.azure.upstream import azure_failure, sentence, upstream_error
from shared.due_index import reindex
from shared.errors import (
    ConcurrentChange,
    CredentialExpired,
    CredentialLifetimeRefused,
    CredentialRejected,
    InvalidRequest,
    LeaseLost,
    NotFound,
    RemovalUnconfirmed,
    SecretGone,
    ServiceError,
    UpstreamError,
    UpstreamThrottled,
    VersionDisabled,
    best_effort,
    detail_of,
    failed_upstream,
)
from shared.expiry import status_of
from shared.federation import federation_identity, refused_as_removed
from shared.json_codec import iso
from shared.notify import health_notices, rotation_failed
from shared.ports import AppRegistration, GraphSession, Lost
from shared.records import (
    BEGUN,
    CREATED,
    FINISHED,
    STATUS_DELETING,
    STATUS_FAILED,
    STATUS_SUCCEEDED,
    TESTED,
    ConnectionRecord,
    HealthState,
    Notification,
    RotationState,
)
from shared.rotation.certificates import ends_async
from shared.rotation.journal import (
    INTERRUPTED,
    Journaled,
    StillTesting,
    Stopped,
    evolved,
    fenced,
    interrupted_attempt,
    removal_confirmation_wait,
)
from shared.rotation.journal import Checkpoint as Checkpoint
from shared.rotation.journal import RemovalAudit as RemovalAudit
from shared.rotation.journal import RotationOptions as RotationOptions
from shared.rotation.kinds import ROLLS, roll_of
from shared.rotation.lifetimes import (
    GRACE_DAYS,
    LIFETIME_CODE,
    addition_refused,
    capped_end,
    lifetime_refused,
    needed_lifetime,
    require_room_to_rotate,
)
from shared.rotation.rolls import CredentialRoll, Successor
from shared.rotation.schedule import RotationSchedule, parse_hhmm
from shared.rotation.sharing import keep_for_others, mark_stranded, named, same_application, signing_in_with

log = logging.getLogger(__name__)

FIRST_BACKOFF = timedelta(minutes=5)
MAX_BACKOFF = timedelta(days=1)
# After a rotation, the next is never due sooner than half the new credential's lifetime, nor later than this
# (``next_rotation``): whatever its end, a rotation cannot make itself due again at once (review sweeps 1).
RENEWAL_FLOOR_MAX = timedelta(days=1)
MARKER_PREFIX = "app-connections"
CLEAN_UP = "rotation.clean-up"  # the audit action of the sweep's clean-up of an application a connection left
# Entra's refusals of a credential it does not know: no such client secret; no key of the application's that the
# certificate's signature verifies against (an expired key too).
CREDENTIAL_UNKNOWN = frozenset({"AADSTS7000215", "AADSTS700027"})
# ... and of an expired client secret: a credential that no longer signs in, whichever the reason.
CREDENTIAL_UNUSABLE = CREDENTIAL_UNKNOWN | {"AADSTS7000222"}
# Entra's refusal of the service's identity that says nothing the service added is left at the application: it has
# no federated credential (70025). AADSTS70021 and its kin (none matches the service's identity now) is not one: a
# credential added for an identity the service no longer has would still be there, and trust it; nor is AADSTS700016
# (no such application in the tenant: its service principal may be deleted while the registration, and the
# credential, stay), nor any other refusal (a Conditional Access policy, the application disabled).
TRUST_GONE = frozenset({"AADSTS70025"})

# A journal entry written ahead of a removal pass's last removal: the change it makes to the rotation state.
JournalEntry = Callable[[RotationState], RotationState]
Journal = Callable[[JournalEntry], Awaitable[None]]

def backoff(failures: int) -> timedelta:
    """Exponential back-off for a failing connection: 5 min, 10 min, ... capped at one day, for any number of
    failures (the exponent is capped first: 2 ** 39 five-minute spans no longer fit in a ``timedelta``)."""
    doublings = min(max(0, failures - 1), _DOUBLINGS_TO_MAX)
    delay: timedelta = FIRST_BACKOFF * 2**doublings
    return min(MAX_BACKOFF, delay)


# The doublings after which the back-off is at its ceiling: 5 min x 2 ** 9 is past a day.
_DOUBLINGS_TO_MAX = math.ceil(math.log2(MAX_BACKOFF / FIRST_BACKOFF))


def connection_marker(connection_id: str) -> str:
    """The prefix of the display name of every credential the service creates for a connection."""
    return f"{MARKER_PREFIX} {connection_id} rotation "


def marker(connection_id: str, rotation_id: str) -> str:
    return connection_marker(connection_id) + rotation_id


def schedule_of(state: RotationState) -> RotationSchedule | None:
    if not state.enabled or state.interval_days is None or state.rotate_at is None:
        return None
    return RotationSchedule(state.interval_days, parse_hhmm(state.rotate_at), state.time_zone or "UTC")


def scheduled_rotation(state: RotationState, expires: datetime | None) -> datetime | None:
    """When the schedule next rotates the credential after its last rotation, never later than ``GRACE_DAYS``
    before the credential in use ends (``expires``: a longer interval set since, or a policy's cap, would have it
    rotated only once nothing signs in any more). None: rotation off, or never rotated."""
    if state.last_rotated_at is None:
        return None
    return next_rotation(schedule_of(state), state.last_rotated_at, expires)


def only_the_clean_up_due(record: ConnectionRecord, now: datetime) -> bool:
    """What the sweep has to do for a connection whose entry is due is the clean-up of the application it left
    (``retire_due``), not a rotation: rotation is off, or its last rotation succeeded and the next is not due. Not
    while the credential in use is the one a change gave (no rotation made it): its rotation at once is owed, and
    comes after the clean-up (``_retire_before``)."""
    state = record.rotation
    if state.in_progress or not state.cleaning_up:
        return False
    if not state.enabled:
        return True
    if not state.made_in_use:
        return False
    due = scheduled_rotation(state, record.health.credential_expires_at)
    return state.status == STATUS_SUCCEEDED and due is not None and due > now


def secret_tags(record: ConnectionRecord, **more: str) -> dict[str, str]:
    return {"connectionId": record.id, "app": record.app, "method": record.method, **more}


@dataclass(frozen=True)
class Attempt:
    """How one rotation attempt ended: the connection afterwards, and the error that stopped it (if any);
    ``handed_over``: the HTTP request it ran in had to be answered while its new credential was still being tested,
    and the rotation sweep finishes it (:meth:`Rotator._hand_to_sweep`)."""

    record: ConnectionRecord
    error: ServiceError | None = None
    handed_over: bool = False

    @property
    def succeeded(self) -> bool:
        return self.record.rotation.status == STATUS_SUCCEEDED and self.error is None


@dataclass
class _Run:
    """What one attempt reads or opens once and reuses in its later steps (never beyond the attempt): the
    material of a vault version, and a Graph session per version (so its token is acquired once)."""

    materials: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)
    graphs: dict[str, GraphSession] = field(default_factory=dict)
    closing: AsyncExitStack = field(default_factory=AsyncExitStack)
    # An addition this attempt began and its journal has not recorded yet; what it added (unless Graph's answer was
    # lost) and the vault version it wrote.
    unrecorded: bool = False
    added: Successor | None = None
    added_version: str | None = None


class Rotator(Journaled):
    # -- claiming ------------------------------------------------------------------------------
    async def claim(self, record: ConnectionRecord, trigger: str) -> ConnectionRecord | None:
        """Take the rotation lease (ETag-guarded) and open this attempt's history entry; start a journal unless
        one is there to resume (then the attempt's trigger is ``resume``). None when another holds the lease,
        the connection is being deleted, or it changed meanwhile, and, with no journal to resume, when rotation is
        off or the connection's method has nothing to rotate (a migration landed meanwhile)."""
        state = record.rotation
        now = self.now()
        if (state.leased(now) and state.lease_owner != self.owner) or record.status == STATUS_DELETING:
            return None
        if state.rotation_id is None and not (state.enabled and record.method in ROLLS):
            return None
        where = {"app": record.app, "connection_id": record.id, "connection_name": record.name}
        await self.audit.record("rotation.attempt", "started", **where,
                                detail=f"trigger {trigger}" if state.rotation_id is None else "resume")
        # The started record gets its outcome here unless the claim is written (then ``run`` records it): skipped
        # when the claim is lost, failed when an error stops it first (review sweeps 5).
        try:
            claimed, current = await self._claim_after_audit(record, state, trigger, now)
        except Exception as error:
            await self.audit.record("rotation.attempt", "failed", **where,
                                    detail=f"claiming the rotation: {sentence(error)}")
            raise
        if claimed is None:
            await self.audit.record("rotation.attempt", "skipped", **where, detail=self._why_not_claimed(current))
            return None
        with best_effort(lambda error: log.info("Rotation of %s: its running history entry is not written (%s); "
                                                "its outcome writes it", record.id, detail_of(error))):
            await self._history(claimed, "running")
        return claimed

    def _why_not_claimed(self, current: ConnectionRecord | None) -> str:
        """Why a claim was lost, as far as the record read after it tells (the detail of its ``skipped`` record)."""
        if current is None:
            return "not claimed: the connection was deleted meanwhile"
        if current.status == STATUS_DELETING:
            return "not claimed: the connection is being deleted"
        if current.rotation.leased(self.now()) and current.rotation.lease_owner != self.owner:
            return "not claimed: another worker holds it (a sweep or a request rotating it)"
        return "not claimed: the connection changed meanwhile; the next sweep tries again"

    async def _claim_after_audit(self, record: ConnectionRecord, state: RotationState, trigger: str,
                                 now: datetime) -> tuple[ConnectionRecord | None, ConnectionRecord | None]:
        """The rest of :meth:`claim`, once its ``started`` record is written: the record claimed, or None and the
        record as another change left it (None when deleted)."""
        interrupted: RotationState | None = None
        if state.rotation_id is None:
            state = state.evolve(
                rotation_id=str(uuid.uuid4()), step=BEGUN, trigger=trigger, started_at=now, attempt=1,
                previous_key_id=state.key_id, previous_version=record.secret_version, managed=True,
            )
        else:
            interrupted = interrupted_attempt(state)
            # One resumed past its test is tested again: an attempt that failed after it may have removed the new
            # credential (its clean-up) and then failed to write so; finishing with it would revoke nothing but
            # leave a removed credential in use.
            state = state.evolve(trigger="resume", attempt=state.attempt + 1,
                                 step=CREATED if state.step == TESTED else state.step)
        state = self._leased(state, now, message=None)
        # The attempt that died is closed before the journal moves on to the next attempt: once it has, nothing
        # records which attempt that was (should this write fail, the record is unchanged and the next claim
        # closes it; a claim that then loses the race closed an attempt that had stopped all the same).
        if interrupted is not None:
            await self._close_interrupted(record, interrupted, interrupted.trigger or "")
        # Should this worker die, the sweep resumes the attempt once its lease has run out: the connection is due
        # then at the latest (a request's rotation may have no due time yet, or a later one). The entry is written
        # before the record points at it, as ``reindex`` does.
        old_key = state.schedule_key
        resume = state.lease_until if state.next_at is None or old_key is None or (
            state.lease_until is not None and state.next_at > state.lease_until) else None
        if resume is not None:
            state = state.evolve(next_at=resume, schedule_key=await self.adapters.schedule.put(
                resume, record.app, record.id))
        claimed, current = await self._write_claim(record, state)
        if claimed is None:
            if resume is not None and (current is None or current.rotation.schedule_key != state.schedule_key):
                await self._drop_entry(state.schedule_key)  # nothing points at it
            return None, current
        if resume is not None and old_key != state.schedule_key:
            await self._drop_entry(old_key)
        return claimed, current

    async def _history(self, record: ConnectionRecord, outcome: str, message: str | None = None,
                       new_key_id: str | None = None, revoked_key_id: str | None = None) -> None:
        await self._record_attempt(record, outcome, trigger=record.rotation.trigger or "", message=message,
                                   new_key_id=new_key_id, revoked_key_id=revoked_key_id)

    async def _save(self, record: ConnectionRecord, state: RotationState,
                    notify: Sequence[Notification] | Callable[[ConnectionRecord], Sequence[Notification]] = (),
                    **changes: object) -> ConnectionRecord:
        """Write the next journal entry (with ``notify`` queued in the same transaction; worked out from the record
        written over, when it is a function of it), guarded by the ETag of the record this step started from."""
        store = self.adapters.connections
        for _ in range(3):
            target = evolved(record.evolve(rotation=state), changes)
            try:
                return await store.update(target, notify=notify(record) if callable(notify) else notify)
            except ConcurrentChange:
                pass
            # The record changed under us. Our own write may have landed with its answer lost (the retry met its
            # own ETag); an edit that left the rotation and the secret alone (a new name or description) is
            # written over with this step again; anything else means the rotation is no longer ours.
            try:
                current = await store.get(record.app, record.id)
            except NotFound:
                raise LeaseLost(f"The connection {record.id} was deleted.") from None
            if current.rotation == state and current.secret_version == target.secret_version:
                return current
            if (current.rotation != record.rotation or current.secret_version != record.secret_version
                    or current.rotation.lease_owner != self.owner):
                raise LeaseLost(f"Another worker took the rotation of {record.id} over.")
            record = current
        raise LeaseLost(f"The connection {record.id} kept changing.")

    # -- running -------------------------------------------------------------------------------
    async def run(self, record: ConnectionRecord) -> Attempt:
        """Drive a claimed rotation from its recorded step to the end, or to a recorded failure."""
        started = record.rotation
        attributes = {"app": record.app, "connection.id": record.id, "rotation.id": started.rotation_id,
                      "rotation.trigger": started.trigger}
        watch = telemetry.Stopwatch()
        outcome = "error"
        where = {"app": record.app, "connection_id": record.id, "connection_name": record.name}
        try:
            with telemetry.span("rotation", attributes) as span:
                async with self._run() as run:
                    attempt = await self._drive(record, run, attributes)
                outcome = INTERRUPTED if attempt.handed_over else attempt.record.rotation.status or "unknown"
                detail = attempt.record.rotation.message
                if attempt.error is not None and outcome != STATUS_FAILED:
                    # Its failure is not on the record (deleted meanwhile, or taken over as it was written)
                    outcome, detail = STATUS_FAILED, attempt.error.detail
                span.set_attribute("outcome", outcome)
                if attempt.error is not None:  # recorded and answered, not raised: the span says it failed
                    telemetry.set_error(span, type(attempt.error).__name__)
        except LeaseLost as lost:
            # The started record (``claim``) gets its outcome however the attempt ends: skipped, as a lost claim's
            # is, when a worker held up past its lease finds another has taken the rotation over.
            outcome = "lease-lost"
            await self.audit.record("rotation.attempt", "skipped", **where, detail=f"lease lost: {lost.detail}")
            raise
        except Exception as error:  # a defect (an Azure failure is the attempt's, recorded): its kind, never its text
            await self.audit.record("rotation.attempt", STATUS_FAILED, **where, detail=sentence(error))
            raise
        finally:
            telemetry.record_rotation(record.app, outcome, started.trigger, watch.seconds())
        await self.audit.record("rotation.attempt", outcome, **where, detail=detail)
        return attempt

    @asynccontextmanager
    async def _run(self) -> AsyncIterator[_Run]:
        run = _Run()
        async with run.closing:
            yield run

    async def _drive(self, record: ConnectionRecord, run: _Run, attributes: telemetry.Attributes) -> Attempt:
        steps: dict[str, tuple[str, Callable[[ConnectionRecord, _Run], Awaitable[ConnectionRecord]]]] = {
            BEGUN: ("create", self._create), CREATED: ("test", self._test),
            TESTED: ("finish", self._finish), FINISHED: ("revoke", self._revoke),
        }
        still: StillTesting | None = None
        try:
            if record.rotation.retire_version is not None:  # a credentials change's clean-up comes first
                record = await self._retire_before(record)
            while record.rotation.step in steps:
                name, action = steps[record.rotation.step or ""]
                with telemetry.span(f"rotation.{name}", {**attributes, "rotation.step": name}) as span:
                    try:
                        record = await action(record, run)
                    except StillTesting as testing:  # not a failure: the request's deadline came first
                        span.set_attribute("outcome", INTERRUPTED)
                        still = testing
                        break
                    span.set_attribute("outcome", "ok")  # a step that fails raises: its span says error
            if still is None:
                return Attempt(record)
        except LeaseLost:
            log.warning("Rotation of %s stopped: another worker holds it now", record.id)
            await self._withdraw(record, run)
            raise
        except Stopped as stopped:
            return await self._failed(record, run, stopped.error)
        except ServiceError as error:
            return await self._failed(record, run, error)
        except Exception as error:  # an Azure call an adapter let fail as it came: told as the service's failure
            if not azure_failure(error):
                raise
            return await self._failed(record, run, upstream_error(error))
        # Outside the failures' handling: should the hand-over not be written, the journal stays as the test left it
        # (leased, due when the lease runs out), and nothing is withdrawn from a rotation about to succeed.
        return await self._hand_to_sweep(record, still)

    async def _material(self, record: ConnectionRecord, version: str, run: _Run) -> dict[str, str]:
        if version not in run.materials:
            run.materials[version] = await self.adapters.vault.get(record.secret_name, version)
        return run.materials[version]

    async def _graph(self, record: ConnectionRecord, version: str, run: _Run, *,
                     tenant_id: str | None = None, client_id: str | None = None) -> GraphSession:
        """Graph with the connection's credential of secret ``version``, opened once per attempt."""
        if version not in run.graphs:
            material = await self._material(record, version, run)
            run.graphs[version] = await run.closing.enter_async_context(self.adapters.directory.graph(
                Method(record.method), tenant_id or record.tenant_id, client_id or record.client_id or "", material
            ))
        return run.graphs[version]

    async def _create(self, record: ConnectionRecord, run: _Run) -> ConnectionRecord:
        state = record.rotation
        rotation_id = state.rotation_id
        assert rotation_id is not None
        roll = roll_of(record)
        name = marker(record.id, rotation_id)
        await self.checkpoint("before-add-password", record)
        # Graph cannot make a change conditional: the lease is renewed (ETag-guarded) before the first one, so that a
        # worker held up past its lease while another took the rotation over changes nothing; each change then
        # checks the lease by the clock (``lease_check``).
        state = state.evolve(lease_until=self._lease_from(self.now()))
        record = await self._save(record, state)
        await self.checkpoint("lease-renewed", record)
        graph = await self._graph(record, record.secret_version, run)
        current = await self._material(record, record.secret_version, run)
        registration = await graph.find(record.client_id or "")
        # A credential of this rotation left by an attempt that stopped before recording it goes first (from the
        # application as just read: an attempt reads it once).
        await remove_rolled(roll, graph, record.client_id or "", set(), name, audit=self._removal(record),
                            registration=registration, signer=current, now=self.now(),
                            fence=self.lease_check(state))
        if state.attempt > 1:  # an earlier attempt may have written a pending version before it stopped
            await self.adapters.vault.disable_tagged(record.secret_name, "rotationId", rotation_id)
        # The predecessor's Key ID, when the rotation did not know it (a certificate's, found by its thumbprint).
        previous = state.previous_key_id or roll.identify(registration, current)
        if previous is None and record.method == Method.CERTIFICATE:  # (a client secret's is known when enabled)
            # Before anything is added: a rotation that could not revoke the certificate it replaces would leave it
            # live, and say it had revoked it (review C2).
            raise InvalidRequest(
                "The certificate in use is not listed on the application under its thumbprint (its key identifier "
                "was set to another value when it was uploaded), so it could not be revoked once replaced. Upload it "
                "again with its thumbprint as its key identifier (as the Azure portal does), or give the connection "
                "a certificate the application lists so.")
        async def lost() -> None:  # an addition whose answer was lost may have been made: removed before a retry
            await remove_rolled(roll, graph, record.client_id or "", set(), name, audit=self._removal(record),
                                signer=current, now=self.now(), fence=self.lease_check(state))

        add = functools.partial(self._add_within_policy, roll, graph, registration, name, state.interval_days or 30,
                                current, self._fence(state, run), lost)
        added = run.added = await self.audit.credential_changed(
            "credential.add", add, app=record.app, connection_id=record.id, object_id=registration.object_id,
            detail=f"add {roll.noun} '{name}'", key_id_of=lambda successor: successor.key_id)
        await self.checkpoint("after-add-password", record)
        stored = await self.adapters.vault.write(
            record.secret_name, roll.store_successor(added),
            secret_tags(record, rotationId=rotation_id, keyId=added.key_id),
            expires_on=added.end,
        )
        run.added_version = stored.version
        if stored.material is not None:
            run.materials[stored.version] = stored.material
        await self.checkpoint("after-vault-write", record)
        saved = await self._save(record, state.evolve(step=CREATED, pending_key_id=added.key_id,
                                                      pending_version=stored.version,
                                                      pending_expires_at=added.end,
                                                      previous_key_id=previous,
                                                      key_id=state.key_id or previous))
        run.unrecorded = False
        return saved

    async def _withdraw(self, record: ConnectionRecord, run: _Run) -> None:
        """This attempt began an addition, then lost the rotation before its journal recorded it (the worker was
        held up past its lease and another took over, or the connection was deleted): nothing would track what it
        added. Unless the rotation goes on under another worker (whose revocation removes whatever carries its
        marker but the key it keeps), every credential of the rotation's marker is removed, but the one the journal
        now uses, and the vault version this attempt wrote is disabled. A certificate's proof is signed by the one
        it added (else by the one in use). Retried with back-off while Azure fails, for as long as a successor's
        test is; a withdrawal that still fails is logged (the audit log has the addition started), and what it
        added keeps the rotation's marker, by which ``DELETE`` finds it."""
        rotation_id = record.rotation.rotation_id
        if not run.unrecorded or rotation_id is None:
            return
        run.unrecorded = False
        roll = roll_of(record)
        added, version = run.added, run.added_version

        async def withdraw() -> None:
            try:
                current: ConnectionRecord | None = await self.adapters.connections.get(record.app, record.id)
            except NotFound:
                current = None
            if current is not None and current.rotation.rotation_id == rotation_id:
                return
            graph = await self._graph(record, record.secret_version, run)
            # A certificate's proof: by what it added, else by the one in use now, else by the one that signed
            # the addition (this attempt read it: the connection may be deleted since, its vault secret with it).
            signer = roll.store_successor(added) if added is not None else (
                await self._material(current, current.secret_version, run)
                if current is not None and current.secret_version else run.materials.get(record.secret_version, {}))
            await remove_rolled(roll, graph, record.client_id or "", set(), marker(record.id, rotation_id),
                                keep=current.rotation.key_id if current is not None else None,
                                audit=self._removal(record), signer=signer, now=self.now())
            if version is not None:
                await self.adapters.vault.disable(record.secret_name, version)

        failed: Exception | None
        try:
            failed = await self._until_it_works(withdraw)
        except Exception as error:
            failed = error
        if failed is not None:
            log.warning("Rotation of %s: what it added after losing the rotation could not be removed (%s)",
                        record.id, sentence(failed))

    def _fence(self, state: RotationState, run: _Run) -> Callable[[], None]:
        """The lease check right before an addition; past it, the attempt notes that it is adding."""
        check = self.lease_check(state)

        def fence() -> None:
            check()
            run.unrecorded = True

        return fence

    async def _add_within_policy(self, roll: CredentialRoll, graph: GraphSession, registration: AppRegistration,
                                 name: str, interval_days: int, current: Mapping[str, str],
                                 fence: Callable[[], None], lost: Lost) -> Successor:
        """The roll's ``add_successor``, ending within the lifetime the tenant's app-management policy allows (see
        :mod:`shared.rotation.lifetimes`); on Graph's ``CredentialInvalidLifetimeAsPerAppPolicy`` the policy is
        read again and the addition retried once within it (or with the least lifetime that outlives the next
        rotation, when the policy cannot be read), else the rotation fails saying what to change."""
        now = self.now()
        policy = await graph.lifetime_policy(registration.object_id, registration.created_at)
        if policy is not None and roll.addition_refused(policy):
            raise CredentialLifetimeRefused(addition_refused(roll, policy), extensions={"policySource": policy.source})
        require_room_to_rotate(roll, policy, interval_days)  # else its successor would be due at once, every time
        end = capped_end(now, interval_days, roll.max_lifetime(policy) if policy else None)
        try:
            return await roll.add_successor(graph, registration, name, end, current, now, fence, lost)
        except CredentialLifetimeRefused as refused:
            if refused.extensions.get("graphCode") != LIFETIME_CODE:
                raise CredentialLifetimeRefused(addition_refused(roll, policy, refused.extensions.get("graphCode")),
                                                extensions=refused.extensions) from None
            log.warning("Rotation of %s: Graph refused a %s valid until %s under the app-management policy; "
                        "retrying within it", registration.app_id, roll.noun, end.isoformat())
        policy = await graph.lifetime_policy(registration.object_id, registration.created_at)
        require_room_to_rotate(roll, policy, interval_days)
        cap = roll.max_lifetime(policy) if policy else None
        shorter = capped_end(now, interval_days, cap) if cap is not None else now + needed_lifetime(interval_days)
        if shorter >= end:
            raise lifetime_refused(roll, end - now, policy)
        try:
            return await roll.add_successor(graph, registration, name, shorter, current, now, fence, lost)
        except CredentialLifetimeRefused:
            raise lifetime_refused(roll, shorter - now, policy) from None

    async def _test(self, record: ConnectionRecord, run: _Run) -> ConnectionRecord:
        state = record.rotation
        assert state.pending_version is not None
        app = find_app(record.app)
        assert app is not None
        roll = roll_of(record)
        if state.pending_expires_at is not None and state.pending_expires_at <= self.now():
            # A rotation resumed after its new credential ended (it stopped before its test, long ago): that one
            # cannot work, and retrying its test until the timeout at every attempt would only hold the sweep up.
            raise Stopped(UpstreamError(
                f"The new {roll.noun} ended on {iso(state.pending_expires_at)}, before this rotation could test it; "
                f"it was removed and the current {roll.noun} was left in place."))
        material = await self._material(record, state.pending_version, run)
        last = await self._until_it_works(lambda: roll.test_successor(self.adapters.directory, app, record, material),
                                          answering=True)
        if last is not None:
            raise Stopped(UpstreamError(
                f"The new {roll.noun} did not work within {self.options.test_timeout:.0f} s ({last.detail}); it was "
                f"removed and the current {roll.noun} was left in place."
            ))
        await self.checkpoint("after-test", record)
        tested = await self._save(record, state.evolve(step=TESTED))
        await self.checkpoint("after-tested", tested)
        return tested

    async def _hand_to_sweep(self, record: ConnectionRecord, still: StillTesting) -> Attempt:
        """The request this attempt runs in must be answered while its new credential is still being tested
        (``StillTesting``): a rotation about to succeed is neither failed nor withdrawn. Its journal stays at
        *created*, its lease is given up and the connection is due now (the schedule index first, as ever), so the
        next sweep resumes it (tested again, then finished and revoked); this attempt's history entry says so."""
        state = record.rotation
        noun = roll_of(record).noun
        handed = self._handed_over(state, (
            f"The new {noun} did not work yet when the request had to be answered ({still.last.detail}); the "
            f"rotation sweep goes on testing it and finishes the rotation. The current {noun} is still in use."))
        saved = await self._reschedule(record, state, handed)
        await self._record_handed_over(saved, state.trigger or "")
        log.info("Rotation of %s connection %s handed to the sweep: its new %s is still being tested", record.app,
                 record.id, noun)
        return Attempt(saved, handed_over=True)

    async def _finish(self, record: ConnectionRecord, run: _Run) -> ConnectionRecord:
        state = record.rotation
        assert state.pending_version is not None
        now = self.now()
        warning = self.adapters.settings.expiry_warning

        def checked(current: ConnectionRecord) -> tuple[list[Notification], HealthState]:
            """The successor works (its test just passed): the health of its expiry, and the notice that calls for
            (``recovered`` after an expiring one), over a health check that landed meanwhile too; the index entry of
            the next check stays as it is."""
            expires = state.pending_expires_at or current.health.credential_expires_at
            renewed = next_rotation(schedule_of(current.rotation), now, expires)  # the successor's own successor
            return health_notices(current, current.health.evolve(
                status=status_of(expires, False, now, warning, renewed), checked_at=now, message=None,
                credential_expires_at=expires), now, remind=False)

        def notices(current: ConnectionRecord) -> list[Notification]:
            return checked(current)[0]

        journaled: dict[str, object] = {}
        previous = state.previous_version
        if previous and previous not in (state.pending_version, state.retire_version):
            # Journaled with the switch, as a change of credentials does (``superseded_versions``): should Key Vault
            # refuse its disable in the revocation (a secret the owner gave stays live where another connection
            # holds it), the health check disables it.
            journaled["superseded_versions"] = (
                lambda current: current.superseding((*current.superseded, previous)).superseded_versions)
        record = await self._save(
            record, state.evolve(step=FINISHED, key_id=state.pending_key_id, key_made=True), notices,
            secret_version=state.pending_version, health=lambda current: checked(current)[1], **journaled,
        )
        await self.checkpoint("after-finish", record)
        return record

    async def _revoke(self, record: ConnectionRecord, run: _Run) -> ConnectionRecord:
        """Remove the previous Key ID and any stray credential of this rotation's marker. In the attempt that
        created the successor, with the Graph session opened with the previous credential (its token is still
        valid after the revocation, and a successor Entra has not propagated everywhere yet cannot fail this
        step); an attempt that resumes here uses the current one. A proof of possession, where the kind needs
        one, is signed with the successor (the version in use now)."""
        state = record.rotation
        assert state.rotation_id is not None
        roll = roll_of(record)
        previous = state.previous_key_id if state.previous_key_id != state.key_id else None
        opened = next(iter(run.graphs.values()), None)
        graph = opened or await self._graph(record, record.secret_version, run)
        signer = await self._material(record, record.secret_version, run)
        registration = await graph.find(record.client_id or "")
        sharing = await self._signing_in_with_it(record, run, roll, registration, previous)
        if sharing:
            previous = None  # another connection signs in with it: it stays (and this one no longer does)
        await remove_rolled(roll, graph, record.client_id or "", {previous} if previous else set(),
                            marker(record.id, state.rotation_id), keep=state.key_id, audit=self._removal(record),
                            registration=registration, signer=signer, now=self.now(),
                            fence=self.lease_check(state))
        # Asked again once it is revoked: a connection created with it (or given it) after the question was asked
        # signs in with what was just revoked. Nothing orders that request with this removal: it is told at once.
        try:
            stranded = await self._signing_in_with_it(record, run, roll, registration, previous, surely=True)
            if stranded:
                await mark_stranded(self.adapters.connections, self.adapters.health_index, record, stranded,
                                    roll.noun, self.now())
        except Exception as error:  # best effort, after a revocation that cannot be undone: the health check tells
            if not (isinstance(error, ServiceError) or azure_failure(error)):
                raise
            log.warning("Rotation of %s: who signs in with the credential it revoked could not be asked (%s); "
                        "their health checks find it", record.id, type(error).__name__)
            stranded = []
        # The version it superseded is the only other one enabled (a resumed create disabled what earlier attempts
        # wrote, a retirement what a credentials change left): disabled by its id, without listing the versions.
        if state.previous_version and state.previous_version != record.secret_version:
            await self.adapters.vault.disable(record.secret_name, state.previous_version)
        await self.checkpoint("after-revoke", record)
        await self._history(record, STATUS_SUCCEEDED, new_key_id=state.key_id, revoked_key_id=previous)
        now = self.now()
        schedule = schedule_of(state)
        message = f"Rotated: a new {roll.noun} is in use and the previous one is revoked."
        if sharing:
            message = (f"Rotated: a new {roll.noun} is in use. The previous one, the owner's, was left on the "
                       f"application: {named(sharing)} of the same application sign(s) in with it.")
        if stranded:
            message += (f" {named(stranded)} of the same application began to sign in with it while it was being "
                        "revoked, and was marked invalid: give it a new credential.")
        due = next_rotation(schedule, now, state.pending_expires_at)
        if state.retire_version is not None:
            message += (f" The {roll.noun}s the service created on the application used before "
                        f"({state.retire_client_id}) could not be removed yet; that is tried again, with back-off, "
                        "until it is done.")
            # The sweep comes back for the clean-up (only_the_clean_up_due), not at the next rotation only.
            due = min(due, now + backoff(1)) if due is not None else now + backoff(1)
        # The credential in use is the rotation's (``_finish`` says so too; a rotation an older version finished,
        # resumed here, may not have).
        done = state.cleared_journal().evolve(
            status=STATUS_SUCCEEDED, message=message, last_rotated_at=now, failures=0, failing_since=None, next_at=due,
            key_made=True,
        )
        return await self._reschedule(record, state, done)

    async def _signing_in_with_it(self, record: ConnectionRecord, run: _Run, roll: CredentialRoll,
                                  registration: AppRegistration, previous: str | None, *,
                                  surely: bool = False) -> list[ConnectionRecord]:
        """The other connections that sign in with ``previous``, the credential this rotation replaced, when the
        owner gave it (one the service made for this connection is this connection's alone), and it is still
        on the application (see :mod:`shared.rotation.sharing`)."""
        if previous is None:
            return []
        given = next((c for c in roll.rolled(registration) if c.key_id.lower() == previous.lower()), None)
        if given is None or (given.display_name or "").startswith(connection_marker(record.id)):
            return []
        version = record.rotation.previous_version
        material: Mapping[str, str] | None = run.materials.get(version) if version else None
        if material is None and version:
            try:
                material = await self.adapters.vault.get(record.secret_name, version)
            except (SecretGone, VersionDisabled):
                material = None  # (then any connection of the application that tracks no Key ID counts)
        return await signing_in_with(self.adapters.connections, self.adapters.vault, roll, record, previous,
                                     material, surely=surely)

    async def _reschedule(self, record: ConnectionRecord, old: RotationState, new: RotationState,
                          notify: Sequence[Notification] = ()) -> ConnectionRecord:
        async def point(key: str | None) -> ConnectionRecord:
            return await self._save(record, new.evolve(schedule_key=key), notify)

        return await reindex(self.adapters.schedule, old.schedule_key, new.next_at, record, point)

    async def put_off(self, record: ConnectionRecord, due: datetime) -> ConnectionRecord:
        """Move the due entry of a connection the sweep skips for a lasting reason (one left marked as being deleted,
        by a ``DELETE`` whose answer said to send it again and that was never sent: only a ``DELETE`` ends that) to
        ``due``, so that it does not stay at the head of the index, read first by every sweep, and keep every other
        due entry from being read (review sweeps 6). Bookkeeping of the index, as the sweep's drop of a stale entry
        is: nothing of the connection's changes, and nothing is audited.

        Under the index's rules (:func:`reindex`): the new entry first, then the record pointed at it (ETag-guarded,
        written again on top of an edit while the connection is still marked, unleased, and at that entry or the new
        one), then the entry it no longer points at dropped. When the record changed otherwise meanwhile (a
        ``DELETE`` holds it again, undid its mark, or another sweep moved it), the new entry is dropped and the record
        left as it is; when it is gone, both entries go. A failure in between leaves at most a stale entry, which the
        sweep that reads it drops. The connection as it is now."""
        old_key = record.rotation.schedule_key

        async def point(key: str | None) -> ConnectionRecord:
            def still(current: ConnectionRecord) -> bool:
                state = current.rotation
                return (current.status == STATUS_DELETING and state.left_marked(self.now())
                        and state.schedule_key in (old_key, key))

            try:
                return await self._apply(record, still, lambda current: current.evolve(
                    rotation=current.rotation.evolve(next_at=due, schedule_key=key)))
            except NotFound:  # deleted meanwhile: nothing points at either entry
                return record.evolve(rotation=record.rotation.evolve(schedule_key=None))

        return await reindex(self.adapters.schedule, old_key, due, record, point)

    async def _failed(self, record: ConnectionRecord, run: _Run, error: ServiceError) -> Attempt:
        """Record the failure, clean up what this rotation created unless the new secret is already in use, and
        back off. A rotation whose clean-up fails keeps its journal: the next attempt resumes it (and finds
        anything it created by its marker)."""
        try:
            current = await self.adapters.connections.get(record.app, record.id)
        except NotFound:
            await self._withdraw(record, run)
            return Attempt(record, error)
        state = current.rotation
        if state.lease_owner != self.owner or state.rotation_id is None:
            # Another worker took the rotation over (and may have ended it): its outcome is its own to tell.
            await self._withdraw(record, run)
            raise LeaseLost(f"Another worker took the rotation of {record.id} over while this one failed "
                            f"({error.detail}).")
        message = error.detail
        base = state
        if state.step == BEGUN and state.attempt == 1 and not run.unrecorded:
            # The rotation's only attempt stopped before its first addition (often at signing in: the credential
            # in use is gone or expired): nothing was added, nothing written to the vault, so there is nothing to
            # clean up, and no journal is kept (a clean-up would have to sign in too, and fail, keeping a journal
            # that refuses the new credentials that are the fix).
            base = state.cleared_journal()
        elif state.step != FINISHED:
            try:
                graph = await self._graph(current, current.secret_version, run)
                signer = await self._material(current, current.secret_version, run)
                await remove_rolled(roll_of(current), graph, current.client_id or "",
                                    {state.pending_key_id} if state.pending_key_id else set(),
                                    marker(current.id, state.rotation_id), keep=state.key_id,
                                    audit=self._removal(current), signer=signer, now=self.now(),
                                    fence=self.lease_check(state))
                await self.adapters.vault.disable_tagged(current.secret_name, "rotationId", state.rotation_id)
                base = state.cleared_journal()
            except Exception as cleanup:  # kept in the journal; the next attempt cleans up
                log.warning("Rotation of %s: clean-up failed (%s); the next attempt resumes it", current.id,
                            sentence(cleanup))
        else:
            message = (f"{message} The new {roll_of(current).noun} is in use; the previous one is still to be "
                       "revoked (the next attempt does it).")
        failures = state.failures + 1
        now = self.now()
        await self._history(current, STATUS_FAILED, message)
        # Throttling alone (the credential in use still works) starts no failing run: it pages nobody as a failed
        # rotation on its first occurrence; the back-off's daily reminder still tells a throttling that lasts.
        throttled = isinstance(error, UpstreamThrottled)
        new = base.evolve(status=STATUS_FAILED, message=message, failures=failures, next_at=now + backoff(failures),
                          failing_since=state.failing_since or (None if throttled else now), lease_owner=None,
                          lease_until=None)
        log.warning("Rotation of %s connection %s failed (attempt %d): %s", current.app, current.id, failures,
                    message)
        try:
            notice = rotation_failed(current.evolve(rotation=new), message, now, backoff(failures),
                                     first=state.failing_since is None and not throttled)
            return Attempt(await self._reschedule(current, state, new, [notice] if notice else []), error)
        except LeaseLost:
            return Attempt(current, error)


    # -- retiring what the service created on an application the connection left ----------------------------
    async def _retire_before(self, record: ConnectionRecord) -> ConnectionRecord:
        """The clean-up of the application the connection used before, tried before its credential is rotated; when
        that application refuses (its permission withdrawn, its secret expired: often why the credentials were
        changed), the rotation of the credential in use goes on all the same. The clean-up stays in the journal
        (``retire_*``: tracked, and shown in the rotation's message) and is tried again before each rotation."""
        try:
            retired = await self.retire(record)
        except LeaseLost:
            raise
        except (ServiceError, OSError, TimeoutError) as error:
            detail = detail_of(error)
            log.warning("Connection %s: the clean-up of the application it used before failed (%s); rotating the "
                        "credential in use all the same", record.id, detail)
            return await self._as_left(record)
        # The record as the retirement left it, or as a concurrent change made it: the rotation's steps go on only
        # while this worker still holds it (a worker held up past its lease finds another's journal here).
        if retired.rotation.lease_owner != self.owner or retired.rotation.rotation_id != record.rotation.rotation_id:
            raise LeaseLost(f"Another worker took the rotation of {record.id} over.")
        return retired

    async def retire(self, record: ConnectionRecord) -> ConnectionRecord:
        """Remove every credential the service created for this connection on the application it used before its
        credentials changed (recorded in ``retire_*``), then forget that application. With the current
        credential when it is the same application (it just worked), else with the previous one."""
        state = record.rotation
        if state.retire_federated_id is not None:
            return await self._retire_federated(record)
        if state.retire_version is None:
            return record
        same_app = retires_in_use(record)
        version = record.secret_version if same_app else state.retire_version
        try:
            material: dict[str, str] | None = await self.adapters.vault.get(record.secret_name, version)
        except VersionDisabled:
            # Only a retirement disables the previous application's version, once its removals are done: one that
            # stopped before it forgot that application (a crash, a worker held up past its lease) did them all.
            material = None
        journal = _CleanUpJournal(self, record)
        if material is not None:
            # On the application in use: neither its credential nor what a rotation under way added (one
            # resumed past its addition retires first; its new credential is about to be the one in use).
            under_way = marker(record.id, state.rotation_id) if same_app and state.rotation_id else None
            await self._remove_there(record, state.retire_tenant_id or record.tenant_id, state.retire_client_id or "",
                                     material, None if same_app else journal, keep=state.key_id if same_app else None,
                                     spare=under_way, fence=self.lease_check(state))  # under a rotation's lease
            record = journal.record
            await self.disable_left_behind(record, state.retire_version)
        await self.checkpoint("after-retire", record)
        # Only the journal of the clean-up is forgotten: ``managed`` says whether the service created something on
        # the application in use since the change (a rotation that began since sets it; the change cleared it, or,
        # made by an older version, kept it: clean_up_forgotten).
        # With rotation off and none under way, the clean-up was all that was due.
        return await journal.forget()

    async def _retire_federated(self, record: ConnectionRecord) -> ConnectionRecord:
        """A federated connection's clean-up (:meth:`_remove_federated_left`, under the lease), then forgotten."""
        journal = _CleanUpJournal(self, record)
        await self._remove_federated_left(record, journal, fence=self.lease_check(record.rotation))
        await self.checkpoint("after-retire", journal.record)
        return await journal.forget()

    async def _remove_federated_left(self, record: ConnectionRecord, journal: Journal | None,
                                     fence: Callable[[], None] | None = None) -> list[str]:
        """The federated credential the service added to the application a federated connection left
        (``retire_federated_id``), removed there unless another connection of that application relies on it (then
        it is theirs). Its removal is journaled ahead through ``journal`` (``retire_removing_key_id``, with the
        identity it names): once sent, the service's sign-in there refused as matching no federated credential
        (:func:`~shared.federation.refused_as_removed`) means it went, provided the refusal still comes
        ``REMOVAL_CONFIRMATION_SECONDS`` after the first (:meth:`_refusal_held`; until then ``RemovalUnconfirmed``).
        The application in use is never touched: were it the one left (it cannot be: a change of credentials
        finishes the clean-up first, or takes the credential back), its credential is forgotten, not removed. The
        Key IDs removed."""
        state = record.rotation
        credential_id = state.retire_federated_id or ""
        left = record.evolve(tenant_id=state.retire_tenant_id or "", client_id=state.retire_client_id or "")
        if same_application(left, record):
            return []

        async def ahead(identity: str) -> None:
            if journal is not None:
                await journal(lambda state: state.evolve(retire_removing_key_id=credential_id,
                                                         retire_removing_identity=identity,
                                                         retire_removing_refused_at=None))

        try:
            return await self.remove_federated(left, left.tenant_id, credential_id, fence=fence,
                                               before_removal=ahead)
        except CredentialRejected as refused:
            code = refused.extensions.get("aadstsCode")
            if not refused_as_removed(federation_identity(self.adapters.settings), code, removal_sent_as(state)):
                raise
            window = await self._refusal_held(state, journal, str(code))
        log.info("Connection %s: the federated credential %s, whose removal was sent, no longer signs in at "
                 "application %s; its clean-up is done", record.id, credential_id, left.client_id)
        await self.audit.record(
            "credential.remove", "confirmed", app=record.app, connection_id=record.id,
            detail=f"Federated identity credential {credential_id} on the application {left.client_id}: its removal "
                   f"was sent before, and the service's identity still does not sign in there "
                   f"{window.total_seconds():g} s after it first did not.")
        return [credential_id]

    async def _refusal_held(self, state: RotationState, journal: Journal | None, code: str) -> timedelta:
        """A clean-up whose last removal was sent (``retire_removing_key_id``), whose credential Entra ID now refuses
        as a removal leaves it (``code``): the refusal counts as that removal only once it still comes
        ``REMOVAL_CONFIRMATION_SECONDS`` after the first (:func:`~shared.rotation.journal.removal_confirmation_wait`,
        the rule a DELETE's last removal follows). Until then the clean-up is not done: the first refusal's time is
        journaled through ``journal`` (``retire_removing_refused_at``; without one, none counts) and
        ``RemovalUnconfirmed`` raised, with the seconds left (``Retry-After``); the clean-up is tried again as any
        that failed. The window, once the refusal counts."""
        now = self.now()
        window = timedelta(seconds=self.adapters.settings.removal_confirmation_seconds)
        first = state.retire_removing_refused_at
        wait = removal_confirmation_wait(first, now, window)
        if wait is None:
            return window
        if first is None and journal is not None:
            await journal(lambda current: current if current.retire_removing_refused_at else current.evolve(
                retire_removing_refused_at=now))
        raise RemovalUnconfirmed(
            f"Entra ID refuses the credential whose removal, the last of the clean-up of the application "
            f"{state.retire_client_id} this connection left, was sent (Key ID {state.retire_removing_key_id}, "
            f"{code}); a change can take minutes to reach every part of Entra ID, so the removal is taken as done "
            f"only if Entra ID still refuses it {window.total_seconds():g} s after it first did, in {wait} s.",
            headers={"Retry-After": str(wait)})

    async def remove_federated(self, record: ConnectionRecord, tenant_id: str, credential_id: str,
                               fence: Callable[[], None] | None = None,
                               before_removal: Callable[[str], Awaitable[None]] | None = None) -> list[str]:
        """Remove the federated credential the service added (``credential_id``) from ``record``'s application,
        signed in where its object is (``tenant_id``), unless another connection of that application relies on it
        (an application trusts an issuer and subject once: :func:`~shared.rotation.sharing.keep_for_others`, asked
        before signing in and again right before the removal). ``before_removal`` journals it ahead, with the
        service's identity (its principal id), when the credential names that identity: it is then the one the
        service signs in through. The Key IDs removed: none when it is kept, already gone, or the application is
        (``TRUST_GONE``, or Graph finds neither); any other failure is raised (a sign-in refused as matching no
        federated credential, once its removal was sent, is the caller's to judge)."""
        if not credential_id:
            return []
        store = self.adapters.connections
        if await keep_for_others(store, record, credential_id, tenant_id, self.audit):
            return []
        client_id = record.client_id or ""
        identity = federation_identity(self.adapters.settings)
        try:
            async with self.adapters.directory.graph(Method.FEDERATED, tenant_id, client_id, {}) as graph:
                registration = await graph.find(client_id)
                there = {c.id: c for c in await graph.federated_credentials(registration.object_id)}
                credential = there.get(credential_id)
                if credential is None:
                    return []
                # Asked again right before the removal: a connection that took it up while this one signed in
                # and read the application (a migration journaling it, one created federated) keeps it.
                if await keep_for_others(store, record, credential_id, tenant_id, self.audit):
                    return []
                if fence is not None:
                    fence()
                if before_removal is not None and identity is not None and identity.matches(
                        credential.issuer, credential.subject, credential.audiences):
                    await before_removal(identity.principal_id)
                    if fence is not None:  # the journal's write took time too
                        fence()
                await self.audit.credential_changed(
                    "credential.remove", functools.partial(graph.remove_federated_credential,
                                                           registration.object_id, credential_id),
                    app=record.app, connection_id=record.id, object_id=registration.object_id, key_id=credential_id)
        except CredentialRejected as refused:  # the trust is gone already (removed meanwhile), or the application
            code = refused.extensions.get("aadstsCode")
            if code in TRUST_GONE:
                return []
            raise
        except NotFound:
            log.info("Connection %s: Microsoft Graph finds no application %s in tenant %s; nothing to remove there",
                     record.id, client_id, tenant_id)
            return []
        return [credential_id]

    async def disable_left_behind(self, record: ConnectionRecord, version: str) -> None:
        """Disable the version the credentials change superseded (that of the application left behind), and only
        that one: a version current meanwhile stays enabled. Best effort: its clean-up is done, and its credential
        may be among what it removed, so the clean-up is forgotten all the same (the next change of the secret
        disables every older version)."""
        with best_effort(lambda error: log.warning("Connection %s: the previous application's secret version is "
                                                   "still enabled (%s)", record.id, detail_of(error))):
            await self.adapters.vault.disable(record.secret_name, version)

    async def _as_left(self, record: ConnectionRecord) -> ConnectionRecord:
        """``record`` as a clean-up that failed left it (it may have journaled its last removal), read again; the
        steps that follow write on top of it. ``LeaseLost`` when it is no longer this worker's."""
        try:
            current = await self.adapters.connections.get(record.app, record.id)
        except NotFound:
            raise LeaseLost(f"The connection {record.id} was deleted.") from None
        state, mine = current.rotation, record.rotation
        if (state.lease_owner != mine.lease_owner or state.rotation_id != mine.rotation_id
                or not same_clean_up(state, mine)):
            raise LeaseLost(f"Another worker took the connection {record.id} over.")
        return current

    async def _lease_for_retirement(self, record: ConnectionRecord) -> ConnectionRecord | None:
        """``record`` leased to this worker for its retirement (ETag-guarded: a rotation, a credentials change or
        another request's clean-up waits, 409, until it is released), taken on top of concurrent writes that leave
        the retirement as it was (a validation, a health check). None when another holds the lease, the connection
        is being deleted, or its retirement changed meanwhile."""
        def free(current: ConnectionRecord) -> bool:
            state = current.rotation
            return not ((state.leased(self.now()) and state.lease_owner != self.owner)
                        or current.status == STATUS_DELETING or not same_clean_up(state, record.rotation))

        if not free(record):
            return None
        try:
            claimed = await self._apply(record, free, lambda current: current.evolve(rotation=current.rotation.evolve(
                lease_owner=self.owner, lease_until=self._lease_from(self.now()))),
                landed=lambda current: current.rotation.lease_owner == self.owner)
        except (LeaseLost, NotFound):
            return None
        return claimed if claimed.rotation.lease_owner == self.owner else None

    async def retire_leased(self, record: ConnectionRecord) -> ConnectionRecord:
        """:meth:`retire` for a request: under the lease (without it, a rotation another request ran meanwhile
        would see what it made current removed as a leftover), released after, whatever happens. ``LeaseLost``
        when the lease cannot be taken."""
        if not record.rotation.cleaning_up:
            return record
        claimed = await self._lease_for_retirement(record)
        if claimed is None:
            raise LeaseLost("The connection changed, or another request is changing it, while its previous "
                            "application's clean-up was starting.")
        try:
            done = await self.retire(claimed)
        except BaseException:
            await self._released(claimed)
            raise
        return await self._released(done)

    async def _released(self, record: ConnectionRecord) -> ConnectionRecord:
        """The lease this worker holds on ``record`` given up (on top of concurrent edits while it holds it)."""
        return await self._apply(record, lambda current: current.rotation.lease_owner == self.owner,
                                 lambda current: current.evolve(rotation=current.rotation.evolve(
                                     lease_owner=None, lease_until=None)))

    async def retire_due(self, record: ConnectionRecord) -> ConnectionRecord | None:
        """The sweep's retry of a retirement that failed before: under the lease, with back-off when it fails
        again. None when the connection is leased, being deleted, or changed meanwhile.

        Audited (``rotation.clean-up``) before it leases the connection or reads a credential (fail closed:
        :class:`AuditUnavailable`, nothing done, the entry stays due) and after: ``succeeded``, ``failed`` with
        the kind of error (its back-off follows), or ``skipped``."""
        now = self.now()
        if record.status == STATUS_DELETING or (
                record.rotation.leased(now) and record.rotation.lease_owner != self.owner):
            return None  # nothing to try: not recorded (the sweep puts off one left being deleted, unaudited)
        where = {"app": record.app, "connection_id": record.id, "connection_name": record.name}
        what = f"application {record.rotation.retire_client_id or record.client_id or 'unknown'} the connection left"
        await self.audit.record(CLEAN_UP, "started", **where, detail=what)
        told = False  # its outcome recorded
        try:
            claimed = await self._lease_for_retirement(record)
            if claimed is None:
                await self.audit.record(CLEAN_UP, "skipped", **where,
                                        detail=f"{what}: leased, being deleted, or changed meanwhile")
                return None
            try:
                done = await self.retire(claimed)
            except ServiceError as error:
                await self.audit.record(CLEAN_UP, "failed", **where, detail=f"{what}: {sentence(error)}")
                told = True
                try:
                    left = await self._as_left(claimed)
                except LeaseLost:
                    return None
                waiting = retire_waiting(left.rotation, error, now, keep_earlier=False).evolve(
                    lease_owner=None, lease_until=None)
                # a rotation due before the retry is not put off
                rotation = scheduled_rotation(left.rotation, left.health.credential_expires_at)
                if rotation is not None and waiting.next_at is not None and rotation < waiting.next_at:
                    waiting = waiting.evolve(next_at=rotation)
                return await self._reschedule(left, left.rotation, waiting)
        except Exception as error:  # Table Storage failed under it, or a defect: recorded, and the sweep logs it
            if not told:
                await self.audit.record(CLEAN_UP, "failed", **where, detail=f"{what}: {sentence(error)}")
            raise
        finished = done.rotation.evolve(lease_owner=None, lease_until=None, failures=0, message=None,
                                        next_at=scheduled_rotation(done.rotation, done.health.credential_expires_at))
        cleaned = await self._reschedule(done, done.rotation, finished)
        await self.audit.record(CLEAN_UP, "succeeded", **where, detail=what)
        return cleaned

    async def _apply(self, record: ConnectionRecord, still: Callable[[ConnectionRecord], bool],
                     change: Callable[[ConnectionRecord], ConnectionRecord],
                     landed: Callable[[ConnectionRecord], bool] | None = None) -> ConnectionRecord:
        """Write ``change`` of the record, again on top of a concurrent edit while ``still`` holds of it. A write
        that got no answer, or whose answer was a conflict, is read back: its own when ``landed`` says so of the
        record (by default, when the change would change nothing more), else its failure is raised (a conflict:
        written again on top)."""
        store = self.adapters.connections

        def own(current: ConnectionRecord) -> bool:
            return landed(current) if landed is not None else change(current).evolve(etag=current.etag) == current

        current = record
        for _ in range(3):
            try:
                return await store.update(change(current))
            except ConcurrentChange:
                current = await store.get(record.app, record.id)
                if not still(current):
                    return current
                if own(current):  # applied, its answer lost, and the retry met its own ETag: done
                    return current
            except Exception as error:  # no answer: the write may have landed all the same
                if not failed_upstream(error):
                    raise
                try:
                    current = await store.get(record.app, record.id)
                except Exception:
                    raise error from None
                if not still(current) or not own(current):
                    raise
                return current  # its own write, landed with its answer lost
        raise LeaseLost(f"The connection {record.id} kept changing.")

    async def remove_all(self, record: ConnectionRecord, progress: Removals | None = None,
                         journal: Journal | None = None, keep_going: bool = False) -> list[str]:
        """Remove from the application every credential the service created for the connection (found by its
        marker), with the connection's current credential; and from the application it left, if any. ``progress``
        tells how far it got, should it fail; ``journal`` writes an entry right before the last removal at each
        application, of the credential it signs in with (``retire_removing_key_id`` at the one left behind;
        ``removing_key_id`` at the one in use, when the service made that credential and nothing else of the
        service's is left); ``keep_going``: a failure at the application left behind does not stop the pass before
        the one in use (it is raised at the end)."""
        progress = progress if progress is not None else Removals()
        state = record.rotation
        failure: ServiceError | None = None
        # The application it left is the one in use (new credentials for the same one): its clean-up is this one,
        # made with the credential in use, which goes last; with the previous credential, the first removals would
        # revoke the credential in use (a rotation made since) before the last ones were done.
        if state.cleaning_up and not retires_in_use(record):
            try:
                await self._remove_left_behind(record, progress, journal)
            except ServiceError as error:
                if not keep_going:
                    raise
                failure = error
        if removes_in_use(record):
            material = await self.adapters.vault.get(record.secret_name, record.secret_version)

            async def removing(key_id: str) -> None:  # nothing else of the service's is left by then
                if journal is not None:
                    await journal(lambda state: state.left_behind_forgotten().evolve(removing_key_id=key_id,
                                                                                     removing_refused_at=None))

            async with self.adapters.directory.graph(Method(record.method), record.tenant_id,
                                                     record.client_id or "", material) as graph:
                await remove_rolled(roll_of(record), graph, record.client_id or "",
                                    {state.pending_key_id} if state.pending_key_id else set(),
                                    connection_marker(record.id), last=state.key_id, audit=self._removal(record),
                                    signer=material, now=self.now(), progress=progress,
                                    before_last=removing if failure is None else None)  # else not the last left
        if failure is not None:
            raise failure
        return progress.removed

    async def _remove_left_behind(self, record: ConnectionRecord, progress: Removals,
                                  journal: Journal | None) -> None:
        """A removal pass's part at the application the connection left (``retire_*``), with its credential."""
        state = record.rotation
        if state.retire_federated_id is not None:  # a federated connection's: nothing signs in with it
            progress.removed.extend(await self._remove_federated_left(record, journal))
            progress.found[state.retire_client_id or ""] = set()
            return
        try:
            retired = await self.adapters.vault.get(record.secret_name, state.retire_version or "")
        except VersionDisabled:  # disabled once that application's removals were all done: nothing is left
            progress.found[state.retire_client_id or ""] = set()
            return
        await self._remove_there(record, state.retire_tenant_id or "", state.retire_client_id or "", retired,
                                 journal, progress=progress)

    async def _remove_there(self, record: ConnectionRecord, tenant_id: str, client_id: str,
                            material: Mapping[str, str], journal: Journal | None, *, keep: str | None = None,
                            spare: str | None = None, fence: Callable[[], None] | None = None,
                            progress: Removals | None = None) -> None:
        """The clean-up of the application ``client_id`` (one the connection left, or the one in use when its new
        credentials were for the same one), signed in with ``material``: every credential there that the service
        created for the connection but ``keep`` and a rotation's under way (``spare``); the one it signs in with
        last, journaled ahead (``retire_removing_key_id``, through ``journal``) when it is among them. Once that
        entry is written, that credential refused by Entra as expired, or as one it does not know once that refusal
        still comes ``REMOVAL_CONFIRMATION_SECONDS`` after the first (:meth:`_refusal_held`; until then
        ``RemovalUnconfirmed``, that credential alone left there), means the clean-up is done: everything else was
        removed before, and it no longer signs in, whether this removal went through or not. Any other refusal (the
        application disabled, a Conditional Access policy) tells nothing."""
        removing = record.rotation.retire_removing_key_id

        async def ahead(key_id: str) -> None:
            if journal is not None:
                await journal(lambda state: state.evolve(retire_removing_key_id=key_id,
                                                         retire_removing_refused_at=None))

        try:
            async with self.adapters.directory.graph(Method(record.method), tenant_id, client_id, material) as graph:
                await remove_rolled(roll_of(record), graph, client_id, set(), connection_marker(record.id),
                                    keep=keep, spare=spare, audit=self._removal(record), signer=material,
                                    now=self.now(), fence=fence, progress=progress,
                                    before_last=ahead if journal is not None else None)
        except CredentialRejected as error:
            code = error.extensions.get("aadstsCode")
            refused_here = isinstance(error, CredentialExpired)  # a certificate past its end, before Entra is asked
            if removing is None or (code not in CREDENTIAL_UNUSABLE and not refused_here):
                raise
            # Still there, expired (Entra says so of a secret; a certificate's key expired is refused as unknown):
            # not listed as removed. One whose end cannot be read is not either.
            end = await ends_async(material) if code == "AADSTS700027" else None
            expired = refused_here or code == "AADSTS7000222" or (
                code == "AADSTS700027" and (end is None or end <= self.now()))
            if not expired:  # unknown: a part of Entra ID that a credential just added has not reached says so too
                try:
                    await self._refusal_held(record.rotation, journal, str(code))
                except RemovalUnconfirmed:
                    if progress is not None:  # all that is left there (everything else was removed first)
                        progress.found[client_id] = {removing}
                    raise
            log.info("Connection %s: the credential of application %s whose removal was sent last (Key ID %s) no "
                     "longer signs in (%s); its clean-up is done", record.id, client_id, removing,
                     "expired" if expired else "removed")
            if progress is not None:  # an expired one is listed neither as removed nor as live
                progress.found[client_id] = set() if expired else {removing}
                progress.removed.extend([] if expired else [removing])


def retires_in_use(record: ConnectionRecord) -> bool:
    """The application whose clean-up the journal holds (``retire_*``) is the one the connection uses: its new
    credentials were for the same application."""
    state = record.rotation
    return state.retire_version is not None and (
        (state.retire_client_id or "").lower() == (record.client_id or "").lower()
        and (state.retire_tenant_id or "").lower() == record.tenant_id.lower())


class _CleanUpJournal:
    """The journal entries of one clean-up of an application left behind, each written under the lease it holds
    and of that clean-up only, on top of concurrent edits (``LeaseLost`` once it is not); ``record``: the connection
    as the last entry left it."""

    def __init__(self, rotator: Rotator, record: ConnectionRecord) -> None:
        self.rotator, self.record = rotator, record

    async def __call__(self, entry: JournalEntry) -> None:
        mine = self.record.rotation
        self.record = await self.rotator._apply(
            self.record, lambda current: (current.rotation.lease_owner == mine.lease_owner
                                          and same_clean_up(current.rotation, mine)),
            lambda current: current.evolve(rotation=entry(current.rotation)))
        if self.record.rotation != entry(self.record.rotation):
            raise LeaseLost(f"The connection {self.record.id} changed while its clean-up was under way.")

    async def forget(self) -> ConnectionRecord:
        """The clean-up done: its journal forgotten, on top of what changed meanwhile but the clean-up and its lease
        (a validation, a health check, a credential handed over); the connection as it is then."""
        await self(clean_up_forgotten)
        return self.record


def removal_sent_as(state: RotationState) -> str | None:
    """The service's identity whose federated credential's removal a federated clean-up journaled as sent, if so."""
    sent = state.retire_federated_id is not None and state.retire_removing_key_id == state.retire_federated_id
    return state.retire_removing_identity if sent else None


def same_clean_up(state: RotationState, other: RotationState) -> bool:
    """Whether two rotation states journal the same clean-up of an application left behind (or none)."""
    return (state.retire_version, state.retire_federated_id) == (other.retire_version, other.retire_federated_id)


def removes_in_use(record: ConnectionRecord) -> bool:
    """Whether a removal pass (:meth:`Rotator.remove_all`) reads the application in use: the service may have
    created something there (``managed``), a rotation is under way, or the clean-up journaled is of that one."""
    state = record.rotation
    return state.managed or state.rotation_id is not None or retires_in_use(record)


RETIRE_WAITING = "The credentials the service created on the previous application could not be removed yet"


def retire_waiting(state: RotationState, error: ServiceError, now: datetime, *, keep_earlier: bool) -> RotationState:
    """The state of a retirement that failed: one more failure, retried after the back-off (or at the due time
    already set, when ``keep_earlier`` and it comes first), and a message that says so. A removal waiting for its
    confirmation (``RemovalUnconfirmed``) is retried no sooner than its ``Retry-After``, when the refusal can count:
    a pass before then would only count another failure."""
    failures = state.failures + 1
    retry = now + backoff(failures)
    if isinstance(error, RemovalUnconfirmed):
        retry = max(retry, now + timedelta(seconds=int(error.headers.get("Retry-After", "0"))))
    return state.evolve(
        failures=failures, next_at=min(retry, state.next_at) if keep_earlier and state.next_at else retry,
        message=f"{RETIRE_WAITING} ({error.detail}); they are retried.")


@dataclass
class Removals:
    """How far a removal pass got, kept as it goes (so that a failure halfway still tells): the Key IDs removed,
    and per application (client ID) the Key IDs it found to remove; an application absent from ``found`` was not
    read (what it holds is not known)."""

    removed: list[str] = field(default_factory=list)
    found: dict[str, set[str]] = field(default_factory=dict)

    def left(self, client_id: str) -> list[str]:
        """The Key IDs found on ``client_id``'s application to remove and not removed (sorted)."""
        return sorted(self.found.get(client_id, set()) - set(self.removed))


async def remove_rolled(roll: CredentialRoll, graph: GraphSession, client_id: str, key_ids: set[str],
                        marker_name: str | None, keep: str | None = None, last: str | None = None,
                        spare: str | None = None,
                        audit: RemovalAudit | None = None, registration: AppRegistration | None = None,
                        signer: Mapping[str, str] | None = None, now: datetime | None = None,
                        fence: Callable[[], None] | None = None, progress: Removals | None = None,
                        before_last: Callable[[str], Awaitable[None]] | None = None) -> list[str]:
    """Remove (the roll's ``remove_predecessor``) each of ``key_ids`` still on the application, and every
    credential of the roll's kind whose display name starts with ``marker_name``, but ``keep`` and those whose
    display name starts with ``spare`` (a rotation's under way), and ``last`` after all others (the one in use:
    should a removal fail, it is still there); return the Key IDs removed (one already
    gone counts as done). ``registration``: the application as just read, when it was; ``signer``: the material of
    the version in use (it signs a proof of possession where the kind needs one), checked as of ``now``;
    ``fence``: called right before each removal (it raises when the rotation is no longer the caller's);
    ``progress``: filled as the pass goes; ``before_last``: awaited with the Key ID of the credential that signs in
    (``last``, else the one ``signer`` is) right before its removal (a journal written ahead of it)."""
    registration = registration or await graph.find(client_id)
    present = roll.rolled(registration)
    doomed = {key.lower() for key in key_ids if key}
    if marker_name is not None:
        doomed |= {c.key_id for c in present if (c.display_name or "").startswith(marker_name)}
    doomed.discard((keep or "").lower())
    if spare is not None:
        doomed -= {c.key_id for c in present if (c.display_name or "").startswith(spare)}
    if progress is not None:
        progress.found[client_id] = {c.key_id for c in present if c.key_id in doomed}
    removed: list[str] = progress.removed if progress is not None else []
    before = len(removed)
    # The credential that signs in goes last (should a removal fail, the pass can be made again): the one in use
    # when the caller knows it, else the one the signer's material is, as far as the application tells.
    signing = (last or "").lower() or (_signing(roll, registration, signer) if signer else None)
    ordered = sorted(present, key=lambda c: c.key_id == signing)
    for credential in ordered:
        if credential.key_id in doomed:
            if before_last is not None and credential.key_id == signing:
                await before_last(credential.key_id)
            remove = functools.partial(roll.remove_predecessor, graph, registration, credential.key_id, signer or {},
                                       now or datetime.now(UTC))
            audited = functools.partial(audit, registration.object_id, credential.key_id, remove) if audit else remove
            await fenced(fence or _unfenced, audited)
            removed.append(credential.key_id)
    return removed[before:]


def _signing(roll: CredentialRoll, registration: AppRegistration, material: Mapping[str, str]) -> str | None:
    """The Key ID of the credential ``material`` is, as far as the application tells: a certificate's thumbprint,
    or the one client secret whose hint the secret starts with. Only to order removals: a wrong guess costs nothing."""
    found = roll.identify(registration, material)
    secret = material.get("clientSecret")
    if found is None and secret:
        matches = [p.key_id for p in registration.passwords if p.hint and secret.startswith(p.hint)]
        found = matches[0] if len(matches) == 1 else None
    return found


def clean_up_forgotten(state: RotationState) -> RotationState:
    """``state`` once the clean-up of the application left behind is done: its journal forgotten, and its due
    time too when it was the only thing due (rotation off, none under way); the message of its failures too (and
    their count), when it is still the last message. ``managed`` stands: for a change an older version made (it
    kept ``managed`` at the change, where the service now clears it), nothing stored tells whether a rotation made
    the credential in use since, so a DELETE still looks at the application in use."""
    forgotten = state.left_behind_forgotten()
    if (forgotten.message or "").startswith(RETIRE_WAITING):
        forgotten = forgotten.evolve(message=None, failures=0)
    return forgotten if forgotten.enabled or forgotten.in_progress else forgotten.evolve(next_at=None)


def _unfenced() -> None:
    """No lease to look at (a DELETE's removals, under its own)."""


def next_rotation(schedule: RotationSchedule | None, since: datetime, expires: datetime | None) -> datetime | None:
    """The schedule's next due time after ``since`` (the last rotation), but never later than the grace period
    before the credential in use ends (``expires``: a policy may have capped its lifetime below two intervals, or
    the interval grown since it was made). That grace term is never sooner than a floor after ``since``: half the
    credential's remaining life from then (never past its end), at most ``RENEWAL_FLOOR_MAX``. A credential whose
    end leaves no grace period (its policy's cap fits no interval) would otherwise be due again at once, at every
    sweep; a rotation gives one at least ``MIN_ROOM`` of life (``require_room_to_rotate``), so at least an hour
    passes before the next. Capped at a day, the floor moves no due time the rules give: the schedule's own is
    never lifted, and a rotation's capped credential is due a day after it at the soonest."""
    if schedule is None:
        return None
    due = schedule.next_due(since)
    if expires is None:
        return due
    floor = since + min(max((expires - since) / 2, timedelta(0)), RENEWAL_FLOOR_MAX)
    return min(due, max(expires - timedelta(days=GRACE_DAYS), floor))

