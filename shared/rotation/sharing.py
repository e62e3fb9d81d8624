"""Credentials that several connections of one application sign in with.

An owner may give the same client secret or certificate to two connections (say one for Key Vault and one for App
Configuration, both of one application). Revoking it when one of them is rotated, or migrated with
``revokeOriginal``, would lock the other out: what another connection signs in with stays on the application.
Only a credential the owner gave can be shared (one the service made is known to its connection alone), so this
is asked when such a credential is to be revoked, right before its revocation.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from datetime import datetime

from shared.apps import APPS, Method
from shared.audit import STARTED, AuditLog
from shared.due_index import health_key, reindex
from shared.errors import ConcurrentChange, NotFound, SecretGone, ServiceError, UpstreamError, VersionDisabled
from shared.fields import MAX_PAGE_SIZE
from shared.ports import ConnectionStore, ScheduleStore, SecretStore
from shared.records import MIGRATION_STEPS, STATUS_DELETING, STATUS_INVALID, ConnectionRecord
from shared.rotation.rolls import CredentialRoll

log = logging.getLogger(__name__)


def same_application(one: ConnectionRecord, other: ConnectionRecord) -> bool:
    """Whether two connections sign in as one application: by client ID alone, of any tenant (a multi-tenant
    application's connections in other tenants sign in with the credentials of its one application object, the
    federated credentials the service added included)."""
    return (one.client_id or "").lower() == (other.client_id or "").lower()


async def of_the_same_application(store: ConnectionStore, record: ConnectionRecord, *,
                                  deleting: bool = False) -> list[ConnectionRecord]:
    """The other connections of ``record``'s application (:func:`same_application`, of every app), but those being
    deleted (they go, and need nothing kept) unless ``deleting``."""
    found: list[ConnectionRecord] = []
    for app_id in APPS:
        continuation: str | None = None
        while True:
            page, continuation = await store.list_page(app_id, MAX_PAGE_SIZE, continuation)
            found += [other for other in page if other.id != record.id
                      and (deleting or other.status != STATUS_DELETING)
                      and same_application(other, record)]
            if continuation is None:
                break
    return found


async def signing_in_with(store: ConnectionStore, vault: SecretStore, roll: CredentialRoll,
                          record: ConnectionRecord, key_id: str, material: Mapping[str, str] | None, *,
                          surely: bool = False) -> list[ConnectionRecord]:
    """The other connections of ``record``'s application that sign in with its credential ``key_id`` of ``roll``'s
    kind (whose ``material`` it is, when known): one that tracks that Key ID, or one of that method that tracks
    none and whose stored material may be the same credential (``CredentialRoll.may_be_same``: for a client
    secret, the same hint). One whose stored material is gone or disabled, or a
    credential whose material is not known, counts as signing in with it (it is kept: a revocation cannot be
    undone); a failure to read it (Key Vault not answering) is raised: the caller's attempt fails, and is tried
    again. ``surely``: only those known to sign in with it (asked once it is revoked, to tell them: none when its
    material is not known, and not one whose stored material cannot be read)."""
    if surely and material is None:
        return []
    sharing: list[ConnectionRecord] = []
    for other in await of_the_same_application(store, record):
        if other.method != roll.method.value:
            continue
        if other.rotation.key_id:
            if other.rotation.key_id.lower() == key_id.lower():
                sharing.append(other)
            continue
        if material is None or other.secret_version is None:
            sharing.append(other)
            continue
        try:
            theirs = await vault.get(other.secret_name, other.secret_version)
        except (SecretGone, VersionDisabled, NotFound):
            if not surely:
                sharing.append(other)
            continue
        if roll.may_be_same(material, theirs) and (not surely or _same_secret(material, theirs)):
            sharing.append(other)
    return sharing


async def mark_stranded(store: ConnectionStore, health_index: ScheduleStore, record: ConnectionRecord,
                        stranded: list[ConnectionRecord], noun: str, now: datetime, by: str = "rotation") -> None:
    """Mark ``stranded`` invalid: they began to sign in with the credential ``record`` has just revoked (created
    with it, or given it, after :func:`signing_in_with` was asked and before the revocation: nothing orders a
    request of another connection with this removal). A revocation cannot be undone; the connection is told at
    once (``status`` ``invalid``, its message naming ``record``), not only by its next health check, and that
    check is brought forward to ``now`` in the same write: its one entry of ``health_index`` moved as the service
    moves one (:func:`reindex`: never a second entry, never a later time), so that the next health sweep
    (``HEALTH_SWEEP_SCHEDULE``) checks it, finds it failing and notifies its owner (``health_notices``, which the
    health drives, not the status). Best effort, each on top of what changed meanwhile (ETag-guarded, read
    again), but not over a change of its credential or a DELETE's mark: its health check finds the same. An index
    that cannot be written leaves the check where it was (logged by type: the daily check finds it); nothing here
    fails the rotation."""
    message = (f"Its {noun} was revoked by the {by} of the connection '{record.name}' ({record.app}) of the same "
               "application, which replaced it while this connection was created with it or given it. Give this "
               "connection a new credential.")
    for other in stranded:
        try:
            if await _marked(store, health_index, other, message, now):
                log.warning("Connection %s signs in with the credential the %s of %s revoked: marked invalid, its "
                            "health check due now", other.id, by, record.id)
        except (NotFound, ServiceError) as error:
            log.warning("Connection %s signs in with the credential the %s of %s revoked; it could not be marked "
                        "invalid (%s): its health check finds it", other.id, by, record.id, type(error).__name__)


async def _marked(store: ConnectionStore, index: ScheduleStore | None, other: ConnectionRecord, message: str,
                  now: datetime) -> bool:
    """:func:`mark_stranded` of one connection, in up to three ETag-guarded writes on top of what changed meanwhile
    (``index`` None once it failed: the mark alone): whether it was written (False: changed meanwhile, deleted or
    being deleted)."""
    current: ConnectionRecord | None = other
    for _ in range(3):
        if current is None or current.status == STATUS_DELETING or current.secret_version != other.secret_version:
            return False  # deleted, being deleted, or its credential changed meanwhile: not the one revoked
        try:
            written, current = await _mark_once(store, index, current, message, now)
        except _NotIndexed as error:
            log.warning("Connection %s: its health check could not be brought forward (%s): its next check finds "
                        "it", other.id, type(error.__cause__).__name__)
            index = None
            continue
        if written:
            return True
    return False


class _NotIndexed(Exception):
    """The health index could not be written (its cause): nothing was written to the connection."""


async def _mark_once(store: ConnectionStore, index: ScheduleStore | None, held: ConnectionRecord, message: str,
                     now: datetime) -> tuple[bool, ConnectionRecord | None]:
    """One write of the mark on top of ``held`` (ETag-guarded), with its health check due at ``now`` (or sooner, as
    it was) through ``index`` (:func:`reindex`: the new entry first, then the record pointed at it, then the entry
    it no longer points at dropped), or where it was when ``index`` is None. Whether the mark is written (its own
    write found landed, its answer lost, counts), and the record as it is now (None: deleted)."""
    due = min(held.health.next_check_at or now, now)
    written: list[ConnectionRecord] = []
    reached: list[bool] = []  # the write was tried: the index's entry is in
    gone: list[bool] = []

    def target(key: str | None) -> ConnectionRecord:
        health = held.health if index is None else held.health.evolve(next_check_at=due, check_key=key)
        return held.evolve(status=STATUS_INVALID, status_message=message, last_validated_at=now, health=health)

    async def point(key: str | None) -> ConnectionRecord:
        reached.append(True)
        try:
            try:
                written.append(await store.update(target(key)))
                return written[-1]
            except ConcurrentChange:  # changed meanwhile; or its own write, landed with its answer lost
                current = await store.get(held.app, held.id)
        except NotFound:  # deleted meanwhile: it points at neither entry, and both go
            gone.append(True)
            return held.evolve(health=held.health.evolve(check_key=None))
        if current.status == STATUS_INVALID and current.status_message == message and current.health.check_key == key:
            written.append(current)
        return current

    if index is None:
        current = await point(held.health.check_key)
    else:
        try:
            current = await reindex(index, held.health.check_key, due, held, point, key_of=health_key)
        except ServiceError as error:
            if not reached:  # the new entry is not in: nothing was written
                raise _NotIndexed() from error
            if not written:
                raise
            # Written: an entry it no longer points at is stale, and the health sweep that reads it drops it.
            log.info("Connection %s: the health index entry it was moved from is left to the sweep (%s)", held.id,
                     type(error).__name__)
            return True, written[-1]
    return bool(written), None if gone else current


def _same_secret(one: Mapping[str, str], other: Mapping[str, str]) -> bool:
    """A client secret's whole value is the same (its hint alone may be another's); a certificate's thumbprint,
    which ``may_be_same`` compares, is all of it."""
    if "clientSecret" not in one:
        return True
    return hmac.compare_digest(one["clientSecret"].encode(), other.get("clientSecret", "").encode())


def named(connections: list[ConnectionRecord]) -> str:
    """``'kv' (azure-key-vault)``, ...: the connections as a message names them."""
    return ", ".join(f"'{c.name}' ({c.app})" for c in connections)


def credential_tenant(record: ConnectionRecord) -> str:
    """The tenant whose application object holds the federated credential ``record`` tracks (``key_id``)."""
    return record.rotation.key_tenant_id or record.tenant_id


async def relying_on_federation(store: ConnectionStore, record: ConnectionRecord) -> list[ConnectionRecord]:
    """The other connections of ``record``'s application that sign in with its federated credential, or whose
    migration to the federated method is under way (it may have tested that credential, and switch to it); not one
    being deleted (it goes too, and cannot take the credential over). Of every tenant: a federated credential is on
    the application object, which Entra ID trusts for the sign-ins of a multi-tenant application in any tenant."""
    return [other for other in await of_the_same_application(store, record)
            if other.method == Method.FEDERATED or other.rotation.step in MIGRATION_STEPS]


def tracks(record: ConnectionRecord, credential_id: str) -> bool:
    """Whether ``record`` keeps track of the federated credential: it signs in with it (a DELETE of it removes it
    when no other connection relies on it then), or its migration under way has journaled it."""
    state = record.rotation
    return (record.method == Method.FEDERATED and state.key_id == credential_id) or (
        state.step in MIGRATION_STEPS and state.pending_key_id == credential_id)


class HandOverIncomplete(UpstreamError):
    """The federated credential could not be handed over to a connection that relies on it (Table Storage failed,
    or they kept changing): nothing was lost (the one handing it over still tracks it); send the request again."""


async def keep_for_others(store: ConnectionStore, record: ConnectionRecord, credential_id: str,
                          tenant_id: str, audit: AuditLog, *, audit_kept: bool = True) -> list[ConnectionRecord]:
    """Whether the federated credential the service added (on ``record``'s application, whose object is in
    ``tenant_id``), which ``record`` gives up (deleted, moved to another application, its migration failed), stays
    for another connection: one tracks it already (signs in with it, or its migration journaled it), or one signs
    in with it without tracking it (created federated, in any tenant) and takes it over (:func:`hand_over`). False:
    nobody relies on it, it is to be removed (a migration that has not journaled it yet tests before it switches:
    it fails, and can be sent again). The connections that keep it (none: it is to be removed). A hand-over is
    audited on the heir before it is written and after; a credential kept, on ``record`` (:func:`audit_kept`), unless
    ``audit_kept`` is False: the caller records it once its own change is saved."""
    for _ in range(4):
        try:
            relying = await relying_on_federation(store, record)
        except ServiceError as error:
            raise HandOverIncomplete(f"The connections of the application could not be read ({error.detail}).") \
                from None
        keeping = [other for other in relying if tracks(other, credential_id)]
        if keeping:
            if audit_kept:
                await record_kept(audit, record, credential_id, keeping)
            return keeping
        # An heir signs in with it and tracks nothing (created federated): one that tracks another credential of
        # the service's (added for an identity the service had before) relies on that one, and keeps it.
        heirs = [other for other in relying if other.method == Method.FEDERATED and not other.rotation.key_id]
        if not heirs:
            return []
        heir = await hand_over(store, record, heirs, credential_id, tenant_id, audit)
        if heir is not None:
            if audit_kept:
                await record_kept(audit, record, credential_id, [heir])
            return [heir]
    raise HandOverIncomplete("The connections relying on the application's federated credential kept changing.")


async def record_kept(audit: AuditLog, record: ConnectionRecord, credential_id: str,
                      keeping: list[ConnectionRecord]) -> None:
    """The audit record of a federated credential ``record`` gave up and left to ``keeping`` (``credential.remove``
    ``kept``, naming them, of any app: its owner may not see them); written as well as can be."""
    names = ", ".join(f"{other.id} ({other.app})" for other in keeping)
    await audit.record("credential.remove", "kept", app=record.app, connection_id=record.id,
                       connection_name=record.name,
                       detail=f"Federated identity credential {credential_id} on the application {record.client_id} "
                              f"stays: the connection {names} signs in with it.")


async def hand_over(store: ConnectionStore, record: ConnectionRecord, heirs: list[ConnectionRecord],
                    credential_id: str, tenant_id: str, audit: AuditLog) -> ConnectionRecord | None:
    """One of ``heirs`` (federated, on ``record``'s application, and not being deleted, read again before it is
    written) tracks the federated credential the service added: a DELETE of it removes the credential when no
    other connection relies on it then; one in another tenant than the application object's (``tenant_id``)
    records that tenant (``key_tenant_id``), where its DELETE reaches it; audited on the heir before it is written
    (``credential.hand-over`` ``started``, once per heir) and after: ``succeeded`` once the heir tracks it,
    ``failed`` when the write fails (with the kind of error) or the heir no longer qualifies. The heir, or None
    when none of them still qualifies (they changed meanwhile). Written before ``record`` lets go of it: should it
    fail, ``record`` keeps it (a request again finishes)."""
    what = f"Federated identity credential {credential_id} on the application {record.client_id}"
    started: ConnectionRecord | None = None  # the heir whose started record has no outcome yet

    async def ended(outcome: str, detail: str) -> None:
        nonlocal started
        if started is not None:
            await audit.record("credential.hand-over", outcome, app=started.app, connection_id=started.id,
                               connection_name=started.name, detail=f"{what}: {detail}")
            started = None

    try:
        for heir in heirs:
            current: ConnectionRecord | None = heir
            for _ in range(3):
                if (current is None or current.method != Method.FEDERATED or current.status == STATUS_DELETING
                        or not same_application(current, record)
                        or current.rotation.key_id not in (None, credential_id)):
                    # gone, being deleted, moved, or tracking another credential meanwhile: not this one
                    await ended("failed", "not handed over: the connection changed meanwhile")
                    break
                if current.rotation.key_id == credential_id:
                    await ended("succeeded", "handed over")
                    return current
                if started is None:
                    await audit.record(
                        "credential.hand-over", STARTED, app=current.app, connection_id=current.id,
                        connection_name=current.name,
                        detail=f"{what}, which this connection signs in with, is handed over to it by the connection "
                               f"{record.id} ({record.app}), which gives it up.")
                    started = current
                try:
                    home = None if current.tenant_id.lower() == tenant_id.lower() else tenant_id
                    await store.update(current.evolve(rotation=current.rotation.evolve(
                        key_id=credential_id, key_tenant_id=home)))
                    await ended("succeeded", "handed over")
                    return current
                except ConcurrentChange:
                    try:
                        current = await store.get(heir.app, heir.id)
                    except NotFound:
                        current = None
            else:
                await ended("failed", "not handed over: the connection kept changing")
    except ServiceError as error:
        await ended("failed", f"not handed over: {type(error).__name__}")
        raise HandOverIncomplete(f"The federated credential of the application could not be handed over to a "
                                 f"connection that relies on it ({error.detail}).") from None
    return None
