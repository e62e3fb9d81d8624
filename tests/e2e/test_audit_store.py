"""The audit log's Table Storage store, through the real Tables SDK against Azurite: append-only records read
newest first by time range (only the days asked for), filtered, paged, and purged by day."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.azure.clients import AzureClients
from shared.errors import InvalidRequest
from shared.records import Actor, AuditRecord
from shared.store.audit import AuditTable, to_entity

pytestmark = pytest.mark.e2e


@pytest.fixture
def clients(own_tables: AzureClients) -> AzureClients:
    """On tables of the test's own: a search by date read other tests' records of that day (CI ran on a day
    inside the range of days these tests wrote in), and the purge may delete theirs."""
    return own_tables

DAY = datetime(2040, 3, 10, 12, 0, tzinfo=UTC)  # its ranges (up to 6,000 days on) hold no record written now


def _record(at: datetime, action: str = "connection.update", connection: str | None = None,
            actor: str = "u1") -> AuditRecord:
    writer = Actor(actor, "Ada", "user", "AppConnections.Writer")
    return AuditRecord(at=at, action=action, outcome="started", actor=writer,
                       app="azure-key-vault", connection_id=connection or str(uuid.uuid4()), detail="d",
                       client_ip="203.0.113.7", user_agent="curl", request_id="r", trace_id="t")


async def test_records_come_back_newest_first_within_the_range_with_every_field(clients: AzureClients) -> None:
    store = AuditTable(clients)
    base = DAY + timedelta(days=uuid.uuid4().int % 1000)  # a range of days no other test writes (CI ran on a day
    # inside the range DAY once was, and found other tests' records of that day)
    records = [_record(base + timedelta(hours=h)) for h in (-30, -2, -1, 0, 1, 30)]
    for record in records:
        await store.append(record)
    found, token = await store.query(base - timedelta(hours=2), base + timedelta(hours=1))
    assert token is None
    assert found == sorted(records[1:5], key=lambda r: r.at, reverse=True)
    wide, _ = await store.query(base - timedelta(days=2), base + timedelta(days=2))
    assert [r.at for r in wide] == sorted((r.at for r in records), reverse=True)


async def test_the_range_is_exact_to_the_microsecond_not_the_millisecond(clients: AzureClients) -> None:
    """(Review G, session 17.) The RowKey bounds are to the millisecond: records up to a millisecond outside
    ``[from, to]`` came back (a client exporting in steps from its last record's time + 1 microsecond got it
    twice)."""
    store = AuditTable(clients)
    base = DAY + timedelta(days=4000 + uuid.uuid4().int % 1000, microseconds=250)
    records = [_record(base + timedelta(microseconds=n * 100)) for n in range(4)]  # one millisecond's records
    for record in records:
        await store.append(record)
    found, _ = await store.query(records[1].at, records[2].at)
    assert sorted(found, key=lambda r: r.at) == records[1:3]  # (within one millisecond, in no set order)
    after_the_first, _ = await store.query(records[0].at + timedelta(microseconds=1), records[3].at)
    assert records[0] not in after_the_first and len(after_the_first) == 3


async def test_records_of_one_millisecond_come_back_newest_first_and_a_page_at_a_time_misses_none(
        clients: AzureClients) -> None:
    """(Audit review 6.) The RowKey had the inverted millisecond: within one, the order was the random ids', so a
    started record and its outcome 0.8 ms later came back oldest first, and a client stepping back by time from its
    last record skipped the newer one. Records written before (``<15 digits>|<id>``) are read too, in their place."""
    store = AuditTable(clients)
    base = DAY + timedelta(days=5000 + uuid.uuid4().int % 500, microseconds=100)
    records = [_record(base + timedelta(microseconds=n * 200)) for n in range(5)]  # one millisecond's records
    for record in reversed(records):
        await store.append(record)
    old_form = _record(base - timedelta(milliseconds=1))  # a record of the millisecond before, keyed as before
    entity = to_entity(old_form)
    entity["RowKey"] = f"{10**14 - int(old_form.at.timestamp() * 1000):015d}|{old_form.id}"
    table = await clients.table("Audit")
    await table.create_entity(entity)
    window = (base - timedelta(seconds=1), base + timedelta(seconds=1))
    found, _ = await store.query(*window)
    assert found == [*reversed(records), old_form]
    paged: list[AuditRecord] = []
    token = None
    while True:
        page, token = await store.query(*window, limit=2, continuation=token)
        paged += page
        if token is None:
            break
    assert paged == found
    stepped = await store.query(window[0], records[-1].at - timedelta(microseconds=1), limit=1)
    assert stepped[0] == [records[-2]]  # stepping back by time from the newest finds the next newest


async def test_a_record_written_again_by_a_retry_is_written_once_and_fails_nothing(clients: AzureClients) -> None:
    """An insert retried after a 500 or 504 may find the row its first attempt stored (EntityAlreadyExists): the
    record is written, and the change it audits goes on (a review found it ended in an unhandled 500)."""
    store = AuditTable(clients)
    at = DAY + timedelta(days=1000 + uuid.uuid4().int % 1000)
    record = _record(at)
    await store.append(record)
    await store.append(record)  # as the retry does
    found, _ = await store.query(at - timedelta(hours=1), at + timedelta(hours=1))
    assert found == [record]


async def test_filters_and_pages(clients: AzureClients) -> None:
    store = AuditTable(clients)
    base = DAY + timedelta(days=2000 + uuid.uuid4().int % 1000)
    connection = str(uuid.uuid4())
    mine = [_record(base + timedelta(minutes=m), connection=connection) for m in range(0, 50 * 60, 60)]
    for record in mine:
        await store.append(record)
    await store.append(_record(base + timedelta(minutes=5), action="connection.delete", actor="u2"))
    pages: list[AuditRecord] = []
    token = None
    while True:
        page, token = await store.query(base - timedelta(days=1), base + timedelta(days=3), connection_id=connection,
                                        limit=7, continuation=token)
        pages += page
        assert len(page) <= 7
        if token is None:
            break
    assert [r.id for r in pages] == [r.id for r in sorted(mine, key=lambda r: r.at, reverse=True)]
    by_actor, _ = await store.query(base - timedelta(days=1), base + timedelta(days=1), actor="u2")
    assert [r.action for r in by_actor] == ["connection.delete"]
    by_action, _ = await store.query(base - timedelta(days=1), base + timedelta(days=1), action="connection.delete")
    assert len(by_action) == 1
    with pytest.raises(InvalidRequest):
        await store.query(base, base, continuation="not-a-token")


async def test_a_continuation_token_is_taken_by_the_search_that_handed_it_out_only(clients: AzureClients) -> None:
    """A token names its search (``search``: the digest of its filters, :func:`shared.audit.search_key`). Handed to
    a search of another connection it would have that one skip its records newer than the first one's cursor: a
    400 on ``/continuationToken``, as the connection list answers a token of another app's list."""
    from shared.audit import search_key

    store = AuditTable(clients)
    base = DAY + timedelta(days=6000 + uuid.uuid4().int % 500)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    for n in range(3):
        await store.append(_record(base + timedelta(seconds=n), connection=first))
        await store.append(_record(base + timedelta(seconds=10 + n), connection=second))  # all newer
    window = (base - timedelta(hours=1), base + timedelta(hours=1))
    mine = search_key(*window, first, None, None, None)
    page, token = await store.query(*window, connection_id=first, limit=1, search=mine)
    assert len(page) == 1 and token
    theirs = search_key(*window, second, None, None, None)
    assert theirs != mine
    with pytest.raises(InvalidRequest) as refused:
        await store.query(*window, connection_id=second, continuation=token, search=theirs)
    assert [e.pointer for e in refused.value.errors] == ["/continuationToken"]
    rest, _ = await store.query(*window, connection_id=first, continuation=token, search=mine)
    assert len(rest) == 2


