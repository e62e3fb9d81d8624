"""One lifecycle for every connection of every method: create, read, update, validate, re-authorize, status,
rotate and delete.

Validation comes first and nothing is stored when it fails. Secret material goes to the vault, metadata to the
connection store; the order of writes is chosen so that a failure leaves no secret that no connection points at.
A request that changes a connection's credentials, its rotation or its existence never interleaves with a
rotation of it: while one is in progress such a request answers 409 with the rotation's id and ``Retry-After``.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from shared.apps import AppSpec, Method, method_spec
from shared.audit import STARTED, acting_actor, current
from shared.auth import ROLE_PREFIX, WRITER, granted_apps
from shared.azure.upstream import sentence
from shared.credentials import parse_certificate_async
from shared.due_index import reindex
from shared.errors import (
    ConcurrentChange,
    CredentialRejected,
    CredentialsLeftLive,
    FieldError,
    Forbidden,
    InvalidRequest,
    LeaseLost,
    NameTaken,
    NotFound,
    RemovalUnconfirmed,
    RotationFailed,
    RotationInProgress,
    RotationRefused,
    SecretGone,
    ServiceError,
    UpstreamForbidden,
    UpstreamThrottled,
    VersionDisabled,
    best_effort,
    detail_of,
    failed_upstream,
)
from shared.expiry import REFRESH_TOKEN_LIFETIME, fresh_health, redated, status_of
from shared.federation import (
    explain,
    federation_identity,
    refuse_service_application,
    refused_as_removed,
    require_identity,
)
from shared.fields import page_size
from shared.models import (
    CertificateCredentialsIn,
    ClientSecretCredentialsIn,
    CreateConnectionIn,
    FederatedCredentialsIn,
    MigrateToFederatedIn,
    UpdateConnectionIn,
    parse_credentials,
    parse_key_id_alone,
    parse_method,
    parse_model,
)
from shared.notify import health_notices, redated_notices
from shared.oauth_tokens import OAuthTokens, ReauthorizationRequired, TokenCache
from shared.ports import Adapters, PasswordCredential
from shared.records import (
    HEALTHY,
    MIGRATION_STEPS,
    STATUS_ACTIVE,
    STATUS_DELETING,
    STATUS_DISABLED,
    STATUS_INVALID,
    STATUS_REAUTHORIZATION_REQUIRED,
    STATUS_SCHEDULED,
    Authorization,
    ConnectionRecord,
    HealthState,
    Notification,
    RotationEvent,
    RotationState,
)
from shared.redaction import handling
from shared.rotation.config import (
    RotationConfig,
    parse_rotation,
    require_interval_allowed,
    require_rotatable,
    resolve_key_id,
)
from shared.rotation.journal import removal_confirmation_wait
from shared.rotation.migration import Migrator
from shared.rotation.protocol import (
    CREDENTIAL_UNKNOWN,
    FIRST_BACKOFF,
    Attempt,
    Journal,
    JournalEntry,
    Removals,
    Rotator,
    clean_up_forgotten,
    connection_marker,
    removes_in_use,
    retire_waiting,
    retires_in_use,
    same_clean_up,
    scheduled_rotation,
    secret_tags,
)
from shared.rotation.sharing import (
    HandOverIncomplete,
    credential_tenant,
    keep_for_others,
    of_the_same_application,
    record_kept,
)
from shared.rotation.state import state_response
from shared.store.vault import secret_name_for
from shared.views import ConnectionReader, being_deleted, ensure_name_free, matches, precondition_failed, require_match
from shared.views import health_response as health_response
from shared.views import require_app as require_app
from shared.views import to_response as to_response

log = logging.getLogger(__name__)
SECRET_FIELDS = ("clientSecret", "privateKey")  # of the credentials a create or a PATCH may paste


def _pasted(body: Any) -> list[str]:
    """The secrets a create's or PATCH's body pastes (``credentials.clientSecret``, ``.privateKey``), as sent."""
    credentials = body.get("credentials") if isinstance(body, dict) else None
    if not isinstance(credentials, dict):
        return []
    return [value for name in SECRET_FIELDS if isinstance(value := credentials.get(name), str)]

DELETE_LEASE_SECONDS = 120
T = TypeVar("T")


def _in_progress(state: RotationState, seconds: int) -> dict[str, Any]:
    """What a ``rotation-in-progress`` 409 carries beside its ``Retry-After`` of ``seconds``: the rotation's id and
    step as the record has them (null when no rotation has begun: a clean-up, say), and the same wait."""
    return {"rotationId": state.rotation_id, "rotationStep": state.step, "retryAfterSeconds": seconds}


Credentials = ClientSecretCredentialsIn | CertificateCredentialsIn | FederatedCredentialsIn


@dataclass(frozen=True)
class Validated:
    """Credentials that parsed and worked: what goes to the vault and what the record says of them."""

    credentials: Credentials
    material: dict[str, str] = field(repr=False)
    expires_on: datetime | None


@dataclass(frozen=True)
class Deleted:
    record: ConnectionRecord
    removed_key_ids: list[str]
    key_ids_left_live: list[str]
    applications_not_read: list[str] = field(default_factory=list)


STORE_REFRESH_TOKEN = "connection.store-refresh-token"  # the audit action of keeping a rotated refresh token
REMOVE_ABANDONED = "connection.remove-abandoned-secret"  # ... of removing the secret of a create that stored nothing
# A create writes its secret, then its record, within one request: a secret whose newest version is older than this,
# with no record, is one a create abandoned (its worker gone, or its write failed and could not be read back).
ABANDONED_AFTER = timedelta(hours=1)


class RotationContinues(Exception):
    """Not a failure: the request had to be answered while the new credential of the rotation it started (or the
    federated sign-in of its migration) was still being tested. The rotation is journaled at its test, unleased and
    due now: the rotation sweep finishes it. ``record``: the connection as it is (its rotation ``rotating``, its
    message saying so); ``retry_after``: seconds after which to read it again. The function layer answers it with the
    connection (``202``), as it answers a rotation that completed."""

    def __init__(self, record: ConnectionRecord, retry_after: int) -> None:
        super().__init__(record.rotation.message or "The rotation goes on in the rotation sweep.")
        self.record = record
        self.retry_after = retry_after

    @property
    def detail(self) -> str:
        return str(self)


class ConnectionService:
    def __init__(self, adapters: Adapters, rotator: Rotator, token_cache: TokenCache | None = None) -> None:
        self.adapters = adapters
        self.rotator = rotator
        self.migrator = Migrator(adapters, options=rotator.options, owner=rotator.owner, checkpoint=rotator.checkpoint)
        self.oauth_tokens = OAuthTokens(adapters, self.store_refresh_token, token_cache)
        self.store = adapters.connections
        self.reader = ConnectionReader(adapters.connections, adapters.history)
        self.vault = adapters.vault

    def now(self) -> datetime:
        return self.adapters.clock()

    # -- shared steps of every method ------------------------------------------------------------------------
    def _credentials(self, method: Method, raw: Any) -> Credentials:
        """The credentials' fields checked (a 400 before anything else is looked at or changed)."""
        if method is Method.FEDERATED:
            require_identity(self.adapters.settings)
        credentials = parse_credentials(method, raw)
        if method is Method.FEDERATED:
            refuse_service_application(self.adapters.settings, credentials.clientId)
        return credentials

    async def _validated(self, app: AppSpec, method: Method, credentials: Credentials) -> Validated:
        expires_on = None
        material: dict[str, str] = {}
        if isinstance(credentials, FederatedCredentialsIn):
            pass  # nothing secret: the service's managed identity signs in as the application
        elif isinstance(credentials, CertificateCredentialsIn):
            parsed = await parse_certificate_async(credentials.certificateBody, credentials.privateKey, self.now())
            material = {"certificateBody": credentials.certificateBody, "privateKey": credentials.privateKey}
            expires_on = parsed.not_after
        else:
            material = {"clientSecret": credentials.clientSecret}
        await self.probe(app, method, credentials.tenantId, credentials.clientId, material)
        return Validated(credentials, material, expires_on)

    async def probe(self, app: AppSpec, method: Method, tenant_id: str, client_id: str,
                    material: Mapping[str, str]) -> None:
        """Acquire a token; a federated sign-in Entra refuses says which federated credential is expected."""
        try:
            await self.adapters.directory.probe(app, method, tenant_id, client_id, material)
        except CredentialRejected as rejected:
            if method is not Method.FEDERATED:
                raise
            raise explain(rejected, require_identity(self.adapters.settings)) from None

    async def insert_new(self, record: ConnectionRecord, material: Mapping[str, str],
                         expires_on: datetime | None = None) -> ConnectionRecord:
        """Index the first health check, write the secret, then write the record; a record that cannot be written
        takes its secret with it. The index entry comes first as the create's journal: should the worker go before
        the record is written (or the write fail and the record not be readable), the health sweep that finds the
        entry with no record removes the secret (:meth:`remove_abandoned`); else it is stale, and dropped. A method
        that stores no secret (federated) writes nothing to the vault."""
        stores = method_spec(record.method).stores_secret
        health = self._fresh_health(record, expires_on)
        # Created within its warning (a rotation it starts may fail): the next sweep checks it, and notifies what
        # it finds, not a day later.
        if status_of(expires_on, False, self.now(), self.adapters.settings.expiry_warning) != HEALTHY:
            health = health.evolve(next_check_at=self.now())
        key = await self.adapters.health_index.put(health.next_check_at or self.now(), record.app, record.id)
        version = ""
        if stores:
            version = (await self.vault.write(record.secret_name, material, secret_tags(record),
                                              expires_on=expires_on)).version
        try:
            due = record.rotation.next_at  # indexed first too: a rotation that never starts is taken up by the sweep
            if due is not None:
                record = record.evolve(rotation=record.rotation.evolve(
                    schedule_key=await self.adapters.schedule.put(due, record.app, record.id)))
            return await self.store.insert(record.evolve(secret_version=version,
                                                         health=health.evolve(check_key=key)))
        except Exception as error:
            async def undo() -> None:
                if stores:  # disabled first, as a DELETE does: a deleted secret recovered comes back as it was
                    await self.vault.disable_others(record.secret_name, "")
                    await self.vault.delete(record.secret_name)
            return await self._landed(record, error, lambda current: current.secret_version == version, undo)

    async def remove_abandoned(self, app: str, connection_id: str) -> bool:
        """The secret of a create that wrote no record (its index entry, found with no record, says one was under
        way): its versions disabled, then the secret deleted, audited before. False while its newest version is
        younger than ``ABANDONED_AFTER`` (the create may still be writing its record: ask again later); True once
        nothing of it is enabled."""
        name = secret_name_for(connection_id)
        newest = await self.vault.enabled_since(name)
        if newest is None:
            return True
        if self.now() - newest < ABANDONED_AFTER:
            return False
        where = {"app": app, "connection_id": connection_id}
        await self.rotator.audit.record(REMOVE_ABANDONED, STARTED, **where,
                                        detail=f"{name}: the secret of a create that stored no connection")
        await self.vault.disable_others(name, "")
        await self.vault.delete(name)
        await self.rotator.audit.record(REMOVE_ABANDONED, "succeeded", **where)
        log.warning("Removed %s, the secret of a create of %s connection %s that stored no connection", name, app,
                    connection_id)
        return True

    async def material_of(self, record: ConnectionRecord) -> dict[str, str]:
        """The secret material of the connection's current version ({} for a method that stores none). A version
        the vault no longer gives is first explained by the connection as it is now (:meth:`vault_refusal`)."""
        if not method_spec(record.method).stores_secret:
            return {}
        try:
            return await self.vault.get(record.secret_name, record.secret_version)
        except (SecretGone, VersionDisabled) as refusal:
            raise await self.vault_refusal(record, refusal) from None

    async def vault_refusal(self, record: ConnectionRecord, refusal: ServiceError) -> ServiceError:
        """What a version of the connection's secret that the vault no longer gives means, for a request that read
        ``record``: the connection was deleted meanwhile (404), is being deleted, or another request replaced its
        credential (409, read it again); else the vault lost it (the refusal as it was, a 502)."""
        try:
            current = await self.store.get(record.app, record.id)
        except NotFound:
            return NotFound("The connection was deleted while this request read it.")
        if current.status == STATUS_DELETING:
            return being_deleted()
        if current.secret_version != record.secret_version:
            return ConcurrentChange("The connection's credential changed while this request read it; read the "
                                    "connection again.")
        return refusal

    async def _indexed(self, record: ConnectionRecord, health: HealthState) -> HealthState:
        """``health`` (of an edit of ``record``) pointing at the index entry of its next check: the record's own
        when the time is the same, else a new one, put first (as a create does): should the write fail, the entry
        nothing points at is dropped by the sweep; once written, the old one goes (``update``)."""
        if health.next_check_at is None or health.next_check_at == record.health.next_check_at:
            return health.evolve(check_key=record.health.check_key, next_check_at=record.health.next_check_at)
        return health.evolve(check_key=await self.adapters.health_index.put(health.next_check_at, record.app,
                                                                            record.id))

    def _fresh_health(self, record: ConnectionRecord, expires_on: datetime | None) -> HealthState:
        settings = self.adapters.settings
        return fresh_health(record, expires_on, self.now(), settings.expiry_warning, settings.health_check_interval)

    def new_record(self, app: AppSpec, method: Method, name: str, description: str | None, tenant_id: str,
                   client_id: str | None, rotation: RotationState | None = None) -> ConnectionRecord:
        connection_id = str(uuid.uuid4())
        now = self.now()
        actor = acting_actor()
        return ConnectionRecord(
            app=app.id, id=connection_id, name=name, description=description, method=method.value,
            tenant_id=tenant_id, client_id=client_id, created_at=now, updated_at=now,
            secret_name=secret_name_for(connection_id), secret_version="", last_validated_at=now,
            rotation=rotation or RotationState(), created_by=actor, updated_by=actor,
        )

    async def _require_writer_of_the_application(self, record: ConnectionRecord) -> None:
        """A federated connection proves nothing of its own: the service signs in as any application that trusts
        its identity. So one is made on an application only by a caller who may change every connection of that
        application (Writer of their apps, any tenant): a Writer of one app cannot bind, nor keep alive when its
        owners delete theirs, an application that another app's connections use. The system acts for no one."""
        if record.method != Method.FEDERATED:
            return
        if current().actor.type == "system":
            return
        writable = granted_apps(WRITER)
        if writable is None:
            return
        # Those being deleted too: their DELETE hands the credential over to whoever relies on it when it is sent
        # (again); a connection bound meanwhile would be that heir.
        others = await of_the_same_application(self.store, record, deleting=True)
        foreign = sorted({other.app for other in others if other.app not in writable})
        if foreign:
            raise Forbidden(
                f"Connections of other apps ({', '.join(foreign)}) use this application, and a federated "
                "connection proves nothing but the service's own sign-in: creating one, or moving one onto it, "
                f"needs {ROLE_PREFIX}{WRITER} for those apps too.",
                extensions={"requiredRole": f"{ROLE_PREFIX}{WRITER}", "apps": foreign})

    async def switch_secret(self, record: ConnectionRecord, material: Mapping[str, str],
                            expires_on: datetime | None, changes: Mapping[str, Any],
                            previous_name: str | None = None,
                            notify: Sequence[Notification] = (), *, repair: bool = False) -> ConnectionRecord:
        """Make a new secret version current together with ``changes`` (one ETag-guarded write), then disable the
        version it superseded (only that one, which it knows: no listing of the secret's versions). That version is
        journaled in the same write (``superseded_versions``): should Key Vault refuse its disable, or the worker
        go in between, the health check disables it (:meth:`disable_superseded`), as the credential it holds may
        still work (Entra does not revoke a refresh token when it issues the next). With ``repair`` (a change a
        person makes: new credentials, a re-authorization) also every other version written before it, which lists
        them all (one page per 25 versions, and Key Vault keeps every version): one that a failed call left enabled
        is caught there, while one that a later request made current meanwhile was written later, and stays
        enabled. A refresh never lists them. A write that loses a race disables its own version and raises the
        conflict. A version a clean-up of the application left behind still signs in with (``retire_version``) is
        the clean-up's to disable."""
        stored = await self.vault.write(record.secret_name, material, secret_tags(record), expires_on=expires_on)
        target = record.evolve(secret_version=stored.version, **changes)
        if record.secret_version and record.secret_version != target.rotation.retire_version:
            target = target.superseding((*target.superseded, record.secret_version))
        try:
            saved = await self.store.update(target, previous_name=previous_name, notify=notify)
        except Exception as error:
            saved = await self._landed(record, error, lambda current: current.secret_version == stored.version,
                                       lambda: self._unwritten(record, stored.version))
        if saved.rotation.retire_version is None:
            with best_effort(lambda error: log.warning(  # the change is made: it is not undone for this
                    "Connection %s: the secret versions its change superseded are still enabled (%s); its next "
                    "health check disables them", record.id, detail_of(error))):
                if record.secret_version:
                    await self.vault.disable(saved.secret_name, record.secret_version)
                if repair:
                    await self.vault.disable_older(saved.secret_name, saved.secret_version)
        return saved

    async def _unwritten(self, record: ConnectionRecord, version: str) -> None:
        """Undo a version :meth:`switch_secret` wrote for a record write that did not land: disabled; or, should Key
        Vault refuse that too, journaled as superseded on the connection as it is now (its health check disables
        it, :meth:`disable_superseded`), so that a version holding a live credential is never left enabled with
        nothing tracking it. Should that write fail as well, it is logged, and the caller's error stands."""
        try:
            await self.vault.disable(record.secret_name, version)
            return
        except Exception as refused:
            if not failed_upstream(refused):
                raise
            failure = refused
        with best_effort(lambda error: log.warning(
                "Connection %s: a secret version its failed write made stays enabled (%s, then %s)", record.id,
                detail_of(failure), detail_of(error))):
            for _ in range(3):
                try:
                    current = await self.store.get(record.app, record.id)
                except NotFound:  # deleted meanwhile: its DELETE removes the secret, every version
                    return
                if version in current.superseded or current.secret_version == version:
                    return
                try:
                    await self.store.update(current.superseding((*current.superseded, version)))
                    return
                except ConcurrentChange:
                    continue

    async def disable_superseded(self, record: ConnectionRecord) -> frozenset[str]:
        """Disable the versions ``record`` journals as superseded (:meth:`switch_secret`), best effort; those Key
        Vault confirmed (or that are gone), which the caller's write then forgets. Never the version in use, nor
        one a clean-up of the application left behind still signs in with (forgotten all the same: not
        superseded)."""
        done: set[str] = set()
        for version in record.superseded:
            if version in (record.secret_version, record.rotation.retire_version):
                done.add(version)
                continue
            with best_effort(lambda error: log.warning(
                    "Connection %s: a superseded version of its secret is still enabled (%s); the next health check "
                    "disables it", record.id, detail_of(error))):
                if await self.vault.disable(record.secret_name, version):
                    done.add(version)
        return frozenset(done)

    async def _landed(self, record: ConnectionRecord, error: Exception, mine: Callable[[ConnectionRecord], bool],
                      undo: Callable[[], Awaitable[object]] | None = None) -> ConnectionRecord:
        """The record as a write that failed with ``error`` left it, when that write landed all the same (``mine``
        says so of the record read back), its answer lost: a 5xx, a timeout, or Table Storage's retry meeting its
        own ETag or entity. Else what was written for it (a secret) is undone (``undo``) and ``error`` raised. When
        the record cannot be read back, the secret stays (a version no record points at is never used) and
        ``error`` is raised."""
        try:
            current = await self.store.get(record.app, record.id)
        except NotFound:
            current = None
        except Exception as unread:
            if not failed_upstream(unread):
                raise
            log.warning("Connection %s: its write failed (%s) and cannot be read back (%s); the secret written for it "
                        "stays in Key Vault as %s", record.id, detail_of(error), detail_of(unread), record.secret_name)
            raise error from None
        if current is not None and mine(current):
            log.info("Connection %s: its write landed though its answer was lost (%s)", record.id, detail_of(error))
            return current
        if undo is not None:
            await undo()
        raise error

    async def _write(self, target: ConnectionRecord, previous_name: str | None = None,
                     notify: Sequence[Notification] = ()) -> ConnectionRecord:
        """An edit's write of ``target`` (a new version, stamped now), which may land with its answer lost."""
        try:
            return await self.store.update(target, previous_name=previous_name, notify=notify)
        except Exception as error:
            return await self._landed(target, error, lambda current: (current.version, current.updated_at) == (
                target.version, target.updated_at))

    async def record_status(self, record: ConnectionRecord, status: str, message: str | None) -> ConnectionRecord:
        """Record a validation outcome on top of whatever else changed meanwhile (it is the newest news of the
        credential, unless the credential itself changed, whose own validation is newer). A connection being deleted
        keeps its mark: the outcome is not written over it (the DELETE's last write is guarded by it), and the
        request answers that it is being deleted (409), or deleted (404), rather than with a record that is not
        the connection's any more."""
        current = record
        for _ in range(3):
            if current.status == STATUS_DELETING:
                raise being_deleted()
            try:
                return await self.store.update(
                    current.evolve(status=status, status_message=message, last_validated_at=self.now()))
            except ConcurrentChange:
                try:
                    current = await self.store.get(record.app, record.id)
                except NotFound:
                    raise NotFound("The connection was deleted while it was being validated.") from None
                if current.secret_version != record.secret_version:
                    return current
                if status == STATUS_ACTIVE and current.status == STATUS_INVALID != record.status:
                    # a refusal written since this validation read the connection (a revocation's mark): a sign-in
                    # that worked before it is older news, and a connection told wrongly is told right by its next
                    # check, one told wrongly that it works is not
                    return current
        log.info("Connection %s kept changing; its validation outcome was not recorded", record.id)
        return current

    # -- create ----------------------------------------------------------------------------------------------
    async def create(self, app_id: str, body: Any) -> ConnectionRecord:
        with handling(*_pasted(body)):  # not stored yet: Entra's refusal, or an SDK's log of it, may quote them
            return await self._create(app_id, body)

    async def _create(self, app_id: str, body: Any) -> ConnectionRecord:
        app = require_app(app_id)
        request = parse_model(CreateConnectionIn, body)
        method = parse_method(app.methods, request.method)
        if method is Method.OAUTH:
            raise InvalidRequest(
                "OAuth connections are created by signing in.",
                errors=[FieldError("/method", f"start with GET /api/v1/app-connections/{app.id}/oauth/authorize")],
            )
        config = parse_rotation(request.rotation) if request.rotation is not None else None
        if request.isAutoRotationEnabled or config is not None:
            pointer = "/isAutoRotationEnabled" if request.isAutoRotationEnabled else "/rotation"
            refuse_rotation_of_secretless(method, pointer)
            require_rotatable(method, app.rotation_methods, pointer)
        if request.isAutoRotationEnabled and config is None:
            raise InvalidRequest("Automatic rotation needs a schedule.",
                                 errors=[FieldError("/rotation", "is required when isAutoRotationEnabled is true")])
        given = self._credentials(method, request.credentials)  # every field checked before the name is looked up
        await ensure_name_free(self.store, app.id, request.name)
        # Before any sign-in: a caller refused does not get the service to sign in as another team's application.
        await self._require_writer_of_the_application(
            self.new_record(app, method, request.name, request.description, given.tenantId, given.clientId))
        valid = await self._validated(app, method, given)
        credentials = valid.credentials
        key_id, expires_on = await self._given_secret(valid, rotating=request.isAutoRotationEnabled,
                                                      may_be_unreadable=not request.isAutoRotationEnabled)
        if request.isAutoRotationEnabled and config is not None:
            await require_interval_allowed(self.adapters.directory, method, credentials.tenantId,
                                           credentials.clientId, valid.material, config.interval_days)
        state = configured(RotationState(key_id=key_id), config, request.isAutoRotationEnabled, self.now())
        record = self.new_record(app, method, request.name, request.description, credentials.tenantId,
                                 credentials.clientId, state)
        try:
            record = await self.insert_new(record, valid.material, expires_on)
        except NameTaken as taken:
            raise NameTaken(taken.detail, errors=[FieldError("/name", "is already used by another connection")]
                            ) from None
        log.info("Created %s connection %s (%s)", app.id, record.id, method.value)
        if request.isAutoRotationEnabled:
            record = await self._rotate_after_change(record, "enable")
        return record

    async def _given_secret(self, valid: Validated, *, rotating: bool,
                            may_be_unreadable: bool) -> tuple[str | None, datetime | None]:
        """The Key ID and expiry of the credentials given: for a client secret that will be rotated or whose Key ID
        was given, its password on the application (checked to be that very secret); else what the credentials
        say of themselves (a certificate's notAfter). ``may_be_unreadable``: an application that may not read
        itself keeps the given Key ID, with no expiry known."""
        credentials = valid.credentials
        if not isinstance(credentials, ClientSecretCredentialsIn):
            return None, valid.expires_on
        key_id = credentials.clientSecretKeyId
        if not (rotating or key_id):
            return key_id, valid.expires_on
        try:
            password = await self._key_id(credentials.tenantId, credentials.clientId, credentials.clientSecret,
                                          key_id)
        except UpstreamForbidden:
            if not may_be_unreadable:
                raise
            return key_id, valid.expires_on
        return password.key_id, password.end_date_time

    async def _key_id(self, tenant_id: str, client_id: str, secret: str, given: str | None) -> PasswordCredential:
        """The application's password that ``secret`` is (its Key ID, and its end date for the vault version)."""
        material = {"clientSecret": secret}
        async with self.adapters.directory.graph(Method.CLIENT_SECRET, tenant_id, client_id, material) as graph:
            return await resolve_key_id(graph, client_id, secret, given)

    # -- read ------------------------------------------------------------------------------------------------
    async def get(self, app_id: str, connection_id: str) -> ConnectionRecord:
        return await self.reader.get(app_id, connection_id)

    async def get_by_name(self, app_id: str, name: str) -> ConnectionRecord:
        return await self.reader.get_by_name(app_id, name)

    async def list_connections(self, app_id: str, limit: int | None,
                               continuation: str | None) -> tuple[list[ConnectionRecord], str | None]:
        return await self.reader.list_connections(app_id, limit, continuation)

    async def rotations(self, app_id: str, connection_id: str, limit: int | None,
                        continuation: str | None) -> tuple[list[RotationEvent], str | None]:
        return await self.reader.rotations(app_id, connection_id, limit, continuation)

    async def clients_visible(self, connection_id: str, limit: int | None = None, continuation: str | None = None,
                              ) -> tuple[list[dict[str, str]], str | None]:
        """A page of the app registrations an azure-client-secrets connection can see in Microsoft Graph. Its
        continuation token names the list (:func:`app_list_key`): another connection's is a 400."""
        size = page_size(limit)
        record = await self.get("azure-client-secrets", connection_id)
        if record.status == STATUS_DELETING:  # nothing signs in with (or refreshes) what a DELETE is removing
            raise being_deleted()
        listing = app_list_key(record.id, record.tenant_id)
        if record.method == Method.OAUTH:
            async with self.adapters.directory.graph_with(self.oauth_tokens.credential(record)) as graph:
                return await graph.list_applications(size, continuation, listing)
        material = await self.material_of(record)
        async with self.adapters.directory.graph(Method(record.method), record.tenant_id, record.client_id or "",
                                                 material) as graph:
            return await graph.list_applications(size, continuation, listing)

    # -- update ----------------------------------------------------------------------------------------------
    async def update(self, app_id: str, connection_id: str, body: Any, if_match: str | None = None,
                     ) -> ConnectionRecord:
        """Change what ``body`` names. ``if_match``: only if the connection is still at that version (412 else; the
        write is guarded by the ETag of this very read, so no change slips in between: one that did is a 412 too)."""
        with handling(*_pasted(body)):  # not stored yet: Entra's refusal, or an SDK's log of it, may quote them
            return await self._conditional(app_id, connection_id, if_match,
                                           self._update(app_id, connection_id, body, if_match))

    async def _conditional(self, app_id: str, connection_id: str, if_match: str | None, work: Awaitable[T]) -> T:
        """``work``, a request's operation on the connection: sent with ``If-Match``, a change another request made
        between its read (where ``If-Match`` held) and its ETag-guarded write, which made the precondition false,
        answers 412 with the current ETag, as the read's check does, not 409 ``concurrent-change`` (without
        ``If-Match``, or when the connection still matches it: the 409)."""
        try:
            return await work
        except ConcurrentChange as change:
            if if_match is None:
                raise
            try:
                current = await self.get(app_id, connection_id)
            except NotFound:
                raise change from None
            if matches(current, if_match):
                raise
            raise precondition_failed(current) from None

    async def _update(self, app_id: str, connection_id: str, body: Any, if_match: str | None) -> ConnectionRecord:
        app = require_app(app_id)
        request = parse_model(UpdateConnectionIn, body)
        record = await self.get(app.id, connection_id)
        require_match(record, if_match)
        method = Method(record.method)
        given = request.model_fields_set
        changes: dict[str, Any] = {}
        if "name" in given:
            if request.name is None:
                raise InvalidRequest("A connection needs a name.", errors=[FieldError("/name", "must not be null")])
            if request.name != record.name:
                changes["name"] = request.name
        if "description" in given and request.description != record.description:
            changes["description"] = request.description
        config = parse_rotation(request.rotation) if request.rotation is not None else None
        rotation_change = config is not None or request.isAutoRotationEnabled is not None
        if request.isAutoRotationEnabled or config is not None:
            pointer = "/isAutoRotationEnabled" if request.isAutoRotationEnabled else "/rotation"
            refuse_rotation_of_secretless(method, pointer)
            require_rotatable(method, app.rotation_methods, pointer)
        # ``credentials: {clientSecretKeyId}`` alone names the Key ID of the secret stored: no credential material
        # changes (``replaced``: new credentials, validated and stored as a new version).
        key_only = parse_key_id_alone(method, request.credentials)
        replaced = request.credentials if key_only is None else None
        if replaced is not None and method is Method.OAUTH:
            raise InvalidRequest(
                "OAuth credentials are changed by signing in again.",
                errors=[FieldError("/credentials", "re-authorize through the oauth/authorize route")],
            )
        if rotation_change or request.credentials is not None:
            self._refuse_during_rotation(record)
        if record.status == STATUS_DELETING:
            raise being_deleted()
        given_credentials = self._credentials(method, replaced) if replaced is not None else None
        given_up: tuple[str, list[ConnectionRecord]] | None = None  # a federated credential left to others
        expiry_read: datetime | None = None  # the stored secret's end, read with its Key ID (none: unchanged)
        if (method is Method.FEDERATED and given_credentials is not None and record.rotation.key_id
                and given_credentials.clientId.lower() == (record.client_id or "").lower()
                and given_credentials.tenantId.lower() != record.tenant_id.lower()):
            # The federated credential the service added is on the application object, which the service reaches in
            # this tenant: moved, it would be removed as left behind while the connection signs in with it, or kept
            # where no DELETE could reach it (Graph finds only a service principal in another tenant).
            raise InvalidRequest(
                "This connection signs in with a federated credential the service added to its application, and "
                "keeps to the tenant it was added in: the service manages that credential there only (see "
                "docs/federated.md on multi-tenant applications).",
                errors=[FieldError("/credentials/tenantId", "cannot change while the client ID stays the same")])
        if given_credentials is not None:  # before any sign-in or clean-up (see create)
            await self._require_writer_of_the_application(
                record.evolve(tenant_id=given_credentials.tenantId, client_id=given_credentials.clientId))
        state = record.rotation
        enabling = request.isAutoRotationEnabled is True and not state.enabled
        if enabling and config is None and state.interval_days is None:
            raise InvalidRequest("Automatic rotation needs a schedule.",
                                 errors=[FieldError("/rotation", "is required when isAutoRotationEnabled is true")])
        new_state = state
        if rotation_change:
            enabled = state.enabled if request.isAutoRotationEnabled is None else request.isAutoRotationEnabled
            new_state = configured(state, config, enabled, self.now(), record.health.credential_expires_at)
        trigger = "enable" if enabling else None
        if replaced is not None:
            assert given_credentials is not None
            back = comes_back(record, given_credentials.clientId)
            if back and (state.leased(self.now()) or state.retire_removing_key_id == state.retire_federated_id):
                # Its clean-up is under way, or has sent the credential's removal (a worker held up past its lease
                # may still make it): taken back, the credential could go under the connection.
                raise RotationInProgress(
                    "The clean-up of the application this connection used before is removing the federated "
                    "credential the service added there; try again once it is done (then that application needs a "
                    "federated credential again).", headers={"Retry-After": "60"},
                    extensions=_in_progress(state, 60))
            if state.cleaning_up and not back:  # the last change's clean-up first: one application at a time
                record = await self._finish_retirement(record, raise_on_failure=True)
                state = record.rotation
                new_state = (configured(state, config, new_state.enabled, self.now(),
                                        record.health.credential_expires_at) if rotation_change else state)
            valid = await self._validated(app, method, given_credentials)
            credentials = valid.credentials
            key_id, expires_on = await self._given_secret(valid, rotating=new_state.enabled, may_be_unreadable=False)
            if new_state.enabled and method in app.rotation_methods:
                trigger = trigger or "credential-change"
            leaving: str | None = None
            if method is Method.FEDERATED:
                key_id = federated_credential_kept(record, credentials.tenantId, credentials.clientId)
                leaving = record.rotation.key_id if key_id is None else None
                if back:  # the application it left, whose clean-up is pending: its credential is the connection's
                    # again (it just signed in with it; a clean-up that removed it meanwhile changed the record,
                    # so this write, guarded by the ETag of the record read, fails with 409), and stays where it is
                    key_id = record.rotation.retire_federated_id
                    home = record.rotation.retire_tenant_id or ""
                    new_state = clean_up_forgotten(new_state).evolve(
                        key_tenant_id=None if home.lower() == credentials.tenantId.lower() else home)
                # It leaves the application: whatever relies on the credential there takes it over first (a failure
                # answers 502, nothing changed); what nothing relies on is the clean-up of the application left,
                # journaled with the change (``retire_*``) and made once it is saved, or by the sweep.
                if leaving:
                    keeping = await keep_for_others(self.store, record, leaving, credential_tenant(record),
                                                    self.rotator.audit, audit_kept=False)  # recorded once saved
                    if keeping:
                        given_up, leaving = (leaving, keeping), None
            new_state = new_state.evolve(key_id=key_id, key_made=False,
                                         key_tenant_id=new_state.key_tenant_id if key_id else None)
            if leaving:
                retry = self.now() + FIRST_BACKOFF
                new_state = new_state.evolve(retire_federated_id=leaving, retire_tenant_id=credential_tenant(record),
                                             retire_client_id=record.client_id,
                                             next_at=min(retry, new_state.next_at or retry))
            if state.managed:  # what the service created on the application in use is retired after the switch
                # (tracked by ``retire_*`` from here on): the credential in use is the user's, and nothing the
                # service creates is on its application until a rotation begins (which sets ``managed`` again).
                new_state = new_state.left_behind_forgotten().evolve(
                    retire_version=record.secret_version, managed=False, retire_tenant_id=record.tenant_id,
                    retire_client_id=record.client_id)
            if state.managed or trigger is not None:
                # Due with the change (its entry indexed below), rotation on or off: should this request's worker die
                # before its clean-up or its rotation of the given secret is recorded (or their attempts and the
                # writes of their retries fail), the sweep retries the clean-up and rotates the given secret. A
                # rotation that follows sets the next due time as its schedule has it.
                retry = self.now() + FIRST_BACKOFF
                new_state = new_state.evolve(next_at=min(retry, new_state.next_at or retry))
            changes.update(tenant_id=credentials.tenantId, client_id=credentials.clientId, status=STATUS_ACTIVE,
                           status_message=None, last_validated_at=self.now())
            fresh = self._fresh_health(record.evolve(rotation=new_state), expires_on)  # as the change leaves it
        elif method is Method.CLIENT_SECRET and (enabling or key_only is not None):
            # The Key ID of the secret stored (what a rotation revokes once it has replaced it): the one given alone,
            # else the one recorded, else found by the secret's hint; checked against the application either way.
            named = key_only.clientSecretKeyId.lower() if key_only is not None else None
            if named is not None and state.made_in_use and state.key_id and named != state.key_id:
                raise InvalidRequest(
                    "The client secret stored is one a rotation made, and its Key ID is another: the service "
                    "recorded it when it created that secret.",
                    errors=[FieldError("/credentials/clientSecretKeyId", "must be the Key ID of the secret stored")])
            material = await self.material_of(record)
            known = await self._key_id(record.tenant_id, record.client_id or "", material["clientSecret"],
                                       named or new_state.key_id)
            new_state = new_state.evolve(key_id=known.key_id,
                                         key_made=new_state.key_made if known.key_id == new_state.key_id else False)
            if known.end_date_time != record.health.credential_expires_at:  # the secret's end, as Graph has it
                expiry_read = known.end_date_time
        if new_state.enabled and new_state.interval_days and (config is not None or enabling
                                                               or replaced is not None):
            await require_interval_allowed(
                self.adapters.directory, method, changes.get("tenant_id", record.tenant_id),
                changes.get("client_id", record.client_id) or "",
                valid.material if replaced is not None else await self.material_of(record),
                new_state.interval_days)
        if new_state.next_at is not None and (new_state.next_at != state.next_at or state.schedule_key is None):
            # Indexed before the record says so (as ``reindex`` does): a write that then fails leaves only an entry
            # nothing points at, which the sweep drops; once written, the old entry goes (``_sync_schedule``).
            new_state = new_state.evolve(schedule_key=await self.adapters.schedule.put(
                new_state.next_at, record.app, record.id))
        if not changes and new_state == state and replaced is None and expiry_read is None:
            return record
        previous_name = record.name if "name" in changes else None
        target = record.evolve(rotation=new_state, version=record.version + 1, updated_at=self.now(),
                               updated_by=acting_actor(), **changes)
        try:
            if replaced is not None:
                kept = record.health.next_check_at  # the new credential's own milestones may come sooner
                times = [t for t in (fresh.next_check_at, kept) if t is not None]
                sooner = min(times) if times else None
                health = await self._indexed(record, fresh.evolve(next_check_at=sooner))
                notices, health = health_notices(target, health, self.now(), remind=False)
                if method_spec(method).stores_secret:
                    saved = await self.switch_secret(target.evolve(health=health), valid.material, expires_on, {},
                                                     previous_name, notify=notices, repair=True)
                else:
                    saved = await self._write(target.evolve(health=health), previous_name, notices)
            elif new_state != state or expiry_read is not None:  # what renews the credential, or its end, may
                # have changed: so may its health
                warning = self.adapters.settings.expiry_warning
                if expiry_read is not None:
                    target = target.evolve(health=target.health.evolve(credential_expires_at=expiry_read))
                notices, health = redated_notices(target, redated(target, self.now(), warning), self.now())
                health = await self._indexed(record, health)  # (redated: never later than the check indexed)
                saved = await self._write(target.evolve(health=health), previous_name, notices)
            else:
                saved = await self._write(target, previous_name)
        except NameTaken as taken:
            raise NameTaken(taken.detail, errors=[FieldError("/name", "is already used by another connection")]
                            ) from None
        log.info("Updated %s connection %s to version %d", app.id, record.id, saved.version)
        if given_up is not None:
            await record_kept(self.rotator.audit, record, *given_up)
        with best_effort(lambda error: log.warning(  # the change is saved, and answered as such
                "Connection %s: its change is saved; tidying up after it failed (%s): the sweep finishes it",
                record.id, detail_of(error))):
            if saved.health.check_key != record.health.check_key:
                await self.adapters.health_index.remove(record.health.check_key)
            if saved.rotation.cleaning_up:
                saved = await self._finish_retirement(saved, raise_on_failure=False)
            saved = await self._sync_schedule(saved, state)
        if trigger is not None:
            saved = await self._rotate_after_change(saved, trigger)
        return saved

    def _refuse_during_rotation(self, record: ConnectionRecord) -> None:
        state = record.rotation
        if not state.in_progress:
            return
        now = self.now()
        if state.leased(now) and state.lease_until is not None:
            wait = (state.lease_until - now).total_seconds()
            detail = "A rotation of this connection is running; try again when it has ended."
        elif state.step in MIGRATION_STEPS:
            wait = 1.0
            detail = ("A migration of this connection to the federated method stopped half way; finish it with "
                      "POST .../migrate-to-federated, then try again.")
        else:
            wait = (state.next_at - now).total_seconds() if state.next_at else 60.0
            detail = ("A rotation of this connection stopped half way and is resumed at its next attempt; finish it "
                      "now with POST .../rotate, then try again.")
        seconds = max(1, min(3600, math.ceil(wait)))
        raise RotationInProgress(detail, headers={"Retry-After": str(seconds)}, extensions=_in_progress(state, seconds))

    async def _finish_retirement(self, record: ConnectionRecord, raise_on_failure: bool) -> ConnectionRecord:
        """Remove what the service created on the application the connection left. When Graph refuses, the
        journal keeps it and the sweep tries again (with back-off); ``raise_on_failure`` answers 409 instead."""
        try:
            return await self.rotator.retire_leased(record)
        except ServiceError as error:
            if raise_on_failure and isinstance(error, LeaseLost):
                raise RotationInProgress(
                    "Another request or the rotation runner is changing this connection's credentials or cleaning "
                    "up after them; try again shortly.", headers={"Retry-After": "5"},
                    extensions=_in_progress(record.rotation, 5)) from None
            if raise_on_failure and isinstance(error, UpstreamThrottled):  # only busy: nothing to grant, wait
                raise UpstreamThrottled(f"{error.detail} The clean-up of the application this connection used "
                                        "before did not finish; try again later.",
                                        retry_after=error.retry_after) from None
            if raise_on_failure:  # (a removal not confirmed yet: when to ask again, as its Retry-After)
                raise CredentialsLeftLive(
                    "Credentials the service created on the application this connection used before could not "
                    f"be removed yet ({error.detail}); change the credentials again once they are.",
                    headers=error.headers if isinstance(error, RemovalUnconfirmed) else None,
                    extensions={"reason": error.detail},
                ) from None
            log.warning("Connection %s: the clean-up of the application it used before failed: %s", record.id,
                        error.detail)
            current = await self.store.get(record.app, record.id)  # the lease was taken and given back meanwhile
            state = current.rotation
            ours = state.lease_owner == self.rotator.owner  # a release of its own that got no answer
            if not same_clean_up(state, record.rotation) or (state.leased(self.now()) and not ours):
                return current  # done meanwhile, or another request's or worker's now
            waiting = retire_waiting(state, error, self.now(), keep_earlier=True)
            if ours:
                waiting = waiting.evolve(lease_owner=None, lease_until=None)
            try:
                saved = await self.store.update(current.evolve(rotation=waiting))
            except ConcurrentChange:
                return await self.store.get(record.app, record.id)
            return await self._sync_schedule(saved, state)

    async def _sync_schedule(self, record: ConnectionRecord, before: RotationState) -> ConnectionRecord:
        """Point the schedule index at the connection's next due time (or at nothing when nothing is due)."""
        state = record.rotation
        if state.schedule_key == before.schedule_key and state.next_at == before.next_at:
            return record

        async def point(key: str | None) -> ConnectionRecord:
            current = record
            for _ in range(3):
                if current.rotation.schedule_key == key:
                    return current
                try:
                    return await self.store.update(current.evolve(rotation=current.rotation.evolve(schedule_key=key)))
                except ConcurrentChange:
                    current = await self.store.get(record.app, record.id)
                # Another write (a health check, a validation, a rename) landed first: point it at the new entry
                # all the same, unless it moved the due time itself (its writer indexes that) or a rotation has
                # begun since (its end indexes its next due time; a change of its state would end its run).
                moved = current.rotation.next_at != state.next_at
                if moved or current.rotation.in_progress or current.rotation.leased(self.now()):
                    return current
            return current

        pointed = await reindex(self.adapters.schedule, before.schedule_key, state.next_at, record, point)
        indexed = state.schedule_key  # an entry the write of ``record`` indexed and pointed at itself
        if indexed not in (None, before.schedule_key, pointed.rotation.schedule_key):
            await self.adapters.schedule.remove(indexed)
        return pointed

    # -- rotation --------------------------------------------------------------------------------------------
    async def _rotate_after_change(self, record: ConnectionRecord, trigger: str) -> ConnectionRecord:
        """The rotation a create or an edit starts: the change is saved already, so however the rotation ends,
        the request succeeds and the connection's rotation status tells the outcome (a rotation that could not
        start is taken up by the sweep; one handed to the sweep is ``RotationContinues``)."""
        try:
            return (await self._rotate_now(record, trigger)).record
        except ServiceError as error:
            log.warning("Connection %s: the rotation after the change did not run (%s)", record.id, error.detail)
        except Exception as error:
            from azure.core.exceptions import AzureError

            if not isinstance(error, AzureError):
                raise
            log.warning("Connection %s: the rotation after the change did not run (%s)", record.id,
                        sentence(error))
        try:
            return await self.store.get(record.app, record.id)
        except ServiceError:
            return record

    async def _rotate_now(self, record: ConnectionRecord, trigger: str) -> Attempt:
        """Claim the rotation and run it: the attempt, ended; ``RotationContinues`` when it was handed to the sweep."""
        claimed = await self.rotator.claim(record, trigger)
        if claimed is None:
            current = await self.store.get(record.app, record.id)
            self._refuse_during_rotation(current)
            raise ConcurrentChange("The connection changed while the rotation was starting; try again.")
        attempt = await self.rotator.run(claimed)
        if attempt.handed_over:
            raise self._continues(attempt.record)
        return attempt

    def _continues(self, record: ConnectionRecord) -> RotationContinues:
        """What a request answers once its rotation (or migration) was handed to the sweep: read the connection
        again once the sweep may have finished it (the new credential's test is given ``test_timeout`` again)."""
        return RotationContinues(record, max(1, min(3600, math.ceil(self.rotator.options.test_timeout))))

    def _migrated(self, record: ConnectionRecord) -> ConnectionRecord:
        """A migration's end: the connection migrated; ``RotationContinues`` when its journal was handed to the sweep
        (a migration returns with its journal only then)."""
        if record.rotation.step in MIGRATION_STEPS:
            raise self._continues(record)
        return record

    async def rotate(self, app_id: str, connection_id: str, if_match: str | None = None) -> ConnectionRecord:
        """Rotate now, or finish a half-done rotation: the connection once it completed; ``RotationContinues`` when
        the request had to be answered while its new credential was still being tested (the sweep finishes it);
        otherwise a problem carrying the rotation's status and message. ``if_match``: only if the connection is
        still at that version (412 else)."""
        return await self._conditional(app_id, connection_id, if_match, self._rotate(app_id, connection_id, if_match))

    async def _rotate(self, app_id: str, connection_id: str, if_match: str | None) -> ConnectionRecord:
        app = require_app(app_id)
        record = await self.get(app.id, connection_id)
        require_match(record, if_match)
        method = Method(record.method)
        if record.rotation.step in MIGRATION_STEPS:  # a migration that stopped half way: finish it
            return self._migrated(await self.migrator.resume(record))
        if not method_spec(method).stores_secret:
            raise InvalidRequest(f"A {method.value} connection has no secret: there is nothing to rotate.",
                                 extensions={"method": method.value})
        if method not in app.rotation_methods:
            allowed = ", ".join(m.value for m in app.rotation_methods)
            raise InvalidRequest(f"A {method.value} connection cannot be rotated; rotation is available for the "
                                 f"{allowed} method.", extensions={"method": method.value})
        if record.status == STATUS_DELETING:
            raise being_deleted()
        state = record.rotation
        if not state.enabled and not state.in_progress:
            raise InvalidRequest("Automatic credential rotation is not enabled for this connection; enable it "
                                 "first (PATCH with isAutoRotationEnabled and rotation).")
        if state.leased(self.now()):
            self._refuse_during_rotation(record)
        if state.cleaning_up:
            record = await self._finish_retirement(record, raise_on_failure=True)
        attempt = await self._rotate_now(record, "manual")
        if attempt.succeeded:
            return attempt.record
        raise rotation_problem(attempt)

    # -- going secretless ------------------------------------------------------------------------------------
    async def migrate_to_federated(self, app_id: str, connection_id: str, body: Any,
                                   if_match: str | None = None) -> ConnectionRecord:
        """Move a client-secret or certificate connection to the federated method in one journaled, resumable step
        (:mod:`shared.rotation.migration`); a migration that stopped half way is finished by the same request.
        ``RotationContinues`` when the request had to be answered while the federated sign-in was still being
        tested (the sweep finishes the migration). ``if_match``: only if the connection is still at that version
        (412 else: nothing is added, switched or revoked)."""
        return await self._conditional(app_id, connection_id, if_match,
                                       self._migrate_to_federated(app_id, connection_id, body, if_match))

    async def _migrate_to_federated(self, app_id: str, connection_id: str, body: Any,
                                    if_match: str | None) -> ConnectionRecord:
        app = require_app(app_id)
        request = parse_model(MigrateToFederatedIn, body)  # an empty body is {} (the route); JSON null is no object
        record = await self.get(app.id, connection_id)
        require_match(record, if_match)
        if record.status == STATUS_DELETING:
            raise being_deleted()
        if record.rotation.step in MIGRATION_STEPS:
            return self._migrated(await self.migrator.resume(record))
        if not method_spec(record.method).migrates_to_federated:
            raise InvalidRequest(f"A {record.method} connection cannot be migrated to the federated method; only "
                                 "client-secret and certificate connections can.", extensions={"method": record.method})
        require_identity(self.adapters.settings, "/")
        refuse_service_application(self.adapters.settings, record.client_id or "", None)
        self._refuse_during_rotation(record)
        if record.rotation.cleaning_up:
            record = await self._finish_retirement(record, raise_on_failure=True)
        try:
            migrated = await self.migrator.start(record, request.revokeOriginal)
        except (SecretGone, VersionDisabled) as refusal:  # read before the migration's journal was written
            raise await self.vault_refusal(record, refusal) from None
        return self._migrated(migrated)

    # -- delete ----------------------------------------------------------------------------------------------
    async def delete(self, app_id: str, connection_id: str, force: bool = False, if_match: str | None = None,
                     ) -> Deleted:
        """Remove every credential the service created on the application, then the connection. When Graph
        refuses, 409 with the reason (nothing is deleted); ``force`` deletes anyway and lists what stays live.
        ``if_match``: only if the connection is still at that version (412 else)."""
        return await self._conditional(app_id, connection_id, if_match,
                                       self._delete(app_id, connection_id, force, if_match))

    async def _delete(self, app_id: str, connection_id: str, force: bool, if_match: str | None) -> Deleted:
        record = await self.get(app_id, connection_id)
        require_match(record, if_match)
        state = record.rotation
        now = self.now()
        if state.leased(now) and state.lease_owner is not None and not state.lease_owner.startswith("delete:"):
            self._refuse_during_rotation(record)
        if state.step in MIGRATION_STEPS:  # it finishes, or undoes itself when it cannot: then delete
            raise RotationInProgress(
                "A migration of this connection to the federated method stopped half way; finish it with POST "
                f"/api/v1/app-connections/{record.app}/{record.id}/migrate-to-federated (it completes, or removes "
                "what it added when the federated sign-in cannot work), then delete.",
                headers={"Retry-After": "1"}, extensions=_in_progress(state, 1))
        # Claim it first (ETag): no rotation starts on a connection being deleted, and no edit lands under us.
        owner = f"delete:{uuid.uuid4().hex}"
        marked = record.evolve(status=STATUS_DELETING, status_message="Being deleted.",
                               rotation=state.evolve(lease_owner=owner,
                                                     lease_until=now + timedelta(seconds=DELETE_LEASE_SECONDS)))
        before = record
        try:
            try:
                record = await self.store.update(marked)
            except Exception as error:  # its own mark, landed with its answer lost: marked all the same
                record = await self._landed(marked, error, lambda current: current.rotation.lease_owner == owner)
        except ConcurrentChange:
            if not await self._still_there(before):  # another DELETE finished it meanwhile
                raise NotFound(f"No {before.app} connection has the id '{before.id}': another request deleted it "
                               "meanwhile.") from None
            raise
        progress = Removals()
        left: list[str] = []
        unread: list[str] = []
        complete = True  # every removal done (or done by an earlier DELETE)

        unjournaled: list[ServiceError] = []  # the journal ahead of the last removal, not written

        async def journal(entry: JournalEntry) -> None:  # ahead of a last removal: see _removing
            nonlocal record
            try:
                record = await self._on_mark(record, entry)
            except ServiceError as error:
                unjournaled.append(error)
                raise

        try:
            left_behind: ServiceError | None = None
            try:
                await self.rotator.remove_all(record, progress, journal=journal, keep_going=force)
            except ServiceError as error:  # forced: the application in use is cleaned up all the same
                if not force or isinstance(error, HandOverIncomplete) or error in unjournaled:
                    raise
                left_behind = error
            progress.removed += await self._remove_federated_credential(record, journal)
            if left_behind is not None:
                raise left_behind
        except HandOverIncomplete as incomplete:  # every removal done; the connection stays, marked
            incomplete.detail += " The connection is marked as being deleted; send the DELETE again to finish it."
            raise
        except ServiceError as error:
            # Only the journal says the removals are done (``_removals_done``): a secret an earlier DELETE disabled
            # may be one that a forced DELETE, which left credentials live, got past.
            try:
                gone = not await self._still_there(record)
            except ServiceError:
                gone = False  # cannot tell: a removal that failed
            if gone:  # another DELETE, which came in meanwhile, finished it
                log.info("Connection %s was deleted by another DELETE meanwhile", record.id)
                return Deleted(record, progress.removed, [], [])
            if error in unjournaled and not force:  # so the last removal was not sent: Table Storage failed
                released = await self._release(record, before, progress, owner)
                error.detail += (" The connection was not deleted; send the DELETE again." if released else
                                 " The connection is marked as being deleted; send the DELETE again to finish it.")
                raise
            if await self._removing(record, error, force, progress):
                complete = True
            else:
                left, unread = await self._removal_failed(record, before, progress, error, force, owner)
                complete = False
        removed = progress.removed
        if record.method == Method.OAUTH:
            self.oauth_tokens.forget(record)
        try:
            if complete:
                record = await self._removals_done(record)
            if method_spec(record.method).stores_secret:
                await self.vault.disable_others(record.secret_name, "")
                await self.vault.delete(record.secret_name)
            try:
                await self.store.delete(record)
            except Exception as error:  # gone all the same (only a DELETE deletes it): another DELETE's meanwhile,
                if not failed_upstream(error) or await self._still_there(record):  # or its own, its answer lost
                    raise
                log.info("Connection %s is deleted (by another DELETE meanwhile, or its answer was lost: %s)",
                         record.id, detail_of(error))
        except NotFound:  # another DELETE, which came in while this one removed, finished it
            log.info("Connection %s was deleted by another DELETE meanwhile", record.id)
            return Deleted(record, progress.removed, left, unread)
        except ServiceError as error:  # past its removals: the mark stays, and the next DELETE finishes it
            error.detail += " The connection is marked as being deleted; send the DELETE again to finish it."
            raise
        await self._forget_indexes(record)
        log.info("Deleted %s connection %s (%d service-created secrets removed, %d left live)", record.app,
                 record.id, len(removed), len(left))
        return Deleted(record, removed, left, unread)

    async def _removing(self, record: ConnectionRecord, error: ServiceError, force: bool,
                        progress: Removals) -> bool:
        """A DELETE's removals that failed once the journal said the last one, of the credential in use, was sent
        (``removing_key_id``, by this DELETE or an earlier one; nothing else is left to remove by then). That
        credential refused by Entra as a removal leaves it (:meth:`_refusal_means_removed`), and still refused
        ``REMOVAL_CONFIRMATION_SECONDS`` after the first such refusal (:func:`removal_confirmation_wait`, the rule a
        clean-up's last removal follows too; journaled: ``removing_refused_at``; until then a 409 with Retry-After,
        or, forced, the credential listed as left live), means the removal went through (or the user revoked it):
        the removals are done (True). An expired secret (AADSTS7000222) is
        still on the application, and a refusal for another reason (the application disabled, a Conditional Access
        policy) tells nothing, nor does a vault version that a forced DELETE cleaned up: as before the journal
        (False). An answer that did not come (a 5xx, a timeout) leaves its outcome unknown: the
        mark stays, and a plain DELETE says to send it again. A refusal (a 4xx) is a removal that failed (False)."""
        state = record.rotation
        if state.removing_key_id is None or state.removing_key_id.lower() != (state.key_id or "").lower():
            return False
        if isinstance(error, CredentialRejected):
            code = str(error.extensions.get("aadstsCode") or "")
            if not self._refusal_means_removed(record, code):
                return False
            now = self.now()
            window = timedelta(seconds=self.adapters.settings.removal_confirmation_seconds)
            wait = removal_confirmation_wait(state.removing_refused_at, now, window)
            if wait is not None:
                # Not yet proof: Entra ID's parts learn of a new credential (one a rotation just made, say) within
                # minutes, and one that has not may refuse it though the removal failed. A forced DELETE lists it
                # as left live; a plain one keeps the mark, and the refusal is asked for again later.
                if force:
                    return False
                if state.removing_refused_at is None:
                    try:
                        await self._on_mark(record, lambda state: state if state.removing_refused_at else state.evolve(
                            removing_refused_at=now))
                    except ServiceError as unwritten:  # the next DELETE's refusal starts the wait again
                        log.warning("Connection %s: the first refusal of its credential in use was not journaled "
                                    "(%s)", record.id, detail_of(unwritten))
                raise RemovalUnconfirmed(
                    f"Entra ID refuses the credential in use ({code}), whose removal, the last, was sent; a change "
                    f"can take minutes to reach every part of Entra ID, so the removal is taken as done only if Entra "
                    f"ID still refuses it {window.total_seconds():g} s after it first did. "
                    f"The connection is marked as being deleted; send the DELETE again in {wait} s, or delete with "
                    "?force=true to list the credential as left live.",
                    headers={"Retry-After": str(wait)},
                    extensions={"reason": error.detail, "keyIds": [state.removing_key_id], "applicationsNotRead": []},
                ) from None
            if record.method == Method.FEDERATED:
                await self.rotator.audit.record(
                    "credential.remove", "confirmed", app=record.app, connection_id=record.id,
                    detail=f"Federated identity credential {state.removing_key_id} on the application "
                           f"{record.client_id}: its removal was sent before, and the service's identity still does "
                           f"not sign in there {window.total_seconds():g} s after it first did not.")
            progress.removed.append(state.removing_key_id)
            return True
        if isinstance(error, (SecretGone, VersionDisabled)):  # its vault version, cleaned up by a forced DELETE
            return False
        if error.status >= 500 and not force:
            error.detail += (f" The removal of the credential in use (Key ID {state.removing_key_id}), the last, may "
                             "have been made; the connection is marked as being deleted; send the DELETE again to "
                             "finish it.")
            raise error
        return False

    def _refusal_means_removed(self, record: ConnectionRecord, code: str) -> bool:
        """Entra's refusal of the credential in use, whose removal was sent, is one a removal gives (subject to
        ``REMOVAL_CONFIRMATION_SECONDS``): a secret or an unexpired certificate unknown (``CREDENTIAL_UNKNOWN``: a
        certificate's key expired is refused as one not found); for a federated credential, none matching the
        service's identity (``NO_MATCH_CODES``) while the service still has the identity it named when sent."""
        state = record.rotation
        if record.method == Method.FEDERATED:
            return refused_as_removed(federation_identity(self.adapters.settings), code, state.removing_identity)
        expires = record.health.credential_expires_at
        return code in CREDENTIAL_UNKNOWN and not (
            code == "AADSTS700027" and (expires is None or expires <= self.now()))

    async def _removals_done(self, record: ConnectionRecord) -> ConnectionRecord:
        """A DELETE's removals all done, journaled before the vault's clean-up: nothing the service created is left
        to remove (a DELETE sent again after a failure past this point goes straight on, rather than signing in
        with the credential in use, which the removals revoked when it was the service's)."""
        await self.rotator.close_interrupted(record)  # a rotation's worker that died: its attempt ends here
        # A federated connection's credential is removed by then, or kept by another connection: it is no longer
        # this one's to remove (a DELETE sent again does not sign in with it).
        federated = {"key_id": None, "key_tenant_id": None} if record.method == Method.FEDERATED else {}
        return await self._on_mark(record, lambda state: state.left_behind_forgotten().evolve(
            **federated,
            managed=False, key_made=False, removing_key_id=None, removing_identity=None, removing_refused_at=None,
            rotation_id=None, step=None,
            attempt=0,
            attempt_started_at=None, pending_key_id=None, pending_version=None, pending_expires_at=None,
            previous_key_id=None, previous_version=None))

    async def _on_mark(self, record: ConnectionRecord,
                       change: Callable[[RotationState], RotationState]) -> ConnectionRecord:
        """A DELETE's journal entry (``change`` of the rotation state), written on top of another DELETE's mark (it
        may have come in while this one's removals ran); none when there is nothing to change. ``NotFound``: another
        DELETE finished it; ``ConcurrentChange``: it is no longer being deleted."""
        current = record
        for _ in range(3):
            state = current.rotation
            changed = change(state)
            if changed == state:
                return current
            try:
                return await self.store.update(current.evolve(rotation=changed))
            except ConcurrentChange:
                current = await self.store.get(record.app, record.id)
                if current.status != STATUS_DELETING:
                    raise
        raise ConcurrentChange(f"The connection '{record.id}' kept changing while it was being deleted.")

    async def _forget_indexes(self, record: ConnectionRecord) -> None:
        """A deleted connection's schedule and health-check entries and its rotation history. Best effort: the
        connection is gone whatever happens here (the sweeps drop an entry whose connection is gone)."""
        def failed(what: str) -> Callable[[Exception], None]:  # each on its own: one failing keeps no other
            return lambda error: log.warning("Connection %s is deleted; its %s entries are not all (%s)", record.id,
                                             what, detail_of(error))

        with best_effort(failed("schedule")):
            await self.adapters.schedule.remove(record.rotation.schedule_key)
        with best_effort(failed("health-check")):
            await self.adapters.health_index.remove(record.health.check_key)
        with best_effort(failed("history")):
            await self.adapters.history.delete_all(record.id)

    async def _removal_failed(self, record: ConnectionRecord, before: ConnectionRecord, progress: Removals,
                              error: ServiceError, force: bool, owner: str) -> tuple[list[str], list[str]]:
        """A DELETE's removals failed: without ``force`` the connection is as it was and the answer a 409 naming what
        stays live; with it, what stays live is audited and returned."""
        left, unread = self._left_live(record, progress)
        where = (f" The application {', '.join(unread)} could not be read, so what the service created there is "
                 "not listed (but the Key IDs the connection records): its display name starts with "
                 f"'{connection_marker(record.id)}'." if unread else "")
        if not force:  # (a forced one goes on to the application in use, its credential in use removed last)
            outcome = ("the connection was not deleted" if await self._release(record, before, progress, owner)
                       else "the connection is still marked as being deleted")
            if isinstance(error, UpstreamThrottled):  # only busy: try again later, nothing need be left live
                raise UpstreamThrottled(f"{error.detail} The credentials the service created on the application are "
                                        f"not all removed yet; {outcome}. Send the DELETE again later.",
                                        retry_after=error.retry_after) from None
            unconfirmed = isinstance(error, RemovalUnconfirmed)  # not refused: send it again once the wait is over
            raise CredentialsLeftLive(
                f"The credentials the service created on the application could not be removed "
                f"({error.detail}); {outcome}. "
                f"{'Send the DELETE again then' if unconfirmed else 'Grant the permission and try again'}, or "
                f"delete with ?force=true to leave them live.{where}",
                headers=error.headers if unconfirmed else None,
                extensions={"reason": error.detail, "keyIds": left, "applicationsNotRead": unread},
            ) from None
        await self.rotator.audit.record(
            "connection.delete", "credentials-left-live", app=record.app, connection_id=record.id,
            connection_name=record.name,
            detail=f"Left live by ?force=true: Key IDs {', '.join(left) or 'none known'}.{where}")
        return left, unread

    async def _still_there(self, record: ConnectionRecord) -> bool:
        try:
            await self.store.get(record.app, record.id)
        except NotFound:
            return False
        return True

    @staticmethod
    def _left_live(record: ConnectionRecord, progress: Removals) -> tuple[list[str], list[str]]:
        """After a removal pass that failed: the Key IDs still live that the service created (those it found on
        each application it read and did not remove; for the one in use, not read, those the record names as the
        service's), and the client IDs of the applications it could not read (what else the service created there
        is found by its display name). The credential the user gave is never listed."""
        state = record.rotation
        client_id = record.client_id or ""
        left: list[str] = []
        unread: list[str] = []
        if state.retire_federated_id is not None:  # unless its pass there was done (removed, kept, or gone)
            if state.retire_client_id not in progress.found:
                left.append(state.retire_federated_id)
        elif state.retire_version is not None and state.retire_client_id:
            if state.retire_client_id in progress.found:
                left += progress.left(state.retire_client_id)
            else:
                unread.append(state.retire_client_id)
        if client_id in progress.found:
            left += progress.left(client_id)
        elif removes_in_use(record):
            left += [key for key in (state.key_id if state.made_in_use else None, state.pending_key_id) if key]
            unread.append(client_id)
        if record.method == Method.FEDERATED and state.key_id and state.key_id not in progress.removed:
            left.append(state.key_id)
        return list(dict.fromkeys(left)), list(dict.fromkeys(unread))

    async def _remove_federated_credential(self, record: ConnectionRecord, journal: Journal) -> list[str]:
        """The federated credential the service added to the application that this connection tracks (``key_id``:
        its migration's, or handed over to it), unless another connection of the same application relies on it.
        Its removal, the DELETE's last, is journaled ahead (``removing_key_id``, with the identity it names): once
        sent, the service's sign-in there refused as matching no federated credential means it went (a DELETE
        sent again after an answer lost finishes)."""
        if record.method != Method.FEDERATED:
            return []
        state = record.rotation
        key_id = state.key_id or ""

        async def ahead(identity: str) -> None:
            await journal(lambda state: state.evolve(removing_key_id=key_id, removing_identity=identity,
                                                     removing_refused_at=None))

        # Sent before: a refusal is judged by _removing, which asks for it to hold REMOVAL_CONFIRMATION_SECONDS.
        return await self.rotator.remove_federated(record, credential_tenant(record), key_id, before_removal=ahead)

    async def _release(self, record: ConnectionRecord, before: ConnectionRecord, progress: Removals,
                       owner: str) -> bool:
        """Undo this DELETE's mark (``owner``'s): the connection is as it was, but for a clean-up of the application
        it left that this DELETE's removals finished (which can no longer sign in: it removed its own credential
        last). False when the mark is another DELETE's now (its journal was written on top of it: that one goes on)
        or the connection changed meanwhile, or Table Storage failed: the mark may stay, and the next DELETE
        finishes it."""
        if record.rotation.lease_owner != owner:
            return False
        state = before.rotation
        left_behind = state.retire_client_id
        if (state.retire_federated_id is not None and left_behind and left_behind in progress.found
                and not progress.left(left_behind)):  # its federated credential there: removed, kept, or gone
            before = before.evolve(rotation=clean_up_forgotten(state))
        elif (state.retire_version is not None and left_behind and not retires_in_use(before)
                and left_behind in progress.found and not progress.left(left_behind)):
            before = before.evolve(rotation=state.left_behind_forgotten())
            await self.rotator.disable_left_behind(record, state.retire_version)
        elif state.cleaning_up and same_clean_up(record.rotation, state):
            # That clean-up's journal, as this DELETE wrote it: its last removal may have gone through.
            before = before.evolve(rotation=state.clean_up_sent_as(record.rotation))
        moved = record.rotation.schedule_key
        if moved != state.schedule_key:
            # The sweep moved the due entry while the connection was marked (it puts off one left marked, and this
            # DELETE may have outlived its lease): the entry that exists is the one the record points at now.
            kept = before.rotation
            before = before.evolve(rotation=kept.evolve(
                schedule_key=moved, next_at=record.rotation.next_at if kept.next_at is not None else None))
        try:
            await self.store.update(before.evolve(etag=record.etag))
        except ServiceError as error:  # ConcurrentChange: another request's write came first
            log.info("Connection %s: its deletion was not undone (%s)", record.id, detail_of(error))
            return False
        return True

    # -- validate --------------------------------------------------------------------------------------------
    async def validate(self, app_id: str, connection_id: str, if_match: str | None = None) -> ConnectionRecord:
        """Acquire a token now and record the outcome (status, lastValidatedAt). ``if_match``: only if the
        connection is still at that version (412 else)."""
        return await self._conditional(app_id, connection_id, if_match,
                                       self._validate(app_id, connection_id, if_match))

    async def _validate(self, app_id: str, connection_id: str, if_match: str | None) -> ConnectionRecord:
        app = require_app(app_id)
        record = await self.get(app.id, connection_id)
        require_match(record, if_match)
        if record.status == STATUS_DELETING:
            raise being_deleted()
        if record.method == Method.OAUTH:
            return await self._validate_oauth(app, record)
        material = await self.material_of(record)
        try:
            await self.probe(app, Method(record.method), record.tenant_id, record.client_id or "", material)
        except CredentialRejected as rejected:
            current = await self.record_status(record, STATUS_INVALID, rejected.detail)
            if current.secret_version != record.secret_version:  # Entra refused a credential replaced meanwhile
                raise ConcurrentChange("The connection's credential changed while it was being validated; "
                                       "validate it again.") from None
            raise
        return await self.record_status(record, STATUS_ACTIVE, None)

    async def _validate_oauth(self, app: AppSpec, record: ConnectionRecord) -> ConnectionRecord:
        try:
            record = await self.oauth_tokens.refresh_now(app, record)
        except ReauthorizationRequired as error:
            error.extensions["connectionStatus"] = STATUS_REAUTHORIZATION_REQUIRED
            hint = f" Authorize it again: GET /api/v1/app-connections/{app.id}/oauth/authorize?connectionId={record.id}"
            # against the version refused (a refresh elsewhere may have moved the connection to it meanwhile)
            await self.record_status(error.record or record, STATUS_REAUTHORIZATION_REQUIRED, error.detail + hint)
            raise
        except CredentialRejected as error:
            await self.record_status(record, STATUS_INVALID, error.detail)
            raise
        return await self.record_status(record, STATUS_ACTIVE, None)

    # -- OAuth: created and re-authorized by signing in ------------------------------------------------------
    async def create_oauth(self, app: AppSpec, name: str, description: str | None, tenant_id: str, client_id: str,
                           refresh_token: str, authorized_by: Authorization | None) -> ConnectionRecord:
        record = self.new_record(app, Method.OAUTH, name, description, tenant_id, client_id)
        return await self.insert_new(record.evolve(authorized_by=authorized_by), {"refreshToken": refresh_token},
                                     self.now() + REFRESH_TOKEN_LIFETIME)

    async def reauthorize(self, app: AppSpec, connection_id: str, tenant_id: str, client_id: str,
                          refresh_token: str, name: str | None, description: str | None,
                          authorized_by: Authorization | None,
                          check: Callable[[ConnectionRecord], None] | None = None) -> ConnectionRecord:
        """The new refresh token becomes current (the superseded ones are disabled), the status active; ``check``
        may refuse (raise) on the connection as it is before anything is written."""
        record = await self.store.get(app.id, connection_id)
        for _ in range(3):  # a concurrent validation or refresh changed the record: apply ours on top
            if record.status == STATUS_DELETING:
                raise being_deleted()
            if check is not None:
                check(record)
            changes: dict[str, Any] = {
                "tenant_id": tenant_id, "client_id": client_id, "status": STATUS_ACTIVE, "status_message": None,
                "last_validated_at": self.now(), "updated_at": self.now(), "version": record.version + 1,
                # The person whose grant the new refresh token is, never the one before (None when Entra named none).
                "updated_by": acting_actor(), "authorized_by": authorized_by,
            }
            renamed = name is not None and name != record.name
            if renamed:
                changes["name"] = name
            if description is not None:
                changes["description"] = description
            # The new grant just worked (its code was redeemed): the health of a refresh token that is new, and
            # ``recovered`` after a failure, as a PATCH of credentials does; the next check stays where it was.
            fresh = self._fresh_health(record, self.now() + REFRESH_TOKEN_LIFETIME).evolve(
                check_key=record.health.check_key, next_check_at=record.health.next_check_at)
            notices, changes["health"] = health_notices(record.evolve(**changes), fresh, self.now(), remind=False)
            try:
                saved = await self.switch_secret(record, {"refreshToken": refresh_token},
                                                 self.now() + REFRESH_TOKEN_LIFETIME, changes,
                                                 previous_name=record.name if renamed else None, notify=notices,
                                                 repair=True)
            except ConcurrentChange:
                record = await self.store.get(app.id, connection_id)
                continue
            self.oauth_tokens.forget(saved)
            return saved
        raise ConcurrentChange(f"The connection '{connection_id}' kept changing; nothing was saved.")

    async def store_refresh_token(self, record: ConnectionRecord, refresh_token: str) -> tuple[ConnectionRecord,
                                                                                                 bool]:
        """Keep the refresh token Entra rotated to (the old one may no longer work): the connection afterwards, and
        whether it holds that token. When the connection moved to another refresh token meanwhile (re-authorized,
        or refreshed elsewhere), that one is newer and stays."""
        used = record.secret_version
        current = record
        audit = self.rotator.audit
        where = {"app": record.app, "connection_id": record.id, "connection_name": record.name}
        # New secret material in Key Vault: audited before it is written (fail closed) and after.
        await audit.record(STORE_REFRESH_TOKEN, STARTED, **where, detail="Entra rotated the refresh token")
        try:
            for _ in range(5):
                try:
                    saved = await self.switch_secret(current, {"refreshToken": refresh_token},
                                                     self.now() + REFRESH_TOKEN_LIFETIME, {})
                    await audit.record(STORE_REFRESH_TOKEN, "succeeded", **where)
                    return saved, True
                except ConcurrentChange:
                    current = await self.store.get(record.app, record.id)
                    if current.secret_version != used:
                        await audit.record(STORE_REFRESH_TOKEN, "superseded", **where,
                                           detail="another refresh token became current meanwhile")
                        return current, False
            raise ConcurrentChange(
                f"The connection '{record.id}' kept changing; its refresh token could not be saved.")
        except Exception as error:
            await audit.record(STORE_REFRESH_TOKEN, "failed", **where, detail=type(error).__name__)
            raise


