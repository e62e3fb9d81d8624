"""The rotation sweep: what it does to a connection whose only due work is the clean-up of the application it
left, and what it records of it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from shared.errors import CredentialsLeftLive, UpstreamForbidden
from shared.records import AuditRecord, ConnectionRecord
from shared.rotation.sweep import PUT_OFF, sweep
from shared.store.schedule import parse_key
from tests.fakes import FakeGraph
from tests.lifecycle_harness import APP, Harness, overtaken_at


async def _left_an_application(h: Harness) -> ConnectionRecord:
    """A connection moved to another application whose clean-up of the one it left was refused, now due again."""
    record = await h.create()
    old = h.fakes.world.apps[record.client_id or ""]
    old.may_manage_itself = False  # the clean-up the PATCH makes is refused
    _, credentials = h.new_application()
    await h.api.update(APP, record.id, {"credentials": credentials})
    moved = await h.record(record.id)
    assert moved is not None and moved.rotation.retire_version is not None
    old.may_manage_itself = True
    h.fakes.clock.now = (moved.rotation.next_at or h.fakes.clock.now) + timedelta(minutes=1)
    return moved


async def test_the_clean_up_of_an_application_left_is_audited_before_and_after() -> None:
    """(Audit review 5.) The sweep's clean-up leased the connection, read the retired secret from Key Vault and
    signed in to Entra with it, with no record before it or after (a health check's sign-in is recorded before)."""
    h = Harness()
    moved = await _left_an_application(h)
    seen = len(h.fakes.audit.records)
    watched = h.fakes.audit.append

    async def append(entry: AuditRecord) -> None:
        if entry.action == "rotation.clean-up" and entry.outcome == "started":
            assert "vault.get" not in h.fakes.world.calls[calls:]  # before it reads a credential
        await watched(entry)

    h.fakes.audit.append = append  # type: ignore[method-assign]
    calls = len(h.fakes.world.calls)
    await h.sweep()
    done = await h.record(moved.id)
    assert done is not None and done.rotation.retire_version is None  # cleaned up
    cleaning = [(r.action, r.outcome, r.actor.id, r.detail) for r in h.fakes.audit.records[seen:]
                if r.action == "rotation.clean-up"]
    what = f"application {moved.rotation.retire_client_id} the connection left"
    assert cleaning == [("rotation.clean-up", "started", "system", what),
                        ("rotation.clean-up", "succeeded", "system", what)]


async def test_a_clean_up_whose_record_cannot_be_written_is_put_off_untouched() -> None:
    """Fail closed, as a health check: no record, no lease, no secret read; the next sweep does it."""
    h = Harness()
    moved = await _left_an_application(h)
    append = h.fakes.audit.append

    async def down(entry: Any) -> None:
        raise OSError("Table Storage unreachable")

    h.fakes.audit.append = down  # type: ignore[method-assign]
    calls = len(h.fakes.world.calls)
    await h.sweep()
    made = h.fakes.world.calls[calls:]
    assert "vault.get" not in made and "graph.token" not in made and "store.update" not in made
    assert await h.record(moved.id) == moved
    h.fakes.audit.append = append  # type: ignore[method-assign]
    await h.sweep()
    done = await h.record(moved.id)
    assert done is not None and done.rotation.retire_version is None


async def test_a_clean_up_that_cannot_run_writes_no_record_however_often_the_sweep_finds_it_due() -> None:
    """A connection left marked as being deleted stays due (an undone DELETE leaves its clean-up to the sweep): each
    sweep skips it, and wrote a started and a skipped record for it, two records every five minutes (review Z1)."""
    h = Harness()
    waiting = await _left_an_application(h)
    key = next(k for k, r in h.fakes.connections.records.items() if r.id == waiting.id)
    h.fakes.connections.records[key] = waiting.evolve(status="deleting")  # a DELETE stopped half way
    for _ in range(6):
        await h.sweep()
        h.fakes.clock.advance(timedelta(minutes=5))
    assert [r for r in h.fakes.audit.records if r.action == "rotation.clean-up"] == []


def left_marked(h: Harness, record: ConnectionRecord) -> None:
    """A DELETE that stopped half way (its 502 said to send it again, and it was not): marked, its lease run out."""
    key = (record.app, record.id)
    h.fakes.connections.records[key] = h.fakes.connections.records[key].evolve(status="deleting")


def entries_of(h: Harness, connection_id: str) -> list[str]:
    return [key for key in h.fakes.schedule.keys if parse_key(key).connection_id == connection_id]


async def test_connections_left_marked_as_being_deleted_are_put_off_and_starve_no_other_due_rotation() -> None:
    """(Review sweeps 6.) Their entries stayed due without moving, oldest first: once there were as many as a sweep
    reads (1,000), no other due rotation was read by any sweep again. Shown with a limit of 3."""
    h = Harness()
    stuck = [await h.create(name=f"stuck{n}") for n in range(3)]
    h.fakes.clock.advance(timedelta(days=1))  # due a day after the stuck ones: read after them
    victim = await h.create(name="victim")
    for record in stuck:
        left_marked(h, record)
    h.fakes.clock.advance(timedelta(days=40))  # everything due
    first_sweep = h.fakes.clock.now
    for _ in range(3):
        await sweep(h.services().rotator, limit=3)
        h.fakes.clock.advance(timedelta(minutes=5))
    rotated = await h.record(victim.id)
    assert rotated is not None and rotated.rotation.last_rotated_at == first_sweep + timedelta(minutes=5)
    for record in stuck:  # each moved an hour on, one entry each, the one it points at
        after = await h.record(record.id)
        assert after is not None and after.status == "deleting"
        assert after.rotation.next_at == first_sweep + PUT_OFF
        assert entries_of(h, record.id) == [after.rotation.schedule_key]
    assert [r for r in h.fakes.audit.records if r.connection_id in {s.id for s in stuck}
            and r.at >= first_sweep] == []  # index bookkeeping: nothing audited
    assert h.check() == []


async def test_a_delete_undone_after_the_sweep_put_its_connection_off_points_at_the_entry_that_exists(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A DELETE held up past its lease while the sweep moves the connection's entry, whose removal is then refused:
    it puts the connection back as it was, and the entry it pointed at before is gone. The record points at the
    one the sweep made (no connection without an entry, no second one), and the next sweep rotates it. While a
    DELETE holds the connection, the sweep leaves it alone."""
    h = Harness()
    record = await h.create()
    await h.due()
    marked_at = h.fakes.clock.now

    async def sweeps() -> None:
        during = await h.record(record.id)
        await h.sweep()  # the DELETE holds it: not moved
        assert await h.record(record.id) == during
        h.fakes.clock.advance(timedelta(minutes=3))  # past the DELETE's lease (120 s), not by LEFT_AFTER: it may
        await h.sweep()  # still run (a request ends within 230 s; review of the sweeps' fixes, 2): not moved
        assert await h.record(record.id) == during
        h.fakes.clock.advance(timedelta(minutes=5))
        await h.sweep()  # moved an hour on
        moved = await h.record(record.id)
        assert moved is not None and moved.rotation.next_at == h.fakes.clock.now + PUT_OFF
        assert entries_of(h, record.id) == [moved.rotation.schedule_key]

    overtaken = overtaken_at(monkeypatch, FakeGraph, "find", 1, sweeps)
    h.fakes.world.fail_next("graph.remove", UpstreamForbidden("Microsoft Graph refused (403)."))
    with pytest.raises(CredentialsLeftLive, match="the connection was not deleted"):
        await h.api.delete(APP, record.id)
    assert overtaken.ran and not overtaken
    back = await h.record(record.id)
    assert back is not None and back.status != "deleting"
    assert entries_of(h, record.id) == [back.rotation.schedule_key] and h.unscheduled() == []
    assert back.rotation.next_at == marked_at + timedelta(minutes=8) + PUT_OFF
    h.fakes.clock.advance(PUT_OFF)
    await h.sweep()
    rotated = await h.record(record.id)
    assert rotated is not None and rotated.rotation.last_rotated_at == h.fakes.clock.now
    assert entries_of(h, record.id) == [rotated.rotation.schedule_key] and h.check() == []
