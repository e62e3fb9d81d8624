"""The rotation invariants, at every step boundary, with every user operation interleaved there, for a client
secret's rotation and a certificate's, against in-memory fakes (no network): I1 nothing in use is revoked before
its successor worked; I2 nothing the service created is live and untracked; I3 no error after a change of state,
no 5xx; I4 one history entry per attempt."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from shared.errors import LeaseLost, UpstreamError
from shared.records import ConnectionRecord, RotationState
from shared.rotation.journal import LEASE_MARGIN
from tests.lifecycle_harness import APP, Crash, Harness, crash_at, only_retired, user_operations

CHECKPOINTS = ["before-add-password", "lease-renewed", "after-add-password", "after-vault-write", "after-test",
               "after-tested", "after-finish", "after-revoke"]
OPERATIONS = ["patch-credentials", "patch-other-app", "patch-rotation", "patch-key-id", "disable-rotation", "delete",
              "validate", "rotate", "rename", "reauthorize", "create-same-app"]
# While a rotation runs, these wait for it: they answer 409 with the rotation's id and Retry-After (a Key ID alone,
# on a certificate connection, is refused first as a field of another method: 400).
REFUSED_WHILE_ROTATING = {"patch-credentials", "patch-other-app", "patch-rotation", "patch-key-id", "disable-rotation",
                          "delete", "rotate"}


async def _rotating(h: Harness) -> ConnectionRecord:
    record = await h.create()
    assert record.rotation.status == "succeeded", record.rotation.message
    await h.due()
    return record


METHODS = ["client-secret", "certificate"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
async def test_a_user_operation_during_a_rotation_step_keeps_every_invariant(checkpoint: str, operation: str,
                                                                             method: str) -> None:
    h = Harness(method=method)
    record = await _rotating(h)
    ops = user_operations(h, record.id)
    seen = []
    running: list[str | None] = []  # the id of the rotation running where the operation came

    async def interleave(name: str, current: ConnectionRecord) -> None:
        if name == checkpoint and not seen:
            running.append(current.rotation.rotation_id)
            seen.append(await ops[operation]())

    await h.sweep(interleave)
    assert seen, f"the rotation never reached {checkpoint}"
    if operation == "patch-key-id" and method != "client-secret":
        assert seen[0].status == 400 and seen[0].error is not None, seen[0]
        assert seen[0].error.errors[0].pointer == "/credentials/clientSecretKeyId"
    elif operation in REFUSED_WHILE_ROTATING:
        assert seen[0].status == 409, seen[0]
        assert seen[0].error is not None
        assert running[0] is not None
        assert seen[0].error.extensions.get("rotationId") == running[0]
        assert "Retry-After" in seen[0].error.headers
    else:
        assert seen[0].status == 200, seen[0].error
    await h.settle()
    assert h.check() == []
    after = await h.record(record.id)
    assert after is not None
    assert after.rotation.status == "succeeded"
    assert not after.rotation.in_progress
    await _every_connection_signs_in(h)


async def _every_connection_signs_in(h: Harness) -> None:
    """Each connection there is (the one rotated, one a user created beside it) validates: what it holds works."""
    for other in list(h.fakes.connections.records.values()):
        if other.method != "oauth":
            validated = await h.api.validate(APP, other.id)
            assert validated.status == "active", (other.name, validated.status_message)


# After a crash, while the crashed worker's lease holds, what touches the rotation waits (409). Once it ran out, a
# half-done rotation is finished first (POST .../rotate does it, and DELETE removes what it made); edits still wait.
EXPECTED_AFTER_CRASH = {
    False: {op: 409 for op in REFUSED_WHILE_ROTATING},
    True: {"patch-credentials": 409, "patch-other-app": 409, "patch-rotation": 409, "patch-key-id": 409,
           "disable-rotation": 409, "rotate": 200, "delete": 200},
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("lease_ran_out", [False, True], ids=["leased", "lease-ran-out"])
@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
async def test_a_crash_at_a_step_then_a_user_operation_keeps_every_invariant(checkpoint: str, operation: str,
                                                                             lease_ran_out: bool, method: str) -> None:
    h = Harness(method=method)
    record = await _rotating(h)

    with pytest.raises(Crash):
        await h.sweep(crash_at(checkpoint))
    assert h.check() == []
    if lease_ran_out:
        h.fakes.clock.advance(timedelta(hours=2))
    outcome = await user_operations(h, record.id)[operation]()
    expected = EXPECTED_AFTER_CRASH[lease_ran_out].get(operation)
    if operation == "patch-key-id" and method != "client-secret":
        expected = 400  # a field of another method, refused first
    if operation == "create-same-app":
        expected = 200  # another connection of the application is never held up by this one's rotation
    if expected is not None:
        assert outcome.status == expected, outcome
    assert h.check() == []
    await h.settle()
    assert h.check() == []
    after = await h.record(record.id)
    if after is not None:
        assert not after.rotation.in_progress
    await _every_connection_signs_in(h)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("operation", ["graph.find", "graph.policy", "graph.add", "graph.add.lost", "vault.write",
                                       "probe", "graph.remove", "store.update", "history.record"])
async def test_an_azure_failure_at_any_call_of_a_rotation_keeps_every_invariant(operation: str, method: str) -> None:
    h = Harness(method=method)
    record = await _rotating(h)
    h.fakes.world.fail_next(operation, times=50 if operation == "probe" else 1)
    h.faults_armed = True
    outcome = await user_operations(h, record.id)["rotate"]()
    assert outcome.status in (200, 409, 502), outcome
    assert h.check() == []
    await h.settle()
    assert h.check() == []
    after = await h.record(record.id)
    assert after is not None
    assert not after.rotation.in_progress
    _every_change_recorded_has_an_outcome(h)


def _every_change_recorded_has_an_outcome(h: Harness) -> None:
    """Each credential change the audit log has as started has its outcome too: succeeded, or failed when Graph
    failed or lost its answer, or the lease's clock stopped the worker right before it (no worker died here); so
    does each rotation attempt, skipped when its worker lost the lease (review of the audit, 2). An attempt whose
    worker was held up past its lease has two: ``interrupted``, when the next attempt closed it, and its own, when
    that worker woke."""
    changes = [(r.action, r.outcome) for r in h.fakes.audit.records
               if r.action.startswith("credential.") or r.action == "rotation.attempt"]
    woke = sum(1 for r in h.fakes.audit.records if r.action == "rotation.attempt" and r.outcome == "interrupted"
               and "within its lease" in (r.detail or ""))
    for action in ("credential.add", "credential.remove", "rotation.attempt"):
        started = changes.count((action, "started")) + (woke if action == "rotation.attempt" else 0)
        assert started == sum(1 for a, outcome in changes if a == action and outcome != "started"), changes
    # And every credential the service removed from an application was recorded as removed (by its Key ID): an
    # addition whose answer was lost is undone through the same audited removal, not quietly by the adapter.
    removed = {r.detail.split("keyId ", 1)[1].split(":", 1)[0] for r in h.fakes.audit.records
               if r.action == "credential.remove" and r.outcome == "succeeded" and "keyId " in (r.detail or "")}
    assert {key_id for _, key_id in h.fakes.world.revocations} <= removed, (h.fakes.world.revocations, removed)


@pytest.mark.parametrize("method", METHODS)
async def test_a_worker_whose_lease_ran_out_before_its_addition_adds_nothing_and_says_so(method: str) -> None:
    """Held up after renewing its lease until the lease ran out, with nobody taking over: as it wakes, the lease's
    clock stops it right before the addition. Nothing is added, and the audit log says the addition failed."""
    h = Harness(method=method)
    record = await _rotating(h)
    first, woken = await _held_up_at(h, "lease-renewed")
    made = len(h.fakes.world.created)
    woken.set()
    await first
    assert len(h.fakes.world.created) == made
    assert h.check() == []
    adds = [(r.outcome, r.detail) for r in h.fakes.audit.records if r.action == "credential.add"][-2:]
    assert adds[0][0] == "started" and adds[1][0] == "failed" and (adds[1][1] or "").endswith(": LeaseLost"), adds
    _every_change_recorded_has_an_outcome(h)
    await h.settle()
    assert h.check() == []
    after = await h.record(record.id)
    assert after is not None and not after.rotation.in_progress


@pytest.mark.parametrize("method", METHODS)
async def test_a_worker_held_up_past_its_lease_stops_though_its_wall_clock_was_set_back(method: str) -> None:
    """As above, but meanwhile its wall clock was set back 15 minutes (an NTP correction): by that clock the lease
    has 14 minutes left, more than the margin. The time it has held the lease (its monotonic clock) stops it right
    before the addition all the same: nothing is added, and the audit log says the addition failed."""
    h = Harness(method=method)
    record = await _rotating(h)
    first, woken = await _held_up_at(h, "lease-renewed")
    h.fakes.clock.step(-timedelta(minutes=15))
    made = len(h.fakes.world.created)
    woken.set()
    await first
    assert len(h.fakes.world.created) == made
    assert h.check() == []
    adds = [(r.outcome, r.detail) for r in h.fakes.audit.records if r.action == "credential.add"][-2:]
    assert adds[0][0] == "started" and adds[1][0] == "failed" and (adds[1][1] or "").endswith(": LeaseLost"), adds
    _every_change_recorded_has_an_outcome(h)
    h.lease_runs_out()
    await h.settle()
    assert h.check() == []
    after = await h.record(record.id)
    assert after is not None and not after.rotation.in_progress


async def test_the_lease_check_of_a_lease_taken_elsewhere_counts_from_when_it_was_built() -> None:
    """A lease this worker did not take here (no monotonic reading of its taking) is checked on the monotonic clock
    from when the check was built, against what the wall clock then left of it: set back since, it stops the
    worker all the same."""
    h = Harness()
    worker = h.services().rotator
    claimed_at = h.fakes.clock()
    state = RotationState(lease_owner=worker.owner, lease_until=claimed_at + worker.options.lease)
    check = worker.lease_check(state)
    h.fakes.clock.advance(worker.options.lease - LEASE_MARGIN - timedelta(seconds=1))
    check()  # a second of it left
    h.fakes.clock.advance(timedelta(minutes=1))
    h.fakes.clock.step(-timedelta(minutes=15))
    assert h.fakes.clock() < state.lease_until - LEASE_MARGIN
    with pytest.raises(LeaseLost):
        check()


async def _held_up_at(h: Harness, checkpoint: str) -> tuple[asyncio.Task[object], asyncio.Event]:
    """A sweep whose worker is held up at ``checkpoint``, then its lease runs out."""
    return await h.held_up_at(checkpoint, h.sweep)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("fault", [None, "graph.find", "graph.remove"])
@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
async def test_a_worker_held_up_past_its_lease_at_a_step_leaves_nothing_behind(checkpoint: str, fault: str | None,
                                                                              method: str) -> None:
    """A worker held up at a step longer than its lease: another worker takes the rotation over and ends it. When
    the first one wakes, it stops at its next write; what it added or wrote meanwhile is removed or disabled (and
    retried when Graph fails once as it wakes), nothing in use is revoked, and the other's journal stands."""
    h = Harness(method=method)
    record = await _rotating(h)
    first, woken = await _held_up_at(h, checkpoint)
    await h.sweep()
    taken = await h.record(record.id)
    assert taken is not None
    assert taken.rotation.status == "succeeded", taken.rotation.message
    if fault is not None:
        h.fakes.world.fail_next(fault)
        h.faults_armed = True
    made = len(h.fakes.world.created)
    woken.set()
    await first
    if checkpoint in ("before-add-password", "lease-renewed"):  # it stops before adding: its lease ran out
        assert len(h.fakes.world.created) == made
    assert h.check() == []
    after = await h.record(record.id)
    assert after is not None
    assert (after.rotation, after.secret_version) == (taken.rotation, taken.secret_version)
    enabled = [v for v in h.fakes.vault.secrets[after.secret_name] if v.enabled]
    assert [v.version for v in enabled] == [after.secret_version]
    _every_change_recorded_has_an_outcome(h)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("checkpoint", CHECKPOINTS[:CHECKPOINTS.index("after-finish")])  # before its own switch
