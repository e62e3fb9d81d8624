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

APP = "azure-key-vault"


async def queued_notice(store: ConnectionsTable, now: datetime, prefix: str) -> Notification:
    """A connection of its own whose change queued a notice, as a health check queues one."""
    cid = uuid.uuid4().hex
    record = await store.insert(ConnectionRecord(
        app=APP, id=cid, name=f"{prefix}-{cid[:8]}", method="client-secret", tenant_id=str(uuid.uuid4()),
        client_id=str(uuid.uuid4()), created_at=now, updated_at=now, secret_name=f"s-{cid[:8]}", secret_version="v1"))
    notice = Notification("validation-failed", APP, cid, record.name, "failing", "refused", now)
    await store.update(record.evolve(status="invalid"), notify=[notice])
    return notice


async def test_a_failed_delivery_of_a_notice_delivered_meanwhile_does_not_bring_it_back(
        clients: AzureClients) -> None:
    store = ConnectionsTable(clients)
    now = datetime.now(UTC)
    notice = await queued_notice(store, now, "outbox")
    cid = notice.connection_id
    due = [n for n in await store.pending((APP,), now + timedelta(seconds=1)) if n.connection_id == cid]
    assert [n.id for n in due] == [notice.id]
    # Two passes hold it: one delivers it, the other's receiver failed and would queue it again.
    await store.delivered(due[0])
    await store.retry_later(replace(due[0], attempts=1, next_attempt_at=now))
    later = [n for n in await store.pending((APP,), now + timedelta(days=1)) if n.connection_id == cid]
    assert later == []  # delivered stays delivered: not sent again


async def test_a_notice_is_taken_by_one_pass_under_the_etag_it_was_read_with(clients: AzureClients) -> None:
    store = ConnectionsTable(clients)
    now = datetime.now(UTC)
    notice = await queued_notice(store, now, "claim")
    cid = notice.connection_id
    first, second = [[n for n in await store.pending((APP,), now + timedelta(seconds=1)) if n.connection_id == cid]
                     for _ in range(2)]  # two passes read it
    assert first[0].etag and first[0].etag == second[0].etag
    taken = await store.claim(first[0], now + timedelta(minutes=5))
    assert taken is not None and taken.etag != first[0].etag and taken.next_attempt_at == now + timedelta(minutes=5)
    assert await store.claim(second[0], now + timedelta(minutes=5)) is None  # the other pass: already taken
    assert [n for n in await store.pending((APP,), now + timedelta(minutes=1)) if n.connection_id == cid] == []
    assert [n.id for n in await store.pending((APP,), now + timedelta(minutes=6)) if n.connection_id == cid] == [
        notice.id]  # should the pass die holding it, it is due again after the claim
    await store.delivered(taken)
    assert await store.claim(taken, now) is None  # delivered: nothing to take


async def test_never_tried_notices_are_read_before_those_to_try_again(clients: AzureClients) -> None:
    """(Review I.) However many notices wait to be tried again, a new one is read before them (its alert record goes
    out when a pass first takes it)."""
    store = ConnectionsTable(clients)
    start = datetime.now(UTC) - timedelta(hours=2)
    backlog = []
    for n in range(5):
        old = await queued_notice(store, start + timedelta(milliseconds=n), f"backlog-{n}")
        [read] = [i for i in await store.pending((APP,), start + timedelta(days=1), 10_000) if i.id == old.id]
        await store.retry_later(replace(read, attempts=1, next_attempt_at=start))
        backlog.append(old.id)
    new = await queued_notice(store, datetime.now(UTC), "new")
    order = [item.id for item in await store.pending((APP,), datetime.now(UTC), 10_000)]
    assert order.index(new.id) < min(order.index(old) for old in backlog)