@pytest.mark.parametrize("day", ["89991231", "21251231", "00000000", "20261399"])
async def test_a_continuation_token_for_a_day_outside_the_search_is_refused_before_anything_is_read(
        clients: AzureClients, day: str) -> None:
    """A forged day would have the search read one day partition after another, from there back to the start."""
    import asyncio
    import base64
    import json

    token = base64.urlsafe_b64encode(json.dumps([day, "", ""]).encode()).decode().rstrip("=")  # of this search
    end = datetime(2026, 12, 1, tzinfo=UTC)
    with pytest.raises(InvalidRequest, match="not valid for this search"):
        await asyncio.wait_for(AuditTable(clients).query(end - timedelta(days=30), end, continuation=token), 10)


async def test_purge_deletes_whole_days_before_the_cutoff(clients: AzureClients) -> None:
    store = AuditTable(clients)
    old = datetime(2001, 1, 1, tzinfo=UTC) + timedelta(days=uuid.uuid4().int % 3000)
    for hours in range(0, 72, 6):
        await store.append(_record(old + timedelta(hours=hours)))
    deleted = await store.purge(old + timedelta(days=2))
    assert deleted >= 8
    left, _ = await store.query(old - timedelta(days=1), old + timedelta(days=4))
    assert left
    assert all(r.at >= old + timedelta(days=2) for r in left)


