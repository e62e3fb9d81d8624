"""Console sessions and pending sign-ins in Table Storage (``shared.sessions``): never a session id or state.

Table ``{prefix}Sessions``. A session's PartitionKey is ``s{YYYYMMDDHH}`` (the hour it ends at the latest, the
first part of its id), a pending sign-in's ``l{YYYYMMDDHH}``; the RowKey is the SHA-256 of the id or state, so the
table holds nothing a browser could present. Expired entities are purged by a range over partitions. A pending
sign-in is taken by deleting it under its ETag: of two callbacks with one state, one wins.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.sessions import PendingLogin, Session, bucket_of

if TYPE_CHECKING:
    from shared.azure.clients import AzureClients

SESSIONS_TABLE = "Sessions"
SESSION, LOGIN = "s", "l"


def _aware(value: Any) -> datetime:
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def session_entity(session: Session) -> dict[str, Any]:
    return {
        "PartitionKey": SESSION + session.bucket, "RowKey": session.key, "Kind": "session",
        "UserId": session.user_id, "Name": session.name, "DisplayName": session.display_name,
        "TenantId": session.tenant_id,
        "Roles": " ".join(sorted(session.roles)), "CsrfToken": session.csrf_token,
        "CreatedAt": session.created_at, "LastSeenAt": session.last_seen_at, "ExpiresAt": session.expires_at,
    }


def session_of(entity: Any) -> Session:
    return Session(
        key=str(entity["RowKey"]), bucket=str(entity["PartitionKey"])[1:], user_id=str(entity["UserId"]),
        name=str(entity.get("Name") or ""),
        display_name=str(entity.get("DisplayName") or ""), tenant_id=str(entity.get("TenantId") or ""),
        roles=frozenset(str(entity.get("Roles") or "").split()), csrf_token=str(entity["CsrfToken"]),
        created_at=_aware(entity["CreatedAt"]), last_seen_at=_aware(entity["LastSeenAt"]),
        expires_at=_aware(entity["ExpiresAt"]),
    )


class SessionTable:
    """The console's sessions over Table Storage's REST API without the SDK (``shared.store.table_writes``): a
    console request checks its session, so a cold instance's first one loads no SDK."""

    def __init__(self, clients: AzureClients) -> None:
        from shared.store.table_writes import TableWrites

        self._table = TableWrites(clients)

    async def create(self, session: Session) -> None:
        await self._table.insert_fresh(SESSIONS_TABLE, session_entity(session))

    async def get(self, bucket: str, key: str) -> Session | None:
        entity = await self._table.get_entity(SESSIONS_TABLE, SESSION + bucket, key)
        return session_of(entity) if entity is not None else None

    async def touch(self, bucket: str, key: str, at: datetime) -> bool:
        # A merge (If-Match: *) requires the entity: an ended session stays ended, never comes back as a stub.
        return await self._table.merge(SESSIONS_TABLE, SESSION + bucket, key, {"LastSeenAt": at})

    async def delete(self, bucket: str, key: str) -> None:
        await self._table.delete(SESSIONS_TABLE, SESSION + bucket, key)

    async def put_login(self, pending: PendingLogin) -> None:
        await self._table.insert_fresh(SESSIONS_TABLE, {
            "PartitionKey": LOGIN + pending.bucket, "RowKey": pending.key, "Kind": "login",
            "Verifier": pending.verifier, "Nonce": pending.nonce, "ReturnTo": pending.return_to,
            "ExpiresAt": pending.expires_at,
        })

    async def take_login(self, bucket: str, key: str) -> PendingLogin | None:
        entity = await self._table.take(SESSIONS_TABLE, LOGIN + bucket, key)
        if entity is None:
            return None  # unknown, or another callback took it first
        return PendingLogin(key=key, bucket=bucket, verifier=str(entity["Verifier"]), nonce=str(entity["Nonce"]),
                            return_to=str(entity["ReturnTo"]), expires_at=_aware(entity["ExpiresAt"]))

    async def purge_expired(self, now: datetime, limit: int = 100) -> int:
        """Delete sessions and pending sign-ins of hours that have fully passed (at most ``limit``, a page of each
        kind)."""
        cutoff = bucket_of(now)
        count = 0
        for prefix in (SESSION, LOGIN):
            if count >= limit:
                break
            count += await self._table.delete_page(SESSIONS_TABLE, "PartitionKey ge @low and PartitionKey lt @cutoff",
                                                   {"low": prefix, "cutoff": prefix + cutoff}, top=limit - count)
        return count
