"""Reading connections, and their public view: what a read request needs and nothing else.

A read (get, get by name, a list page) imports this module, the records and the connection store only: not the
pydantic models, the credential parsers or the rotation protocol that a write needs (``shared.connections``),
so that a cold instance's first read stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.apps import APPS, AppSpec, Method, find_app
from shared.errors import ConnectionBeingDeleted, FieldError, NameTaken, NotFound, PreconditionFailed, shown
from shared.fields import MAX_PAGE_SIZE, page_size
from shared.json_codec import iso
from shared.records import (
    EXPIRED,
    EXPIRING,
    FAILING,
    HEALTH_STATUSES,
    STATUS_DELETING,
    UNKNOWN,
    Actor,
    ConnectionRecord,
    RotationEvent,
)
from shared.rotation.state import state_response

if TYPE_CHECKING:  # protocols only: a read does not load the ports' module (cold start)
    from shared.ports import ConnectionReads, HistoryReads


def require_app(app_id: str) -> AppSpec:
    app = find_app(app_id)
    if app is None:
        raise NotFound(f"There is no app '{shown(app_id)}'.")
    return app


def being_deleted() -> ConnectionBeingDeleted:
    """The answer to a request on a connection marked as being deleted: nothing signs in with it any more, and no
    retry of the request ends that (no ``Retry-After``): only another ``DELETE`` does."""
    return ConnectionBeingDeleted("This connection is being deleted; send the DELETE again to finish it.",
                                  extensions={"connectionStatus": STATUS_DELETING})


async def ensure_name_free(connections: ConnectionReads, app_id: str, name: str, pointer: str = "/name") -> None:
    """A 409 when a connection of ``app_id`` is already named ``name`` (names are unique per app, any case)."""
    try:
        await connections.get_by_name(app_id, name)
    except NotFound:
        return
    raise NameTaken(f"A connection named '{name}' already exists for {app_id}.",
                    errors=[FieldError(pointer, "is already used by another connection of this app")])


class ConnectionReader:
    """The reads of connections: by id, by name, a page of an app's connections, a page of one's rotations."""

    def __init__(self, store: ConnectionReads, history: HistoryReads) -> None:
        self.store = store
        self.history = history

    async def get(self, app_id: str, connection_id: str) -> ConnectionRecord:
        return await self.store.get(require_app(app_id).id, connection_id.lower())

    async def get_by_name(self, app_id: str, name: str) -> ConnectionRecord:
        return await self.store.get_by_name(require_app(app_id).id, name)

    async def list_connections(self, app_id: str, limit: int | None,
                               continuation: str | None) -> tuple[list[ConnectionRecord], str | None]:
        return await self.store.list_page(require_app(app_id).id, page_size(limit), continuation)

    async def rotations(self, app_id: str, connection_id: str, limit: int | None,
                        continuation: str | None) -> tuple[list[RotationEvent], str | None]:
        record = await self.get(app_id, connection_id)
        return await self.history.page(record.id, page_size(limit), continuation)

    async def health_summary(self, apps: set[str] | None = None) -> dict[str, Any]:
        """Counts by health status and app (of the ``apps`` given, or all), and the connections that need
        attention: expired, then failing, then expiring, soonest expiry first."""
        counts = {status: 0 for status in HEALTH_STATUSES}
        by_app: dict[str, dict[str, int]] = {}
        attention: list[dict[str, Any]] = []
        for app in sorted(APPS):
            if apps is not None and app not in apps:
                continue
            by_app[app] = {status: 0 for status in HEALTH_STATUSES}
            token = None
            while True:
                page, token = await self.store.list_page(app, MAX_PAGE_SIZE, token)
                for record in page:
                    status = record.health.status if record.health.status in counts else UNKNOWN
                    counts[status] += 1
                    by_app[app][status] += 1
                    if status in (EXPIRING, FAILING, EXPIRED):
                        attention.append(attention_item(record))
                if token is None:
                    break
        order = {EXPIRED: 0, FAILING: 1, EXPIRING: 2}
        attention.sort(key=lambda item: (order[item["health"]["status"]], item["credentialExpiresAt"] or ""))
        return {"counts": counts, "byApp": by_app, "needsAttention": attention}


def attention_item(record: ConnectionRecord) -> dict[str, Any]:
    return {"app": record.app, "id": record.id, "name": record.name, "method": record.method,
            **health_response(record)}


def health_response(record: ConnectionRecord) -> dict[str, Any]:
    health = record.health
    return {"credentialExpiresAt": iso(health.credential_expires_at),
            "health": {"status": health.status, "checkedAt": iso(health.checked_at), "message": health.message}}


def _who(actor: Actor | None) -> dict[str, str] | None:
    return {"id": actor.id, "name": actor.name, "type": actor.type} if actor else None


def to_response(record: ConnectionRecord) -> dict[str, Any]:
    """The public view of a connection: never a secret, key or token."""
    credentials: dict[str, Any] = {"tenantId": record.tenant_id}
    if record.method != Method.OAUTH and record.client_id:
        credentials["clientId"] = record.client_id
    authorized = record.authorized_by
    return {
        "id": record.id,
        "name": record.name,
        "description": record.description,
        "app": record.app,
        "method": record.method,
        "credentials": credentials,
        "createdAt": iso(record.created_at),
        "updatedAt": iso(record.updated_at),
        "version": record.version,
        "status": record.status,
        "statusMessage": record.status_message,
        "lastValidatedAt": iso(record.last_validated_at),
        "isAutoRotationEnabled": record.rotation.enabled,
        "rotation": state_response(record.rotation),
        **health_response(record),
        "createdBy": _who(record.created_by),
        "updatedBy": _who(record.updated_by),
        "authorizedBy": {"oid": authorized.oid, "upn": authorized.upn, "tenantId": authorized.tenant_id}
        if authorized else None,
    }


def etag_of(record: ConnectionRecord) -> str:
    """The connection's entity tag: its version, which every change made through the API moves on (rotations and
    health checks, the service's own, do not), so that a client can make a change conditional (``If-Match``)."""
    return f'"{record.version}"'


def matches(record: ConnectionRecord, if_match: str | None) -> bool:
    """RFC 9110's ``If-Match``: absent or ``*``, or a list of entity tags one of which is the connection's (strong
    comparison: a weak tag never matches)."""
    if if_match is None or if_match.strip() == "*":
        return True
    return etag_of(record) in [tag.strip() for tag in if_match.split(",")]


def precondition_failed(record: ConnectionRecord) -> PreconditionFailed:
    """The 412 of an ``If-Match`` the connection does not match: its current version, and its ETag."""
    return PreconditionFailed(
        f"The connection is at version {record.version}, not the one If-Match names: read it again, then decide.",
        extensions={"version": record.version}, headers={"ETag": etag_of(record)})


def require_match(record: ConnectionRecord, if_match: str | None) -> None:
    """``If-Match`` evaluated on the read an operation starts from (a PATCH, a DELETE, a rotate, a migration, a
    validation, a health check): 412, with the current ETag, when it does not match."""
    if not matches(record, if_match):
        raise precondition_failed(record)