async def test_two_purges_at_once_each_finish_with_the_rows_the_other_deleted_counted_as_done(
        clients: AzureClients, local_env: Any) -> None:
    """Found by a review of two instances at once: the daily retention timer on two instances (its singleton lock
    lost) read the same rows, and the batch of the one that came second failed as a whole (ResourceNotFound) on
    the rows the first had deleted: the purge failed. A row already gone is done."""
    from shared.settings import load_settings

    store = AuditTable(clients)
    old = datetime(2001, 1, 1, tzinfo=UTC) + timedelta(days=uuid.uuid4().int % 3000)
    await asyncio.gather(*(store.append(_record(old + timedelta(seconds=n))) for n in range(250)))
    other = AzureClients(load_settings({**local_env.settings, "STATE_TABLE_PREFIX": clients.settings.table_prefix}))
    try:
        counts = await asyncio.gather(store.purge(old + timedelta(days=1)), AuditTable(other).purge(
            old + timedelta(days=1)))
    finally:
        await other.close()
    assert counts == [250, 250]
    left, _ = await store.query(old - timedelta(days=1), old + timedelta(days=1))
    assert left == []


async def test_a_search_over_many_quiet_days_pages_exactly_as_one_read(clients: AzureClients) -> None:
    """Days are asked for ahead of the one being read (shared.store.audit.SEARCH_AHEAD): whatever the page size, the
    pages follow each other newest first over sparse days, without a gap or a repeat."""
    store = AuditTable(clients)
    base = DAY + timedelta(days=4000 + uuid.uuid4().int % 1000)
    connection = str(uuid.uuid4())
    records = [_record(base + timedelta(days=d, hours=h), connection=connection)
               for d in (0, 1, 9, 10, 17, 26, 33, 39) for h in (1, 5)]
    for record in records:
        await store.append(record)
    expected = [r.id for r in sorted(records, key=lambda r: r.at, reverse=True)]
    start, end = base - timedelta(days=1), base + timedelta(days=40)
    whole, token = await store.query(start, end, connection_id=connection, limit=1000)
    assert ([r.id for r in whole], token) == (expected, None)
    for limit in (1, 3, 5):
        pages: list[str] = []
        token = None
        while True:
            page, token = await store.query(start, end, connection_id=connection, limit=limit, continuation=token)
            assert len(page) <= limit
            pages += [r.id for r in page]
            if token is None:
                break
        assert pages == expected, limit


async def test_a_page_that_holds_the_last_records_has_no_token(clients: AzureClients) -> None:
    """(Review G, session 17.) A page that ended exactly at ``limit`` handed out a token for an empty page."""
    store = AuditTable(clients)
    base = DAY + timedelta(days=5000 + uuid.uuid4().int % 1000)
    connection = str(uuid.uuid4())
    records = [_record(base + timedelta(days=d, hours=1), connection=connection) for d in (0, 3)]
    for record in records:
        await store.append(record)
    start, end = base - timedelta(days=1), base + timedelta(days=5)
    exact, token = await store.query(start, end, connection_id=connection, limit=2)
    assert (len(exact), token) == (2, None)
    first, token = await store.query(start, end, connection_id=connection, limit=1)
    assert [r.id for r in first] == [records[1].id] and token is not None
    rest, token = await store.query(start, end, connection_id=connection, limit=1, continuation=token)
    assert ([r.id for r in rest], token) == ([records[0].id], None)