async def test_a_worker_held_up_past_its_lease_revokes_nothing_another_put_in_use(checkpoint: str,
                                                                                 method: str) -> None:
    """Found by the stateful test: another worker takes the rotation over, puts its new credential in use, and
    stops before revoking the old one (there, Graph failed; here, it dies). The held-up worker, when it wakes, must
    not remove that new credential as a stray of the rotation's marker: it stops before any change, its lease
    having run out."""
    h = Harness(method=method)
    record = await _rotating(h)
    first, woken = await _held_up_at(h, checkpoint)

    async def dies_after_the_switch(name: str, current: ConnectionRecord) -> None:
        if name == "after-finish":
            raise Crash(name)

    with pytest.raises(Crash):
        await h.sweep(dies_after_the_switch)
    taken = await h.record(record.id)
    assert taken is not None
    assert taken.secret_version != record.secret_version
    woken.set()
    await first
    assert h.check() == []
    await h.settle()
    assert h.check() == []


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
async def test_a_worker_held_up_past_its_lease_while_the_connection_is_deleted_leaves_nothing_live(
        checkpoint: str, method: str) -> None:
    """The same, but the connection is deleted meanwhile: when the worker wakes, it adds nothing (its lease ran
    out), and nothing the service made stays live."""
    h = Harness(method=method)
    record = await _rotating(h)
    first, woken = await _held_up_at(h, checkpoint)
    deleted = await user_operations(h, record.id)["delete"]()
    assert deleted.status == 200, deleted.error
    woken.set()
    await first
    assert h.check() == []
    assert await h.record(record.id) is None
    made = [key_id for key_id, (client_id, _) in h.fakes.world.created.items() if client_id == record.client_id]
    assert made
    assert all(h.fakes.world.credential(record.client_id or "", key_id) is None for key_id in made)


