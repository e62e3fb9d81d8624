"""The rotation history in Table Storage (``shared.store.history``), against Azurite through the SDK: one entry per
attempt, its outcome written over its ``running`` entry, and a ``running`` entry never written over an outcome."""

from __future__ import annotations

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
    import asyncio

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
