"""Going secretless in one step: a client-secret or certificate connection moves to the federated method.

Journaled, resumable and verify-before-revoke like a rotation, on the same base as the rotator
(:class:`shared.rotation.journal.Journaled`: the lease and journal fields of :class:`RotationState`, one
:class:`RotationEvent` per attempt, the audit of every change to an application, the retried test of the new
credential) and with the protocol's public pieces (the connection's marker, :func:`remove_rolled`):

1. ``migrate-begun``: claimed (lease, journal, history entry ``running``), the schedule entry dropped;
2. ``migrate-added``: the application's federated identity credential for the service's identity, added through
   Graph with the connection's own credential (``app-connections-{connection id}``; one that already names the
   identity is reused: the owner's is never removed, one the service added for another connection of the
   application is shared, and removed by the last connection relying on it), its id journaled;
3. ``migrate-tested``: a token acquired with the federated sign-in, retried while Entra propagates it (but
   AADSTS700236, an application of another tenant than the identity's, which no propagation changes); one that
   never works removes what this migration added, and the connection is left as it was; one still being tested when
   the HTTP request must be answered is handed to the sweep at ``migrate-added`` (:meth:`Migrator._hand_to_sweep`);
4. ``migrate-switched``: the connection's method is federated (one ETag-guarded write);
5. done: the credentials the service created on the application (client secrets and certificates of the
   connection's marker, by the roll of each kind) are removed, and the one the user gave only when
   ``revokeOriginal`` (last); then the vault secret is disabled and deleted.

A step is recorded before the next starts and each is idempotent, so a migration interrupted anywhere is
finished by ``POST .../migrate-to-federated`` (or ``POST .../rotate``) again. Note for the rotation protocol's
owner: this uses only public names of :mod:`shared.rotation.journal`, :mod:`shared.rotation.protocol` and
:mod:`shared.rotation.kinds` (and the hooks :class:`Journaled` leaves to its subclasses); the journal's steps are
its own, so ``Rotator._drive`` never runs them: the sweep hands a due connection whose journal is a migration to
:meth:`Migrator.resume` (due when its lease runs out, or after a back-off when its clean-up failed). It is not a
``CredentialRoll``: a roll's finish makes a pending *vault version* current and its revoke removes the previous
credential unconditionally, while a migration switches the method, stores nothing, and keeps the user's credential
unless asked.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Mapping
from typing import TypeVar

from shared import audit
from shared.apps import Method, find_app
from shared.azure.upstream import azure_failure, sentence, upstream_error
from shared.due_index import reindex
from shared.errors import (
    ConcurrentChange,
    CredentialRejected,
    FieldError,
    InvalidRequest,
    NotFound,
    RotationInProgress,
    RotationRefused,
    SecretGone,
    ServiceError,
    UpstreamError,
    UpstreamForbidden,
    UpstreamThrottled,
    VersionDisabled,
    best_effort,
    detail_of,
)
from shared.federation import (
    MAX_FEDERATED_CREDENTIALS,
    OTHER_TENANT_CODE,
    FederationIdentity,
    added_by_service,
    credential_name,
    explain,
    require_identity,
)
from shared.ports import FederatedCredential, GraphSession
from shared.records import (
    HEALTHY,
    MIGRATION_STEPS,
    STATUS_FAILED,
    STATUS_SUCCEEDED,
    Actor,
    ConnectionRecord,
    HealthState,
    RotationState,
)
from shared.rotation.journal import INTERRUPTED, Journaled, StillTesting, Stopped, evolved, fenced, interrupted_attempt
from shared.rotation.kinds import ROLLS
from shared.rotation.protocol import (
    backoff,
    connection_marker,
    next_rotation,
    remove_rolled,
    schedule_of,
)
from shared.rotation.sharing import keep_for_others, mark_stranded, named, signing_in_with

log = logging.getLogger(__name__)
T = TypeVar("T")

BEGUN, ADDED, TESTED, SWITCHED = MIGRATION_STEPS
TRIGGER = "migrate-to-federated"


def method_of(material: Mapping[str, str]) -> Method:
    """The method a vault version's material is for (the connection's method before the migration)."""
    return Method.CERTIFICATE if "certificateBody" in material else Method.CLIENT_SECRET


class Migrator(Journaled):
    # -- starting and resuming -------------------------------------------------------------------------------
    async def start(self, record: ConnectionRecord, revoke_original: bool) -> ConnectionRecord:
        """Begin a migration of ``record`` (checked by the caller: migratable, no rotation under way) and drive it."""
        identity = require_identity(self.adapters.settings, "/")
        original = await self._original_key_id(record) if revoke_original else None
        state = record.rotation
        now = self.now()
        begun = state.evolve(
            rotation_id=str(uuid.uuid4()), step=BEGUN, trigger=TRIGGER, started_at=now, attempt=1,
            previous_key_id=original, previous_version=record.secret_version, revoke_original=revoke_original,
            pending_key_id=None, pending_version=None, pending_expires_at=None,
        )
        return await self._drive(await self._claim(record, begun, None), identity)

    async def resume(self, record: ConnectionRecord) -> ConnectionRecord:
        """Finish a migration that stopped half way (from its journaled step)."""
        identity = require_identity(self.adapters.settings, "/")
        state = record.rotation
        if state.leased(self.now()) and state.lease_owner != self.owner:
            raise RotationInProgress("A migration of this connection to the federated method is running; try again "
                                     "when it has ended.", headers={"Retry-After": "30"},
                                     extensions={"rotationId": state.rotation_id, "rotationStep": state.step,
                                                 "retryAfterSeconds": 30})
        interrupted = interrupted_attempt(state)
        # A test is redone before the switch, as a rotation's is: the credential it tested may be gone since.
        resumed = state.evolve(attempt=state.attempt + 1, step=ADDED if state.step == TESTED else state.step)
        return await self._drive(await self._claim(record, resumed, interrupted), identity)

    async def _claim(self, record: ConnectionRecord, state: RotationState,
                     interrupted: RotationState | None) -> ConnectionRecord:
        now = self.now()
        await self._recorded(record, "started",
                             "to federated" + (" (resumed)" if interrupted or state.attempt > 1 else ""))
        # The started record gets its outcome here unless the claim is written (then the migration's end or failure
        # records it), as a rotation's claim does: skipped when the claim is lost, failed when an error stops it.
        try:
            if interrupted is not None:
                await self._close_interrupted(record, interrupted, TRIGGER)
            # Due again when the lease runs out: should this worker die, the sweep resumes the migration.
            lease_until = self._lease_from(now)
            key = await self.adapters.schedule.put(lease_until, record.app, record.id)
            claimed_state = self._leased(state, now, message="Migrating to the federated method.",
                                         next_at=lease_until, schedule_key=key)
            claimed, current = await self._write_claim(record, claimed_state)
            if claimed is None and (current is None or current.rotation.schedule_key != key):
                # Lost to another change (a DELETE, a rotation): nothing points at the entry indexed for the lease.
                await self._drop_entry(key)  # as a rotation's lost claim drops its own
            if claimed is not None and record.rotation.schedule_key and record.rotation.schedule_key != key:
                await self._drop_entry(record.rotation.schedule_key)  # (the claim is written: never failed by this)
        except Exception as error:
            await self._recorded(record, STATUS_FAILED, f"claiming the migration: {sentence(error)}")
            raise
        if claimed is None:
            await self._recorded(record, "skipped", "not claimed: the connection changed meanwhile")
            raise ConcurrentChange("The connection changed while the migration was starting; try again.")
        with best_effort(lambda error: log.info("Migration of %s: its running history entry is not written (%s); "
                                                "its outcome writes it", record.id, detail_of(error))):
            await self._history(claimed, "running")
        return claimed

    async def _history(self, record: ConnectionRecord, outcome: str, message: str | None = None) -> None:
        state = record.rotation
        await self._record_attempt(
            record, outcome, trigger=TRIGGER, message=message, new_key_id=state.pending_key_id,
            revoked_key_id=state.previous_key_id if outcome == STATUS_SUCCEEDED and state.revoke_original else None)

    async def _save(self, record: ConnectionRecord, **changes: object) -> ConnectionRecord:
        """The next journal entry, guarded by the ETag of the record this step started from. A change that left the
        journal, the method and the secret alone (a health check, a rename) is written over again; anything else
        means the migration is no longer this worker's: stop."""
        store = self.adapters.connections
        for _ in range(3):
            target = evolved(record, changes)
            try:
                return await store.update(target)
            except (ConcurrentChange, NotFound):
                pass
            try:
                current = await store.get(record.app, record.id)
            except NotFound:
                break
            if (current.rotation == target.rotation and current.method == target.method
                    and current.secret_version == target.secret_version):
                return current  # its own write, landed with its answer lost
            if (current.rotation != record.rotation or current.method != record.method
                    or current.secret_version != record.secret_version):
                break
            record = current
        raise Stopped(ConcurrentChange(f"The connection {record.id} changed during its migration; send the "
                                        "request again to finish it."))

    # -- the steps -------------------------------------------------------------------------------------------
    async def _drive(self, record: ConnectionRecord, identity: FederationIdentity) -> ConnectionRecord:
        """Drive the migration from its journaled step to the end (its journal cleared), or to its hand-over to the
        sweep (its journal kept at ``migrate-added``, unleased: see :meth:`_hand_to_sweep`); a failure is raised."""
        try:
            while record.rotation.step in MIGRATION_STEPS:
                step = record.rotation.step
                if step == BEGUN:
                    record = await self._add(record, identity)
                elif step == ADDED:
                    record = await self._test(record, identity)
                elif step == TESTED:
                    record = await self._switch(record)
                else:
                    record = await self._clean_up(record)
        except StillTesting as still:
            return await self._ending(record, self._hand_to_sweep(record, still))
        except Stopped as stopped:
            raise await self._ending(record, self._failed(record, stopped.error)) from None
        except ServiceError as error:
            raise await self._ending(record, self._failed(record, error)) from None
        except Exception as error:
            if azure_failure(error):  # an Azure call an adapter let fail as it came: told as the service's failure
                raise await self._ending(record, self._failed(record, upstream_error(error))) from None
            await self._recorded(record, STATUS_FAILED, type(error).__name__)  # a defect: its kind, never its text
            raise
        return record

    async def _recorded(self, record: ConnectionRecord, outcome: str, detail: str | None) -> None:
        """The audit record of this migration of ``record`` (``connection.migrate``): ``started``, or its outcome."""
        await self.audit.record("connection.migrate", outcome, app=record.app, connection_id=record.id,
                                connection_name=record.name, detail=detail)

    async def _ending(self, record: ConnectionRecord, ending: Awaitable[T]) -> T:
        """The end of an attempt that did not complete (its hand-over to the sweep, or its failure), whose outcome it
        records last: when that end itself fails (Table Storage down as well), the ``started`` record still gets its
        outcome, ``failed`` with the kind of error, and the error is raised."""
        try:
            return await ending
        except Exception as error:
            await self._recorded(record, STATUS_FAILED, f"ending the attempt: {sentence(error)}")
            raise

    async def _old_material(self, record: ConnectionRecord) -> dict[str, str]:
        return await self.adapters.vault.get(record.secret_name, record.rotation.previous_version or "")

    async def _add(self, record: ConnectionRecord, identity: FederationIdentity) -> ConnectionRecord:
        material = await self._old_material(record)
        client_id = record.client_id or ""
        async with self.adapters.directory.graph(method_of(material), record.tenant_id, client_id,
                                                 material) as graph:
            registration = await graph.find(client_id)
            present = await graph.federated_credentials(registration.object_id)
            found = _usable(present, identity, credential_name(record.id))
            if found is None:
                if len(present) >= MAX_FEDERATED_CREDENTIALS:
                    raise Stopped(InvalidRequest(
                        f"The application has {len(present)} federated identity credentials, Entra ID's limit "
                        f"({MAX_FEDERATED_CREDENTIALS}); remove one it no longer needs, then try again.",
                        extensions={"expectedFederatedCredential": identity.expected()}))
                name = credential_name(record.id)
                await self.checkpoint("before-add-federated", record)
                # Graph cannot make the addition conditional: an ETag-guarded write just before it stops a worker
                # held up past its lease while another took the migration over (and perhaps undid it).
                record = await self._save(record)
                check = self.lease_check(record.rotation)

                async def add() -> FederatedCredential:  # and its clock, right before the addition (and after)
                    return await fenced(check, lambda: graph.add_federated_credential(registration.object_id,
                                                                                      identity.credential(name)))

                found = await self.audit.credential_changed(
                    "credential.add", add, app=record.app, connection_id=record.id, object_id=registration.object_id,
                    detail=f"federated identity credential '{name}'", key_id_of=lambda added: added.id)
                await self.checkpoint("after-add-federated", record)
        return await self._save(record, rotation=record.rotation.evolve(step=ADDED, pending_key_id=found.id))

    async def _test(self, record: ConnectionRecord, identity: FederationIdentity) -> ConnectionRecord:
        app = find_app(record.app)
        assert app is not None

        async def sign_in() -> None:
            try:
                await self.adapters.directory.probe(app, Method.FEDERATED, record.tenant_id, record.client_id or "", {})
            except CredentialRejected as rejected:
                if rejected.extensions.get("aadstsCode") == OTHER_TENANT_CODE:  # no propagation changes it: stop now
                    raise Stopped(explain(rejected, identity)) from None
                raise

        last = await self._until_it_works(sign_in, answering=True)
        if last is not None:
            raise Stopped(explain(last, identity) if isinstance(last, CredentialRejected) else last)
        await self.checkpoint("after-test-federated", record)
        return await self._save(record, rotation=record.rotation.evolve(step=TESTED))

    async def _switch(self, record: ConnectionRecord) -> ConnectionRecord:
        """The connection is federated from here: no secret version, nothing to rotate, nothing that expires."""
        acting = audit.current().actor  # the request's caller, as an edit records it (without its role)
        caller = Actor(acting.id, acting.name, acting.type)
        now = self.now()
        state = record.rotation.evolve(step=SWITCHED, enabled=False, key_id=None, key_made=False)
        def health(current: ConnectionRecord) -> HealthState:  # the health index's entry as it is when written
            return HealthState(status=HEALTHY, checked_at=now, next_check_at=current.health.next_check_at,
                               check_key=current.health.check_key, notified_status=current.health.notified_status,
                               notified_at=current.health.notified_at)

        switched = await self._save(record, rotation=state, method=Method.FEDERATED.value, secret_version="",
                                    version=record.version + 1, updated_at=now, updated_by=caller,
                                    status="active", status_message=None, last_validated_at=now, health=health)
        await self.checkpoint("after-switch", switched)
        return switched

    async def _clean_up(self, record: ConnectionRecord) -> ConnectionRecord:
        """Remove what the service created on the application (the marker), the user's credential when asked
        (last), then the vault secret; with the federated sign-in, which has just worked."""
        state = record.rotation
        client_id = record.client_id or ""
        material: dict[str, str] = {}
        if state.previous_version:
            try:
                material = await self._old_material(record)
            except (SecretGone, VersionDisabled):  # a resumed attempt past the removals, which came first; any other
                material = {}  # failure (Key Vault not answering) is the attempt's, which is retried
        now = self.now()
        # Every kind of credential the service may have left is looked for, keys too (one read, once).
        async with self.adapters.directory.graph(Method.FEDERATED, record.tenant_id, client_id, {},
                                                 read_keys=True) as graph:
            registration = await graph.find(client_id)
            # The federated credential is the connection's credential now: its id is kept when the service added it
            # (DELETE removes it then), not when it is the owner's.
            # So is one the service added for another connection of this application that this one reused: the
            # connections share it, and the last of them to go removes it.
            trusted = await graph.federated_credentials(registration.object_id)
            ours = next((c.id for c in trusted if c.id == state.pending_key_id and added_by_service(c.name)),
                        next((c.id for c in trusted if c.name == credential_name(record.id)), None))
            original = state.previous_key_id if state.revoke_original else None
            # Asked at each attempt, of the kind the application lists it as (a resumed attempt may no longer
            # read the material: then any connection of the application that tracks no Key ID counts).
            kind = next((roll for roll in ROLLS.values()
                         if original and original.lower() in {c.key_id.lower() for c in roll.rolled(registration)}),
                        None)
            sharing = await signing_in_with(self.adapters.connections, self.adapters.vault, kind, record, original,
                                            material or None) if original and kind else []
            if sharing:  # another connection signs in with it: it stays
                original = None
            for roll in ROLLS.values():  # passwords, then certificates (removeKey: proofs signed by the old one)
                present = {c.key_id for c in roll.rolled(registration)}
                in_use = roll.identify(registration, material) if material else None
                await remove_rolled(roll, graph, client_id, {original} if original in present else set(),
                                    connection_marker(record.id), last=original or in_use,
                                    audit=self._removal(record), registration=registration, signer=material, now=now,
                                    fence=self.lease_check(state))  # a worker held up past its lease stops here
            # Asked again once it is revoked, as a rotation does: one created with it (or given it) since is told.
            try:
                stranded = await signing_in_with(self.adapters.connections, self.adapters.vault, kind, record,
                                                 original, material or None, surely=True) if original and kind else []
                if stranded and kind:
                    await mark_stranded(self.adapters.connections, self.adapters.health_index, record, stranded,
                                        kind.noun, now, by="migration to the federated method")
            except Exception as error:  # best effort, after the revocation: the health check tells
                if not (isinstance(error, ServiceError) or azure_failure(error)):
                    raise
                log.warning("Migration of %s: who signs in with the credential it revoked could not be asked (%s)",
                            record.id, type(error).__name__)
                stranded = []
        await self.checkpoint("after-remove-originals", record)
        if state.previous_version:
            await self.adapters.vault.disable_others(record.secret_name, "")
            await self.adapters.vault.delete(record.secret_name)
        await self.checkpoint("after-vault-delete", record)
        await self._history(record, STATUS_SUCCEEDED, "Migrated to the federated method.")
        kept = ("the credential given was revoked" if state.revoke_original and not sharing
                else "the credential given was left on the application")
        if sharing:
            kept += f" ({named(sharing)} of the same application sign(s) in with it)"
        if stranded:
            kept += (f"; {named(stranded)} of the same application began to sign in with it while it was being "
                     "revoked, and was marked invalid: give it a new credential")
        done = state.cleared_journal().left_behind_forgotten().evolve(
            status=STATUS_SUCCEEDED, message=f"Migrated to the federated method; {kept}.", failures=0,
            failing_since=None, managed=False, revoke_original=False, key_id=ours, key_tenant_id=None)
        saved = await self._save(record, rotation=done.evolve(next_at=None, schedule_key=None))
        await self.adapters.schedule.remove(state.schedule_key)
        await self._recorded(record, STATUS_SUCCEEDED, saved.rotation.message)
        return saved

    async def _hand_to_sweep(self, record: ConnectionRecord, still: StillTesting) -> ConnectionRecord:
        """The request must be answered while the federated sign-in is still being tested: the migration is neither
        failed nor undone. Its journal stays at ``migrate-added``, its lease is given up and the connection is due
        now (the schedule index first), so the next sweep resumes it (:meth:`resume`); this attempt's history entry
        and audit record say so. A journal that is no longer this worker's is the ``ConcurrentChange`` of a step."""
        state = record.rotation
        handed = self._handed_over(state, (
            f"The federated sign-in did not work yet when the request had to be answered ({still.last.detail}); the "
            "rotation sweep goes on testing it and finishes the migration. The connection still signs in with its "
            f"{record.method} credential."))

        async def point(key: str | None) -> ConnectionRecord:
            return await self._save(record, rotation=handed.evolve(schedule_key=key))

        try:
            saved = await reindex(self.adapters.schedule, state.schedule_key, handed.next_at, record, point)
        except Stopped as stopped:
            raise stopped.error from None
        await self._record_handed_over(saved, TRIGGER)
        await self._recorded(record, INTERRUPTED, saved.rotation.message)
        return saved

    # -- failing ---------------------------------------------------------------------------------------------
    async def _failed(self, record: ConnectionRecord, error: ServiceError) -> ServiceError:
        """Before the switch: remove the federated credential this migration added (by its name) and forget the
        journal; the connection is as it was. After: keep the journal (the clean-up is resumed)."""
        try:
            current = await self.adapters.connections.get(record.app, record.id)
        except NotFound:
            await self._recorded(record, STATUS_FAILED, f"{error.detail} (the connection was deleted meanwhile)")
            return error
        state = current.rotation
        if state.lease_owner != self.owner or state.step not in MIGRATION_STEPS:
            # Another worker took the migration over (and may have ended it): its outcome is its own to tell.
            await self._recorded(record, "skipped",
                                 f"stopped: the migration is no longer this worker's ({error.detail})")
            return error
        message = error.detail
        base = state
        if state.step != SWITCHED:
            try:
                material = await self._old_material(current)
                async with self.adapters.directory.graph(method_of(material), current.tenant_id,
                                                         current.client_id or "", material) as graph:
                    await self._remove_added(current, graph)
                base = state.cleared_journal().evolve(revoke_original=False)
                message = f"The migration to the federated method did not complete: {message}"
            except Exception as cleanup:  # kept in the journal: the next request resumes and cleans up
                if (isinstance(cleanup, UpstreamForbidden) and isinstance(error, UpstreamForbidden)
                        and state.step == BEGUN and state.attempt == 1):
                    # Graph refused this application everything from the start, the addition (or what comes before
                    # it) included: nothing can have been added. Not so when the migration stopped otherwise (an
                    # addition whose answer was lost may have been made): the journal keeps it for the clean-up.
                    base = state.cleared_journal().evolve(revoke_original=False)
                    message = f"The migration to the federated method did not start: {message}"
                else:
                    log.warning("Migration of %s: clean-up failed (%s)", current.id, sentence(cleanup))
        else:
            message = (f"The connection is federated now; removing its previous credentials did not complete "
                       f"({message}). Send POST .../migrate-to-federated again to finish.")
        await self._history(current, STATUS_FAILED, message)
        failed = base.evolve(status=STATUS_FAILED, message=message, lease_owner=None, lease_until=None)
        if failed.step is None:  # undone: the rotation schedule resumes
            due = next_rotation(schedule_of(failed), failed.last_rotated_at or self.now(),
                                current.health.credential_expires_at)
        else:  # kept: the sweep resumes it, with back-off
            failed = failed.evolve(failures=failed.failures + 1)
            due = self.now() + backoff(failed.failures)

        async def point(key: str | None) -> ConnectionRecord:
            """Written over an edit that left the journal, the method and the secret alone (a validation, a health
            check, a rename), as each step is: else the caller is told it failed while the journal it was told of
            stays, and the sweep finishes later what it was told did not happen."""
            target = current
            for _ in range(3):
                outcome = failed.evolve(next_at=due, schedule_key=key)
                try:
                    return await self.adapters.connections.update(target.evolve(rotation=outcome))
                except ConcurrentChange:  # another write, or its own that landed with its answer lost
                    try:
                        now_stored = await self.adapters.connections.get(current.app, current.id)
                    except NotFound:
                        return current
                if (now_stored.rotation != state or now_stored.method != current.method
                        or now_stored.secret_version != current.secret_version):
                    return now_stored  # its own write, or the journal is another's now
                target = now_stored
            return target

        await reindex(self.adapters.schedule, state.schedule_key, due, current, point)
        await self._recorded(current, STATUS_FAILED, message)
        extensions = {**error.extensions, "rotationStep": state.step}
        if isinstance(error, CredentialRejected):
            return CredentialRejected(message, extensions=extensions)
        if 400 <= error.status < 500:
            return RotationRefused(message, extensions=extensions) if not isinstance(error, InvalidRequest) \
                else InvalidRequest(message, errors=error.errors, extensions=extensions)
        if isinstance(error, UpstreamThrottled):  # Graph's own wait, not the retry budget
            return UpstreamThrottled(message, retry_after=error.retry_after, extensions=extensions)
        return type(error)(message, extensions=extensions) if isinstance(error, UpstreamError) \
            else UpstreamError(message, extensions=extensions)

    async def _remove_added(self, record: ConnectionRecord, graph: GraphSession) -> None:
        """What this migration added (its name), and a credential the service added for another connection that it
        journaled (reused): each unless another connection relies on it meanwhile (signs in with it, or its
        migration journaled it: :func:`keep_for_others`), and the last of them to go removes it."""
        registration = await graph.find(record.client_id or "")
        name = credential_name(record.id)
        pending = record.rotation.pending_key_id
        for credential in await graph.federated_credentials(registration.object_id):
            if credential.name == name or (credential.id == pending and added_by_service(credential.name)):
                if await keep_for_others(self.adapters.connections, record, credential.id, record.tenant_id,
                                         self.audit):
                    continue
                self.lease_check(record.rotation)()  # a later migration may have adopted it meanwhile
                await self.audit.credential_changed(
                    "credential.remove", functools.partial(graph.remove_federated_credential, registration.object_id,
                                                           credential.id),
                    app=record.app, connection_id=record.id, object_id=registration.object_id, key_id=credential.id)

    # -- the credential the user gave ------------------------------------------------------------------------
    async def _original_key_id(self, record: ConnectionRecord) -> str:
        """The Key ID of the credential in use (to revoke it at the end), checked before anything changes."""
        from shared.rotation.config import resolve_key_id

        material = await self.adapters.vault.get(record.secret_name, record.secret_version)
        client_id = record.client_id or ""
        method = method_of(material)
        async with self.adapters.directory.graph(method, record.tenant_id, client_id, material) as graph:
            if method is Method.CERTIFICATE:
                key_id = ROLLS[method.value].identify(await graph.find(client_id), material)
                if key_id is None:
                    raise InvalidRequest(
                        "The certificate in use is not on the application, so it cannot be revoked; migrate with "
                        "revokeOriginal false.",
                        errors=[FieldError("/revokeOriginal", "the certificate in use was not found")])
                return key_id
            if record.rotation.key_id:
                return record.rotation.key_id
            password = await resolve_key_id(graph, client_id, material["clientSecret"], None)
        return password.key_id


def _usable(present: list[FederatedCredential], identity: FederationIdentity, name: str) -> FederatedCredential | None:
    """A federated credential that names the identity (ours by name first; else one the owner added, or one the
    service added for another connection of the application, which the connections then share)."""
    matching = [c for c in present if identity.matches(c.issuer, c.subject, c.audiences)]
    return next((c for c in matching if c.name == name), matching[0] if matching else None)

