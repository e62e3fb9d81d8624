"""Every user operation, and the rotation sweep, overtaken by every other one at each of its adapter calls in turn
(over the in-memory fakes, for a client secret with and without rotation, a certificate and a federated
connection): neither request ends in a 5xx or an unexpected exception, the invariants hold, and afterwards the
connection still signs in and can be deleted. About 10,000 interleavings; tests/shared/test_races.py keeps the
ones that once failed, each on its own."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from shared import wiring
from shared.errors import ServiceError
from shared.health import HealthChecker
from tests import fakes
from tests.lifecycle_harness import APP, Harness

ADAPTERS = (fakes.FakeConnections, fakes.FakeVault, fakes.FakeSchedule, fakes.FakeHistory, fakes.FakeDirectory,
            fakes.FakeGraph, fakes.FakeAudit, fakes.FakeWebhook, fakes.FakeTokens, fakes.FakeStates)
OPERATIONS = ("get", "validate", "new-credentials", "other-application", "key-id", "rotation-settings", "rotation-off",
              "rename", "rotate", "migrate", "migrate-revoking", "delete", "delete-forced", "health-check",
              "clients-visible", "sweep")
OVERTAKEN = tuple(op for op in OPERATIONS if op != "get")
SETUPS = ("client-secret", "client-secret-not-rotated", "certificate", "federated")
Operation = Callable[[], Awaitable[Any]]


class Overtaking:
    """The request under test, paused at its ``nth`` adapter call while ``other`` runs to its end."""

    def __init__(self, nth: int, other: Operation) -> None:
        self.nth, self.other, self.calls = nth, other, 0
        self.at: str | None = None
        self.answer: str | None = None

    async def reached(self, call: str) -> None:
        self.calls += 1
        if self.calls == self.nth:
            self.at = call
            paused = _OVERTAKING.set(None)  # the other request's own calls are not counted
            try:
                self.answer = await problem_of(self.other)
            finally:
                _OVERTAKING.reset(paused)


_OVERTAKING: contextvars.ContextVar[Overtaking | None] = contextvars.ContextVar("overtaking", default=None)


def _counted(method: Any, call: str) -> Any:
    @functools.wraps(method)
    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        overtaking = _OVERTAKING.get()
        if overtaking is not None:
            await overtaking.reached(call)
        return await method(self, *args, **kwargs)

    return counted


def _counted_session(method: Any, call: str) -> Any:
    @functools.wraps(method)
    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        @asynccontextmanager
        async def session() -> Any:
            overtaking = _OVERTAKING.get()
            if overtaking is not None:
                await overtaking.reached(call)
            async with method(self, *args, **kwargs) as opened:
                yield opened

        return session()

    return counted


@pytest.fixture
def counted_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every public coroutine of the fake adapters (and the Graph sessions) counts toward the pause point."""
    for adapter in ADAPTERS:
        for name, member in list(vars(adapter).items()):
            if name.startswith("_"):
                continue
            if inspect.iscoroutinefunction(member):
                monkeypatch.setattr(adapter, name, _counted(member, f"{adapter.__name__}.{name}"))
            elif name in ("graph", "graph_with"):
                monkeypatch.setattr(adapter, name, _counted_session(member, f"{adapter.__name__}.{name}"))


async def problem_of(call: Operation) -> str | None:
    """None when ``call`` answered, or refused with a 4xx (a fine answer to a race); else what went wrong."""
    try:
        await asyncio.wait_for(call(), 20)
    except ServiceError as error:
        return None if error.status < 500 else f"{error.status} {type(error).__name__}: {error.detail}"
    except Exception as error:  # what the test looks for
        return f"{type(error).__name__}: {error}"
    return None


