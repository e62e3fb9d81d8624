"""A failure storm: the stand-in fails 30% of Entra ID, Microsoft Graph and Key Vault calls while 100 due
rotations run and 200 API requests arrive at once.

Faults (each 7.5% of the matching calls, seeded kinds, random hits): 429 with ``Retry-After: 1``; 503;
a dropped connection (no answer); a timeout (no answer for 1.5 s, then the connection is dropped).
Every one of them is retryable, so: every rotation must succeed within a bounded number of sweeps, no
API request may get a 5xx, and nothing may be lost (every connection keeps a working credential, no
orphaned or unrevoked password, no secret in logs or tables). Between sweeps the connections that backed
off are made due again through the Table API (the back-off is 5 minutes of real time; see harness.py).
Figures go to ``.reliability/storm.json``.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from localdev.environment import LocalEnvironment
from tests.reliability.harness import (
    BASE,
    HostProcess,
    Rotated,
    Secrets,
    Tables,
    audit,
    campaign_environment,
    scan_for_secrets,
    write_figures,
)

pytestmark = pytest.mark.slow

APP = "azure-key-vault"
ROTATIONS = int(os.environ.get("RELIABILITY_STORM_ROTATIONS", "100"))
REQUESTS = int(os.environ.get("RELIABILITY_STORM_REQUESTS", "200"))
MAX_SWEEPS = 4
# A sweep stops claiming after its budget (240 s by default); the rotations then in flight still finish, each
# within ROTATION_TEST_TIMEOUT_SECONDS (60 here) of testing plus the retries of its calls (at most 30 s of
# waiting each, see shared.azure.retry). When Graph throttles (a quarter of the storm's faults are 429s) the
# sweep runs fewer rotations at once, so a storm sweep does run up to its budget.
SWEEP_LIMIT = 240 + 60 + 120
FAILURE_RATE = 0.30
# Entra's token endpoint and metadata, Graph, Key Vault.
UPSTREAM = r"(/oauth2/v2\.0/token$|/v2\.0/\.well-known/|^/v1\.0/|^/secrets/)"


def storm_rules(rate: float = FAILURE_RATE) -> list[dict[str, Any]]:
    """Four kinds, each ``rate / 4`` of all matching calls (rules are tried in order, so each one's
    probability is conditional on the earlier ones not firing)."""
    kinds: list[dict[str, Any]] = [
        {"status": 429, "headers": {"Retry-After": "1"},
         "body": {"error": {"code": "TooManyRequests", "message": "Too many requests"}}},
        {"status": 503, "body": {"error": {"code": "ServiceUnavailable", "message": "Try again"}}},
        {"action": "drop"},
        {"action": "drop", "delay_ms": 1500},  # a timeout: no answer, then the connection goes
    ]
    rules, left = [], 1.0
    for kind in kinds:
        share = rate / len(kinds)
        rules.append({"path": UPSTREAM, "probability": share / left, **kind})
        left -= share
    return rules


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalEnvironment, HostProcess, Tables]]:
    with campaign_environment("storm", tmp_path_factory.mktemp("storm"), concurrency=32) as parts:
        yield parts


def _create(api: httpx.Client, entra: Any, rotate: bool) -> httpx.Response:
    body: dict[str, Any] = {"name": f"storm-{uuid.uuid4().hex[:10]}", "method": "client-secret",
                            "credentials": entra.client_secret_body()}
    if rotate:
        body |= {"isAutoRotationEnabled": True,
                 "rotation": {"rotationInterval": 1, "rotateAtUtc": {"hours": 3, "minutes": 0}}}
    return api.post(f"{BASE}/{APP}", json=body)


def test_a_storm_of_retryable_failures_loses_nothing(campaign) -> None:
    from tests.e2e.entra import register_app, register_rotatable_app

    test_started = time.monotonic()
    env, host, tables = campaign
    assert env.standin is not None
    admin = env.standin.admin
    seed = int(os.environ.get("RELIABILITY_SEED") or random.SystemRandom().randrange(1, 2**31))
    print(f"\nstorm seed: {seed} (orders the API requests; the stand-in's fault draws are not seeded)")
    rng = random.Random(seed)
    registry = Secrets()
    registry.add(*(c.client_secret for c in [env.identity, *env.oauth_clients.values()] if c))

    # Calm weather: 100 connections that rotate, rotated once on creation.
    entras = [register_rotatable_app(admin, registry) for _ in range(ROTATIONS)]
    with host.api(timeout=120) as api, ThreadPoolExecutor(8) as pool:
        created = list(pool.map(lambda e: _create(api, e, rotate=True), entras))
    assert all(r.status_code == 201 for r in created), [r.text for r in created if r.status_code != 201][:3]
    apps = [Rotated(e.tenant_id, e.client_id, e.object_id, e.key_id, r.json()["appConnection"]["id"])
            for e, r in zip(entras, created, strict=True)]
    ids = [a.connection_id for a in apps]
    newcomers = [register_app(admin, registry) for _ in range(REQUESTS // 5)]

    # The storm: everything due, 30% of upstream calls failing, a sweep and 200 API requests at once.
    assert tables.make_due(APP, ids) == ROTATIONS
    # Each connection already "succeeded" once (on creation): a rotation in the storm is one that put a new
    # client secret in use, so the Key ID in use before the storm is kept to tell them apart.
    key_before = {e["RowKey"]: e.get("RotKeyId") for e in tables.connections(APP)}

    def statuses_now() -> dict[str, str]:
        return {e["RowKey"]: (e.get("RotStatus") or "none") if e.get("RotKeyId") != key_before.get(e["RowKey"])
                else f"not rotated yet ({e.get('RotStatus')})" for e in tables.connections(APP)}

    admin.clear_requests()
    admin.set_faults(storm_rules())
    plan: list[tuple[str, Any]] = [("create", e) for e in newcomers]
    kinds = ["get", "list", "validate", "history", "patch"]
    plan += [(kinds[i % len(kinds)], rng.choice(ids)) for i in range(REQUESTS - len(plan))]
    rng.shuffle(plan)
    made: list[str] = []

    def call(api: httpx.Client, kind: str, target: Any) -> tuple[str, int, str]:
        if kind == "create":
            response = _create(api, target, rotate=False)
            if response.status_code == 201:
                made.append(response.json()["appConnection"]["id"])
        elif kind == "get":
            response = api.get(f"{BASE}/{APP}/{target}")
        elif kind == "list":
            response = api.get(f"{BASE}/{APP}", params={"limit": 20})
        elif kind == "validate":
            response = api.post(f"{BASE}/{APP}/{target}/validate")
        elif kind == "history":
            response = api.get(f"{BASE}/{APP}/{target}/rotations")
        else:
            response = api.patch(f"{BASE}/{APP}/{target}", json={"description": f"storm {uuid.uuid4().hex[:6]}"})
        return kind, response.status_code, response.text[:300]

    started = time.monotonic()
    sweeps = 1
    before = host.sweeps_done()
    host.trigger_sweep()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    with host.api(timeout=180, limits=limits) as api, ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda item: call(api, *item), plan))
    api_seconds = time.monotonic() - started
    while host.sweeps_done() <= before:
        assert time.monotonic() - started < SWEEP_LIMIT, f"the first sweep did not end within {SWEEP_LIMIT} s"
        time.sleep(0.1)
    status_of = statuses_now()
    first_sweep_succeeded = sum(1 for cid in ids if status_of.get(cid) == "succeeded")
    # Backed-off rotations are due again once their back-off ends: make it end, sweep again (bounded).
    while any(status_of.get(cid) != "succeeded" for cid in ids):
        assert sweeps < MAX_SWEEPS, f"rotations not done after {sweeps} sweeps: {Counter(status_of.values())}"
        tables.expire_leases(APP)
        tables.make_due(APP, [cid for cid in ids if status_of.get(cid) != "succeeded"])
        host.run_sweep(timeout=SWEEP_LIMIT)
        sweeps += 1
        status_of = statuses_now()
    storm_seconds = time.monotonic() - started
    rules = admin.faults()
    admin.clear_faults()
    upstream_calls = admin.requests()
    faults_by_kind = {f"{r.get('status') if r['action'] == 'respond' else r['action']}"
                      f"{'+delay' if r['delay_ms'] else ''}": r["hits"] for r in rules}

    # The weather clears: audit everything.
    result = audit(tables, admin, env.standin.url, str(env.standin.ca_path), APP, apps)
    registry.add(*result.secret_values)
    statuses = Counter(status for _, status, _ in results)
    server_errors = [(kind, status, text) for kind, status, text in results if status >= 500]
    with host.api(timeout=60) as api:
        missing = [cid for cid in made if api.get(f"{BASE}/{APP}/{cid}").status_code != 200]
        invalid = [cid for cid in made if api.post(f"{BASE}/{APP}/{cid}/validate").status_code != 200]
    leaked = scan_for_secrets(registry.values, host.log_text(), tables.dump())
    figures = {
        "seed": seed,
        "failureRate": FAILURE_RATE,
        "faultsInjected": sum(faults_by_kind.values()),
        "faultsByKind": faults_by_kind,
        "upstreamRequestsLogged": len(upstream_calls),
        "rotations": ROTATIONS,
        "rotationsSucceeded": sum(1 for cid in ids if status_of.get(cid) == "succeeded"),
        "rotationsSucceededInFirstSweep": first_sweep_succeeded,
        "sweeps": sweeps,
        "apiRequests": len(results),
        "apiStatuses": {str(k): v for k, v in sorted(statuses.items())},
        "api5xx": len(server_errors),
        "apiErrors": [{"request": kind, "status": status, "body": text[:200]}
                      for kind, status, text in results if status >= 400],
        "apiSeconds": round(api_seconds, 2),
        "stormSeconds": round(storm_seconds, 2),
        "connectionsCreatedInStorm": len(made),
        "createdButMissing": len(missing),
        "createdButNotWorking": len(invalid),
        "lostSecrets": len(result.lost),
        "orphanedCredentials": len(result.orphaned),
        "unrevokedPreviousCredentials": len(result.unrevoked),
        "duplicateHistory": len(result.duplicate_history),
        "secretsInLogsOrTables": len(leaked),
        "secretsScanned": len(registry.values),
    }
    path = write_figures("storm", figures)
    print(f"figures written to {path}: {figures}")
    print(f"storm: {figures['rotationsSucceeded']}/{ROTATIONS} rotations in {sweeps} sweep(s); "
          f"{len(results)} API requests, {len(server_errors)} 5xx; {figures['faultsInjected']} faults "
          f"{faults_by_kind} in {len(upstream_calls)} upstream calls; API {api_seconds:.0f} s, "
          f"storm {storm_seconds:.0f} s, test {time.monotonic() - test_started:.0f} s")
    # A 5xx: the host log (.reliability/storm-host.log) names each call whose retries ran out ("giving up").
    assert server_errors == [], server_errors[:5]
    assert not result.problems, result.problems
    assert missing == [] and invalid == []
    assert leaked == []
    assert sum(faults_by_kind.values()) > 100, "the storm did not happen"

