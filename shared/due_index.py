"""Moving a connection's entry in a due-time index (the rotation schedule, the health checks).

An entry is removed only once nothing points at it, so a connection is never left without one: the new entry is
indexed first, then the connection is pointed at it, then the entry it no longer points at is dropped. A crash in
between leaves at most a stale entry, which the sweep that reads it drops. A connection moved to another due time
gets an entry with a key of its own (one it stays at keeps its entry), so an entry dropped once the record moved
off it is one no other writer can have pointed the connection at again since.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from shared.ports import ScheduleStore
from shared.records import ConnectionRecord


def rotation_key(record: ConnectionRecord) -> str | None:
    """The rotation schedule's entry a connection points at."""
    return record.rotation.schedule_key


def health_key(record: ConnectionRecord) -> str | None:
    """The health index's entry a connection points at."""
    return record.health.check_key


async def reindex(index: ScheduleStore, old_key: str | None, due: datetime | None, record: ConnectionRecord,
                  point: Callable[[str | None], Awaitable[ConnectionRecord]],
                  key_of: Callable[[ConnectionRecord], str | None] = rotation_key) -> ConnectionRecord:
    """Move ``record``'s entry in ``index`` (``old_key``, read from a record by ``key_of``) to ``due``: index the new
    due time first (none when ``due`` is None; the entry ``record`` points at is kept when at ``due`` already), then
    point the connection at it (``point``, which returns the record as it is now), then drop the entry the
    connection no longer points at. When ``point`` could not adopt
    the new entry (another write won), the entry the connection still points at is kept and the new one dropped;
    ``point`` answers a deleted connection with a record that points at none, and both go."""
    key = await index.put(due, record.app, record.id, keep=key_of(record)) if due else None
    pointed = await point(key)
    adopted = key_of(pointed)
    for unused in {old_key, key} - {adopted, None}:
        await index.remove(unused)
    return pointed