@pytest.mark.parametrize("first", ["patch-credentials", "patch-other-app"])
@pytest.mark.parametrize("then", ["patch-credentials", "patch-other-app", "delete"])
async def test_a_secret_a_rotation_made_while_an_earlier_clean_up_waited_is_tracked_until_it_is_removed(
        first: str, then: str) -> None:
    """Found by the stateful test: new credentials whose clean-up fails twice (the change's, then the rotation's
    that follows it) leave the clean-up in the journal while the rotation makes a secret of the service's current.
    Finishing that clean-up later must not take the secret for the user's (the next change would leave it live and
    untracked), and a DELETE must not remove it with the previous credential before the rest is done (it then
    fails, with the credential in use revoked)."""
    h = Harness()
    record = await h.create(rotation=True)
    h.fakes.world.fail_next("graph.remove", times=2)
    h.faults_armed = True
    changed = await user_operations(h, record.id)[first]()
    assert changed.status == 200, changed.error
    waiting = await h.record(record.id)
    assert waiting is not None and waiting.rotation.retire_version is not None
    assert waiting.rotation.status == "succeeded" and waiting.rotation.managed  # the service's secret is in use
    outcome = await user_operations(h, record.id)[then]()
    assert outcome.status == 200, outcome.error
    assert h.check() == []
    if then == "delete":
        assert not [key for key, (client_id, _) in h.fakes.world.created.items()
                    if h.fakes.world.credential(client_id, key) is not None]


@pytest.mark.parametrize("stopped", ["created", "tested"])
@pytest.mark.parametrize("resumed_by", ["sweep", "rotate"])
async def test_a_clean_up_of_the_application_in_use_spares_what_a_rotation_under_way_added(
        stopped: str, resumed_by: str) -> None:
    """Found by a review: new credentials for the same application, whose clean-up fails twice (the change's, then
    the rotation's that follows it), and the rotation dies after adding its secret. The attempt that resumes it
    (the sweep's, or a manual rotation's) cleans up first: that clean-up removed the rotation's new secret as a
    leftover, and the rotation then made it current (I1) or could not test it."""
    h = Harness()
    record = await h.create(rotation=True)
    h.fakes.world.fail_next("graph.remove", times=2)
    died: list[str] = []

    async def checkpoint(name: str, current: ConnectionRecord) -> None:
        if name == {"created": "after-test", "tested": "after-tested"}[stopped] and not died:
            died.append(name)
            raise Crash(name)

    with pytest.raises(Crash):
        await h.services(checkpoint).connections.update(
            APP, record.id, {"credentials": h.new_credential(record.client_id or "")})
    waiting = await h.record(record.id)
    assert waiting is not None and waiting.rotation.step == stopped and waiting.rotation.retire_version is not None
    h.lease_runs_out()
    if resumed_by == "sweep":
        await h.due()
        await h.sweep()
    else:
        await h.api.rotate(APP, record.id)
    done = await h.record(record.id)
    assert done is not None and done.rotation.status == "succeeded", done.rotation.message
    assert done.rotation.retire_version is None
    assert h.check() == []
    await h.api.validate(APP, record.id)


