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


def test_a_refused_credential_is_failing_summarised_and_notified_once(
        api: httpx.Client, admin: Any, local_env: Any, secrets_used: Any) -> None:
    entra = register_app(admin, secrets_used)
    created = api.post(f"{BASE}/{APP}", json={
        "name": f"health-{uuid.uuid4().hex[:8]}", "method": "client-secret",
        "credentials": entra.client_secret_body(clientSecretKeyId=entra.key_id)})
    assert created.status_code == 201, created.text
    connection = created.json()["appConnection"]
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
