"""Rotation history: one entity per rotation attempt, newest first.

Table ``{prefix}Rotations``, partition = connection id, RowKey = inverted attempt start time + rotation id +
attempt number, so an attempt written again (running, then its outcome) replaces its own row, never adds one. A
``running`` entry is only ever inserted: a worker held up before it wrote one finds the attempt's outcome there
(written by the worker that took it over) and leaves it.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.records import RotationEvent
from shared.store.tables import decode_token, delete_rows, encode_token

if TYPE_CHECKING:
    from shared.azure.clients import AzureClients

HISTORY_TABLE = "Rotations"
_MAX_MS = 10**14


def row_key(started_at: datetime, rotation_id: str, attempt: int) -> str:
    inverted = _MAX_MS - int(started_at.timestamp() * 1000)
    return f"{inverted:015d}|{rotation_id}|{attempt:04d}"


def _utc(value: Any) -> datetime | None:
    return value.astimezone(UTC) if isinstance(value, datetime) else None


def event_of(connection_id: str, e: Any) -> RotationEvent:
    """The rotation attempt of a history entity (of the SDK or of ``shared.store.table_reads``)."""
    started = _utc(e["StartedAt"])
    assert started is not None
    return RotationEvent(
        rotation_id=str(e["RotationId"]), attempt=int(e.get("Attempt") or 1), connection_id=connection_id,
        app=str(e["App"]), started_at=started, finished_at=_utc(e.get("FinishedAt")), outcome=str(e["Outcome"]),
        trigger=str(e.get("Trigger") or ""), new_key_id=e.get("NewKeyId"), revoked_key_id=e.get("RevokedKeyId"),
        message=e.get("Message"),
    )


class RotationHistory:
    def __init__(self, clients: AzureClients) -> None:
        self._clients = clients

    async def record(self, event: RotationEvent) -> None:
        table = await self._clients.table(HISTORY_TABLE)
        entity = {
            "PartitionKey": event.connection_id,
            "RowKey": row_key(event.started_at, event.rotation_id, event.attempt),
            "RotationId": event.rotation_id,
            "Attempt": event.attempt,
            "App": event.app,
            "StartedAt": event.started_at,
            "FinishedAt": event.finished_at,
            "Outcome": event.outcome,
            "Trigger": event.trigger,
            "NewKeyId": event.new_key_id,
            "RevokedKeyId": event.revoked_key_id,
            "Message": event.message,
        }
        written = {key: value for key, value in entity.items() if value is not None}
        if event.outcome != "running":
            await table.upsert_entity(written)
            return
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):  # the attempt has an entry: it stays (see HistoryStore)
            await table.create_entity(written)

    async def get(self, connection_id: str, started_at: datetime, rotation_id: str,
                  attempt: int) -> RotationEvent | None:
        from azure.core.exceptions import ResourceNotFoundError

        table = await self._clients.table(HISTORY_TABLE)
        try:
            entity = await table.get_entity(connection_id, row_key(started_at, rotation_id, attempt))
        except ResourceNotFoundError:
            return None
        return event_of(connection_id, entity)

    async def page(
        self, connection_id: str, limit: int, continuation: str | None
    ) -> tuple[list[RotationEvent], str | None]:
        table = await self._clients.table(HISTORY_TABLE)
        pages = table.query_entities(
            "PartitionKey eq @c", parameters={"c": connection_id}, results_per_page=limit
        ).by_page(continuation_token=decode_token(continuation, connection_id))
        events: list[RotationEvent] = []
        async for page in pages:
            async for entity in page:
                events.append(event_of(connection_id, entity))
            break
        return events, encode_token(getattr(pages, "continuation_token", None), connection_id)

    async def delete_all(self, connection_id: str) -> None:
        """Every entry of a connection, deleted a hundred per request (one partition: an entity-group transaction),
        rather than one per request: a connection rotated daily for two years has over 700."""
        table = await self._clients.table(HISTORY_TABLE)
        batch: list[tuple[str, dict[str, Any]]] = []
        async for e in table.query_entities("PartitionKey eq @c", parameters={"c": connection_id}, select=["RowKey"]):
            batch.append(("delete", {"PartitionKey": connection_id, "RowKey": str(e["RowKey"])}))
            if len(batch) == 100:
                await delete_rows(table, batch)
                batch = []
        if batch:
            await delete_rows(table, batch)
