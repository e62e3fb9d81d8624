"""Rotation history: one entity per rotation attempt, newest first.

Table ``{prefix}Rotations``, partition = connection id, RowKey = inverted attempt start time + rotation id +
attempt number, so an attempt written again (running, then its outcome) replaces its own row, never adds one. A
``running`` entry is only ever inserted: a worker held up before it wrote one finds the attempt's outcome there
(written by the worker that took it over) and leaves it. Retention reads the entries of attempts started before a
cut-off as a RowKey range over every partition (:meth:`RotationHistory.expired`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.records import RotationEvent
from shared.store.tables import decode_token, delete_rows, encode_token

if TYPE_CHECKING:
    from shared.azure.clients import AzureClients

HISTORY_TABLE = "Rotations"
BATCH = 100  # rows of one partition an entity-group transaction deletes at most
_MAX_MS = 10**14
# The RowKey of an entry the service wrote: a row of another shape (written by hand or another tool) is neither
# deleted by the retention nor taken for a connection's latest entry.
_ENTRY_KEY = re.compile(r"\d{15}\|")


def _inverted(at: datetime) -> int:
    return _MAX_MS - int(at.timestamp() * 1000)


def row_key(started_at: datetime, rotation_id: str, attempt: int) -> str:
    return f"{_inverted(started_at):015d}|{rotation_id}|{attempt:04d}"


def started_before(before: datetime) -> str:
    """The filter of the entries of attempts started before ``before`` but ``running`` ones, of every connection.

    Such an attempt's inverted milliseconds are larger than ``before``'s, and their 15 digits, fixed width, sort as
    the numbers do; one started within ``before``'s own millisecond, or at ``before`` itself (``<its digits>|...``),
    sorts after those digits alone, so the bound is the next larger number's digits, not ``before``'s."""
    return f"RowKey ge '{_inverted(before) + 1:015d}' and Outcome ne 'running'"


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
        keys: list[str] = []
        async for e in table.query_entities("PartitionKey eq @c", parameters={"c": connection_id}, select=["RowKey"]):
            keys.append(str(e["RowKey"]))
            if len(keys) == BATCH:
                await self.delete(connection_id, keys)
                keys = []
        if keys:
            await self.delete(connection_id, keys)

    async def expired(self, before: datetime) -> AsyncGenerator[tuple[str, list[str]], None]:
        """The entries of attempts started before ``before``, but ``running`` ones, of every connection: (its id, the
        RowKeys of at most ``BATCH`` of its entries, newest first), connection after connection. The range is read
        by Table Storage (:func:`started_before`), and the keys alone come back."""
        table = await self._clients.table(HISTORY_TABLE)
        partition = ""
        keys: list[str] = []
        async for e in table.query_entities(started_before(before), select=["PartitionKey", "RowKey"]):
            if not _ENTRY_KEY.match(str(e["RowKey"])):  # not an entry the service wrote: it stays
                continue
            if keys and (e["PartitionKey"] != partition or len(keys) == BATCH):
                yield partition, keys
                keys = []
            partition = str(e["PartitionKey"])
            keys.append(str(e["RowKey"]))
        if keys:
            yield partition, keys

    async def latest(self, connection_id: str, within: timedelta) -> list[str]:
        """The RowKeys of a connection's newest entry and of those of the attempts started up to ``within`` before
        it, newest first (none: it has no entry), read a few at a time from its newest on."""
        table = await self._clients.table(HISTORY_TABLE)
        keys: list[str] = []
        bound: int | None = None  # the largest inverted time within ``within`` of the newest
        async for e in table.query_entities("PartitionKey eq @c", parameters={"c": connection_id}, select=["RowKey"],
                                            results_per_page=10):
            key = str(e["RowKey"])
            if not _ENTRY_KEY.match(key):  # not an entry the service wrote, before or after those it wrote
                continue
            if bound is None:
                bound = int(key[:15]) + int(within.total_seconds() * 1000)
            elif int(key[:15]) > bound:
                break
            keys.append(key)
        return keys

    async def delete(self, connection_id: str, keys: list[str]) -> None:
        """These entries of a connection (at most ``BATCH``), in one request; one already gone is done."""
        table = await self._clients.table(HISTORY_TABLE)
        await delete_rows(table, [("delete", {"PartitionKey": connection_id, "RowKey": key}) for key in keys])
