"""Credential health end to end: a check now through the host, the summary, and the signed webhook the stand-in
receives (the real HTTP path, the real Tables outbox)."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.entra import register_app

pytestmark = pytest.mark.e2e

BASE = "/api/v1/app-connections"
APP = "azure-key-vault"


def _connected(api: httpx.Client, admin: Any, secrets_used: Any, prefix: str) -> tuple[Any, dict[str, Any]]:
    """A new application and a client-secret connection to it (created: 201): the application and the connection."""
    entra = register_app(admin, secrets_used)
    created = api.post(f"{BASE}/{APP}", json={
        "name": f"{prefix}-{uuid.uuid4().hex[:8]}", "method": "client-secret",
        "credentials": entra.client_secret_body(clientSecretKeyId=entra.key_id)})
    assert created.status_code == 201, created.text
    return entra, created.json()["appConnection"]


def test_a_refused_credential_is_failing_summarised_and_notified_once(
        api: httpx.Client, admin: Any, local_env: Any, secrets_used: Any) -> None:
    entra, connection = _connected(api, admin, secrets_used, "health")
    assert connection["health"]["status"] == "healthy"
    assert connection["health"]["checkedAt"]
    admin.clear_webhook_deliveries()
    admin.remove_secret(entra.tenant_id, entra.client_id, entra.key_id)  # someone removed it on the application
    checked = api.post(f"{BASE}/{APP}/{connection['id']}/health")
    assert checked.status_code == 200, checked.text
    health = checked.json()["appConnection"]["health"]
    assert health["status"] == "failing"
    assert "AADSTS" in health["message"]
    assert checked.json()["appConnection"]["status"] == "invalid"
    again = api.post(f"{BASE}/{APP}/{connection['id']}/health")
    assert again.json()["appConnection"]["health"]["status"] == "failing"

    deliveries = [d for d in admin.webhook_deliveries("e2e") if d["json"]["connectionId"] == connection["id"]]
    assert [d["json"]["event"] for d in deliveries] == ["validation-failed"], "one per change of state"
    [delivery] = deliveries
    secret = local_env.settings["NOTIFY_WEBHOOK_SECRET"]
    signed = f'{delivery["headers"]["timestamp"]}.{delivery["body"]}'.encode()
    expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    assert delivery["headers"]["signature"] == expected
    assert delivery["headers"]["idempotencyKey"] == delivery["json"]["id"]
    assert set(delivery["json"]) == {"id", "event", "app", "connectionId", "name", "status", "message", "at"}
    assert entra.client_secret not in delivery["body"]

    summary = api.get(f"{BASE}/health").json()
    assert summary["counts"]["failing"] >= 1
    assert summary["byApp"][APP]["failing"] >= 1
    attention = {item["id"]: item for item in summary["needsAttention"]}
    assert attention[connection["id"]]["health"]["status"] == "failing"
    audit = api.get("/api/v1/audit-logs", params={"connectionId": connection["id"],
                                                  "action": "connection.check-health"}).json()["auditLogs"]
    assert [e["outcome"] for e in audit][:2] == ["200", "started"]


def test_the_summary_shows_a_scoped_reader_only_their_apps(host_url: str, tokens: Any) -> None:
    token = tokens.for_roles("AppConnections.Reader.azure-app-configuration")
    with httpx.Client(base_url=host_url, timeout=60) as client:
        summary = client.get(f"{BASE}/health", headers={"Authorization": f"Bearer {token}"})
    assert summary.status_code == 200, summary.text
    assert set(summary.json()["byApp"]) == {"azure-app-configuration"}
    assert all(item["app"] == "azure-app-configuration" for item in summary.json()["needsAttention"])


def _quoting(tenant: str, quoted: str) -> dict[str, Any]:
    """Entra's token endpoint refusing with an error description that quotes the secret it was sent."""
    description = (f"AADSTS7000215: Invalid client secret provided: '{quoted}'. Trace ID: 1 Correlation ID: 2 "
                   "Timestamp: 2026-01-01 00:00:00Z")
    return {"method": "POST", "path": rf"^/{tenant}/oauth2/v2.0/token$", "status": 401,
            "headers": {"Content-Type": "application/json"},
            "body": {"error": "invalid_client", "error_description": description, "error_codes": [7000215]}}


def test_entra_s_refusal_is_passed_on_without_a_secret_it_quotes(
        api: httpx.Client, admin: Any, secrets_used: Any, log_capture: Any, no_faults: None) -> None:
    """(Review of secret hygiene, 1 and 2.) Entra's words went as they came into the problem, the health message,
    the Connections table and the webhook's notice; and a secret pasted into a create, refused, was in no one's
    list of secrets, so the SDK's log of the refusal kept it. The last test of the suite scans tables and logs."""
    entra, connection = _connected(api, admin, secrets_used, "quoted")
    admin.clear_webhook_deliveries()
    admin.set_faults([_quoting(entra.tenant_id, entra.client_secret)])
    checked = api.post(f"{BASE}/{APP}/{connection['id']}/health")
    validated = api.post(f"{BASE}/{APP}/{connection['id']}/validate")
    read = api.get(f"{BASE}/{APP}/{connection['id']}")
    assert checked.json()["appConnection"]["health"]["status"] == "failing"
    assert "AADSTS7000215: Invalid client secret provided: '[REDACTED]'" in checked.json()["appConnection"][
        "health"]["message"]
    deliveries = [d for d in admin.webhook_deliveries("e2e") if d["json"]["connectionId"] == connection["id"]]
    assert deliveries and "[REDACTED]" in deliveries[0]["json"]["message"]
    for text in (checked.text, validated.text, read.text, *(d["body"] for d in deliveries)):
        assert entra.client_secret not in text

    pasted = register_app(admin, secrets_used)
    admin.set_faults([_quoting(pasted.tenant_id, pasted.client_secret)])
    logged = len(log_capture.texts())
    refused = api.post(f"{BASE}/{APP}", json={
        "name": f"quoted-{uuid.uuid4().hex[:8]}", "method": "client-secret",
        "credentials": pasted.client_secret_body()})
    assert refused.status_code == 400 and refused.json()["aadstsCode"] == "AADSTS7000215", refused.text
    assert pasted.client_secret not in refused.text and "'[REDACTED]'" in refused.json()["detail"]
    new_logs = "\n".join(log_capture.texts()[logged:])
    assert "AADSTS7000215" in new_logs and pasted.client_secret not in new_logs
