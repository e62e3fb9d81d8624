"""The due-time indexes: one entity per scheduled connection, keyed so that keys sort by due time.

Table ``{prefix}Schedule``, a partition per index (``due``: rotations; ``health``: health checks); RowKey
``{due:%Y%m%dT%H%M%SZ}|{app}|{connection id}|{tag}``, the tag random per entry written (an entry is written again
under its key only for a connection that points at it, at its due time): two writers that move one connection to
the same due time (two instances, two requests) get two entries, so that one dropping the entry it moved the
connection from never drops the entry the other has just pointed it at. A sweep reads the rows whose
key sorts before ``now`` (a range query), so its cost grows with what is due, not with how many connections
exist. A row whose connection no longer points at it is stale and is dropped. Rows of older versions have no tag.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from shared.ports import DueEntry

if TYPE_CHECKING:
    from shared.azure.clients import AzureClients

SCHEDULE_TABLE = "Schedule"
PARTITION = "due"
HEALTH_PARTITION = "health"


def schedule_key(due: datetime, app: str, connection_id: str, tag: str | None = None) -> str:
    """The key of an entry (``tag`` None: a new random one; ``""``: none, as older versions wrote them)."""
    tag = secrets.token_hex(6) if tag is None else tag
    return f"{due.astimezone(UTC):%Y%m%dT%H%M%SZ}|{app}|{connection_id}" + (f"|{tag}" if tag else "")


def key_for(due: datetime, app: str, connection_id: str, keep: str | None, tag: str | None = None) -> str:
    """The key to index a connection at ``due`` under: ``keep`` (the entry it points at now) when that one is at
    ``due`` already (to the second), a new one (``tag``: as :func:`schedule_key`) otherwise."""
    same = schedule_key(due, app, connection_id, "")
    if keep is not None and (keep == same or keep.startswith(same + "|")):
        return keep
    return schedule_key(due, app, connection_id, tag)


def parse_key(key: str) -> DueEntry:
    stamp, app, rest = key.split("|", 2)
    connection_id = rest.split("|", 1)[0]
    due = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return DueEntry(key, app, connection_id, due)


class ScheduleIndex:
    """One partition of the index: ``due`` for rotations, ``health`` for health checks."""

    def __init__(self, clients: AzureClients, partition: str = PARTITION) -> None:
        self._clients = clients
        self._partition = partition

    async def put(self, due: datetime, app: str, connection_id: str, keep: str | None = None) -> str:
        table = await self._clients.table(SCHEDULE_TABLE)
        key = key_for(due, app, connection_id, keep)
        await table.upsert_entity({"PartitionKey": self._partition, "RowKey": key})
        return key

    async def remove(self, key: str | None) -> None:
        if not key:
            return
        table = await self._clients.table(SCHEDULE_TABLE)
        await table.delete_entity(self._partition, key)  # deleting an absent entity is not an error

    async def due(self, now: datetime, limit: int = 1000) -> list[DueEntry]:
        """The entries due at ``now``, earliest first, at most ``limit``."""
        table = await self._clients.table(SCHEDULE_TABLE)
        upto = f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}|~"
        entries: list[DueEntry] = []
        query = table.query_entities(
            "PartitionKey eq @p and RowKey le @upto",
            parameters={"p": self._partition, "upto": upto},
            select=["RowKey"],
            results_per_page=min(limit, 1000),
        )
        async for entity in query:
            entries.append(parse_key(str(entity["RowKey"])))
            if len(entries) >= limit:
                break
        return entries
