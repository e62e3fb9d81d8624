"""The rotation history in Table Storage (``shared.store.history``), against Azurite through the SDK: one entry per
attempt, its outcome written over its ``running`` entry, and a ``running`` entry never written over an outcome; the
retention's range of the entries of attempts before a cut-off, deleted a hundred per request."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shared.azure.clients import AzureClients
from shared.records import RotationEvent
from shared.store.history import RotationHistory

pytestmark = pytest.mark.e2e


def attempt(connection_id: str, rotation_id: str, started: datetime, outcome: str) -> RotationEvent:
    return RotationEvent(rotation_id=rotation_id, attempt=1, connection_id=connection_id, app="azure-key-vault",
                         started_at=started, finished_at=None if outcome == "running" else started, outcome=outcome,
                         trigger="schedule")


async def test_an_attempts_outcome_replaces_its_running_entry_and_a_late_running_one_never_reopens_it(
        clients: AzureClients) -> None:
    history = RotationHistory(clients)
    connection_id, rotation_id = str(uuid.uuid4()), str(uuid.uuid4())
    started = datetime.now(UTC).replace(microsecond=0)
    await history.record(attempt(connection_id, rotation_id, started, "running"))
    await history.record(attempt(connection_id, rotation_id, started, "interrupted"))  # closed by another worker
    # The worker held up past its lease wakes and writes the entry it was about to write: the outcome stays.
    await history.record(attempt(connection_id, rotation_id, started, "running"))
    entries, _ = await history.page(connection_id, 10, None)
    assert [(e.rotation_id, e.outcome) for e in entries] == [(rotation_id, "interrupted")]
    later = started + timedelta(minutes=1)
    await history.record(attempt(connection_id, rotation_id, later, "running"))  # a new attempt opens its own
    entries, _ = await history.page(connection_id, 10, None)
    assert [e.outcome for e in entries] == ["running", "interrupted"]


async def test_an_entry_that_is_not_one_the_service_wrote_is_a_502_on_the_read_path(clients: AzureClients) -> None:
    """(Review O.) A history entity without its columns (written by hand, or by another version) raised KeyError
    in the read path's parse, outside the try that makes an unreadable page Table Storage's failure: a 500."""
    from shared.errors import UpstreamError
    from shared.store.history import HISTORY_TABLE
    from shared.store.table_reads import HistoryReads, TableReads

    connection_id = str(uuid.uuid4())
    table = await clients.table(HISTORY_TABLE)
    await table.upsert_entity({"PartitionKey": connection_id, "RowKey": "no-separator", "Outcome": "running"})
    with pytest.raises(UpstreamError, match="cannot be read"):
        await HistoryReads(TableReads(clients)).page(connection_id, 10, None)


async def test_a_connections_entries_are_deleted_a_hundred_per_request_also_beside_another_delete(
        clients: AzureClients) -> None:
    """(Review of two years' operation: a connection rotated daily has over 700 entries, which its DELETE removed one
    request each.) An entity-group transaction per hundred; two at once (a DELETE sent twice) both finish."""
    from shared.store.history import HISTORY_TABLE

    history = RotationHistory(clients)
    connection_id = str(uuid.uuid4())
    started = datetime.now(UTC).replace(microsecond=0)
    for n in range(250):
        await history.record(attempt(connection_id, str(uuid.uuid4()), started + timedelta(seconds=n), "succeeded"))
    table = await clients.table(HISTORY_TABLE)
    sent: list[str] = []
    submit, delete = table.submit_transaction, table.delete_entity

    async def counted_submit(*args: object, **kwargs: object) -> object:
        sent.append("transaction")
        return await submit(*args, **kwargs)

    async def counted_delete(*args: object, **kwargs: object) -> object:
        sent.append("delete")
        return await delete(*args, **kwargs)

    table.submit_transaction, table.delete_entity = counted_submit, counted_delete  # counted, then sent as they were
    try:
        await history.delete_all(connection_id)
        assert sent == ["transaction"] * 3
        for n in range(150):
            await history.record(attempt(connection_id, str(uuid.uuid4()), started + timedelta(seconds=n), "failed"))
        await asyncio.gather(history.delete_all(connection_id), history.delete_all(connection_id))
    finally:
        del table.submit_transaction, table.delete_entity
    entries, _ = await history.page(connection_id, 10, None)
    assert entries == []


NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
CUTOFF = datetime(2026, 11, 1, tzinfo=UTC)  # a retention of 30 days on NOW: the start of that day


async def test_the_retention_reads_the_entries_of_attempts_before_the_cut_off_of_every_connection_as_a_range(
        own_tables: AzureClients) -> None:
    """The history's retention (``AuditLog.purge_expired_history``) over Table Storage: Azurite answers the RowKey
    range of the attempts started before the cut-off (one at the cut-off itself, ``<its 15 digits>|...``, is not in
    it), ``running`` ones left out, connection after connection; only those go, but each connection's latest."""
    from shared.audit import AuditLog
    from shared.store.audit import AuditTable
    from shared.store.history import row_key

    history = RotationHistory(own_tables)
    a, b, c = sorted(str(uuid.uuid4()) for _ in range(3))
    events = {
        "gone": [attempt(a, str(uuid.uuid4()), CUTOFF - timedelta(milliseconds=1), "succeeded"),
                 attempt(b, str(uuid.uuid4()), CUTOFF - timedelta(days=5), "failed"),
                 attempt(c, str(uuid.uuid4()), CUTOFF - timedelta(days=3), "succeeded")],
        "kept": [attempt(a, str(uuid.uuid4()), CUTOFF, "succeeded"),
                 attempt(a, str(uuid.uuid4()), CUTOFF + timedelta(days=1), "succeeded"),
                 attempt(b, str(uuid.uuid4()), CUTOFF - timedelta(days=3), "running"),
                 attempt(b, str(uuid.uuid4()), CUTOFF + timedelta(hours=1), "succeeded"),
                 attempt(c, str(uuid.uuid4()), CUTOFF - timedelta(days=2), "interrupted"),  # c's newest
                 attempt(c, str(uuid.uuid4()), CUTOFF - timedelta(days=2, minutes=1), "interrupted")],
    }
    for event in events["gone"] + events["kept"]:
        await history.record(event)

    def key(event: RotationEvent) -> str:
        return row_key(event.started_at, event.rotation_id, event.attempt)

    found = [batch async for batch in history.expired(CUTOFF)]
    assert found == [(a, [key(events["gone"][0])]), (b, [key(events["gone"][1])]),
                     (c, [key(events["kept"][4]), key(events["kept"][5]), key(events["gone"][2])])]
    assert await AuditLog(AuditTable(own_tables), lambda: NOW).purge_expired_history(history, 30) == 3
    left = {e.rotation_id for connection in (a, b, c) for e in (await history.page(connection, 10, None))[0]}
    assert left == {e.rotation_id for e in events["kept"]}


