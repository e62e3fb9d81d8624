"""The test of a new credential under an HTTP request's deadline (``shared.rotation.journal``): Azure's front end
answers a bare 502 after 230 s, and the test alone may take ``ROTATION_TEST_TIMEOUT_SECONDS`` (300 s). While a
request is served, the test stops in time for the request's answer; the rotation (or the move to federated) is then
neither failed nor withdrawn but handed to the rotation sweep, which finishes it. Without a deadline (the sweep) the
test runs to its timeout, as before. Fakes throughout, on a virtual clock that the rotation's sleeps move."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from shared import wiring
from shared.azure.retry import answering_within
from shared.connections import RotationContinues
from shared.errors import CredentialRejected, RotationFailed, UpstreamError
from shared.records import CREATED, MIGRATION_STEPS, ConnectionRecord
from shared.rotation.journal import ROOM_AFTER_TEST, RotationOptions
from tests.fakes import FakeGraph
from tests.lifecycle_harness import APP, Harness

DEADLINE = 150.0  # ANSWER_WITHIN
FRONT_END = 230.0  # Azure's front end answers 502 after this long
REFUSED = CredentialRejected("AADSTS7000215: Invalid client secret provided.",
                             extensions={"aadstsCode": "AADSTS7000215"})


class GaveUp(BaseException):
    """Azure's front end gave up on the request (a BaseException: nothing in the service catches it)."""


class VirtualTime:
    """A request's clock (seconds since it came in), moved by the rotation's sleeps, and the fakes' clock with it
    (unless ``moves_clock`` is false). A sleep past ``gives_up`` (Azure's front end: 230 s) raises ``GaveUp``."""

    def __init__(self, h: Harness, moves_clock: bool = True, gives_up: float | None = FRONT_END) -> None:
        self.h, self.now, self.slept, self.moves_clock, self.gives_up = h, 0.0, 0, moves_clock, gives_up

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += 1
        if self.gives_up is not None and self.now > self.gives_up:
            raise GaveUp(f"the request still waited {self.now:.0f} s after it came in")
        if self.moves_clock:
            self.h.fakes.clock.advance(timedelta(seconds=seconds))


def on_virtual_time(h: Harness) -> tuple[VirtualTime, wiring.Services]:
    """Services whose sleeps are virtual, with the test timeout as deployed (300 s, far beyond a request's deadline:
    measured on the loop's clock, which the virtual sleeps do not move, it never runs out here)."""
    time = VirtualTime(h)
    h.fakes.adapters = replace(h.fakes.adapters, sleep=time.sleep)
    options = RotationOptions(test_timeout=300, test_first_delay=1, test_max_delay=5)
    return time, wiring.services(h.fakes.adapters, options=options)


class Propagation:
    """Entra ID has not propagated the client secrets the service adds (``pending``): it refuses them at sign-in; a
    secret its owner gave works."""

    def __init__(self, h: Harness) -> None:
        self.pending = True
        directory = h.fakes.directory
        probe = directory.probe

        async def refusing(app: Any, method: Any, tenant_id: str, client_id: str, material: Any) -> None:
            owned = directory.world.owner_of(material.get("clientSecret", ""))
            if self.pending and owned is not None and owned[1].created_by_service:
                raise REFUSED
            await probe(app, method, tenant_id, client_id, material)

        directory.probe = refusing  # type: ignore[method-assign]


async def rotation_entries(h: Harness, record: ConnectionRecord) -> list[str]:
    return [entry.key for entry in await h.fakes.schedule.due(h.fakes.clock.now) if entry.connection_id == record.id]