async def test_a_rotation_resumed_past_its_test_tests_again_what_a_failed_attempt_may_have_removed() -> None:
    """Found by the stateful test (seed 30247): a worker held up after the test, past its lease, wakes and fails to
    write its finish; its clean-up removes the new secret, and writing that it did fails too. The journal still
    said "tested": the next attempt made the removed secret current (I1)."""
    h = Harness()
    record = await h.create()
    await h.due()

    async def table_storage_fails_from_here(name: str, current: ConnectionRecord) -> None:
        if name == "after-tested":
            h.fakes.world.fail_next("store.update", times=2)  # the finish's write, then the failure's

    await h.sweep(table_storage_fails_from_here)
    stuck = await h.record(record.id)
    assert stuck is not None and stuck.rotation.step == "tested"
    assert h.fakes.world.credential(record.client_id or "", stuck.rotation.pending_key_id or "") is None  # removed
    h.fakes.clock.advance(timedelta(hours=1))
    await h.sweep()
    assert h.check() == []
    await h.api.validate(APP, record.id)


async def test_a_credentials_change_that_fails_first_finishes_the_clean_up_an_earlier_one_left_and_nothing_else(
) -> None:
    """Found by the stateful test: the clean-up a credentials change journals (the service's secrets on the
    application it left) is finished before the next change, which may then fail (Key Vault down) and answer 502.
    I3 lets it have finished that clean-up, as the sweep would have, and nothing else."""
    h = Harness()
    record = await h.create(rotation=True)
    h.fakes.world.fail_next("graph.remove", times=2)
    h.faults_armed = True
    first = await user_operations(h, record.id)["patch-credentials"]()
    assert first.status == 200, first.error
    waiting = await h.record(record.id)
    assert waiting is not None
    assert waiting.rotation.retire_version is not None
    h.fakes.world.fail_next("vault.write")
    before = await h.snapshot(record.id)
    second = await user_operations(h, record.id)["patch-credentials"]()
    assert second.status == 502, second
    after = await h.record(record.id)
    assert after is not None
    assert after.rotation.retire_version is None
    assert after.secret_version == waiting.secret_version
    assert h.check() == []
    snapshot = await h.snapshot(record.id)
    before = (*before[:2], snapshot[2])  # the owner's new secret was added to the application before the request
    assert only_retired(before, snapshot)
    assert not only_retired(before, (snapshot[0].evolve(name="renamed"), *snapshot[1:]))
    assert not only_retired(before, (snapshot[0], "another secret", *snapshot[2:]))


@pytest.mark.parametrize("method", METHODS)
async def test_a_rotation_resumed_after_its_new_credential_ended_fails_at_once_and_removes_it(method: str) -> None:
    """A rotation stopped right after it tested its new credential (before it journaled that), and was resumed only
    once that one had ended: it cannot work, so it is not tested again (each attempt retried its test until the
    timeout, holding the sweep up for nothing, which the stateful test found); the attempt fails at once, removes
    it with the credential in use (the owner's, which does not end), and the next rotation starts afresh."""
    from tests.lifecycle_harness import ROTATION

    h = Harness(method=method)
    _, credentials = h.new_application()

    async def crash(name: str, current: ConnectionRecord) -> None:
        if name == "after-test":  # tested, not yet journaled as such: the next attempt tests it again
            raise Crash(name)

    with pytest.raises(Crash):  # the first rotation, at creation
        await h.services(crash).connections.create(APP, {
            "name": "c1", "method": method, "credentials": credentials, "isAutoRotationEnabled": True,
            "rotation": ROTATION})
    [stopped] = h.fakes.connections.records.values()
    assert stopped.rotation.pending_expires_at is not None and stopped.rotation.in_progress
    pending = stopped.rotation.pending_key_id
    h.fakes.clock.now = stopped.rotation.pending_expires_at + timedelta(minutes=1)
    probes = h.fakes.world.calls.count("probe")
    await h.sweep()
    assert h.fakes.world.calls.count("probe") == probes  # never tested again
    after = await h.record(stopped.id)
    assert after is not None and after.rotation.status == "failed" and not after.rotation.in_progress
    assert "before this rotation could test it" in (after.rotation.message or "")
    assert h.fakes.world.credential(stopped.client_id or "", pending or "") is None
    assert h.check() == []


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("started_by", ["create", "rotate"])
async def test_a_rotation_a_request_started_whose_worker_died_is_resumed_by_the_sweep(
        started_by: str, method: str) -> None:
    """Found by this session's stateful runs: a rotation a request started (a create with rotation on, POST
    .../rotate) had no due time before its lease ran out; when its worker died, the sweep never came to it (a
    create's had none at all: the connection never rotated again, its new credential left pending). Claiming it
    now makes the connection due when its lease runs out."""
    from tests.lifecycle_harness import ROTATION

    h = Harness(method=method)

    crash = crash_at("after-add-password")
    if started_by == "create":
        _, credentials = h.new_application()
        with pytest.raises(Crash):
            await h.services(crash).connections.create(APP, {
                "name": "c1", "method": method, "credentials": credentials, "isAutoRotationEnabled": True,
                "rotation": ROTATION})
        [record] = h.fakes.connections.records.values()
    else:
        record = await h.create()
        with pytest.raises(Crash):
            await h.services(crash).connections.rotate(APP, record.id)
    stopped = await h.record(record.id)
    assert stopped is not None and stopped.rotation.in_progress and stopped.rotation.next_at is not None
    assert stopped.rotation.next_at <= stopped.rotation.lease_until  # (a create's is due in five minutes already)
    assert set(h.fakes.schedule.keys) == {stopped.rotation.schedule_key}  # the earlier entry is gone
    h.lease_runs_out()
    await h.sweep()
    after = await h.record(record.id)
    assert after is not None and not after.rotation.in_progress and after.rotation.status == "succeeded"
    assert after.rotation.next_at is not None and after.rotation.next_at > h.fakes.clock.now + timedelta(days=20)
    assert set(h.fakes.schedule.keys) == {after.rotation.schedule_key}
    assert h.check() == []


