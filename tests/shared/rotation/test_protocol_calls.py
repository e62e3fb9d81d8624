"""What one rotation asks of Entra, Graph and Key Vault (counted at the stand-in, real SDKs, Azurite), and that
reusing within a run what it built or read once keeps every step's guarantees: the credential and token built
for *create* serve *revoke*, the pending secret is tested as Key Vault stored it, the vault versions are looked
through only when a rotation is resumed, and a revocation that Graph refuses is told apart from one already done.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest

from shared import wiring
from shared.azure.clients import AzureClients
from shared.records import FINISHED, ConnectionRecord
from shared.rotation.protocol import Checkpoint, Rotator
from shared.store.tables import ConnectionsTable
from tests.e2e.entra import EntraApp, register_rotatable_app, token_works

pytestmark = pytest.mark.e2e

APP = "azure-key-vault"
GRAPH_SCOPE_SUFFIX = "/.default"


class Crash(BaseException):
    """The process dies here: nothing after this point runs."""


def rotator_at(clients: AzureClients, at: datetime, checkpoint: Checkpoint | None = None) -> Rotator:
    return wiring.services(wiring.adapters(clients), clock=lambda: at, checkpoint=checkpoint).rotator


async def rotating(clients: AzureClients, admin: Any, secrets_used: Any) -> tuple[EntraApp, ConnectionRecord]:
    entra = register_rotatable_app(admin, secrets_used, name="calls")
    created = await wiring.services(wiring.adapters(clients)).connections.create(APP, {
        "name": f"calls-{uuid.uuid4().hex[:8]}", "method": "client-secret",
        "credentials": entra.client_secret_body(clientSecretKeyId=entra.key_id), "isAutoRotationEnabled": True,
        "rotation": {"rotationInterval": 30, "rotateAtUtc": {"hours": 3, "minutes": 0}},
    })
    return entra, await ConnectionsTable(clients).get(APP, created.id)


def due(record: ConnectionRecord) -> datetime:
    next_at = record.rotation.next_at
    assert next_at is not None
    return next_at + timedelta(minutes=1)


async def rotate(rotator: Rotator, record: ConnectionRecord) -> ConnectionRecord:
    claimed = await rotator.claim(record, "schedule")
    assert claimed is not None
    return (await rotator.run(claimed)).record


def kind(entry: dict[str, Any]) -> str:
    path = str(entry["path"])
    if path.endswith("/oauth2/v2.0/token"):
        return "token"
    if path.endswith("/appManagementPolicies"):
        return "graph app policies"
    if path.endswith("/policies/defaultAppManagementPolicy"):
        return "graph default policy"
    if entry.get("graph"):
        return f"graph {entry['graph']}"
    if path.startswith("/secrets/"):
        return f"vault {entry['method']}" + (" versions" if path.endswith("/versions") else "")
    return f"{entry['method']} {path}"


def live_keys(admin: Any, entra: EntraApp) -> set[str]:
    return {p["keyId"] for p in admin.app_passwords(entra.tenant_id, entra.client_id) if not p["revoked"]}


async def test_a_rotation_makes_eleven_calls_and_revokes_with_the_token_create_acquired(
        admin: Any, clients: AzureClients, local_env: Any, secrets_used: Any) -> None:
    entra, record = await rotating(clients, admin, secrets_used)
    before = record.rotation
    admin.clear_requests()
    done = await rotate(rotator_at(clients, due(record)), record)
    after = done.rotation
    assert after.status == "succeeded", after.message
    log = admin.requests()
    assert sorted(kind(e) for e in log) == sorted([
        "token", "vault GET", "graph get", "graph app policies", "graph default policy", "graph addPassword",
        "vault PUT", "token", "graph get", "graph removePassword", "vault PATCH"])
    tokens = [e for e in log if kind(e) == "token"]
    # The Graph token, with the secret in use when the run began, is the one the revocation used; the only other
    # token is the test of the new secret, for the app's scope.
    assert [(t["key_id"], t["scope"].endswith(GRAPH_SCOPE_SUFFIX) and "vault" not in t["scope"]) for t in tokens] == [
        (before.key_id, True), (after.key_id, False)]
    assert [e["secret"] for e in log if kind(e) == "vault GET"] == [record.secret_name]
    assert next(e for e in log if kind(e) == "vault GET")["version"] == record.secret_version
    removed = next(e for e in log if kind(e) == "graph removePassword")
    assert (removed["keyId"], removed["status"]) == (before.key_id, 204)
    assert [kind(e) for e in log].index("graph removePassword") > [kind(e) for e in log].index("token", 1)
    assert before.key_id not in live_keys(admin, entra)
    versions = admin.vault_secrets()[done.secret_name]["versions"]
    assert [v["version"] for v in versions if v["enabled"]] == [done.secret_version]
    secret = versions[-1]["value"]
    secrets_used.add(secret)
    assert token_works(local_env.standin, entra, json.loads(secret)["clientSecret"])


async def test_a_resumed_create_looks_for_this_rotations_vault_versions_and_a_resumed_revoke_uses_the_new_secret(
        admin: Any, clients: AzureClients, secrets_used: Any) -> None:
    entra, record = await rotating(clients, admin, secrets_used)
    previous = record.rotation.key_id
    at = due(record)

    async def crash_before_add(name: str, _: ConnectionRecord) -> None:
        if name == "before-add-password":
            raise Crash(name)

    doomed = rotator_at(clients, at, crash_before_add)
    with pytest.raises(Crash):
        await rotate(doomed, record)
    later = at + doomed.options.lease + timedelta(minutes=1)

    async def crash_after_finish(name: str, _: ConnectionRecord) -> None:
        if name == "after-finish":
            raise Crash(name)

    admin.clear_requests()
    second = rotator_at(clients, later, crash_after_finish)
    with pytest.raises(Crash):
        await rotate(second, await ConnectionsTable(clients).get(APP, record.id))
    assert "vault GET versions" in [kind(e) for e in admin.requests()]  # a resumed create looks for orphans
    assert previous in live_keys(admin, entra)  # finished, not yet revoked

    admin.clear_requests()
    resumed = await ConnectionsTable(clients).get(APP, record.id)
    assert resumed.rotation.step == FINISHED
    done = await rotate(rotator_at(clients, later + second.options.lease), resumed)
    state = done.rotation
    assert state.status == "succeeded", state.message
    log = admin.requests()
    assert [kind(e) for e in log] == ["vault GET", "token", "graph get", "graph removePassword", "vault PATCH"]
    assert log[1]["key_id"] == state.key_id  # the run that resumes at revoke uses the current (new) secret
    assert previous not in live_keys(admin, entra)


async def test_a_previous_secret_removed_meanwhile_is_a_revocation_already_done(
        admin: Any, clients: AzureClients, secrets_used: Any) -> None:
    entra, record = await rotating(clients, admin, secrets_used)
    previous = record.rotation.key_id
    assert previous is not None

    async def someone_removes_it(name: str, _: ConnectionRecord) -> None:
        if name == "after-finish":
            admin.remove_secret(entra.tenant_id, entra.client_id, previous)

    admin.clear_requests()
    done = await rotate(rotator_at(clients, due(record), someone_removes_it), record)
    assert done.rotation.status == "succeeded", done.rotation.message
    graph = [(e["graph"], e["status"]) for e in admin.requests() if e.get("graph")]
    assert graph == [("get", 200), ("addPassword", 200), ("get", 200)]  # revoke reads first: nothing to remove


async def test_a_refused_revocation_keeps_the_journal_and_the_next_run_finishes_it(
        admin: Any, clients: AzureClients, secrets_used: Any, no_faults: None) -> None:
    from localdev.standin.graph import graph_fault

    entra, record = await rotating(clients, admin, secrets_used)
    previous = record.rotation.key_id
    at = due(record)
    admin.set_faults([{**graph_fault(403, "Authorization_RequestDenied", "Insufficient privileges to complete the "
                                     "operation."), "method": "POST", "path": r"/removePassword$"}])
    failed = await rotate(rotator_at(clients, at), record)
    state = failed.rotation
    assert (state.status, state.step) == ("failed", FINISHED)
    assert "refused to revoke a client secret" in (state.message or "")
    assert previous in live_keys(admin, entra)  # still there: the refusal was not taken for "already gone"

    admin.clear_faults()
    done = await rotate(rotator_at(clients, at + timedelta(minutes=10)),
                        await ConnectionsTable(clients).get(APP, record.id))
    assert done.rotation.status == "succeeded", done.rotation.message
    assert previous not in live_keys(admin, entra)


async def test_an_add_password_whose_answer_was_lost_leaves_no_second_password_behind(
        admin: Any, clients: AzureClients, secrets_used: Any, no_faults: None) -> None:
    """Graph applied addPassword but the connection dropped before its answer: the password exists, unknown to the
    service. Before sending the request again, the passwords of this rotation's marker are removed, so exactly one
    new password (the one whose secret the service holds) stays live."""
    entra, record = await rotating(clients, admin, secrets_used)
    previous = record.rotation.key_id
    admin.set_faults([{"method": "POST", "path": r"/addPassword$", "action": "drop_after", "times": 1}])
    admin.clear_requests()
    after_add: list[set[str]] = []

    async def look(name: str, _: ConnectionRecord) -> None:
        if name == "after-add-password":
            after_add.append(live_keys(admin, entra))

    done = await rotate(rotator_at(clients, due(record), look), record)
    state = done.rotation
    assert state.status == "succeeded", state.message
    graph = [(e["graph"], e["status"]) for e in admin.requests() if e.get("graph")]
    assert ("addPassword", None) in graph and graph.count(("addPassword", 200)) == 1
    assert after_add == [{previous, state.key_id}]  # the lost one was removed before addPassword was sent again
    assert live_keys(admin, entra) == {state.key_id}
    assert previous not in live_keys(admin, entra)
    # Removed by the rotation, fenced and audited as any removal is (not quietly inside the Graph adapter).
    marked = f"app-connections {record.id} rotation "
    lost = {p["keyId"] for p in admin.app_passwords(entra.tenant_id, entra.client_id)
            if p["revoked"] and (p["displayName"] or "").startswith(marked)} - {previous}
    assert len(lost) == 1 and state.key_id not in lost
    from shared.store.audit import AuditTable

    at = due(record)  # the rotator's clock: its records are of that day
    logged, _ = await AuditTable(clients).query(at - timedelta(hours=1), at + timedelta(hours=1),
                                                connection_id=record.id, action="credential.remove")
    assert {(r.outcome, f"keyId {key}" in (r.detail or "")) for r in logged for key in lost} >= {
        ("started", True), ("succeeded", True)}, [(r.outcome, r.detail) for r in logged]
