"""Create, read, update, delete and validate app connections.

Validation comes first and nothing is stored when it fails. Secret material goes to Key
Vault, metadata to Table Storage; the order of writes is chosen so that a failure leaves
no secret behind that no connection points at.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from shared.apps import AppSpec, Method, find_app
from shared.azure.clients import AzureClients
from shared.credentials import acquire_token, parse_certificate
from shared.errors import Conflict, CredentialRejected, FieldError, InvalidRequest, NotFound
from shared.models import (
    CertificateCredentialsIn,
    ClientSecretCredentialsIn,
    CreateConnectionIn,
    UpdateConnectionIn,
    parse_credentials,
    parse_method,
    parse_model,
)
from shared.rotation.config import RotationConfig, parse_rotation, require_rotatable, resolve_key_id
from shared.rotation.protocol import RotationOptions, Rotator
from shared.rotation.state import (
    STATUS_DISABLED,
    STATUS_SCHEDULED,
    RotationState,
    read_state,
    state_response,
    with_state,
)
from shared.store.history import RotationHistory
from shared.store.schedule import ScheduleIndex
from shared.store.tables import ConnectionRecord, ConnectionsTable
from shared.store.vault import SecretVault, secret_name_for

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

STATUS_ACTIVE = "active"
STATUS_INVALID = "invalid"


def require_app(app_id: str) -> AppSpec:
    app = find_app(app_id)
    if app is None:
        raise NotFound(f"There is no app '{app_id}'.")
    return app


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def to_response(record: ConnectionRecord) -> dict[str, Any]:
    """The public view of a connection: never a secret, key or token."""
    credentials: dict[str, Any] = {"tenantId": record.tenant_id}
    if record.method != Method.OAUTH and record.client_id:
        credentials["clientId"] = record.client_id
    return {
        "id": record.id,
        "name": record.name,
        "description": record.description,
        "app": record.app,
        "method": record.method,
        "credentials": credentials,
        "createdAt": _iso(record.created_at),
        "updatedAt": _iso(record.updated_at),
        "version": record.version,
        "status": record.status,
        "statusMessage": record.status_message,
        "lastValidatedAt": _iso(record.last_validated_at),
        "isAutoRotationEnabled": read_state(record).enabled,
        "rotation": state_response(read_state(record)),
    }


Credentials = ClientSecretCredentialsIn | CertificateCredentialsIn


def _material(credentials: Credentials) -> dict[str, str]:
    if isinstance(credentials, ClientSecretCredentialsIn):
        return {"clientSecret": credentials.clientSecret}
    return {"certificateBody": credentials.certificateBody, "privateKey": credentials.privateKey}


def _check_credentials(method: Method, raw: Any) -> Credentials:
    credentials = parse_credentials(method, raw)
    if isinstance(credentials, CertificateCredentialsIn):
        parse_certificate(credentials.certificateBody, credentials.privateKey)
    return credentials


class ConnectionService:
    def __init__(self, clients: AzureClients, now: Callable[[], datetime] | None = None) -> None:
        self.clients = clients
        self.table = ConnectionsTable(clients)
        self.vault = SecretVault(clients)
        self.now = now or (lambda: datetime.now(UTC))

    def rotator(self) -> Rotator:
        settings = self.clients.settings
        options = RotationOptions(test_timeout=settings.rotation_test_timeout_seconds)
        return Rotator(self.clients, options=options, now=self.now)

    async def _validate(self, app: AppSpec, method: Method, tenant_id: str, client_id: str,
                        material: Mapping[str, str]) -> None:
        await acquire_token(self.clients, app, method, tenant_id, client_id, material)

    # -- create ----------------------------------------------------------------------------
    async def create(self, app_id: str, body: Any) -> ConnectionRecord:
        app = require_app(app_id)
        request = parse_model(CreateConnectionIn, body)
        method = parse_method(app.methods, request.method)
        if method is Method.OAUTH:
            raise InvalidRequest(
                "OAuth connections are created by signing in.",
                errors=[FieldError("/method", f"start with GET /api/v1/app-connections/{app.id}/oauth/authorize")],
            )
        credentials = _check_credentials(method, request.credentials)
        config = parse_rotation(request.rotation) if request.rotation is not None else None
        if request.isAutoRotationEnabled:
            require_rotatable(method, app.rotation_methods)
            if config is None:
                raise InvalidRequest(
                    "Automatic rotation needs a schedule.",
                    errors=[FieldError("/rotation", "is required when isAutoRotationEnabled is true")],
                )
        elif config is not None:
            require_rotatable(method, app.rotation_methods)
        await self._ensure_name_free(app.id, request.name)
        material = _material(credentials)
        await self._validate(app, method, credentials.tenantId, credentials.clientId, material)
        key_id = credentials.clientSecretKeyId if isinstance(credentials, ClientSecretCredentialsIn) else None
        if request.isAutoRotationEnabled:
            assert isinstance(credentials, ClientSecretCredentialsIn)
            key_id = await resolve_key_id(
                self.clients, credentials.tenantId, credentials.clientId, credentials.clientSecret, key_id
            )

        connection_id = str(uuid.uuid4())
        secret_name = secret_name_for(connection_id)
        version = await self.vault.put(
            secret_name, material, {"connectionId": connection_id, "app": app.id, "method": method.value}
        )
        now = self.now()
        record = ConnectionRecord(
            app=app.id,
            id=connection_id,
            name=request.name,
            description=request.description,
            method=method.value,
            tenant_id=credentials.tenantId,
            client_id=credentials.clientId,
            created_at=now,
            updated_at=now,
            secret_name=secret_name,
            secret_version=version,
            last_validated_at=now,
        )
        record = with_state(record, _configured(RotationState(key_id=key_id), config, request.isAutoRotationEnabled))
        try:
            record = await self.table.insert(record)
        except BaseException:
            await self.vault.delete(secret_name)
            raise
        log.info("Created %s connection %s (%s)", app.id, connection_id, method.value)
        if request.isAutoRotationEnabled:
            record = await self.rotate(app.id, record.id, trigger="enable")
        return record

    async def _ensure_name_free(self, app_id: str, name: str) -> None:
        try:
            await self.table.get_by_name(app_id, name)
        except NotFound:
            return
        raise Conflict(f"A connection named '{name}' already exists for {app_id}.")

    # -- read ------------------------------------------------------------------------------
    async def get(self, app_id: str, connection_id: str) -> ConnectionRecord:
        return await self.table.get(require_app(app_id).id, connection_id.lower())

    async def get_by_name(self, app_id: str, name: str) -> ConnectionRecord:
        return await self.table.get_by_name(require_app(app_id).id, name)

    async def list_connections(
        self, app_id: str, limit: int | None, continuation: str | None
    ) -> tuple[list[ConnectionRecord], str | None]:
        app = require_app(app_id)
        size = DEFAULT_PAGE_SIZE if limit is None else limit
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidRequest(
                "The page size is out of range.",
                errors=[FieldError("/limit", f"must be between 1 and {MAX_PAGE_SIZE}")],
            )
        return await self.table.list_page(app.id, size, continuation)

    # -- update ----------------------------------------------------------------------------
    async def update(self, app_id: str, connection_id: str, body: Any) -> ConnectionRecord:
        app = require_app(app_id)
        request = parse_model(UpdateConnectionIn, body)
        record = await self.get(app.id, connection_id)
        method = Method(record.method)
        changes: dict[str, Any] = {}
        if "name" in request.model_fields_set:
            if request.name is None:
                raise InvalidRequest("A connection needs a name.", errors=[FieldError("/name", "must not be null")])
            if request.name != record.name:
                changes["name"] = request.name
        if "description" in request.model_fields_set and request.description != record.description:
            changes["description"] = request.description
        state = read_state(record)
        new_state = state
        rotate_after = False
        config = parse_rotation(request.rotation) if request.rotation is not None else None
        enabling = request.isAutoRotationEnabled is True and not state.enabled
        disabling = request.isAutoRotationEnabled is False and state.enabled
        if request.isAutoRotationEnabled or config is not None:
            require_rotatable(method, app.rotation_methods)
        if (enabling or disabling or config is not None) and state.rotation_id is not None:
            raise Conflict("A rotation of this connection is under way or half done; rotate it now to finish it, "
                           "then change its rotation settings.")
        if enabling and config is None and state.interval_days is None:
            raise InvalidRequest(
                "Automatic rotation needs a schedule.",
                errors=[FieldError("/rotation", "is required when isAutoRotationEnabled is true")],
            )
        if config is not None or enabling or disabling:
            enabled = state.enabled if request.isAutoRotationEnabled is None else request.isAutoRotationEnabled
            new_state = _configured(state, config, enabled)
            rotate_after = enabling
        new_version: str | None = None
        if request.credentials is not None:
            if method is Method.OAUTH:
                raise InvalidRequest(
                    "OAuth credentials are changed by signing in again.",
                    errors=[FieldError("/credentials", "re-authorize through the oauth/authorize route")],
                )
            credentials = _check_credentials(method, request.credentials)
            material = _material(credentials)
            await self._validate(app, method, credentials.tenantId, credentials.clientId, material)
            new_version = await self.vault.put(
                record.secret_name, material, {"connectionId": record.id, "app": app.id, "method": method.value}
            )
            changes.update(
                tenant_id=credentials.tenantId,
                client_id=credentials.clientId,
                secret_version=new_version,
                status=STATUS_ACTIVE,
                status_message=None,
                last_validated_at=self.now(),
            )
            if isinstance(credentials, ClientSecretCredentialsIn):
                new_state = new_state.evolve(key_id=credentials.clientSecretKeyId)
                rotate_after = rotate_after or new_state.enabled
        if rotate_after:
            assert new_version is not None or record.method == Method.CLIENT_SECRET
            secret = (material if new_version is not None else
                      await self.vault.get(record.secret_name, record.secret_version))["clientSecret"]
            tenant_id = changes.get("tenant_id", record.tenant_id)
            client_id = changes.get("client_id", record.client_id) or ""
            key_id = await resolve_key_id(self.clients, tenant_id, client_id, secret, new_state.key_id)
            new_state = new_state.evolve(key_id=key_id)
        if not changes and new_state == state:
            return record
        updated = with_state(record, new_state).evolve(**changes, version=record.version + 1, updated_at=self.now())
        try:
            saved = await self.table.update(updated, previous_name=record.name if "name" in changes else None)
        except BaseException:
            if new_version is not None:
                await self.vault.disable(record.secret_name, new_version)
            raise
        log.info("Updated %s connection %s to version %d", app.id, record.id, saved.version)
        saved = await self._sync_schedule(saved, state)
        if rotate_after:
            saved = await self.rotate(app.id, saved.id, trigger="enable")
        return saved

    async def _sync_schedule(self, record: ConnectionRecord, before: RotationState) -> ConnectionRecord:
        """Point the schedule index at the connection's next due time (or at nothing when disabled)."""
        state = read_state(record)
        if state.schedule_key == before.schedule_key and state.next_at == before.next_at:
            return record
        index = ScheduleIndex(self.clients)
        key = await index.put(state.next_at, record.app, record.id) if state.next_at else None
        if key != state.schedule_key:
            record = await self.table.update(with_state(record, state.evolve(schedule_key=key)))
        if before.schedule_key and before.schedule_key != key:
            await index.remove(before.schedule_key)
        return record

    # -- rotation --------------------------------------------------------------------------
    async def rotate(self, app_id: str, connection_id: str, trigger: str = "manual") -> ConnectionRecord:
        """Rotate now (or finish a half-done rotation); a rotation already under way elsewhere is a 409."""
        app = require_app(app_id)
        record = await self.get(app.id, connection_id)
        require_rotatable(Method(record.method), app.rotation_methods)
        state = read_state(record)
        if not state.enabled and state.rotation_id is None:
            raise Conflict("Automatic credential rotation is not enabled for this connection; enable it first.")
        rotator = self.rotator()
        claimed = await rotator.claim(record, trigger)
        if claimed is None:
            raise Conflict("A rotation of this connection is already under way.")
        return await rotator.run(claimed)

    async def rotations(
        self, app_id: str, connection_id: str, limit: int | None, continuation: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        record = await self.get(app_id, connection_id)
        size = DEFAULT_PAGE_SIZE if limit is None else limit
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidRequest(
                "The page size is out of range.",
                errors=[FieldError("/limit", f"must be between 1 and {MAX_PAGE_SIZE}")],
            )
        events, token = await RotationHistory(self.clients).page(record.id, size, continuation)
        return [event.as_dict() for event in events], token

    async def clients_visible(self, connection_id: str) -> list[dict[str, str]]:
        """The app registrations an azure-client-secrets connection can see in Microsoft Graph."""
        from shared.azure.graph import GraphApps
        from shared.credentials import build_credential

        record = await self.get("azure-client-secrets", connection_id)
        if record.method == Method.OAUTH:
            from shared.oauth import OAuthCredential

            return await GraphApps(self.clients, OAuthCredential(self.clients, record)).list_applications()
        material = await self.vault.get(record.secret_name, record.secret_version)
        credential = build_credential(self.clients, Method(record.method), record.tenant_id,
                                      record.client_id or "", material)
        async with credential:
            return await GraphApps(self.clients, credential).list_applications()

    # -- delete ----------------------------------------------------------------------------
    async def delete(self, app_id: str, connection_id: str) -> ConnectionRecord:
        record = await self.get(app_id, connection_id)
        state = read_state(record)
        if state.leased(self.now()):
            raise Conflict("A rotation of this connection is under way; delete it when it is done.")
        await self.vault.delete(record.secret_name)
        await self.table.delete(record)
        await ScheduleIndex(self.clients).remove(state.schedule_key)
        log.info("Deleted %s connection %s", record.app, record.id)
        return record

    # -- validate --------------------------------------------------------------------------
    async def validate(self, app_id: str, connection_id: str) -> ConnectionRecord:
        app = require_app(app_id)
        record = await self.get(app.id, connection_id)
        if record.method == Method.OAUTH:
            from shared.oauth import validate_oauth_connection

            return await validate_oauth_connection(self.clients, app, record, self.now)
        material = await self.vault.get(record.secret_name, record.secret_version)
        try:
            await self._validate(app, Method(record.method), record.tenant_id, record.client_id or "", material)
        except CredentialRejected as rejected:
            await self._record_status(record, STATUS_INVALID, rejected.detail)
            raise
        return await self._record_status(record, STATUS_ACTIVE, None)

    async def _record_status(self, record: ConnectionRecord, status: str, message: str | None) -> ConnectionRecord:
        """Record a validation outcome; a concurrent change wins (its own outcome is newer)."""
        updated = record.evolve(status=status, status_message=message, last_validated_at=self.now())
        try:
            return await self.table.update(updated)
        except Conflict:
            log.info("Connection %s changed during validation; its status is left as is", record.id)
            return updated


def _configured(state: RotationState, config: RotationConfig | None, enabled: bool) -> RotationState:
    """``state`` with the rotation schedule and switch applied (history and last rotation kept)."""
    if config is not None:
        state = state.evolve(interval_days=config.interval_days, rotate_at=config.rotate_at,
                             time_zone=config.time_zone)
    if not enabled:
        return state.evolve(enabled=False, next_at=None, status=STATUS_DISABLED if state.status else None)
    state = state.evolve(enabled=True, status=state.status or STATUS_SCHEDULED)
    schedule = state.schedule
    if schedule is not None and state.last_rotated_at is not None:
        state = state.evolve(next_at=schedule.next_due(state.last_rotated_at))
    return state