async def _died_rotating(h: Harness) -> ConnectionRecord:
    """A connection whose Rotate now died after adding the new credential (the journal holds that attempt, without
    an outcome), its worker's lease run out: as the next claim finds it."""
    record = await h.create()
    with pytest.raises(Crash):
        await h.services(crash_at("after-add-password")).connections.rotate(APP, record.id)
    stopped = await h.record(record.id)
    assert stopped is not None and stopped.rotation.rotation_id is not None
    h.lease_runs_out()
    return stopped


@pytest.mark.parametrize("ended_by", ["sweep", "delete"])
async def test_the_audit_record_of_an_attempt_whose_worker_died_gets_its_outcome_interrupted(ended_by: str) -> None:
    """Found by a review of real crashes: the history entry of an attempt whose worker died was closed as
    ``interrupted`` by the attempt that resumed it (or by a DELETE), but its ``rotation.attempt started`` audit record
    kept no outcome for ever. It gets ``interrupted``, naming the rotation, the attempt and its trigger."""
    h = Harness()
    stopped = await _died_rotating(h)
    if ended_by == "sweep":
        await h.sweep()
    else:
        await h.api.delete(APP, stopped.id)
    attempts = [(r.outcome, r.detail) for r in h.fakes.audit.records
                if r.action == "rotation.attempt" and r.connection_id == stopped.id]
    outcomes = [outcome for outcome, _ in attempts]
    assert outcomes.count("started") == len(outcomes) - outcomes.count("started")  # each one has its outcome
    [detail] = [detail for outcome, detail in attempts if outcome == "interrupted"]
    assert detail == (f"rotation {stopped.rotation.rotation_id} attempt 1 (trigger manual): it did not end within its "
                      "lease (its worker stopped or was held up)")
    assert h.check() == []


async def test_a_dead_attempt_is_audited_whatever_becomes_of_the_claim_that_closes_it() -> None:
    """(Review of the fixes.) The ``interrupted`` record of a dead attempt is written with its history entry, before
    the claim: a claim whose write landed but answered an error closes the entry all the same, and no later claim
    would audit that attempt."""
    h = Harness()
    stopped = await _died_rotating(h)
    update = h.fakes.connections.update

    async def answer_lost(changed: ConnectionRecord, *args: object, **kwargs: object) -> ConnectionRecord:
        await update(changed, *args, **kwargs)  # type: ignore[arg-type]
        raise UpstreamError("Table Storage answered 503.")

    h.fakes.connections.update = answer_lost  # type: ignore[method-assign]
    with pytest.raises(UpstreamError):
        await h.services().rotator.claim(stopped, trigger="schedule")
    h.fakes.connections.update = update  # type: ignore[method-assign]
    details = [r.detail or "" for r in h.fakes.audit.records
               if r.action == "rotation.attempt" and r.outcome == "interrupted" and r.connection_id == stopped.id]
    assert [d for d in details if f"rotation {stopped.rotation.rotation_id} attempt 1 " in d], details


async def test_a_migration_claim_written_is_not_failed_by_the_removal_of_the_entry_it_moved_from() -> None:
    """(Review of the fixes.) A migration's resumed claim, once written, dropped the schedule entry the connection
    had pointed at outside any guard: a failure there recorded the claim failed (though it stood). Best effort now,
    as a rotation's; the dead attempt before it has its ``interrupted`` record."""
    h = Harness()
    record = await h.create()

    with pytest.raises(Crash):
        await h.services(crash_at("after-add-federated")).connections.migrate_to_federated(APP, record.id, {})
    stopped = await h.record(record.id)
    assert stopped is not None and stopped.rotation.step is not None
    left = stopped.rotation.schedule_key
    h.lease_runs_out()
    remove = h.fakes.schedule.remove

    async def remove_failing(key: str | None) -> None:
        if key == left:
            raise UpstreamError("Table Storage answered 503.")
        await remove(key)

    h.fakes.schedule.remove = remove_failing  # type: ignore[method-assign]
    await h.sweep()
    h.fakes.schedule.remove = remove  # type: ignore[method-assign]
    done = await h.record(record.id)
    assert done is not None and done.method == "federated", done.rotation
    migrations = [(r.outcome, r.detail or "") for r in h.fakes.audit.records if r.action == "connection.migrate"]
    assert "failed" not in [outcome for outcome, _ in migrations], migrations
    assert [d for o, d in migrations if o == "interrupted" and " attempt 1 " in d], migrations


