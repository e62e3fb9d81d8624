"""The rotation sweep: what it does to a connection whose only due work is the clean-up of the application it
left, and what it records of it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from shared.records import AuditRecord, ConnectionRecord
from tests.lifecycle_harness import APP, Harness


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
