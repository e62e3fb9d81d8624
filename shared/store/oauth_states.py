"""Pending OAuth authorizations ("states") in Table Storage: single use, expiring, never a secret of Entra.

Table ``{prefix}OAuthStates``. The state handed to the browser is ``{bucket}.{random}``: the bucket (the UTC
hour the state expires in, ``YYYYMMDDHH``) is the PartitionKey, so expired states are purged by a range over
partitions, and the RowKey is the SHA-256 of the whole value, so the table never holds a usable state.
A state is consumed by deleting its entity under its ETag: of two callbacks with one state, one wins.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.records import Actor, PendingAuthorization

if TYPE_CHECKING:
    from shared.azure.clients import AzureClients

OAUTH_STATES_TABLE = "OAuthStates"
_STATE_RE = re.compile(r"^(?P<bucket>\d{10})\.[A-Za-z0-9_-]{32,128}\Z")
_BUCKET = "%Y%m%d%H"


def new_state(expires_at: datetime) -> str:
    return f"{expires_at.astimezone(UTC).strftime(_BUCKET)}.{secrets.token_urlsafe(32)}"


def state_keys(value: str) -> tuple[str, str] | None:
    """(PartitionKey, RowKey) of a state value, or None when it is not shaped like one of ours."""
    match = _STATE_RE.match(value)
    if match is None:
        return None
    return match.group("bucket"), hashlib.sha256(value.encode()).hexdigest()


_COLUMNS = {
    "app": "App",
    "client_id": "ClientId",
    "redirect_uri": "RedirectUri",
    "verifier": "Verifier",
    "created_at": "CreatedAt",
    "expires_at": "ExpiresAt",
    "name": "Name",
    "description": "Description",
    "tenant_id": "TenantId",
    "connection_id": "ConnectionId",
    "allow_different_user": "AllowDifferentUser",
    "browser_binding": "BrowserBinding",
}


def _aware(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class OAuthStates:
    """The OAuth states over Table Storage's REST API without the SDK (``shared.store.table_writes``): starting a
    sign-in, often a cold instance's first request, loads no SDK."""

    def __init__(self, clients: AzureClients) -> None:
        from shared.store.table_writes import TableWrites

        self._table = TableWrites(clients)

    async def put(self, value: str, pending: PendingAuthorization) -> None:
        keys = state_keys(value)
        assert keys is not None
        entity: dict[str, Any] = {"PartitionKey": keys[0], "RowKey": keys[1], "Kind": "oauth-state"}
        for attr, column in _COLUMNS.items():
            field_value = getattr(pending, attr)
            if field_value is not None:
                entity[column] = field_value
        if pending.started_by is not None:
            entity.update({"StartedById": pending.started_by.id, "StartedByName": pending.started_by.name,
                           "StartedByType": pending.started_by.type})
        await self._table.insert_fresh(OAUTH_STATES_TABLE, entity)  # its keys: the state's hash

    async def take(self, value: str) -> PendingAuthorization | None:
        """Consume the state: its pending authorization, or None when it is unknown or already used."""
        keys = state_keys(value)
        if keys is None:
            return None
        entity = await self._table.take(OAUTH_STATES_TABLE, *keys)
        if entity is None:
            return None  # unknown, or another callback consumed it first
        values = {attr: _aware(entity.get(column)) for attr, column in _COLUMNS.items()}
        if not all(values[attr] for attr in ("app", "client_id", "redirect_uri", "verifier", "expires_at")):
            return None
        values["allow_different_user"] = bool(values["allow_different_user"])
        started_by = None
        if entity.get("StartedById"):
            started_by = Actor(str(entity["StartedById"]), str(entity.get("StartedByName") or ""),
                               str(entity.get("StartedByType") or ""))
        return PendingAuthorization(**values, started_by=started_by)

    async def purge_expired(self, now: datetime, limit: int = 100) -> int:
        """Delete states of buckets that have fully expired (at most ``limit``, one page); return how many."""
        cutoff = now.astimezone(UTC).strftime(_BUCKET)
        return await self._table.delete_page(OAUTH_STATES_TABLE, "PartitionKey lt @cutoff", {"cutoff": cutoff},
                                             top=limit)
