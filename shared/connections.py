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
        await self._ensure_name_free(app.id, request.name)
        material = _material(credentials)
        await self._validate(app, method, credentials.tenantId, credentials.clientId, material)

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
        try:
            record = await self.table.insert(record)
        except BaseException:
            await self.vault.delete(secret_name)
            raise
        log.info("Created %s connection %s (%s)", app.id, connection_id, method.value)
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

    async def list(
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
        if not changes:
            return record
        updated = record.evolve(**changes, version=record.version + 1, updated_at=self.now())
        try:
            saved = await self.table.update(updated, previous_name=record.name if "name" in changes else None)
        except BaseException:
            if new_version is not None:
                await self.vault.disable(record.secret_name, new_version)
            raise
        log.info("Updated %s connection %s to version %d", app.id, record.id, saved.version)
        return saved

    # -- delete ----------------------------------------------------------------------------
    async def delete(self, app_id: str, connection_id: str) -> ConnectionRecord:
        record = await self.get(app_id, connection_id)
        await self.vault.delete(record.secret_name)
        await self.table.delete(record)
        log.info("Deleted %s connection %s", record.app, record.id)
        return record

    # -- validate --------------------------------------------------------------------------
    async def validate(self, app_id: str, connection_id: str) -> ConnectionRecord:
        app = require_app(app_id)
        record = await self.get(app.id, connection_id)
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