async def test_a_claim_whose_write_landed_and_whose_answer_was_lost_is_claimed_and_keeps_its_entry() -> None:
    """Found by a review: Table Storage's retry of a claim whose write had landed meets its own ETag (a
    ConcurrentChange); the claim took that for lost, and dropped the schedule entry the connection now pointed
    at. The rotation was never resumed (and POST .../rotate answered 409). It is taken as claimed now."""
    from shared.errors import ConcurrentChange

    h = Harness()
    record = await h.create()
    store = h.fakes.connections
    update = store.update

    async def landed_then_lost(target: ConnectionRecord, *args: object, **kwargs: object) -> ConnectionRecord:
        saved = await update(target, *args, **kwargs)  # type: ignore[arg-type]
        if target.rotation.trigger == "manual" and target.rotation.step == "begun":
            store.update = update  # type: ignore[method-assign]
            raise ConcurrentChange("The retry of a write that landed met its own ETag (injected).")
        return saved

    store.update = landed_then_lost  # type: ignore[method-assign]
    rotated = await h.api.rotate(APP, record.id)
    assert rotated.rotation.status == "succeeded" and rotated.rotation.key_id != record.rotation.key_id
    assert set(h.fakes.schedule.keys) == {rotated.rotation.schedule_key}
    assert h.check() == []


@pytest.mark.parametrize("fails", ["the schedule index", "the claim's write"])
async def test_a_create_whose_first_rotation_did_not_start_is_due_soon_and_rotated_by_the_sweep(fails: str) -> None:
    """Found by a review (older than this session): a create with rotation on whose first rotation could not start
    (Table Storage failed its claim) was due at no time, and nothing ever rotated it. A connection never rotated
    is due in five minutes now, indexed before it is stored: should the index fail, nothing is created."""
    from shared.errors import UpstreamError
    from tests.lifecycle_harness import ROTATION

    h = Harness()
    _, credentials = h.new_application()
    body = {"name": "c1", "method": "client-secret", "credentials": credentials, "isAutoRotationEnabled": True,
            "rotation": ROTATION}
    if fails == "the schedule index":
        h.fakes.world.fail_next("schedule.put")
        with pytest.raises(UpstreamError):
            await h.api.create(APP, body)
        assert h.fakes.connections.records == {} and h.check() == []
        return
    store = h.fakes.connections
    update = store.update

    async def claim_fails(target: ConnectionRecord, *args: object, **kwargs: object) -> ConnectionRecord:
        if target.rotation.trigger == "enable":
            store.update = update  # type: ignore[method-assign]
            raise UpstreamError("Table Storage failed (injected).")
        return await update(target, *args, **kwargs)  # type: ignore[arg-type]

    store.update = claim_fails  # type: ignore[method-assign]
    created = await h.api.create(APP, body)
    assert created.rotation.last_rotated_at is None and created.rotation.next_at is not None
    assert created.rotation.next_at <= h.fakes.clock.now + timedelta(minutes=5)
    assert set(h.fakes.schedule.keys) == {created.rotation.schedule_key}
    h.fakes.clock.advance(timedelta(minutes=6))
    await h.sweep()
    after = await h.record(created.id)
    assert after is not None and after.rotation.status == "succeeded" and after.rotation.last_rotated_at is not None
    assert h.check() == []


async def test_a_claim_whose_old_schedule_entry_cannot_be_removed_still_rotates() -> None:
    """Found by a review: the old entry's removal is best effort, but an Azure SDK error (what the Tables SDK
    raises) went through it, and the claimed rotation never ran, its lease held."""
    from azure.core.exceptions import ServiceRequestError

    h = Harness()
    record = await h.create()
    remove = h.fakes.schedule.remove

    async def remove_fails_once(key: str | None) -> None:
        if key == record.rotation.schedule_key:
            h.fakes.schedule.remove = remove  # type: ignore[method-assign]
            raise ServiceRequestError("Table Storage: connection reset (injected)")
        await remove(key)

    h.fakes.schedule.remove = remove_fails_once  # type: ignore[method-assign]
    rotated = await h.api.rotate(APP, record.id)
    assert rotated.rotation.status == "succeeded" and not rotated.rotation.in_progress
    assert h.check() == []


async def test_a_worker_that_dies_closing_a_dead_attempt_leaves_its_interrupted_record_to_the_next_claim() -> None:
    """The ``interrupted`` audit record is written before the history entry is closed: the closed entry is what tells
    a later claim that the attempt was dealt with, so a worker that died between the two (entry closed, record not
    written) left an attempt that no one would ever audit. Now at worst the next claim writes the record again."""
    from shared.records import AuditRecord

    h = Harness()
    stopped = await _died_rotating(h)
    append = h.fakes.audit.append

    async def dies_at_the_interrupted_record(record: AuditRecord) -> None:
        if record.outcome == "interrupted":
            h.fakes.audit.append = append  # type: ignore[method-assign]
            raise Crash("the worker dies writing the interrupted record")
        await append(record)

    h.fakes.audit.append = dies_at_the_interrupted_record  # type: ignore[method-assign]
    with pytest.raises(Crash):
        await h.services().rotator.claim(stopped, trigger="schedule")
    h.lease_runs_out()
    await h.sweep()
    details = [r.detail or "" for r in h.fakes.audit.records
               if r.action == "rotation.attempt" and r.outcome == "interrupted" and r.connection_id == stopped.id]
    assert [d for d in details if f"rotation {stopped.rotation.rotation_id} attempt 1 " in d], details
    assert h.check() == []


async def _holding_the_owners_credential(h: Harness) -> ConnectionRecord:
    """A connection that signs in with the credential its owner gave (rotation off): the owner still holds it."""
    record = await h.create(rotation=False)
    assert h.current_secret(record) in (h.given[record.id].get("clientSecret"),
                                        h.given[record.id].get("certificateBody"))
    return record