async def test_a_request_s_rotation_still_refused_at_its_deadline_is_handed_to_the_sweep_which_finishes_it() -> None:
    h = Harness()
    record = await h.create()  # rotated once on enabling: the connection uses a secret the service made
    app = h.fakes.world.apps[record.client_id or ""]
    in_use, revoked = record.rotation.key_id, len(h.fakes.world.revocations)
    time, services = on_virtual_time(h)
    entra = Propagation(h)
    with answering_within(DEADLINE, clock=time), pytest.raises(RotationContinues) as continues:
        await services.connections.rotate(APP, record.id)
    assert time.slept > 5 and DEADLINE - ROOM_AFTER_TEST - 5 < time.now <= DEADLINE - ROOM_AFTER_TEST
    after = await h.record(record.id)
    assert after is not None and continues.value.record == after and continues.value.retry_after == 300
    state = after.rotation
    # Journaled at its step, not failed: the lease free, due now (its entry the one the connection points at).
    assert (state.status, state.step, state.attempt) == ("rotating", CREATED, 1)
    assert (state.lease_owner, state.lease_until, state.next_at) == (None, None, h.fakes.clock.now)
    assert await rotation_entries(h, after) == [state.schedule_key]
    assert continues.value.detail == state.message and "the rotation sweep goes on testing it" in state.message
    # Nothing withdrawn: the new secret is on the application, the one in use still is and is still used.
    assert state.pending_key_id in app.passwords and in_use in app.passwords
    assert (after.secret_version, state.key_id) == (record.secret_version, in_use)
    assert len(h.fakes.world.revocations) == revoked
    [entry] = [e for e in h.fakes.history.of(record.id) if e.rotation_id == state.rotation_id]
    assert (entry.outcome, entry.trigger, entry.message) == ("interrupted", "manual", state.message)
    assert entry.finished_at is not None
    [audited] = [r for r in h.fakes.audit.records if r.action == "rotation.attempt" and r.outcome == "interrupted"]
    assert audited.detail == state.message
    assert h.check() == []

    entra.pending = False  # Entra has caught up: the sweep resumes the rotation, tests it and finishes it
    await h.sweep()
    done = await h.record(record.id)
    assert done is not None and not done.rotation.in_progress and done.rotation.status == "succeeded"
    assert done.rotation.key_id == state.pending_key_id and in_use not in app.passwords
    entries = sorted((e for e in h.fakes.history.of(record.id) if e.rotation_id == state.rotation_id),
                     key=lambda e: e.attempt)
    assert [(e.attempt, e.outcome, e.trigger) for e in entries] == [(1, "interrupted", "manual"),
                                                                    (2, "succeeded", "resume")]
    assert entries[0].message == state.message  # the resuming attempt leaves the entry as the hand-over wrote it
    assert h.check() == []


async def test_a_hand_over_whose_history_entry_could_not_be_written_has_one_outcome_in_the_audit_log() -> None:
    """(Review of the fixes.) The hand-over audits its own outcome and writes its history entry as well as it can;
    when that write failed, the sweep's claim found the entry ``running`` and audited a second ``interrupted``,
    saying wrongly that the attempt had not ended within its lease. One handed over gave its lease up: not again."""
    h = Harness()
    record = await h.create()
    time, services = on_virtual_time(h)
    entra = Propagation(h)
    history = h.fakes.history
    write = history.record

    async def hand_over_unwritten(event: Any) -> None:
        if event.outcome == "interrupted" and event.finished_at is not None:
            raise UpstreamError("Table Storage failed.")
        await write(event)

    history.record = hand_over_unwritten  # type: ignore[method-assign]
    with answering_within(DEADLINE, clock=time), pytest.raises(RotationContinues):
        await services.connections.rotate(APP, record.id)
    history.record = write  # type: ignore[method-assign]
    entra.pending = False
    await h.sweep()
    done = await h.record(record.id)
    assert done is not None and done.rotation.status == "succeeded"
    outcomes = [r.outcome for r in h.fakes.audit.records
                if r.action == "rotation.attempt" and r.connection_id == record.id]
    assert outcomes.count("interrupted") == 1 and outcomes.count("started") * 2 == len(outcomes), outcomes
    assert h.check() == []


async def test_a_new_secret_that_works_before_the_deadline_completes_the_rotation_in_the_request() -> None:
    h = Harness()
    record = await h.create()
    time, services = on_virtual_time(h)
    h.fakes.world.fail_next("probe", REFUSED, times=3)
    with answering_within(DEADLINE, clock=time):
        rotated = await services.connections.rotate(APP, record.id)
    assert rotated.rotation.status == "succeeded" and not rotated.rotation.in_progress
    assert time.slept == 3 and h.check() == []


