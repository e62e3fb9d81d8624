"""Real crashes: the host is a separate process, SIGKILLed at a random moment of a rotation sweep, 20 times.

Azurite and the stand-in run in this process; the host (``python -m localdev host``) runs in its own, with
the environment's settings and a timer schedule that never fires by itself. 30 connections with rotation
enabled are created through its API: two in three client secrets, one in three certificates (rolled with
addKey/removeKey and proofs of possession, with no Graph permission). Each round makes them all due again
(through the Table API: see ``tests/reliability/harness.py``), triggers a sweep, kills the host with SIGKILL
after a seeded random delay (the stand-in answers with 20-50 ms latency, so the sweep is long enough to be
cut mid-way), restarts it, lets the crashed leases run out (again through the Table API), runs a recovery
sweep and audits every connection. Figures go to ``.reliability/crashes.json``.

``RELIABILITY_SEED`` fixes the seed; ``RELIABILITY_CRASHES`` the number of rounds (default 20).
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
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
    live_credentials,
    scan_for_secrets,
    write_figures,
)

pytestmark = pytest.mark.slow

APP = "azure-key-vault"
CONNECTIONS = 30
ROUNDS = int(os.environ.get("RELIABILITY_CRASHES", "20"))


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalEnvironment, HostProcess, Tables]]:
    with campaign_environment("crashes", tmp_path_factory.mktemp("crashes"), concurrency=8) as parts:
        yield parts


def _create(api: httpx.Client, admin: Any, registry: Secrets, number: int) -> Rotated:
    from tests.e2e.entra import certificate_body, register_app, register_rotatable_app

    if number % 3 == 2:  # a certificate connection: no Graph permission, the app rolls its own keys
        entra = register_app(admin, registry, name="crash-cert")
        credentials = certificate_body(admin, registry, entra)
        (given,) = admin.get_app(entra.tenant_id, entra.client_id)["keyCredentials"]
        method, given_key = "certificate", str(given["keyId"])
    else:
        entra = register_rotatable_app(admin, registry)
        credentials, method, given_key = entra.client_secret_body(), "client-secret", entra.key_id
    response = api.post(f"{BASE}/{APP}", json={
        "name": f"crash-{uuid.uuid4().hex[:10]}", "method": method, "credentials": credentials,
        "isAutoRotationEnabled": True, "rotation": {"rotationInterval": 1, "rotateAtUtc": {"hours": 3, "minutes": 0}},
    })
    assert response.status_code == 201, response.text
    connection = response.json()["appConnection"]
    assert connection["rotation"]["status"] == "succeeded", connection
    return Rotated(entra.tenant_id, entra.client_id, entra.object_id, given_key, connection["id"], method)


OPERATIONS = ("patch-credentials", "patch-rotation", "validate", "rotate", "rename", "delete")
MAX_DELETES = 3


def _interleave(api: httpx.Client, admin: Any, rng: random.Random, apps: list[Rotated], registry: Secrets,
                deleted: list[str], when: str) -> tuple[list[str], list[str]]:
    """User operations on random connections right after a crash: while the crashed sweep's leases still hold
    (PATCHes and DELETE of a rotation in progress answer 409) or once they ran out (a half-done rotation is
    finished or removed). What each answered, and what is wrong: a 5xx (but a rotate's 502), an answer the rules
    do not allow, or a DELETE that left a secret the service made live on the application."""
    seen: list[str] = []
    wrong: list[str] = []
    for _ in range(3):
        target = rng.choice(apps)
        operation = rng.choice(OPERATIONS if len(deleted) < MAX_DELETES else OPERATIONS[:-1])
        path = f"{BASE}/{APP}/{target.connection_id}"
        if operation == "patch-credentials" and target.method == "certificate":
            from tests.e2e.entra import EntraApp, certificate_body

            owner = EntraApp(target.tenant_id, target.client_id, target.object_id, "", "")
            before = {k["keyId"] for k in admin.get_app(target.tenant_id, target.client_id)["keyCredentials"]}
            body = certificate_body(admin, registry, owner)
            (uploaded,) = [k for k in admin.get_app(target.tenant_id, target.client_id)["keyCredentials"]
                           if k["keyId"] not in before]
            answer = api.patch(path, json={"credentials": body})
            if answer.status_code == 200:
                target.given_key_id = str(uploaded["keyId"])
            else:  # refused: the certificate given stays the owner's and is removed here
                admin.remove_certificate(target.tenant_id, target.client_id, uploaded["keyId"])
        elif operation == "patch-credentials":
            secret = admin.add_secret(target.tenant_id, target.client_id, display_name="given again")
            registry.add(secret["secretText"])
            answer = api.patch(path, json={"credentials": {
                "tenantId": target.tenant_id, "clientId": target.client_id, "clientSecret": secret["secretText"],
                "clientSecretKeyId": secret["keyId"]}})
            if answer.status_code == 200:
                target.given_key_id = str(secret["keyId"])
            else:  # refused: the secret given stays the owner's (not the service's) and is removed here
                admin.remove_secret(target.tenant_id, target.client_id, secret["keyId"])
        elif operation == "patch-rotation":
            answer = api.patch(path, json={"rotation": {"rotationInterval": rng.choice([1, 2]),
                                                        "rotateAtUtc": {"hours": 3, "minutes": 0}}})
        elif operation == "validate":
            answer = api.post(f"{path}/validate")
        elif operation == "rotate":
            answer = api.post(f"{path}/rotate")
        elif operation == "rename":
            answer = api.patch(path, json={"name": f"crash-{uuid.uuid4().hex[:10]}"})
        else:
            answer = api.delete(path)
        status = answer.status_code
        seen.append(f"{when} {operation} {status}")
        allowed = {
            "patch-credentials": {200, 409}, "patch-rotation": {200, 409}, "validate": {200},
            "rotate": {200, 409, 502}, "rename": {200, 409}, "delete": {200, 409},
        }[operation]
        if status not in allowed:
            wrong.append(f"{when} {operation} on {target.connection_id}: {status} {answer.text[:300]}")
        if operation == "delete" and status == 200:
            apps.remove(target)
            deleted.append(target.connection_id)
            marker = f"app-connections {target.connection_id} rotation "
            live = [key for key, c in live_credentials(admin, target).items()
                    if str(c.get("displayName") or "").startswith(marker)]
            if live or answer.json()["keyIdsLeftLive"]:
                wrong.append(f"{when} delete of {target.connection_id} left {live} live")
    return seen, wrong


def _journals(tables: Tables) -> int:
    return sum(1 for e in tables.connections(APP) if e.get("RotRotationId"))


def test_sigkill_mid_sweep_loses_nothing_and_leaves_no_orphan(campaign) -> None:
    env, host, tables = campaign
    assert env.standin is not None
    admin = env.standin.admin
    seed = int(os.environ.get("RELIABILITY_SEED") or random.SystemRandom().randrange(1, 2**31))
    print(f"\ncrash campaign seed: {seed} (RELIABILITY_SEED={seed} repeats the kill moments)")
    rng = random.Random(seed)
    registry = Secrets()
    registry.add(*(c.client_secret for c in [env.identity, *env.oauth_clients.values()] if c))

    problems: list[str] = []

    def check(label: str) -> Any:
        """Audit; problems are collected (the campaign goes on, so its figures count every round)."""
        result = audit(tables, admin, env.standin.url, str(env.standin.ca_path), APP, apps)
        registry.add(*result.secret_values)
        if result.problems:
            problems.append(f"{label}: {result.problems}")
            print(problems[-1])
        return result

    with host.api(timeout=120) as api, ThreadPoolExecutor(6) as pool:
        apps = list(pool.map(lambda number: _create(api, admin, registry, number), range(CONNECTIONS)))
    check("after creation")

    # Calibrate: how long a full sweep of 30 due rotations takes at this latency on this machine.
    admin.set_latency(35)
    tables.make_due(APP)
    full = host.run_sweep()
    admin.set_latency(0)
    check("after the calibration sweep")
    print(f"a full sweep of {CONNECTIONS} rotations takes {full:.2f} s")

    rounds: list[dict[str, Any]] = []
    operations: list[str] = []
    deleted: list[str] = []
    for round_no in range(ROUNDS):
        assert tables.make_due(APP) == len(apps)
        latency = rng.randint(20, 50)
        moment = rng.uniform(0.05, 0.85) * full
        admin.set_latency(latency)
        before = host.sweeps_done()
        host.trigger_sweep()
        time.sleep(moment)
        host.kill()
        admin.set_latency(0)  # the recovery need not be slow
        finished = host.sweeps_done() > before
        journals = _journals(tables)
        still_due = sum(1 for e in tables.connections(APP) if e["RotNextAt"] <= datetime.now(UTC))
        host.start()
        with host.api(timeout=120) as api:
            during, wrong = _interleave(api, admin, rng, apps, registry, deleted, "leased")
            expired = tables.expire_leases(APP)
            after, wrong_after = _interleave(api, admin, rng, apps, registry, deleted, "expired")
        operations.extend(during + after)
        for line in wrong + wrong_after:
            problems.append(f"round {round_no}: {line}")
            print(problems[-1])
        recovery = host.run_sweep()
        result = check(f"round {round_no} (seed {seed}, killed at {moment:.2f} s)")
        rounds.append({"round": round_no, "latencyMs": latency, "killedAtSeconds": round(moment, 3),
                       "sweepHadFinished": finished, "halfDoneRotations": journals, "notYetRotated": still_due,
                       "leasesExpired": expired, "recoverySeconds": round(recovery, 2),
                       "historyRows": result.history_rows})
        print(f"round {round_no}: killed at {moment:.2f} s, {journals} half done, {still_due} not yet rotated, "
              f"recovered in {recovery:.2f} s")

    final = check("at the end")
    leaked = scan_for_secrets(registry.values, host.log_text(), tables.dump())
    figures = {
        "seed": seed,
        "connections": CONNECTIONS,
        "crashesSurvived": len(rounds),
        "killsMidSweep": sum(1 for r in rounds if not r["sweepHadFinished"]),
        "halfDoneRotationsResumed": sum(r["halfDoneRotations"] for r in rounds),
        "orphanedCredentials": len(final.orphaned),
        "roundsWithProblems": len(problems),
        "problems": problems,
        "unrevokedPreviousCredentials": len(final.unrevoked),
        "lostSecrets": len(final.lost),
        "duplicateHistory": len(final.duplicate_history),
        "secretsInLogsOrTables": len(leaked),
        "secretsScanned": len(registry.values),
        "hostStarts": host.starts,
        "userOperations": len(operations),
        "userOperationAnswers": {k: operations.count(k) for k in sorted(set(operations))},
        "deletedMidCampaign": len(deleted),
        "fullSweepSeconds": round(full, 2),
        "rounds": rounds,
    }
    path = write_figures("crashes", figures)
    print(f"figures written to {path}")
    assert problems == []
    assert leaked == []
    assert figures["killsMidSweep"] >= ROUNDS // 2, "most kills should land while the sweep runs"


# -- migrate-to-federated, SIGKILLed mid-way --------------------------------------------------------------------
MIGRATING_APP = "azure-app-configuration"  # apart from the rotation campaign's connections
MIGRATION_ROUNDS = int(os.environ.get("RELIABILITY_MIGRATION_CRASHES", "6"))
PER_ROUND = 4


def test_sigkill_mid_migration_is_finished_by_the_same_request_and_leaves_nothing_behind(campaign) -> None:
    """Rotating client-secret connections (the service's own password on each application) are migrated to the
    federated method in parallel; the host is SIGKILLed at a seeded random moment; once restarted (and the leases
    run out) the same request finishes each one. Then every connection is federated with no journal, its
    application has exactly the one federated credential named for it and no live password the service made, the
    connection validates (a federated sign-in), and no secret is in the host's log or the tables."""
    from tests.e2e.entra import identity_tenant, register_rotatable_app

    env, host, tables = campaign
    assert env.standin is not None and env.federation is not None
    admin = env.standin.admin
    seed = int(os.environ.get("RELIABILITY_SEED") or random.SystemRandom().randrange(1, 2**31))
    print(f"\nmigration crash seed: {seed}")
    rng = random.Random(seed)
    registry = Secrets()
    problems: list[str] = []
    rounds: list[dict[str, Any]] = []
    for round_no in range(MIGRATION_ROUNDS):
        apps: list[Rotated] = []
        with host.api(timeout=120) as api:
            for _ in range(PER_ROUND):
                entra = register_rotatable_app(admin, registry, name="going-secretless",
                                               tenant_id=identity_tenant(env))
                created = api.post(f"{BASE}/{MIGRATING_APP}", json={
                    "name": f"mig-{uuid.uuid4().hex[:10]}", "method": "client-secret",
                    "credentials": entra.client_secret_body(), "isAutoRotationEnabled": True,
                    "rotation": {"rotationInterval": 30, "rotateAtUtc": {"hours": 3, "minutes": 0}}})
                assert created.status_code == 201, created.text
                apps.append(Rotated(entra.tenant_id, entra.client_id, entra.object_id, entra.key_id,
                                    created.json()["appConnection"]["id"]))
        latency = rng.randint(20, 50)
        moment = rng.uniform(0.05, 1.2)
        admin.set_latency(latency)

        def migrate(target: Rotated) -> int:
            try:
                with host.api(timeout=120) as client:
                    return client.post(f"{BASE}/{MIGRATING_APP}/{target.connection_id}/migrate-to-federated",
                                       json={"revokeOriginal": False}).status_code
            except httpx.HTTPError:
                return 0  # the host died under it

        with ThreadPoolExecutor(PER_ROUND) as pool:
            answers = [pool.submit(migrate, target) for target in apps]
            time.sleep(moment)
            host.kill()
            before = [a.result() for a in answers]
        admin.set_latency(0)
        half_done = sum(1 for e in tables.connections(MIGRATING_APP)
                        if str(e.get("RotStep") or "").startswith("migrate-"))
        host.start()
        tables.expire_leases(MIGRATING_APP)
        with host.api(timeout=120) as api:
            for target in apps:
                path = f"{BASE}/{MIGRATING_APP}/{target.connection_id}"
                again = api.post(f"{path}/migrate-to-federated", json={})
                connection = api.get(path).json()["appConnection"]
                if again.status_code not in (200, 400) or connection["method"] != "federated":
                    problems.append(f"round {round_no} {target.connection_id}: {again.status_code} "
                                    f"{again.text[:300]} -> {connection['method']}")
                if connection["rotation"]["rotationId"] is not None:
                    problems.append(f"round {round_no} {target.connection_id}: a journal is left")
                fics = admin.federated_credentials(target.tenant_id, target.client_id)
                if [f["name"] for f in fics] != [f"app-connections-{target.connection_id}"]:
                    problems.append(f"round {round_no} {target.connection_id}: federated credentials {fics}")
                made = [p["keyId"] for p in admin.app_passwords(target.tenant_id, target.client_id)
                        if not p.get("revoked") and p.get("createdBy") == "graph"]
                if made:
                    problems.append(f"round {round_no} {target.connection_id}: service passwords live {made}")
                if api.post(f"{path}/validate").status_code != 200:
                    problems.append(f"round {round_no} {target.connection_id}: does not validate")
        rounds.append({"round": round_no, "latencyMs": latency, "killedAtSeconds": round(moment, 3),
                       "answeredBeforeTheKill": sum(1 for s in before if s == 200), "halfDoneMigrations": half_done})
        print(f"migration round {round_no}: killed at {moment:.2f} s, {half_done} half done")
    leaked = scan_for_secrets(registry.values, host.log_text(), tables.dump())
    path = write_figures("crash-migrations", {
        "seed": seed, "rounds": rounds, "migrations": MIGRATION_ROUNDS * PER_ROUND,
        "halfDoneMigrationsResumed": sum(r["halfDoneMigrations"] for r in rounds), "problems": problems,
        "secretsInLogsOrTables": len(leaked)})
    print(f"figures written to {path}")
    assert problems == []
    assert leaked == []
