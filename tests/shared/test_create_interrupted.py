"""A create interrupted at each of its own steps (tests/lifecycle_harness.py, in-memory fakes): it indexes the
connection's first health check (its journal), writes the Key Vault secret, indexes its first rotation (rotation
on), then writes the record with its name (one transaction). The worker dies right after each step. What recovers
(the health sweep once the entry is ``ABANDONED_AFTER`` past due, the rotation sweep) leaves no live credential that
nothing tracks (I5: no enabled vault version of it), no index entry pointing at nothing, every connection on the
health index (I6); and the create sent again with the same body works, or, once the record was written (its answer
lost), is a 409 naming the name: the connection exists, whole, and works."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from shared import wiring
from shared.connections import ABANDONED_AFTER
from shared.errors import NameTaken
from shared.health import HealthChecker
from shared.store.schedule import parse_key
from tests.fakes import TENANT
from tests.lifecycle_harness import APP, ROTATION, Crash, Harness

# The create's writes, in order: (step, the fake adapter's attribute on Fakes, its method).
STEPS = [("health-index", "health_index", "put"), ("vault", "vault", "write"), ("schedule", "schedule", "put"),
         ("record", "connections", "insert")]


def _dies_after(h: Harness, step: str) -> None:
    """The worker dies (``Crash``) right after the create's ``step`` is applied (``start``: right before its first,
    the health index entry)."""
    [(_, attribute, method)] = [(s, a, m) for s, a, m in STEPS if s == (STEPS[0][0] if step == "start" else step)]
    adapter = getattr(h.fakes, attribute)
    original = getattr(adapter, method)

    async def dies(*args: Any, **kwargs: Any) -> Any:
        setattr(adapter, method, original)
        if step != "start":
            await original(*args, **kwargs)
        raise Crash(f"the worker dies after the create's {step}")

    setattr(adapter, method, dies)


def _steps(method: str, rotation: bool) -> list[str]:
    return [step for step in ("start", *(s for s, _, _ in STEPS))
            if not (step == "vault" and method == "federated") and not (step == "schedule" and not rotation)]


CASES = [(method, rotation, step) for method in ("client-secret", "certificate", "federated")
         for rotation in ((False, True) if method != "federated" else (False,))
         for step in _steps(method, rotation)]


def _live_versions(h: Harness) -> list[str]:
    """The enabled vault versions that hold a credential Entra accepts."""
    world, vault = h.fakes.world, h.fakes.vault
    return [f"{name}/{v.version}" for name, versions in vault.secrets.items() if name not in vault.deleted
            for v in versions if v.enabled
            and any(world.live(client_id, v.material.get("clientSecret") or v.material.get("certificateBody", ""))
                    for client_id in world.apps)]


@pytest.mark.parametrize(("method", "rotation", "step"), CASES,
                         ids=[f"{m}-{'rotation' if r else 'no-rotation'}-after-{s}" for m, r, s in CASES])
async def test_a_create_whose_worker_dies_after_a_step_leaves_nothing_live_untracked_and_can_be_sent_again(
        method: str, rotation: bool, step: str) -> None:
    h = Harness(method=method)
    if method == "federated":  # nothing secret: the service's identity signs in as the application
        client_id = h.fakes.world.application().client_id
        h.fakes.world.add_federated(client_id)
        credentials = {"tenantId": TENANT, "clientId": client_id}
    else:
        _, credentials = h.new_application(method)
    body: dict[str, Any] = {"name": "c1", "method": method, "credentials": credentials}
    if rotation:
        body.update(isAutoRotationEnabled=True, rotation=ROTATION)
    _dies_after(h, step)
    with pytest.raises(Crash):
        await h.api.create(APP, body)
    stored = step == "record"
    assert len(h.fakes.connections.records) == (1 if stored else 0)
    assert h.check() == []  # I5: a secret no record names has its index entry, for the sweep that removes it

    # What recovers: the sweeps, once the entry is due and past ABANDONED_AFTER (a create may be that slow).
    h.fakes.clock.advance(timedelta(days=1, minutes=1) + ABANDONED_AFTER)
    built = wiring.services(h.fakes.adapters)
    await HealthChecker(built.adapters, built.connections).sweep()
    await h.sweep()
    assert h.check() == []
    records = list(h.fakes.connections.records.values())
    assert {parse_key(key).connection_id for key in h.fakes.health_index.keys} == {r.id for r in records}
    assert {parse_key(key).connection_id for key in h.fakes.schedule.keys} <= {r.id for r in records}
    assert _live_versions(h) == [f"{r.secret_name}/{r.secret_version}" for r in records if r.secret_version]

    if stored:  # the connection exists, its answer lost: the same create again is a 409 at /name
        with pytest.raises(NameTaken) as taken:
            await h.api.create(APP, body)
        assert [e.pointer for e in taken.value.errors] == ["/name"]
        [record] = records
        if rotation:  # its first rotation, never started, was taken up by the sweep
            assert record.rotation.status == "succeeded" and record.rotation.last_rotated_at is not None
        assert (await h.api.validate(APP, record.id)).status == "active"
        return
    again = await h.api.create(APP, body)  # the name was not left taken by the half-made create
    assert again.name == "c1" and (again.rotation.status == "succeeded" if rotation else True)
    assert (await h.api.validate(APP, again.id)).status == "active"
    assert h.check() == []
    assert _live_versions(h) == ([f"{again.secret_name}/{again.secret_version}"] if method != "federated" else [])
