"""What an operator is told when Azure fails (docs/troubleshooting.md), against the stand-in: Key Vault refusing the
service's identity or throttling it, an application deleted in Entra ID, Graph's credential limit."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from localdev.standin.graph import graph_fault
from shared import wiring
from shared.health import HealthChecker
from shared.store.tables import ConnectionsTable
from tests.e2e.entra import register_app, register_rotatable_app

pytestmark = pytest.mark.e2e
BASE = "/api/v1/app-connections"
APP = "azure-key-vault"


def kv_fault(status: int, code: str, message: str, **headers: str) -> dict:
    return {"path": r"^/secrets/", "status": status, "times": None,
            "headers": {"Content-Type": "application/json", **headers},
            "body": {"error": {"code": code, "message": message}}}


KV_ROLE_REMOVED = kv_fault(403, "Forbidden", "Caller is not authorized to perform action on resource.")
KV_THROTTLING = kv_fault(429, "Throttled", "Too many requests.", **{"Retry-After": "1"})


def rotating(api, admin) -> tuple:
    entra = register_rotatable_app(admin, set())
    r = api.post(f"{BASE}/{APP}", json={
        "name": f"ops-{uuid.uuid4().hex[:8]}", "method": "client-secret", "credentials": entra.client_secret_body(),
        "isAutoRotationEnabled": True, "rotation": {"rotationInterval": 30, "rotateAtUtc": {"hours": 3, "minutes": 0}}})
    assert r.status_code == 201, r.text
    return entra, r.json()["appConnection"]["id"]


def test_key_vault_refusing_the_service_names_key_vault_and_its_role_in_a_rotation(api, admin, no_faults):
    """lastRotationMessage, history, audit, webhook and the alert's detail all read
    'HttpResponseError (status 403): the call did not complete.' (shared/rotation/protocol.py _describe)."""
    _, cid = rotating(api, admin)
    admin.set_faults([KV_ROLE_REMOVED])
    rotated = api.post(f"{BASE}/{APP}/{cid}/rotate", timeout=120)
    admin.clear_faults()
    message = rotated.json()["rotation"]["lastRotationMessage"]
    assert message.startswith("Key Vault refused the service's own identity (403 Forbidden)"), message
    assert "Key Vault Secrets Officer" in message and "HttpResponseError" not in message, message
    assert rotated.json()["detail"] == message


async def test_key_vault_refusing_the_service_names_key_vault_in_health_and_validate(api, admin, clients, no_faults):
    """The health message (and so the health-check-unavailable notice, its webhook and its alert row) and validate's
    problem name Key Vault, the refusal of the service's own identity and its role; no class name, no 'try again'."""
    entra = register_app(admin, set())
    created = api.post(f"{BASE}/{APP}", json={"name": f"hc-{uuid.uuid4().hex[:8]}", "method": "client-secret",
                                             "credentials": entra.client_secret_body(clientSecretKeyId=entra.key_id)})
    cid = created.json()["appConnection"]["id"]
    admin.set_faults([KV_ROLE_REMOVED])
    validated = api.post(f"{BASE}/{APP}/{cid}/validate")
    at = datetime.now(UTC) + timedelta(hours=25)
    built = wiring.services(wiring.adapters(clients, clock=lambda: at), clock=lambda: at)
    checker = HealthChecker(built.adapters, built.connections)
    await checker.check(await ConnectionsTable(clients).get(APP, cid))  # first check that cannot run
    checked = await checker.check(await ConnectionsTable(clients).get(APP, cid))
    admin.clear_faults()
    problems = []
    if "HttpResponseError" in (checked.health.message or "") or "Key Vault" not in (checked.health.message or ""):
        problems.append(f"health message: {checked.health.message!r}")
    detail = validated.json()["detail"]
    if "Key Vault Secrets Officer" not in detail or "try again" in detail or validated.status_code != 502:
        problems.append(f"validate {validated.status_code}: {detail!r}")
    assert not problems, problems


def test_key_vault_throttling_a_rotation_is_the_documented_503_with_retry_after(api, admin, no_faults):
    """docs/rotation.md, Retry policy: 'A call still answered 429 or 503 when its retries run out ... is answered
    `503` `upstream-throttled` with `Retry-After`', a rotation that Key Vault throttles too."""
    _, cid = rotating(api, admin)
    admin.set_faults([KV_THROTTLING])
    rotated = api.post(f"{BASE}/{APP}/{cid}/rotate", timeout=180)
    admin.clear_faults()
    assert rotated.status_code == 503 and "Retry-After" in rotated.headers, (rotated.status_code, rotated.text[:300])
    assert rotated.json()["type"].endswith("upstream-throttled")
    assert rotated.json()["detail"].startswith("Key Vault is throttling the service (429 Throttled)")


def test_an_application_deleted_in_entra_is_named_with_what_to_do(api, admin, no_faults):
    """Graph answers 404 for the deleted application: the rotation's message names its appId, says it was deleted
    and what to do (restore it within 30 days, or turn rotation off / delete the connection)."""
    entra, cid = rotating(api, admin)
    admin.set_faults([graph_fault(404, "Request_ResourceNotFound", f"Resource '{entra.client_id}' does not exist.",
                                  method="GET", path=r"/applications", times=None)])
    rotated = api.post(f"{BASE}/{APP}/{cid}/rotate", timeout=120)
    admin.clear_faults()
    message = rotated.json()["rotation"]["lastRotationMessage"]
    assert message.startswith(f"Microsoft Graph has no app registration with appId {entra.client_id} (404 "
                              "Request_ResourceNotFound): it was deleted"), message
    assert "deleted applications" in message and "30 days" in message and "rotation off" in message, message


def test_the_credential_limit_is_refused_with_its_remedy(api, admin, no_faults):
    """Graph's 400 TooManyAppPasswords ('You can only add a maximum of 2 passwords') is the application's own state:
    400 rotation-refused with graphCode, saying to remove its unused client secrets."""
    _, cid = rotating(api, admin)
    admin.set_faults([graph_fault(400, "TooManyAppPasswords", "Not allowed to add 3 passwords. You can only add a "
                                  "maximum of 2 passwords.", method="POST", path=r"/addPassword$", times=None)])
    rotated = api.post(f"{BASE}/{APP}/{cid}/rotate", timeout=120)
    admin.clear_faults()
    assert rotated.status_code == 400, (rotated.status_code, rotated.json()["detail"])
    problem = rotated.json()
    assert problem["type"].endswith("rotation-refused") and problem["graphCode"] == "TooManyAppPasswords"
    assert "Remove the application's unused client secrets" in problem["detail"], problem["detail"]
