"""Random sequences of sweeps, user operations, crashes, workers held up at a step, time passing and Azure faults
(hypothesis's rule-based state machine), with the invariants I1 to I4 checked after every step at which no worker
is held up (I1's revocations as they happen), and after each such step every connection that owes the sweep work
(rotation on, a rotation under way, a clean-up pending) points at an entry of the schedule index; against
in-memory fakes."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from datetime import timedelta
from unittest import mock

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shared.errors import ServiceError
from shared.records import ConnectionRecord
from tests.lifecycle_harness import Crash, Harness, own_etag, user_operations
from tests.shared.rotation.test_invariants import CHECKPOINTS as ROTATION_CHECKPOINTS
from tests.shared.rotation.test_invariants import OPERATIONS as ROTATION_OPERATIONS
from tests.shared.test_federated import CHECKPOINTS as MIGRATION_CHECKPOINTS

# Ids (connections, rotations, Key IDs, vault versions) decide the order a sweep takes connections in: drawn from
# a generator seeded afresh for every example, so that a failing example replays as it ran and shrinks.
IDS = random.Random()


def _uuid4() -> uuid.UUID:
    return uuid.UUID(int=IDS.getrandbits(128), version=4)


OPERATIONS = [*ROTATION_OPERATIONS, "migrate"]
CHECKPOINTS = [*ROTATION_CHECKPOINTS, *MIGRATION_CHECKPOINTS]  # a sweep resumes a migration a dead worker left
FAULTS = ["graph.find", "graph.policy", "graph.add", "graph.add.lost", "graph.remove", "graph.removal.lost",
          "vault.write", "probe", "store.update", "history.record", "audit.append", "vault.disable", "vault.get",
          "graph.token", "store.landed", "store.landed/etag"]


class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        IDS.seed(0)
        self.loop = asyncio.new_event_loop()
        self.dead: list[asyncio.AbstractEventLoop] = []
        self.h = Harness()
        self.ids: list[str] = []
        self.crash_at: str | None = None
        self.hold_at: str | None = None
        self.reached = asyncio.Event()
        self.woken = asyncio.Event()  # the held-up worker's
        self.held: asyncio.Task[object] | None = None  # a sweep with one rotation held up at ``hold_at``

    def run(self, coroutine: object) -> object:
        try:
            return self.loop.run_until_complete(coroutine)  # type: ignore[arg-type]
        except Crash:
            self._die()
            raise

    def _die(self) -> None:
        """The worker died: nothing more of it runs. Its loop is left with the tasks it still had (the sweep's other
        rotations, a held-up one), never to run again; the next step runs on a new one."""
        self.loop.set_exception_handler(lambda loop, context: None)  # its tasks are dropped unrun, as they were
        self.dead.append(self.loop)
        self.loop = asyncio.new_event_loop()
        self.held = None

    def teardown(self) -> None:
        for loop in [*self.dead, self.loop]:
            loop.set_exception_handler(lambda loop, context: None)  # a worker still held up is dropped
            loop.close()

    async def _checkpoint(self, name: str, record: ConnectionRecord) -> None:
        if name == self.crash_at:
            self.crash_at = None
            raise Crash(name)
        if name == self.hold_at:
            self.hold_at = None
            self.woken = woken = asyncio.Event()
            self.reached.set()
            await woken.wait()

    async def _until_held_or_done(self, task: asyncio.Task[object]) -> None:
        reached = asyncio.ensure_future(self.reached.wait())
        await asyncio.wait([task, reached], return_when=asyncio.FIRST_COMPLETED)
        reached.cancel()

    @initialize(rotation=st.booleans())
    def first(self, rotation: bool) -> None:
        self.ids.append(self.run(self.h.create("first", rotation=rotation)).id)  # type: ignore[attr-defined]

    @rule(rotation=st.booleans(), method=st.sampled_from(["client-secret", "certificate"]))
    def create(self, rotation: bool, method: str) -> None:
        before = len(self.h.fakes.connections.records)
        try:
            self.ids.append(self.run(self.h.create(f"c{len(self.ids)}", rotation=rotation,  # type: ignore
                                                   method=method)).id)
        except ServiceError as error:  # Azure is failing: a clear error, and nothing stored
            refused = error
        else:
            return
        assert self.h.faults_armed
        assert refused.status in (400, 502), refused
        assert len(self.h.fakes.connections.records) == before

    @rule(hours=st.integers(min_value=1, max_value=24 * 40))
    def time_passes(self, hours: int) -> None:
        self.h.fakes.clock.advance(timedelta(hours=hours))

    @rule()
    def sweep(self) -> None:
        self._sweep()

    @rule(checkpoint=st.sampled_from(CHECKPOINTS))
    def due_sweep_held_up_at(self, checkpoint: str) -> None:
        """Every rotation is due, and the first worker to reach ``checkpoint`` is held up there (a frozen host, a
        hung call) until it wakes; the sweep goes on meanwhile as far as it can (its other rotations). One worker
        is held up at a time. (No rule has a precondition on what the sweeps did: threads decide their order, and
        hypothesis needs the rules it may draw to be the same when it replays an example.)"""
        self.run(self.h.due())
        self.hold_at = checkpoint if self.held is None else None
        self._sweep()
        self.hold_at = None

    def _sweep(self) -> None:
        """A sweep, to its end, or until one of its rotations is held up (the sweep stays held up with it)."""
        with contextlib.suppress(Crash):
            self.reached = asyncio.Event()
            task = self.loop.create_task(self.h.sweep(self._checkpoint))
            self.run(self._until_held_or_done(task))
            if not task.done():
                self.held = task
                return
            self.run(task)

    @rule()
    def held_worker_wakes(self) -> None:
        if self.held is None:
            return
        held, self.held = self.held, None
        self.woken.set()
        with contextlib.suppress(Crash):
            self.run(held)

    @rule(index=st.integers(min_value=0, max_value=20), operation=st.sampled_from(OPERATIONS))
    def user_operation(self, index: int, operation: str) -> None:
        connection_id = self.ids[index % len(self.ids)]
        with contextlib.suppress(Crash):
            self.run(user_operations(self.h, connection_id)[operation]())

    @rule(checkpoint=st.sampled_from(CHECKPOINTS))
    def crash_next_rotation_at(self, checkpoint: str) -> None:
        self.crash_at = checkpoint

    @rule(operation=st.sampled_from(FAULTS), times=st.integers(min_value=1, max_value=3))
    def azure_fails(self, operation: str, times: int) -> None:
        if operation == "store.landed/etag":  # a write applied, its answer lost: the PUT's retry meets its own ETag
            self.h.fakes.world.fail_next("store.landed", own_etag(), times=times)
        else:
            self.h.fakes.world.fail_next(operation, times=times)
        self.h.faults_armed = True

    @precondition(lambda self: self.h.faults_armed)
    @rule()
    def azure_recovers(self) -> None:
        self.h.fakes.world.clear_faults()
        self.h.faults_armed = False

    @rule()
    def azure_recovers_and_the_clean_ups_finish(self) -> None:
        """Liveness: once Azure answers again and the sweeps have run, the clean-up of every application a
        connection left is done, but one that cannot sign in there any more (its credential expired, or removed
        by hand) before its journal said the last removal was sent: that one is the user's to finish, and its
        rotation's message says so. (Not while a worker is held up: it holds what it works on.)"""
        if self.held is not None:
            return
        self.crash_at = None
        self.h.fakes.world.clear_faults()
        self.h.faults_armed = False
        for _ in range(3):  # the back-off after a failure is a day at most
            if not self._cleaning_up():
                break
            self.h.fakes.clock.advance(timedelta(days=1, minutes=1))
            self._sweep()
        world = self.h.fakes.world
        for record in self._cleaning_up():
            state = record.rotation
            material = self.h.fakes.vault.version(record.secret_name, state.retire_version).material
            signs_in = world.live(state.retire_client_id or "",
                                  material.get("clientSecret") or material.get("certificateBody", ""))
            assert not signs_in and state.retire_removing_key_id is None, (record.id, state)
        assert self.h.unscheduled() == []  # and the sweep comes to what it has to finish

    def _cleaning_up(self) -> list[ConnectionRecord]:
        return [r for r in self.h.fakes.connections.records.values()
                if r.status != "deleting" and r.rotation.retire_version is not None]

    @invariant()
    def invariants_hold(self) -> None:
        if self.held is None:  # else a worker is in the middle of a step (its revocations are checked as made)
            assert self.h.check() == []
            assert self.h.unscheduled() == []  # what a connection owes (a rotation, a clean-up) is due somewhere


@pytest.mark.slow
def test_random_sequences_keep_every_invariant() -> None:
    runner = Lifecycle.TestCase
    runner.settings = settings(max_examples=200, stateful_step_count=40, deadline=None,
                               suppress_health_check=[HealthCheck.too_slow])
    with mock.patch("uuid.uuid4", _uuid4):
        runner().runTest()