def app_list_key(connection_id: str, tenant_id: str) -> str:
    """The key of a connection's list of app registrations (``GET .../{connectionId}/clients``), which its
    continuation tokens carry (``shared.azure.graph``), as an audit search's carry the digest of its filters: a
    short digest of the connection and the tenant it lists (new credentials in another tenant: another list)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps([connection_id, tenant_id.lower()]).encode()).hexdigest()[:16]


def comes_back(record: ConnectionRecord, client_id: str) -> bool:
    """New credentials of a federated connection for the application it left (in any tenant: a multi-tenant
    application's federated credential is on its one application object), whose clean-up (the removal of the
    federated credential the service added there) is still pending: it takes that credential back instead."""
    state = record.rotation
    return (record.method == Method.FEDERATED and state.retire_federated_id is not None
            and client_id.lower() == (state.retire_client_id or "").lower())


def federated_credential_kept(record: ConnectionRecord, tenant_id: str, client_id: str) -> str | None:
    """New credentials of a federated connection: the federated credential the service added (``key_id``, which a
    DELETE removes) stays the connection's on the same application; on another one there is none (the one it
    leaves is handed over before the change is saved, or its removal is journaled with it: ``retire_federated_id``,
    made after the save or by the sweep)."""
    same = (tenant_id.lower(), client_id.lower()) == (record.tenant_id.lower(), (record.client_id or "").lower())
    return record.rotation.key_id if same else None


def refuse_rotation_of_secretless(method: Method, pointer: str) -> None:
    if not method_spec(method).stores_secret:
        raise InvalidRequest(f"A {method.value} connection has no secret: there is nothing to rotate.",
                             errors=[FieldError(pointer, f"{method.value} connections are not rotated")],
                             extensions={"method": method.value})


def configured(state: RotationState, config: RotationConfig | None, enabled: bool, now: datetime,
               expires: datetime | None = None) -> RotationState:
    """``state`` with the rotation schedule and switch applied (history and last rotation kept), due never later
    than the grace period before the credential in use ends (``expires``). One never rotated is due within
    ``FIRST_BACKOFF`` (its first rotation follows the request; should it not start, the sweep's)."""
    if config is not None:
        state = state.evolve(interval_days=config.interval_days, rotate_at=config.rotate_at,
                             time_zone=config.time_zone)
    if not enabled:
        return state.evolve(enabled=False, next_at=None, status=STATUS_DISABLED if state.status else None,
                            failing_since=None)
    state = state.evolve(enabled=True, status=state.status or STATUS_SCHEDULED)
    due = scheduled_rotation(state, expires)
    if due is not None:
        state = state.evolve(next_at=due)
    elif state.next_at is None:
        state = state.evolve(next_at=now + FIRST_BACKOFF)
    return state


def rotation_problem(attempt: Attempt) -> ServiceError:
    """The problem a rotation that did not complete answers: 502 when Azure failed, 503 with ``Retry-After`` when
    it was still throttling (trying later is all there is to do), 400 when the connection's own credentials or
    permissions are what is wrong (its owner must fix them); with the rotation's status."""
    error = attempt.error
    state = attempt.record.rotation
    extensions: dict[str, Any] = {"rotation": state_response(state)}
    detail = state.message or (error.detail if error else "The rotation did not complete.")
    if error is not None:
        extensions.update({k: v for k, v in error.extensions.items() if k not in extensions})
    if isinstance(error, UpstreamThrottled):
        return UpstreamThrottled(detail, retry_after=error.retry_after, extensions=extensions)
    if error is not None and 400 <= error.status < 500:
        return RotationRefused(detail, extensions=extensions)
    return RotationFailed(detail, extensions=extensions)