async def test_the_retention_deletes_a_connection_s_expired_entries_a_hundred_per_request(
        own_tables: AzureClients) -> None:
    from shared.audit import AuditLog
    from shared.store.audit import AuditTable
    from shared.store.history import HISTORY_TABLE

    history = RotationHistory(own_tables)
    connection_id = str(uuid.uuid4())
    await asyncio.gather(*(history.record(attempt(connection_id, str(uuid.uuid4()),
                                                  CUTOFF - timedelta(days=1, minutes=n), "succeeded"))
                           for n in range(250)))
    newest = attempt(connection_id, str(uuid.uuid4()), NOW, "succeeded")
    await history.record(newest)
    table = await own_tables.table(HISTORY_TABLE)
    sent: list[str] = []
    submit = table.submit_transaction

    async def counted_submit(*args: object, **kwargs: object) -> object:
        sent.append("transaction")
        return await submit(*args, **kwargs)

    table.submit_transaction = counted_submit  # counted, then sent as it was
    try:
        assert await AuditLog(AuditTable(own_tables), lambda: NOW).purge_expired_history(history, 30) == 250
    finally:
        del table.submit_transaction
    assert sent == ["transaction"] * 3
    assert [e.rotation_id for e in (await history.page(connection_id, 10, None))[0]] == [newest.rotation_id]


@pytest.mark.parametrize("foreign_key", ["note-written-today", "00abc"])
async def test_a_row_the_service_did_not_write_is_neither_deleted_nor_taken_for_the_latest_entry(
        own_tables: AzureClients, foreign_key: str) -> None:
    """Found by a review: a row of another RowKey shape (written by hand or another tool) fell in the retention's
    range whatever its age when it sorted after the entries (a letter), and hid the connection's latest entry when it
    sorted before them (``latest`` stopped there), so the entry its rotation state may refer to was deleted."""
    from shared.audit import AuditLog
    from shared.store.audit import AuditTable
    from shared.store.history import HISTORY_TABLE

    history = RotationHistory(own_tables)
    connection_id = str(uuid.uuid4())
    newest = attempt(connection_id, str(uuid.uuid4()), CUTOFF - timedelta(days=10), "interrupted")
    older = attempt(connection_id, str(uuid.uuid4()), CUTOFF - timedelta(days=11), "failed")
    for event in (newest, older):
        await history.record(event)
    table = await own_tables.table(HISTORY_TABLE)
    await table.upsert_entity({"PartitionKey": connection_id, "RowKey": foreign_key, "Outcome": "succeeded"})

    assert await AuditLog(AuditTable(own_tables), lambda: NOW).purge_expired_history(history, 30) == 1
    left = {str(e["RowKey"]) async for e in table.query_entities("PartitionKey eq @c",
                                                                  parameters={"c": connection_id})}
    assert foreign_key in left
    assert await history.get(connection_id, newest.started_at, newest.rotation_id, 1) is not None
    assert await history.get(connection_id, older.started_at, older.rotation_id, 1) is None