CREATES = ["create-same-app", "create-same-credential", "create-same-credential-rotating"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("operation", CREATES)
@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
async def test_a_create_of_the_same_application_during_a_rotation_of_the_owners_credential_locks_neither_out(
        checkpoint: str, operation: str, method: str) -> None:
    """A rotation that replaces the credential the owner gave (turned on by a PATCH, which runs it at once), while
    the owner creates another connection of the same application at each of its steps: with a credential added
    now, or with that very credential (rotation off: it signs in with it; or on: its own first rotation replaces
    it). The credential another connection signs in with stays on the application (docs/rotation.md, a credential
    given to two connections), and the rotation's message names that connection; once revoked, the create is
    refused (400, the credential does not work) and nothing is stored. Every invariant holds for both."""
    from tests.lifecycle_harness import ROTATION

    h = Harness(method=method)
    record = await _holding_the_owners_credential(h)
    ops = user_operations(h, record.id)
    seen = []

    async def interleave(name: str, current: ConnectionRecord) -> None:
        if name == checkpoint and not seen and current.id == record.id:
            seen.append(await ops[operation]())

    enabled = await h.services(interleave).connections.update(
        APP, record.id, {"isAutoRotationEnabled": True, "rotation": ROTATION})
    assert seen, f"the rotation never reached {checkpoint}"
    revoked = checkpoint == "after-revoke" and operation != "create-same-app"
    if revoked:
        assert seen[0].status == 400, seen[0]
        assert len(h.fakes.connections.records) == 1
    else:
        assert seen[0].status == 200, seen[0].error
    assert enabled.rotation.status == "succeeded", enabled.rotation.message
    await h.settle()
    assert h.check() == []
    await _every_connection_signs_in(h)
    after = await h.record(record.id)
    assert after is not None and not after.rotation.in_progress
    if operation == "create-same-credential" and not revoked:
        created = seen[0].result
        assert h.current_secret(created) == h.current_secret(record)  # the owner's, which it still signs in with
        assert f"'{created.name}' ({APP})" in (after.rotation.message or ""), after.rotation.message


STRANDED_BY = [("client-secret", "rotation"), ("certificate", "rotation"), ("client-secret", "migration")]


async def _created_while_revoked(
        h: Harness, record: ConnectionRecord, revoked_by: str, monkeypatch: pytest.MonkeyPatch,
        then: Callable[[ConnectionRecord], None] | None = None) -> tuple[ConnectionRecord, ConnectionRecord]:
    """A create with the owner's credential of ``record`` that overtakes its revocation (by a rotation turned on,
    or a migration with ``revokeOriginal``): the connection rotated (or migrated) and the one created (handed to
    ``then`` once created, before the revocation)."""
    from tests.fakes import FakeGraph
    from tests.lifecycle_harness import ROTATION, overtaken_at

    created: list[ConnectionRecord] = []

    async def create() -> None:
        outcome = await user_operations(h, record.id)["create-same-credential"]()
        assert outcome.status == 200, outcome.error
        created.append(outcome.result)
        if then is not None:
            then(outcome.result)

    removal = "remove_password" if h.method == "client-secret" else "remove_key"
    race = overtaken_at(monkeypatch, FakeGraph, removal, 1, create)
    if revoked_by == "rotation":
        done = await h.api.update(APP, record.id, {"isAutoRotationEnabled": True, "rotation": ROTATION})
    else:
        h.fakes.world.add_federated(record.client_id or "")
        done = await h.api.migrate_to_federated(APP, record.id, {"revokeOriginal": True})
        assert done.method == "federated"
    assert race.ran and created
    return done, created[0]


@pytest.mark.parametrize(("method", "revoked_by"), STRANDED_BY)
async def test_a_create_with_the_owners_credential_while_a_rotation_revokes_it_is_marked_invalid_and_named(
        method: str, revoked_by: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the creates interleaved here: the rotation asks whether another connection signs in with the
    owner's credential right before revoking it, but nothing orders that question with a create of another
    connection. A create with that credential that ran between the question and the removal was answered 201 and
    left signing in with a revoked credential, said by nothing until its next health check (a day on). The
    revocation cannot be undone: the rotation asks again once it is done, marks such a connection invalid at once
    (its message naming the rotated connection), and its own message names it. Nothing else is amiss (I1 apart:
    the new connection's credential was revoked in use, which is what it is told). So does a migration to the
    federated method that revokes the original (``revokeOriginal``)."""
    h = Harness(method=method)
    record = await _holding_the_owners_credential(h)
    done, new = await _created_while_revoked(h, record, revoked_by, monkeypatch)
    assert done.rotation.status == "succeeded", done.rotation.message
    assert f"'{new.name}' ({APP}) of the same application began to sign in with it while it was being revoked" in (
        done.rotation.message or ""), done.rotation.message
    marked = await h.record(new.id)
    assert marked is not None and marked.status == "invalid", marked
    by = "rotation" if revoked_by == "rotation" else "migration to the federated method"
    assert f"{by} of the connection '{record.name}'" in (marked.status_message or ""), marked.status_message
    await h.settle()
    assert [v for v in h.check() if new.id not in v] == []
    validated = await h.api.validate(APP, record.id)
    assert validated.status == "active"


@pytest.mark.parametrize(("method", "revoked_by"), STRANDED_BY)
async def test_a_connection_stranded_by_a_revocation_is_checked_by_the_next_health_sweep_and_its_owner_told(
        method: str, revoked_by: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its ``invalid`` mark reached the record at once, but its owner's notification comes of its health check
    (``health_notices``), which was a day on (its next check, the daily one). The mark brings that check forward
    to now, through its one health index entry (the entry moved, not a second one): the next health sweep (hourly
    by default) checks it, finds its credential refused, and queues one notification (``validation-failed``),
    nothing for the connection rotated (or migrated). I6 holds: each connection points at an entry there is."""
    from shared.health import HealthChecker
    from shared.notify import Notifier
    from shared.store.schedule import parse_key
    from tests.fakes import build_fakes

    h = Harness(method=method, fakes=build_fakes({"NOTIFY_WEBHOOK_URL": "https://hooks.example/notify",
                                                  "NOTIFY_WEBHOOK_SECRET": "webhook-signing-key"}))
    record = await _holding_the_owners_credential(h)
    done, new = await _created_while_revoked(h, record, revoked_by, monkeypatch)
    assert done.rotation.status == "succeeded", done.rotation.message
    marked = await h.record(new.id)
    assert marked is not None and marked.status == "invalid", marked
    now = h.fakes.clock.now
    assert marked.health.next_check_at is not None and marked.health.next_check_at <= now, marked.health
    entries = [parse_key(key) for key in h.fakes.health_index.keys]
    assert [e.key for e in entries if e.connection_id == new.id] == [marked.health.check_key]  # moved, not added
    assert [v for v in h.check() if new.id not in v or v.startswith("I6")] == []
    await Notifier(h.fakes.adapters).deliver()  # what the rotation and the create queued (none of it a failure)
    h.fakes.webhook.received.clear()

    h.fakes.clock.advance(timedelta(hours=1))  # the next sweep (HEALTH_SWEEP_SCHEDULE, hourly by default)
    built = h.services()
    report = await HealthChecker(built.adapters, built.connections).sweep()
    assert report.checked >= 1, report
    sent = [json.loads(body) for _, body, _ in h.fakes.webhook.received]
    assert [(n["connectionId"], n["event"]) for n in sent] == [(new.id, "validation-failed")], sent
    checked = await h.record(new.id)
    assert checked is not None and checked.health.status == "failing", checked.health
    assert checked.health.next_check_at is not None and checked.health.next_check_at > h.fakes.clock.now
    assert [v for v in h.check() if new.id not in v or v.startswith("I6")] == []


@pytest.mark.parametrize(("method", "revoked_by"), STRANDED_BY)
async def test_a_stranded_connection_whose_health_entry_cannot_be_moved_is_marked_all_the_same(
        method: str, revoked_by: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Bringing the check forward is best effort: the health index failing for the stranded connection fails
    neither the rotation nor the mark; its check stays where it was (its daily one finds it), logged by the
    error's type, and it still points at the entry there is (I6)."""
    h = Harness(method=method)
    record = await _holding_the_owners_credential(h)
    index = h.fakes.health_index
    put = index.put
    failing: set[str] = set()

    async def put_or_fail(due: datetime, app: str, connection_id: str, keep: str | None = None) -> str:
        if connection_id in failing:
            raise UpstreamError("Table Storage is not answering.")
        return await put(due, app, connection_id, keep)

    monkeypatch.setattr(index, "put", put_or_fail)
    caplog.set_level(logging.WARNING, logger="shared.rotation.sharing")
    before: list[ConnectionRecord] = []

    def fail_for(created: ConnectionRecord) -> None:
        failing.add(created.id)
        before.append(created)

    done, new = await _created_while_revoked(h, record, revoked_by, monkeypatch, then=fail_for)
    assert done.rotation.status == "succeeded", done.rotation.message
    marked = await h.record(new.id)
    assert marked is not None and marked.status == "invalid", marked
    assert marked.health.check_key == before[0].health.check_key  # where it was, and there
    assert marked.health.next_check_at == before[0].health.next_check_at
    assert [v for v in h.check() if new.id not in v or v.startswith("I6")] == []
    assert any("could not be brought forward (UpstreamError)" in r.getMessage() for r in caplog.records), \
        caplog.records


@pytest.mark.parametrize("meanwhile", ["its-own-write-landed", "changed"])
async def test_a_stranded_connection_changed_while_it_is_marked_keeps_one_health_entry_due_now(
        meanwhile: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mark's write meets an ETag that moved: its own write, landed with its answer lost, or a change of
    another request (an edit of its description). The mark is written on top of it, once, and the connection
    keeps one health index entry, due now: the one it was moved to first, or, when that write lost, the one the
    mark is written with (the one no record points at is dropped)."""
    from tests.lifecycle_harness import own_etag

    h = Harness()
    record = await _holding_the_owners_credential(h)
    store = h.fakes.connections
    update = store.update
    stranded: set[str] = set()

    async def overtaken_update(target: ConnectionRecord, *args: Any, **kwargs: Any) -> ConnectionRecord:
        if target.id not in stranded or target.status != "invalid":
            return await update(target, *args, **kwargs)
        stranded.clear()
        if meanwhile == "changed":
            current = await store.get(target.app, target.id)
            await update(current.evolve(description="changed meanwhile"))
            return await update(target, *args, **kwargs)  # its ETag moved: ConcurrentChange
        await update(target, *args, **kwargs)
        raise own_etag()

    monkeypatch.setattr(store, "update", overtaken_update)
    done, new = await _created_while_revoked(h, record, "rotation", monkeypatch, then=lambda c: stranded.add(c.id))
    assert not stranded, "the mark was never written"
    assert done.rotation.status == "succeeded", done.rotation.message
    marked = await h.record(new.id)
    assert marked is not None and marked.status == "invalid", marked
    if meanwhile == "changed":
        assert marked.description == "changed meanwhile"
    assert marked.health.next_check_at is not None and marked.health.next_check_at <= h.fakes.clock.now
    mine = [key for key in h.fakes.health_index.keys if f"|{new.id}|" in key]
    assert mine == [marked.health.check_key], mine
    assert [v for v in h.check() if new.id not in v or v.startswith("I6")] == []
