"""Console sessions and pending sign-ins in Table Storage (``shared.sessions``): never a session id or state.

Table ``{prefix}Sessions``. A session's PartitionKey is ``s{YYYYMMDDHH}`` (the hour it ends at the latest, the
first part of its id), a pending sign-in's ``l{YYYYMMDDHH}``; the RowKey is the SHA-256 of the id or state, so the
table holds nothing a browser could present. Expired entities are purged by a range over partitions. A pending
sign-in is taken by deleting it under its ETag: of two callbacks with one state, one wins.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.sessions import PendingLogin, Session, bucket_of

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient

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
    def __init__(self, clients: AzureClients) -> None:
        self._clients = clients

    async def _table(self) -> TableClient:
        return await self._clients.table(SESSIONS_TABLE)

    async def create(self, session: Session) -> None:
        table = await self._table()
        await table.create_entity(session_entity(session))

    async def get(self, bucket: str, key: str) -> Session | None:
        from azure.core.exceptions import ResourceNotFoundError

        table = await self._table()
        try:
            entity = await table.get_entity(SESSION + bucket, key)
        except ResourceNotFoundError:
            return None
        return session_of(entity)

    async def touch(self, bucket: str, key: str, at: datetime) -> bool:
        from azure.core.exceptions import ResourceNotFoundError
        from azure.data.tables import UpdateMode

        table = await self._table()
        try:  # a merge with If-Match: * (the SDK's unconditional update) requires the entity: an ended session
            await table.update_entity(  # stays ended (404), never comes back as a stub
                {"PartitionKey": SESSION + bucket, "RowKey": key, "LastSeenAt": at}, mode=UpdateMode.MERGE)
        except ResourceNotFoundError:
            return False
        return True

    async def delete(self, bucket: str, key: str) -> None:
        table = await self._table()
        await table.delete_entity(SESSION + bucket, key)

    async def put_login(self, pending: PendingLogin) -> None:
        table = await self._table()
        await table.create_entity({
            "PartitionKey": LOGIN + pending.bucket, "RowKey": pending.key, "Kind": "login",
            "Verifier": pending.verifier, "Nonce": pending.nonce, "ReturnTo": pending.return_to,
            "ExpiresAt": pending.expires_at,
        })

    async def take_login(self, bucket: str, key: str) -> PendingLogin | None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        table = await self._table()
        try:
            entity = await table.get_entity(LOGIN + bucket, key)
            await table.delete_entity(LOGIN + bucket, key, etag=entity.metadata["etag"],
                                      match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            return None
        return PendingLogin(key=key, bucket=bucket, verifier=str(entity["Verifier"]), nonce=str(entity["Nonce"]),
                            return_to=str(entity["ReturnTo"]), expires_at=_aware(entity["ExpiresAt"]))

    async def purge_expired(self, now: datetime, limit: int = 100) -> int:
        """Delete sessions and pending sign-ins of hours that have fully passed (at most ``limit``)."""
        from azure.core.exceptions import ResourceNotFoundError

        table = await self._table()
        cutoff = bucket_of(now)
        count = 0
        for prefix in (SESSION, LOGIN):
            async for entity in table.query_entities(
                "PartitionKey ge @low and PartitionKey lt @cutoff",
                parameters={"low": prefix, "cutoff": prefix + cutoff}, select=["PartitionKey", "RowKey"],
            ):
                with contextlib.suppress(ResourceNotFoundError):
                    await table.delete_entity(entity["PartitionKey"], entity["RowKey"])
                count += 1
                if count >= limit:
                    return count
        return count
