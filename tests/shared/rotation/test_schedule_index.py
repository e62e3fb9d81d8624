"""The due-time indexes (rotation schedule, health checks) and the records that point at them: an entry is removed
only once nothing points at it, and a journal step written again over a concurrent write keeps the entry that
write made, so a write that lands while a change moves a connection's due time never leaves the connection
unscheduled or unchecked (``due_index.reindex``, ``ConnectionService``'s schedule update, the journals' steps),
against in-memory fakes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.due_index import reindex
from shared.health import HealthChecker
from shared.records import ConnectionRecord
from tests.lifecycle_harness import APP, ROTATION, Harness, user_operations


def entries_of(h: Harness, record: ConnectionRecord) -> set[str]:
    return {key for key in h.fakes.schedule.keys if record.id in key}


async def test_a_health_check_that_lands_while_a_patch_moves_the_due_time_leaves_the_new_time_scheduled() -> None:
    h = Harness()
    record = await h.create()
    services = h.services()
    checker = HealthChecker(h.fakes.adapters, services.connections)
    put = h.fakes.schedule.put
    checked: list[str] = []

    puts: list[str] = []

    async def put_then_a_health_check(due, app, connection_id, keep=None):  # type: ignore[no-untyped-def]
        key = await put(due, app, connection_id, keep)
        puts.append(key)
        # The PATCH indexes the new due time before its write, and again after it (the entry it points at kept), when
        # it drops the old entry: the health sweep (or POST .../health) writes the record in between.
        if len(puts) == 2 and not checked:
            checked.append(key)
            await checker.check(await h.fakes.connections.get(app, connection_id))
        return key

    h.fakes.schedule.put = put_then_a_health_check  # type: ignore[method-assign]
    await services.connections.update(APP, record.id, {"rotation": {**ROTATION, "rotationInterval": 7}})
    h.fakes.schedule.put = put  # type: ignore[method-assign]

    after = await h.record(record.id)
    assert after is not None and after.rotation.interval_days == 7 and after.health.checked_at is not None
    assert after.rotation.schedule_key == checked[0]  # the PATCH's entry, adopted over the health check's write
    assert entries_of(h, after) == {checked[0]}  # and the old one dropped
    secret = h.current_secret(after)
    h.fakes.clock.advance(timedelta(days=8))
    await h.sweep()
    rotated = await h.record(record.id)
    assert rotated is not None and rotated.rotation.status == "succeeded"
    assert h.current_secret(rotated) != secret  # rotated on the new schedule


@pytest.mark.parametrize("pointed_at", ["old", "elsewhere"])
async def test_an_entry_the_connection_still_points_at_is_kept_and_the_one_it_did_not_adopt_dropped(
        pointed_at: str) -> None:
    h = Harness()
    record = await h.create()
    old = record.rotation.schedule_key
    assert old is not None and old in h.fakes.schedule.keys
    held = old
    if pointed_at == "elsewhere":  # a third writer moved it meanwhile, to an entry of its own
        held = await h.fakes.schedule.put(h.fakes.clock.now + timedelta(days=3), APP, record.id)

    async def point(key: str | None) -> ConnectionRecord:  # another write won: the record points at ``held``
        return record.evolve(rotation=record.rotation.evolve(schedule_key=held))

    await reindex(h.fakes.schedule, old, h.fakes.clock.now + timedelta(days=7), record, point)
    assert entries_of(h, record) == {held}


async def test_a_connection_that_keeps_failing_past_its_40th_failure_is_still_failed_and_tried_daily() -> None:
    h = Harness()
    record = await h.create()
    h.fakes.world.apps[record.client_id or ""].may_manage_itself = False  # Graph refuses every rotation from now on
    key = (record.app, record.id)
    stored = h.fakes.connections.records[key]  # it has failed for weeks already (5 min x 2 ** 39 is no timedelta)
    h.fakes.connections.records[key] = stored.evolve(rotation=stored.rotation.evolve(failures=45))
    await h.due()
    for _ in range(3):
        await h.sweep()
        after = await h.record(record.id)
        assert after is not None
        state = after.rotation
        assert (state.status, state.leased(h.fakes.clock.now)) == ("failed", False), state.message
        assert state.next_at is not None and state.next_at - h.fakes.clock.now == timedelta(days=1)
        h.fakes.clock.now = state.next_at
    assert state.failures == 48 and state.message
    outcome = await h.op("rotate", record.id, lambda: h.api.rotate(APP, record.id))
    assert outcome.status == 400 and "Graph refused" in str(outcome.error), outcome  # said as such, not a 500


@pytest.mark.parametrize("written", ["finished", "migrate-switched"])
async def test_a_health_check_that_lands_before_a_journal_step_is_kept_and_the_connection_stays_checked(
        written: str) -> None:
    h = Harness()
    record = await h.create(rotation=written == "finished")
    services = h.services()
    checker = HealthChecker(h.fakes.adapters, services.connections)
    store = h.fakes.connections
    update = store.update
    checked: list[str] = []

    async def a_health_check_first(target, previous_name=None, notify=()):  # type: ignore[no-untyped-def]
        if target.rotation.step == written and not checked:  # the health sweep writes the record just before
            checked.append(str((await checker.check(await store.get(target.app, target.id))).health.check_key))
        return await update(target, previous_name=previous_name, notify=notify)

    store.update = a_health_check_first  # type: ignore[method-assign]
    if written == "finished":
        await h.due()
        await h.sweep()
    else:
        h.fakes.clock.advance(timedelta(hours=2))  # so that the check's next due time is another entry
        await services.connections.migrate_to_federated(APP, record.id, {})
    store.update = update  # type: ignore[method-assign]
    after = await h.record(record.id)
    assert checked and after is not None and after.rotation.step is None
    assert after.health.check_key == checked[0] and checked[0] in h.fakes.health_index.keys
    for _ in range(3):  # and the health sweep keeps checking it
        h.fakes.clock.advance(timedelta(days=1))
        await checker.sweep()
        assert [k for k in h.fakes.health_index.keys if record.id in k]


async def test_a_failed_read_of_one_due_connection_ends_its_turn_not_the_rotation_sweep() -> None:
    from shared.rotation.sweep import sweep

    h = Harness()
    records = [await h.create(name=f"c{n}") for n in range(3)]
    secrets = {r.id: h.current_secret(r) for r in records}
    await h.due()
    h.fakes.world.fail_next("store.get")
    report = await sweep(h.services().rotator)
    assert (report.succeeded, report.failed) == (2, 1)
    await h.sweep()  # its entry is still due: the next sweep rotates it
    for record in records:
        now = await h.record(record.id)
        assert now is not None and h.current_secret(now) != secrets[record.id], record.name
    assert h.check() == []


@pytest.mark.parametrize("fails", ["the schedule index", "the write after it"])
async def test_turning_rotation_on_indexes_its_due_time_before_the_record_says_so(fails: str) -> None:
    """Found by a review: turning rotation on for a connection never rotated wrote the record (due in five
    minutes) before its schedule entry; Table Storage failing the entry answered 502 with the record changed
    (I3), due at a time nothing indexed, and a PATCH sent again changed nothing: it never rotated. The entry is
    written first now, so a failure changes nothing, and the PATCH sent again works."""
    from shared.errors import UpstreamError

    h = Harness()
    _, credentials = h.new_application()
    record = await h.api.create(APP, {"name": "c1", "method": "client-secret", "credentials": credentials,
                                      "rotation": ROTATION})
    if fails == "the schedule index":
        h.fakes.world.fail_next("schedule.put")
    else:
        h.fakes.world.fail_next("store.update")
    h.faults_armed = True
    outcome = await h.op("enable", record.id, lambda: h.api.update(APP, record.id, {"isAutoRotationEnabled": True}))
    assert outcome.status == 502 and h.check() == []
    h.faults_armed = False
    again = await h.api.update(APP, record.id, {"isAutoRotationEnabled": True})
    assert again.rotation.status == "succeeded" and h.unscheduled() == []
    assert h.check() == []
    assert isinstance(outcome.error, UpstreamError)


async def test_a_claim_due_in_the_same_second_as_before_keeps_the_entry_it_points_at() -> None:
    """Found by a review: an entry's key is its due time to the second. A claim whose lease ended in the same
    second as the connection's earlier due time wrote the same key, pointed at it, then removed "the old one":
    the rotation, its worker dead, was never resumed."""
    from tests.lifecycle_harness import Crash, crash_at

    h = Harness()
    record = await h.create()
    h.fakes.clock.now = h.fakes.clock.now.replace(microsecond=600000)
    for _ in range(3):  # failed attempts: due after a back-off, to the microsecond
        h.fakes.world.fail_next("graph.add", times=5)
        await user_operations(h, record.id)["rotate"]()
    h.fakes.world.clear_faults()
    failed = await h.record(record.id)
    assert failed is not None and failed.rotation.next_at is not None
    lease = h.services().rotator.options.lease
    h.fakes.clock.now = failed.rotation.next_at - lease - timedelta(microseconds=100000)

    with pytest.raises(Crash):
        await h.services(crash_at("after-add-password")).connections.rotate(APP, record.id)
    assert h.unscheduled() == []
    h.lease_runs_out()
    await h.sweep()
    after = await h.record(record.id)
    assert after is not None and after.rotation.status == "succeeded" and h.check() == []


@pytest.mark.parametrize("method", ["client-secret", "certificate"])
async def test_a_clean_up_a_rotation_could_not_finish_is_tried_again_by_the_next_sweep_not_the_next_rotation(
        method: str) -> None:
    """Found by the stateful test: a credentials change whose clean-up of what the service had made on the
    application failed, and failed again before the rotation that followed, was left to the next rotation, up to
    an interval later (its secrets live there all that time). The rotation's next due time is now the clean-up's
    retry, when that comes first; the sweep then does only the clean-up, and the rotation stays on schedule."""
    h = Harness(method=method)
    record = await h.create()
    h.fakes.world.fail_next("graph.remove", times=2)
    h.faults_armed = True
    outcome = await user_operations(h, record.id)["patch-credentials"]()
    assert outcome.status == 200
    changed = await h.record(record.id)
    assert changed is not None and changed.rotation.retire_version is not None
    rotation = changed.rotation.last_rotated_at
    assert changed.rotation.next_at is not None and changed.rotation.next_at < h.fakes.clock.now + timedelta(days=1)
    h.fakes.world.clear_faults()
    h.faults_armed = False
    h.fakes.clock.advance(timedelta(days=1))
    await h.sweep()
    done = await h.record(record.id)
    assert done is not None and done.rotation.retire_version is None
    assert done.rotation.last_rotated_at == rotation  # not rotated again for it
    assert done.rotation.next_at is not None and done.rotation.next_at > h.fakes.clock.now + timedelta(days=25)
    assert done.rotation.schedule_key in h.fakes.schedule.keys
    assert h.check() == []


def test_each_entry_written_has_a_key_of_its_own_but_the_one_a_connection_stays_at() -> None:
    """Two writers that index one connection at the same due time get two entries (review of two instances at once:
    one's drop of the entry it moved the connection from dropped the entry the other had just pointed it at);
    the entry a connection points at is kept when its due time stays; keys older versions wrote (untagged) read
    as before."""
    from datetime import UTC, datetime

    from shared.ports import DueEntry
    from shared.store.schedule import key_for, parse_key, schedule_key

    due = datetime(2027, 1, 2, 3, 0, 30, tzinfo=UTC)
    one, two = schedule_key(due, APP, "c1"), schedule_key(due, APP, "c1")
    assert one != two and one.startswith("20270102T030030Z|" + APP + "|c1|")
    older = schedule_key(due, APP, "c1", "")
    assert older == f"20270102T030030Z|{APP}|c1"
    for key in (one, older):
        assert parse_key(key) == DueEntry(key, APP, "c1", due)
        assert key_for(due, APP, "c1", keep=key) == key  # where it stays
        assert key_for(due + timedelta(seconds=1), APP, "c1", keep=key) not in (key, one, two)  # moved
        assert key_for(due, APP, "c2", keep=key) != key
    assert key_for(due, APP, "c1", keep=None) not in (one, two)
