"""The notifications' outbox in Table Storage (``shared.store.tables``), against Azurite through the SDK: a notice
queued with its change, read when due, and never brought back once delivered."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from shared.azure.clients import AzureClients
from shared.records import ConnectionRecord, Notification
from shared.store.tables import ConnectionsTable

pytestmark = pytest.mark.e2e


@pytest.fixture
def clients(own_tables: AzureClients) -> AzureClients:
    """On tables of the test's own: a pass reads every due notice of an app's partition, other tests' too."""
    return own_tables

APP = "azure-key-vault"


async def queued_notice(store: ConnectionsTable, now: datetime, prefix: str, app: str = APP) -> Notification:
    """A connection of its own whose change queued a notice, as a health check queues one."""
    cid = uuid.uuid4().hex
    record = await store.insert(ConnectionRecord(
        app=app, id=cid, name=f"{prefix}-{cid[:8]}", method="client-secret", tenant_id=str(uuid.uuid4()),
        client_id=str(uuid.uuid4()), created_at=now, updated_at=now, secret_name=f"s-{cid[:8]}", secret_version="v1"))
    notice = Notification("validation-failed", app, cid, record.name, "failing", "refused", now)
    await store.update(record.evolve(status="invalid"), notify=[notice])
    return notice


async def due_by(store: ConnectionsTable, at: datetime, limit: int = 100) -> list[Notification]:
    """What a pass at ``at`` may send: the queued notices due by then."""
    return [n for n in await store.pending((APP,), limit) if n.next_attempt_at is None or n.next_attempt_at <= at]


async def test_a_failed_delivery_of_a_notice_delivered_meanwhile_does_not_bring_it_back(
        clients: AzureClients) -> None:
    store = ConnectionsTable(clients)
    now = datetime.now(UTC)
    notice = await queued_notice(store, now, "outbox")
    cid = notice.connection_id
    due = [n for n in await due_by(store, now + timedelta(seconds=1)) if n.connection_id == cid]
    assert [n.id for n in due] == [notice.id]
    # Two passes hold it: one delivers it, the other's receiver failed and would queue it again.
    await store.delivered(due[0])
    await store.retry_later(replace(due[0], attempts=1, next_attempt_at=now))
    later = [n for n in await due_by(store, now + timedelta(days=1)) if n.connection_id == cid]
    assert later == []  # delivered stays delivered: not sent again


async def test_a_notice_is_taken_by_one_pass_under_the_etag_it_was_read_with(clients: AzureClients) -> None:
    store = ConnectionsTable(clients)
    now = datetime.now(UTC)
    notice = await queued_notice(store, now, "claim")
    cid = notice.connection_id
    first, second = [[n for n in await due_by(store, now + timedelta(seconds=1)) if n.connection_id == cid]
                     for _ in range(2)]  # two passes read it
    assert first[0].etag and first[0].etag == second[0].etag
    taken = await store.claim(first[0], now + timedelta(minutes=5))
    assert taken is not None and taken.etag != first[0].etag and taken.next_attempt_at == now + timedelta(minutes=5)
    assert await store.claim(second[0], now + timedelta(minutes=5)) is None  # the other pass: already taken
    assert [n for n in await due_by(store, now + timedelta(minutes=1)) if n.connection_id == cid] == []
    assert [n.id for n in await due_by(store, now + timedelta(minutes=6)) if n.connection_id == cid] == [
        notice.id]  # should the pass die holding it, it is due again after the claim
    await store.delivered(taken)
    assert await store.claim(taken, now) is None  # delivered: nothing to take


async def test_a_new_notice_is_read_however_many_wait_to_be_tried_again(clients: AzureClients) -> None:
    """(Review I.) A pass read the oldest due notices only: a backlog of notices to try again kept a new one from
    being read (its alert record goes out when a pass first takes it). Each kind is read up to the limit, and all
    come oldest first (a connection's notices are sent in order)."""
    store = ConnectionsTable(clients)
    app = "azure-app-configuration"
    start = datetime.now(UTC) - timedelta(hours=2)
    backlog = []
    for n in range(5):
        old = await queued_notice(store, start + timedelta(milliseconds=n), f"backlog-{n}", app)
        [read] = [i for i in await store.pending((app,), 10_000) if i.id == old.id]
        await store.retry_later(replace(read, attempts=1, next_attempt_at=start))
        backlog.append(old.id)
    new = await queued_notice(store, datetime.now(UTC), "new", app)
    read = await store.pending((app,), 3)
    assert [n.id for n in read] == [*backlog[:3], new.id]  # three to try again, then the new one: oldest first


async def test_the_oldest_notices_are_read_across_apps_not_app_after_app(clients: AzureClients) -> None:
    """(Review G, session 17.) Each kind was read app after app until the limit: while one app kept a backlog of
    notices to try again, the other apps' were never read, however much older."""
    store = ConnectionsTable(clients)
    then = datetime(2020, 1, 5, 12, 0, tzinfo=UTC) + timedelta(seconds=uuid.uuid4().int % 10_000)  # before the rest
    oldest = await queued_notice(store, then, "oldest", "azure-client-secrets")  # the last app read
    newer = [await queued_notice(store, then + timedelta(minutes=1 + n), f"newer-{n}", "azure-key-vault")
             for n in range(3)]
    read = await store.pending(("azure-key-vault", "azure-app-configuration", "azure-client-secrets"), 3)
    assert [n.id for n in read if not n.attempts][:3] == [oldest.id, newer[0].id, newer[1].id]


async def test_a_pass_whose_claim_ran_out_does_not_write_over_the_pass_that_took_the_notice_over(
        clients: AzureClients) -> None:
    """(Review L, session 17.) ``retry_later`` wrote without an ETag: a pass held up past its claim wrote its next
    attempt over the claim of the pass that had taken the notice over, which could then be sent twice at once."""
    store = ConnectionsTable(clients)
    now = datetime.now(UTC)
    notice = await queued_notice(store, now, "claims")
    [read] = [n for n in await due_by(store, now + timedelta(seconds=1)) if n.id == notice.id]
    slow = await store.claim(read, now + timedelta(minutes=5))
    assert slow is not None
    [again] = [n for n in await due_by(store, now + timedelta(minutes=6)) if n.id == notice.id]  # ran out
    taken = await store.claim(again, now + timedelta(minutes=11))
    assert taken is not None
    await store.retry_later(replace(slow, attempts=1, next_attempt_at=now + timedelta(minutes=1)))  # too late
    [stored] = [n for n in await store.pending((APP,), 10_000) if n.id == notice.id]
    assert (stored.etag, stored.next_attempt_at) == (taken.etag, now + timedelta(minutes=11))