@pytest.mark.parametrize("change", ["enable", "credentials"])
async def test_a_patch_that_rotates_at_once_hands_its_rotation_over_alike(change: str) -> None:
    h = Harness()
    record = await h.create(rotation=change == "credentials")
    time, services = on_virtual_time(h)
    entra = Propagation(h)
    body: dict[str, Any] = {"credentials": h.new_credential(record.client_id or "")} if change == "credentials" else {
        "isAutoRotationEnabled": True, "rotation": {"rotationInterval": 30, "rotateAt": "03:00"}}
    with answering_within(DEADLINE, clock=time), pytest.raises(RotationContinues) as continues:
        await services.connections.update(APP, record.id, body)
    after = continues.value.record
    trigger = "enable" if change == "enable" else "credential-change"
    assert (after.rotation.status, after.rotation.step, after.rotation.trigger) == ("rotating", CREATED, trigger)
    assert after.rotation.lease_owner is None and await rotation_entries(h, after) == [after.rotation.schedule_key]
    assert h.check() == []
    entra.pending = False
    await h.sweep()
    done = await h.record(record.id)
    assert done is not None and done.rotation.status == "succeeded" and not done.rotation.in_progress
    assert h.check() == []


async def test_a_move_to_federated_whose_sign_in_is_still_refused_at_the_deadline_is_handed_to_the_sweep() -> None:
    h = Harness()
    record = await h.create(rotation=False)
    time, services = on_virtual_time(h)
    h.fakes.world.federation_delay = 10**6  # Entra refuses the federated sign-in while it propagates
    with answering_within(DEADLINE, clock=time), pytest.raises(RotationContinues) as continues:
        await services.connections.migrate_to_federated(APP, record.id, {})
    assert time.now <= DEADLINE - ROOM_AFTER_TEST
    after = continues.value.record
    state = after.rotation
    assert (after.method, after.secret_version) == ("client-secret", record.secret_version)  # not switched
    assert (state.status, state.step) == ("rotating", MIGRATION_STEPS[1])  # migrate-added
    assert (state.lease_owner, state.next_at) == (None, h.fakes.clock.now)
    assert await rotation_entries(h, after) == [state.schedule_key]
    assert list(h.fakes.world.apps[record.client_id or ""].federated) == [state.pending_key_id]  # not withdrawn
    assert "the rotation sweep goes on testing it and finishes the migration" in continues.value.detail
    [entry] = h.fakes.history.of(record.id)
    assert (entry.outcome, entry.trigger) == ("interrupted", "migrate-to-federated")
    assert [r.outcome for r in h.fakes.audit.records if r.action == "connection.migrate"] == ["started",
                                                                                             "interrupted"]
    assert h.check() == []

    h.fakes.world.federation_delay = 0
    await h.sweep()
    done = await h.record(record.id)
    assert done is not None and done.method == "federated" and not done.rotation.in_progress
    assert h.check() == []


async def test_without_a_deadline_the_test_runs_to_its_timeout_and_a_secret_that_never_works_is_removed() -> None:
    """The timers (the sweep) have no request to answer: as before, the test is retried until its timeout, then the
    attempt fails, and the new secret is removed; the one in use stays."""
    h = Harness()
    record = await h.create()
    app = h.fakes.world.apps[record.client_id or ""]
    time = VirtualTime(h, moves_clock=False, gives_up=None)  # (2 s of the loop's clock hold thousands of these)
    h.fakes.adapters = replace(h.fakes.adapters, sleep=time.sleep)
    Propagation(h)
    h.fakes.clock.now = (record.rotation.next_at or h.fakes.clock.now) + timedelta(minutes=1)
    before = set(app.passwords)
    await h.sweep()  # (the harness's test timeout: 2 s on the loop's clock)
    failed = await h.record(record.id)
    assert failed is not None and failed.rotation.status == "failed" and not failed.rotation.in_progress
    assert "did not work within" in (failed.rotation.message or "")
    assert time.now > DEADLINE and set(app.passwords) == before  # no deadline stopped it; the new one went again
    with pytest.raises(RotationFailed):  # nor does a request's rotation without a deadline (none is set here)
        await h.api.rotate(APP, record.id)
    assert h.check() == []