def operations(h: Harness, connection_id: str) -> dict[str, Operation]:
    async def new_credentials(other_application: bool = False) -> object:
        record = await h.record(connection_id)
        if record is None:
            return None
        if record.method == "federated":
            app = h.fakes.world.application()
            h.fakes.world.add_federated(app.client_id)
            body = {"tenantId": fakes.TENANT, "clientId": app.client_id}
        elif other_application:
            body = h.new_application(record.method)[1]
        else:
            body = h.new_credential(record.client_id or "", record.method)
        return await h.api.update(APP, connection_id, {"credentials": body})

    async def key_id() -> object:  # the stored client secret's Key ID alone (another method's connection: a 400)
        record = await h.record(connection_id)
        if record is None:
            return None
        return await h.api.update(APP, connection_id, {"credentials": {"clientSecretKeyId": h.stored_key_id(record)}})

    async def sweep() -> None:
        await h.due()
        await h.sweep()

    def health() -> Awaitable[Any]:
        built = wiring.services(h.fakes.adapters)
        return HealthChecker(built.adapters, built.connections).check_now(APP, connection_id)

    return {
        "get": lambda: h.api.get(APP, connection_id),
        "validate": lambda: h.api.validate(APP, connection_id),
        "new-credentials": new_credentials,
        "other-application": lambda: new_credentials(other_application=True),
        "key-id": key_id,
        "rotation-settings": lambda: h.api.update(APP, connection_id, {"rotation": {
            "rotationInterval": 45, "rotateAt": "04:00", "timeZone": "Europe/Berlin"}}),
        "rotation-off": lambda: h.api.update(APP, connection_id, {"isAutoRotationEnabled": False}),
        "rename": lambda: h.api.update(APP, connection_id, {"name": "renamed"}),
        "rotate": lambda: h.api.rotate(APP, connection_id),
        "migrate": lambda: h.api.migrate_to_federated(APP, connection_id, {}),
        "migrate-revoking": lambda: h.api.migrate_to_federated(APP, connection_id, {"revokeOriginal": True}),
        "delete": lambda: h.api.delete(APP, connection_id),
        "delete-forced": lambda: h.api.delete(APP, connection_id, force=True),
        "health-check": health,
        "clients-visible": lambda: h.api.clients_visible(connection_id),
        "sweep": sweep,
    }


async def connection(setup: str) -> tuple[Harness, str]:
    h = Harness(method="certificate" if setup == "certificate" else "client-secret")
    if setup == "federated":
        app = h.fakes.world.application()
        h.fakes.world.add_federated(app.client_id)
        record = await h.api.create(APP, {"name": "c1", "method": "federated",
                                          "credentials": {"tenantId": fakes.TENANT, "clientId": app.client_id}})
    else:
        record = await h.create(rotation=setup != "client-secret-not-rotated")
    return h, record.id


async def interleaving(setup: str, first: str, other: str, nth: int) -> tuple[bool, list[str]]:
    """``first`` overtaken by ``other`` at its ``nth`` adapter call: whether it made that many, and what went
    wrong (in either request, in the invariants, or when the connection is validated and deleted afterwards)."""
    h, connection_id = await connection(setup)
    ops = operations(h, connection_id)
    overtaking = Overtaking(nth, ops[other])
    paused = _OVERTAKING.set(overtaking)
    try:
        first_problem = await problem_of(ops[first])
    finally:
        _OVERTAKING.reset(paused)
    if overtaking.at is None:
        return False, []
    where = f"{setup}: {first} overtaken by {other} at call {nth} ({overtaking.at})"
    problems = [f"{where}: {who}: {problem}" for who, problem in
                ((first, first_problem), (other, overtaking.answer)) if problem is not None]
    problems += [f"{where}: {violation}" for violation in h.check()]
    await h.settle()
    record = await h.record(connection_id)
    if record is not None:
        for step, call in (("then validate", ops["validate"]), ("then delete", ops["delete"])):
            problem = None if step == "then validate" and record.status == "deleting" else await problem_of(call)
            if problem is not None or (step == "then delete" and await h.record(connection_id) is not None):
                problems.append(f"{where}: {step}: {problem or 'the connection is still there'}")
    problems += [f"{where}: after: {violation}" for violation in h.check()]
    return True, problems


@pytest.mark.slow
@pytest.mark.parametrize("setup", SETUPS)
async def test_no_request_overtaken_by_another_at_any_adapter_call_leaves_a_failure_or_a_broken_connection(
        counted_calls: None, setup: str) -> None:
    problems: list[str] = []
    reached = 0
    for first in OVERTAKEN:
        for other in OPERATIONS:
            nth = 1
            while True:
                made, found = await interleaving(setup, first, other, nth)
                if not made:
                    break
                reached += 1
                problems += found
                nth += 1
    assert reached > 500  # the requests made their calls: the races happened
    assert problems == [], "\n".join(problems[:40])
