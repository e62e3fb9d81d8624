"""The audit log in Table Storage: append-only, keyed by time, never a secret.

Table ``{prefix}Audit``. PartitionKey = the record's UTC day (``YYYYMMDD``), RowKey = inverted milliseconds (15
digits), then the inverted microsecond within that millisecond (3 digits), then ``|`` and the record id, so a day's
records sort newest first to the microsecond and a time-range query reads only the days and the key range it asks
for. Records written before the microsecond digits (``<15 digits>|<id>``) sort after those of their millisecond and
are read as any other. Retention deletes whole days (a range over partitions), oldest first.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.errors import UpstreamError
from shared.records import Actor, AuditRecord
from shared.store.tables import delete_rows

if TYPE_CHECKING:
    from shared.azure.clients import AzureClients

AUDIT_TABLE = "Audit"
SEARCH_AHEAD = 8  # days whose first page a search asks for at once
_MAX_MS = 10**14
_COLUMNS = {"action": "Action", "outcome": "Outcome", "app": "App", "connection_id": "ConnectionId",
            "connection_name": "ConnectionName", "detail": "Detail", "client_ip": "ClientIp",
            "user_agent": "UserAgent", "request_id": "RequestId", "trace_id": "TraceId"}

log = logging.getLogger(__name__)


def day_of(at: datetime) -> str:
    return f"{at.astimezone(UTC):%Y%m%d}"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


def row_key(at: datetime, record_id: str) -> str:
    """Newest first to the microsecond: two records of one millisecond sort by time, not by their random ids."""
    ms, micro = divmod(_micros(at), 1000)
    return f"{_MAX_MS - ms:015d}{999 - micro:03d}|{record_id}"


def _bound(at: datetime, later: bool) -> str:
    """A RowKey bound to the millisecond around ``at``, a millisecond wide either side (the old keys' milliseconds
    were a float's): every key of that millisecond, of either form, is inside; records are then kept by their time."""
    ms = _micros(at) // 1000
    return f"{_MAX_MS - ms - 1:015d}" if later else f"{_MAX_MS - ms + 1:015d}~"


def to_entity(record: AuditRecord) -> dict[str, Any]:
    entity: dict[str, Any] = {"PartitionKey": day_of(record.at), "RowKey": row_key(record.at, record.id),
                              "At": record.at, "ActorId": record.actor.id, "ActorName": record.actor.name,
                              "ActorType": record.actor.type}
    if record.actor.role:
        entity["ActorRole"] = record.actor.role
    for attr, column in _COLUMNS.items():
        value = getattr(record, attr)
        if value is not None:
            entity[column] = value
    return entity


def from_entity(entity: Any) -> AuditRecord:
    at = entity["At"]
    return AuditRecord(
        at=at.astimezone(UTC), id=str(entity["RowKey"]).split("|", 1)[1],
        actor=Actor(str(entity.get("ActorId") or ""), str(entity.get("ActorName") or ""),
                    str(entity.get("ActorType") or ""), entity.get("ActorRole")),
        **{attr: entity.get(column) for attr, column in _COLUMNS.items()},
    )


def _encode(day: str, after: str, search: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([day, after, search]).encode()).decode().rstrip("=")


def _decode(token: str, start: datetime, end: datetime, search: str) -> tuple[str, str]:
    """A token's day and last RowKey: of the search that gave it (``search``, the digest of its filters: a token of
    another search would have this one skip its records newer than the other's cursor), and a day of the search's
    window (``start`` to ``end``). Another day (a token forged, or from a search of other times) would have the
    search read day after day outside the window. Either: a 400. A token of two parts, as versions before the
    digest handed them out, names no search: it reads on, within the window (a client paging across an upgrade)."""
    from shared.store.tables import invalid_token, token_json, token_text  # a search's (the appends stay lean)

    try:
        parts = token_json(token)
        day, after, given = (*parts, search) if isinstance(parts, list) and len(parts) == 2 else parts
        if (isinstance(day, str) and token_text(after) and given == search and len(day) == 8 and day.isdigit()
                and day_of(start) <= day <= day_of(end)):
            datetime.strptime(day, "%Y%m%d")  # a real date (not 20261399)
            return day, after
    except (ValueError, TypeError):
        pass
    raise invalid_token("The continuation token is not valid for this search; start again without it.")


def _quote(value: str) -> str:
    return value.replace("'", "''")


class AuditTable:
    def __init__(self, clients: AzureClients) -> None:
        self._clients = clients

    async def append(self, record: AuditRecord) -> None:
        """Insert the record, over Table Storage's REST API without the SDK (``shared.store.table_writes``): every
        audited route writes one before it runs, so one that is otherwise lean stays lean."""
        from shared.store.table_writes import EntityExists, TableWrites

        try:
            await TableWrites(self._clients).insert(AUDIT_TABLE, to_entity(record))
        except EntityExists:  # a retry found what its first attempt stored: the row key holds the record's own id
            log.info("Audit record %s was already written (a retried insert)", record.id)

    async def query(self, start: datetime, end: datetime, *, connection_id: str | None = None,
                    actor: str | None = None, action: str | None = None, limit: int = 100,
                    continuation: str | None = None, apps: Collection[str] | None = None, search: str = "",
                    ) -> tuple[list[AuditRecord], str | None]:
        """Records with ``start <= at <= end``, newest first, at most ``limit``; a token for the rest, only when
        there is more (one record past ``limit`` is read to know: a page is never followed by an empty one). ``apps``:
        only the records of those apps (None: every record, those of no app too). ``search``: what names the search
        (the digest of its filters, ``shared.audit.search_key``): its tokens carry it, and only its own are taken."""
        from shared.store.table_reads import UNREADABLE, Entity, TableReads

        if apps is not None and not apps:
            return [], None
        reads = TableReads(self._clients)
        newest_day, after = _decode(continuation, start, end, search) if continuation else (day_of(end), None)
        filters = "".join(
            f" and {column} eq '{_quote(value)}'"
            for column, value in (("ConnectionId", connection_id), ("ActorId", actor), ("Action", action)) if value)
        if apps is not None:
            filters += " and (" + " or ".join(f"App eq '{_quote(app)}'" for app in sorted(apps)) + ")"
        found: list[AuditRecord] = []
        last = ("", "")  # the day and row key of the last record found
        newest = datetime.strptime(newest_day, "%Y%m%d").replace(tzinfo=UTC)
        oldest = datetime.strptime(day_of(start), "%Y%m%d").replace(tzinfo=UTC)
        days = [day_of(newest - timedelta(days=n)) for n in range((newest - oldest).days + 1)]
        low = _bound(end, later=True)  # the newest wanted sorts first
        high = _bound(start, later=False)

        def day_query(key: str, after: str | None) -> str:
            lower = max(low, after) if after else low
            return (f"PartitionKey eq '{key}' and RowKey {'gt' if after else 'ge'} '{_quote(lower)}'"
                    f" and RowKey le '{_quote(high)}'{filters}")

        # Each day's query, once (a continuation's ``after`` is in the first day).
        queries = [day_query(key, after if n == 0 else None) for n, key in enumerate(days)]

        # Each day is a partition of its own: the first pages of the next SEARCH_AHEAD days are asked for at
        # once, and read in order, so a search over quiet days is not one round trip per day after another. The
        # reads are read without the SDK (shared.store.table_reads): a search is a read.
        first_pages: dict[int, asyncio.Task[tuple[list[Entity], dict[str, Any] | None]]] = {}

        def ask(index: int) -> None:
            if index < len(days) and index not in first_pages:
                first_pages[index] = asyncio.ensure_future(
                    reads.query_page(AUDIT_TABLE, queries[index], {}, top=min(1000, limit + 1),
                                     continuation=None))

        try:
            for index, key in enumerate(days):
                for ahead in range(index, index + SEARCH_AHEAD):
                    ask(ahead)
                page, page_token = await first_pages.pop(index)
                while True:
                    for entity in page:
                        try:
                            record = from_entity(entity)
                        except UNREADABLE:
                            raise UpstreamError("Table Storage returned an audit record that cannot be read.") \
                                from None
                        if not start <= record.at <= end:  # the RowKey bounds are to the millisecond, and wider
                            continue
                        if len(found) == limit:  # one more is there: the page ends at the last one kept
                            return found, _encode(*last, search)
                        found.append(record)
                        last = (key, str(entity["RowKey"]))
                    if page_token is None:
                        break
                    page, page_token = await reads.query_page(
                        AUDIT_TABLE, queries[index], {}, top=min(1000, limit + 1 - len(found)),
                        continuation=page_token)
            return found, None
        finally:
            for task in first_pages.values():  # days asked for ahead that the page did not need
                task.cancel()
            if first_pages:
                await asyncio.gather(*first_pages.values(), return_exceptions=True)

    async def purge(self, before: datetime, limit: int = 10_000) -> int:
        """Delete the records of the days before ``before``'s day (at most ``limit``); return how many are gone
        (those another purge deleted meanwhile included)."""
        table = await self._clients.table(AUDIT_TABLE)
        deleted = 0
        batch: list[tuple[str, dict[str, Any]]] = []
        partition = None
        async for entity in table.query_entities(f"PartitionKey lt '{day_of(before)}'",
                                                 select=["PartitionKey", "RowKey"]):
            if batch and (entity["PartitionKey"] != partition or len(batch) == 100):
                await delete_rows(table, batch)
                deleted += len(batch)
                batch = []
            partition = entity["PartitionKey"]
            batch.append(("delete", {"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"]}))
            if deleted + len(batch) >= limit:
                break
        if batch:
            await delete_rows(table, batch)
            deleted += len(batch)
        return deleted