def _migrate_outcomes(h: Harness) -> list[str]:
    return [r.outcome for r in h.fakes.audit.records if r.action == "connection.migrate"]


async def test_a_migration_whose_hand_over_cannot_be_written_still_records_its_outcome() -> None:
    """(Review of the fixes.) The hand-over (and a failure's undoing) records the attempt's outcome last: when its
    own writes fail, the ``started`` record still gets one, ``failed`` with the kind of error."""
    h = Harness()
    record = await h.create(rotation=False)
    time = VirtualTime(h)
    armed = False

    async def sleep(seconds: float) -> None:  # near the request's deadline, the next schedule write fails
        nonlocal armed
        await time.sleep(seconds)
        if time.now > 100 and not armed:
            armed = True
            h.fakes.world.fail_next("schedule.put", UpstreamError("Table Storage could not be written."))

    h.fakes.adapters = replace(h.fakes.adapters, sleep=sleep)
    services = wiring.services(h.fakes.adapters, options=RotationOptions(test_timeout=300, test_first_delay=1,
                                                                         test_max_delay=5))
    h.fakes.world.federation_delay = 10**6  # the federated sign-in still refused at the deadline: hand-over
    with answering_within(DEADLINE, clock=time), pytest.raises(UpstreamError):
        await services.connections.migrate_to_federated(APP, record.id, {})
    assert armed
    assert _migrate_outcomes(h) == ["started", "failed"]


async def test_a_migration_whose_failure_cannot_be_written_still_records_its_outcome(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    record = await h.create(rotation=False)

    async def outage(self: FakeGraph, object_id: str, credential: dict[str, Any]) -> None:  # Graph and Tables fail
        h.fakes.world.fail_next("store", UpstreamError("Table Storage could not be read."), times=50)
        raise UpstreamError("Microsoft Graph failed to add a federated identity credential (503).")

    monkeypatch.setattr(FakeGraph, "add_federated_credential", outage)
    with pytest.raises(UpstreamError):
        await h.api.migrate_to_federated(APP, record.id, {})
    assert _migrate_outcomes(h) == ["started", "failed"]


async def test_the_history_s_retention_keeps_the_entry_of_an_attempt_the_journal_still_holds() -> None:
    """The retention deletes the history's entries older than ``AUDIT_RETENTION_DAYS`` (a day at least), and a
    rotation handed to the sweep may wait longer than that (its resumption failing, backed off): its attempt's entry,
    ``interrupted`` with the rotation's message, is the one the resuming attempt reads (``_close_interrupted``). Had
    it gone, that attempt would write it again without its message. It stays: the newest entry of its connection;
    the entries before it go."""
    from shared.audit import AuditLog

    h = Harness()
    record = await h.create()  # rotated once on enabling: that attempt's entry
    [enabling] = h.fakes.history.of(record.id)
    h.fakes.clock.advance(timedelta(hours=1))
    time, services = on_virtual_time(h)
    entra = Propagation(h)
    with answering_within(DEADLINE, clock=time), pytest.raises(RotationContinues):
        await services.connections.rotate(APP, record.id)
    after = await h.record(record.id)
    assert after is not None
    state = after.rotation
    h.fakes.clock.advance(timedelta(days=5))
    assert await AuditLog(h.fakes.audit, h.fakes.clock).purge_expired_history(h.fakes.history, 1) == 1
    [held] = h.fakes.history.of(record.id)
    assert (held.rotation_id, held.outcome, held.message) == (state.rotation_id, "interrupted", state.message)
    assert enabling.rotation_id != held.rotation_id

    entra.pending = False
    await h.sweep()
    done = await h.record(record.id)
    assert done is not None and done.rotation.status == "succeeded"
    entries = sorted(h.fakes.history.of(record.id), key=lambda e: e.attempt)
    assert [(e.attempt, e.outcome, e.message == state.message) for e in entries] == [
        (1, "interrupted", True), (2, "succeeded", False)]
    outcomes = [r.outcome for r in h.fakes.audit.records
                if r.action == "rotation.attempt" and r.connection_id == record.id]
    assert outcomes.count("interrupted") == 1, outcomes
    assert h.check() == []
