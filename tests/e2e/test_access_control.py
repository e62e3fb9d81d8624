"""Who may do what, through the host with real tokens from the stand-in: every route for every role, allowed and
refused; tokens that are missing, forged or for another API; an audit record for each action; fail closed."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.tokens import Tokens

pytestmark = pytest.mark.e2e

BASE = "/api/v1/app-connections"
KV = "azure-key-vault"
ID = str(uuid.uuid4())
ROTATION = {"rotationInterval": 30, "rotateAtUtc": {"hours": 3, "minutes": 0}}

# (method, path, body, the roles it needs, the app they must be granted for: None = any)
ROUTES: list[tuple[str, str, Any, tuple[str, ...], str | None]] = [
    ("GET", f"{BASE}/options", None, ("Reader",), None),
    ("GET", "/api/v1/openapi.json", None, ("Reader",), None),
    ("POST", f"{BASE}/{KV}", {"name": "x"}, ("Writer",), KV),
    ("POST", f"{BASE}/{KV}", {"name": "x", "isAutoRotationEnabled": True, "rotation": ROTATION},
     ("Writer", "Rotator"), KV),
    ("GET", f"{BASE}/{KV}", None, ("Reader",), KV),
    ("GET", f"{BASE}/{KV}/{ID}", None, ("Reader",), KV),
    ("GET", f"{BASE}/{KV}/connection-name/nothing", None, ("Reader",), KV),
    ("PATCH", f"{BASE}/{KV}/{ID}", {"name": "y"}, ("Writer",), KV),
    ("PATCH", f"{BASE}/{KV}/{ID}", {"rotation": ROTATION}, ("Rotator",), KV),
    ("PATCH", f"{BASE}/{KV}/{ID}", {"name": "y", "isAutoRotationEnabled": False}, ("Writer", "Rotator"), KV),
    # A client secret's Key ID alone says which secret the connection holds (so which one a rotation revokes): Writer.
    ("PATCH", f"{BASE}/{KV}/{ID}", {"credentials": {"clientSecretKeyId": ID}}, ("Writer",), KV),
    ("PATCH", f"{BASE}/{KV}/{ID}", {"credentials": {"clientSecretKeyId": ID}, "rotation": ROTATION},
     ("Writer", "Rotator"), KV),
    ("PATCH", f"{BASE}/{KV}/{ID}", {"credentials": {"clientSecretKeyId": ID, "clientSecret": "s"}}, ("Writer",), KV),
    ("DELETE", f"{BASE}/{KV}/{ID}", None, ("Writer",), KV),
    ("POST", f"{BASE}/{KV}/{ID}/validate", None, ("Writer",), KV),
    ("POST", f"{BASE}/{KV}/{ID}/rotate", None, ("Rotator",), KV),
    ("POST", f"{BASE}/{KV}/{ID}/migrate-to-federated", {"revokeOriginal": False}, ("Rotator",), KV),
    ("GET", f"{BASE}/{KV}/{ID}/rotations", None, ("Reader",), KV),
    ("GET", f"{BASE}/azure-client-secrets/{ID}/clients", None, ("Reader",), "azure-client-secrets"),
    ("GET", f"{BASE}/{KV}/oauth/authorize?name=x", None, ("Writer",), KV),
    ("GET", "/api/v1/audit-logs", None, ("Auditor",), None),
    ("GET", f"/api/v1/audit-logs?app={KV}", None, ("Auditor",), KV),
    ("GET", f"{BASE}/health", None, ("Reader",), None),
    ("POST", f"{BASE}/{KV}/{ID}/health", None, ("Writer",), KV),
]
CALLERS = [
    (), ("AppConnections.Reader",), ("AppConnections.Writer",), ("AppConnections.Rotator",),
    ("AppConnections.Auditor",), ("AppConnections.Admin",), ("AppConnections.Writer", "AppConnections.Rotator"),
    ("AppConnections.Writer.azure-key-vault",), ("AppConnections.Reader.azure-key-vault",),
    ("AppConnections.Admin.azure-client-secrets",), ("AppConnections.Auditor.azure-key-vault",),
]


def _allowed(roles: tuple[str, ...], needed: tuple[str, ...], app: str | None, route: str) -> bool:
    def grants(role: str) -> bool:
        if {"AppConnections.Admin", f"AppConnections.{role}"} & set(roles):
            return True
        scoped = {f"AppConnections.{role}.", "AppConnections.Admin."}
        if app is None:  # options, the document, the audit log: a role for any one app will do (the audit log
            return any(r.startswith(tuple(scoped)) for r in roles)  # answers that app's records only)
        return bool({f"AppConnections.{role}.{app}", f"AppConnections.Admin.{app}"} & set(roles))

    return all(grants(role) for role in needed)


def _call(host_url: str, method: str, path: str, body: Any, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=host_url, timeout=60) as client:
        return client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("roles", CALLERS, ids=lambda roles: "+".join(roles) or "no-role")
def test_each_route_admits_exactly_the_roles_it_needs(host_url: str, tokens: Tokens, roles: tuple[str, ...]) -> None:
    token = tokens.for_roles(*roles)
    wrong = []
    for method, path, body, needed, app in ROUTES:
        response = _call(host_url, method, path, body, token)
        allowed = _allowed(roles, needed, app, path)
        if (allowed and response.status_code in (401, 403)) or (not allowed and response.status_code != 403):
            wrong.append(f"{method} {path} {body}: {response.status_code} {response.text[:200]}")
        if not allowed and response.status_code == 403:
            problem = response.json()
            assert problem["requiredRole"].startswith("AppConnections.")
            assert response.headers["content-type"].startswith("application/problem+json")
    assert wrong == []


def test_a_get_only_path_answers_405_to_any_caller_and_no_problem_echoes_a_long_path(host_url: str, tokens: Tokens,
                                                                                    api: httpx.Client) -> None:
    """(Review M.) ``POST …/options`` by a Writer of one app was a 403 for want of ``AppConnections.Writer.options``
    (and an audit record of app "options"); a 5,000-character app in a path came back whole in the 403."""
    writer = tokens.for_roles("AppConnections.Writer.azure-key-vault")
    for path in (f"{BASE}/options", f"{BASE}/health"):
        refused = _call(host_url, "POST", path, {}, writer)
        assert refused.status_code == 405 and refused.headers["allow"] == "GET", refused.text
    logged = api.get("/api/v1/audit-logs", params={"action": "access.refused"}).json()["auditLogs"]
    assert not [r for r in logged if r["app"] in ("options", "health")]
    long_app = "a" * 5000
    reader = tokens.for_roles("AppConnections.Reader.azure-key-vault")
    answered = _call(host_url, "GET", f"{BASE}/{long_app}/{ID}", None, reader)
    assert answered.status_code == 403 and len(answered.content) < 2000, len(answered.content)


@pytest.mark.parametrize(("method", "path", "body"), [(m, p, b) for m, p, b, _, _ in ROUTES])
def test_no_route_but_the_callback_answers_without_a_token(host_url: str, method: str, path: str, body: Any) -> None:
    response = _call(host_url, method, path, body, None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["type"] == "urn:app-connections:problem:unauthorized"


def test_forged_and_foreign_tokens_are_refused(host_url: str, tokens: Tokens, local_env: Any) -> None:
    genuine = tokens.for_roles("AppConnections.Admin")
    header = json.loads(base64.urlsafe_b64decode(genuine.split(".")[0] + "=="))
    claims = jwt.decode(genuine, options={"verify_signature": False})
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, forger, algorithm="RS256", headers={"kid": header["kid"]})
    unknown_kid = jwt.encode(claims, forger, algorithm="RS256", headers={"kid": "not-a-published-key"})
    unsigned = genuine.rsplit(".", 1)[0].split(".")
    alg_none = ".".join([base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode().rstrip("="),
                         unsigned[1], ""])
    tampered = ".".join([unsigned[0], base64.urlsafe_b64encode(json.dumps(
        {**claims, "roles": ["AppConnections.Admin", "x"]}).encode()).decode().rstrip("="), genuine.rsplit(".")[-1]])
    for token in (forged, unknown_kid, alg_none, tampered, "not.a.jwt"):
        response = _call(host_url, "GET", f"{BASE}/options", None, token)
        assert response.status_code == 401, token[:40]
        assert response.headers["www-authenticate"].startswith("Bearer")
    # A genuine token of the tenant, but for Key Vault rather than this API.
    standin = local_env.standin
    assert standin is not None
    with httpx.Client(verify=str(standin.ca_path)) as http:
        other = http.post(f"{standin.url}/{tokens.access.tenant_id}/oauth2/v2.0/token", data={
            "grant_type": "client_credentials", "client_id": local_env.identity.client_id,
            "client_secret": local_env.identity.client_secret, "scope": "https://vault.azure.net/.default"})
    assert other.status_code == 200, other.text
    response = _call(host_url, "GET", f"{BASE}/options", None, other.json()["access_token"])
    assert response.status_code == 401
    assert "audience" in response.json()["detail"]


def test_a_person_signed_in_with_a_role_is_admitted_by_it(host_url: str, tokens: Tokens) -> None:
    person = tokens.person(f"reader-{uuid.uuid4().hex[:6]}@contoso.example", "AppConnections.Reader")
    token = person["access_token"]
    assert _call(host_url, "GET", f"{BASE}/{KV}", None, token).status_code == 200
    assert _call(host_url, "POST", f"{BASE}/{KV}/{ID}/validate", None, token).status_code == 403


def test_each_action_is_audited_with_who_did_it_and_what_came_of_it(api: httpx.Client, tokens: Tokens) -> None:
    response = api.patch(f"{BASE}/{KV}/{ID}", json={"name": "audited"})
    assert response.status_code == 404
    records = api.get("/api/v1/audit-logs", params={"connectionId": ID, "action": "connection.update"}).json()
    entries = records["auditLogs"]
    assert [e["outcome"] for e in entries][:2] == ["404", "started"]
    for entry in entries[:2]:
        assert entry["actor"]["type"] == "app"
        assert entry["actor"]["role"] == "AppConnections.Admin"
        assert entry["actor"]["id"]
        assert entry["app"] == KV
        assert entry["requestId"]
    # the started record says what the change asks for (audit review 3); the outcome, the request it answers
    assert [e["detail"] for e in entries[:2]] == [f"PATCH {BASE}/{KV}/{ID}", f"PATCH {BASE}/{KV}/{ID} changes=name"]
    auditor = tokens.for_roles("AppConnections.Auditor")
    reader = tokens.for_roles("AppConnections.Reader")
    assert api.get("/api/v1/audit-logs", headers={"Authorization": f"Bearer {auditor}"}).status_code == 200
    assert api.get("/api/v1/audit-logs", headers={"Authorization": f"Bearer {reader}"}).status_code == 403


def test_a_connection_s_records_are_found_by_its_id_however_the_request_or_the_search_spells_it(
        api: httpx.Client) -> None:
    """A record names the connection lower-cased, as ids are written, whatever spelling its request's path used;
    the search takes a GUID in any case the same way (it found nothing for an upper-case one)."""
    connection = str(uuid.uuid4())
    assert api.patch(f"{BASE}/{KV}/{connection.upper()}", json={"name": "spelt"}).status_code == 404
    for spelling in (connection, connection.upper()):
        found = api.get("/api/v1/audit-logs", params={"connectionId": spelling, "action": "connection.update"})
        assert found.status_code == 200, found.text
        assert [(r["connectionId"], r["outcome"]) for r in found.json()["auditLogs"]] == [
            (connection, "404"), (connection, "started")]


def test_an_auditor_of_one_app_reads_that_app_s_records_and_no_other(api: httpx.Client, tokens: Tokens) -> None:
    """A role limited to one app is that app's: its Auditor (or Admin) searches the app's records, never another
    app's, nor those of no app (a sign-in, an access refused without an app)."""
    other = f"{BASE}/azure-app-configuration/{ID}"
    assert api.patch(f"{BASE}/{KV}/{ID}", json={"name": "kv-audited"}).status_code == 404
    assert api.patch(other, json={"name": "appconfig-audited"}).status_code == 404
    everything = api.get("/api/v1/audit-logs", params={"connectionId": ID, "limit": 1000}).json()["auditLogs"]
    assert {KV, "azure-app-configuration"} <= {r["app"] for r in everything}
    for role in ("AppConnections.Auditor.azure-key-vault", "AppConnections.Admin.azure-key-vault"):
        headers = {"Authorization": f"Bearer {tokens.for_roles(role)}"}
        mine = api.get("/api/v1/audit-logs", params={"connectionId": ID, "limit": 1000}, headers=headers)
        assert mine.status_code == 200, mine.text
        assert mine.json()["auditLogs"] and {r["app"] for r in mine.json()["auditLogs"]} == {KV}
        unfiltered = api.get("/api/v1/audit-logs", params={"limit": 1000}, headers=headers).json()["auditLogs"]
        assert unfiltered and {r["app"] for r in unfiltered} == {KV}
        refused = api.get("/api/v1/audit-logs", params={"app": "azure-app-configuration"}, headers=headers)
        assert refused.status_code == 403 and refused.json()["requiredRole"] == "AppConnections.Auditor"
        named = api.get("/api/v1/audit-logs", params={"app": KV, "connectionId": ID}, headers=headers)
        assert {r["app"] for r in named.json()["auditLogs"]} == {KV}
    unknown = api.get("/api/v1/audit-logs", params={"app": "nothing"})
    assert unknown.status_code == 400 and unknown.json()["errors"][0]["pointer"] == "/app"


def test_an_authenticated_caller_refused_for_want_of_a_role_is_audited(api: httpx.Client, tokens: Tokens) -> None:
    reader = tokens.for_roles("AppConnections.Reader.azure-key-vault")
    target = f"{BASE}/azure-app-configuration/{ID}"
    refused = api.delete(target, headers={"Authorization": f"Bearer {reader}"})
    assert refused.status_code == 403
    records = api.get("/api/v1/audit-logs", params={"action": "access.refused", "connectionId": ID}).json()
    [entry] = [r for r in records["auditLogs"] if r["detail"].startswith(f"DELETE {target}")][:1]
    assert (entry["outcome"], entry["app"], entry["actor"]["type"]) == ("403", "azure-app-configuration", "app")
    assert "Writer" in entry["detail"]
    # without a token there is nobody to record (and anyone could fill the log): a 401, no record
    assert httpx.delete(f"{str(api.base_url).rstrip('/')}{target}").status_code == 401


async def test_an_action_whose_audit_record_cannot_be_written_does_not_run(api: httpx.Client, clients: Any) -> None:
    """Fail closed: with the audit table gone (a real Table Storage failure), a delete is refused with a 503 and
    the connection is still there."""
    from shared.store.audit import AUDIT_TABLE

    name = f"{clients.settings.table_prefix}{AUDIT_TABLE}"
    service = clients.table_service()
    await service.delete_table(name)
    try:
        response = await asyncio.to_thread(api.delete, f"{BASE}/{KV}/{ID}")
        assert response.status_code == 503, response.text
        assert response.json()["type"] == "urn:app-connections:problem:audit-unavailable"
    finally:
        await service.create_table(name)


NO_BODY = ("connection.rotate", "connection.migrate-to-federated")
AUDITED = {
    ("POST", f"{BASE}/{KV}"): "connection.create",
    ("PATCH", f"{BASE}/{KV}/{ID}"): "connection.update",
    ("DELETE", f"{BASE}/{KV}/{ID}"): "connection.delete",
    ("POST", f"{BASE}/{KV}/{ID}/validate"): "connection.validate",
    ("POST", f"{BASE}/{KV}/{ID}/rotate"): "connection.rotate",
    ("POST", f"{BASE}/{KV}/{ID}/migrate-to-federated"): "connection.migrate-to-federated",
    ("GET", f"{BASE}/azure-client-secrets/{ID}/clients"): "connection.list-clients",
    ("GET", f"{BASE}/{KV}/oauth/authorize?name=x"): "connection.authorize",
    ("POST", f"{BASE}/{KV}/{ID}/health"): "connection.check-health",
}


def test_every_action_that_changes_state_or_touches_a_credential_leaves_two_records(
        host_url: str, tokens: Tokens) -> None:
    token = tokens.for_roles("AppConnections.Writer", "AppConnections.Rotator", "AppConnections.Reader")
    auditor = {"Authorization": f"Bearer {tokens.for_roles('AppConnections.Auditor')}"}
    for (method, path), action in AUDITED.items():
        request_id = uuid.uuid4().hex
        body = {"name": "x"} if method in ("POST", "PATCH") and action not in NO_BODY else None
        with httpx.Client(base_url=host_url, timeout=60) as client:
            answer = client.request(method, path, json=body, headers={"Authorization": f"Bearer {token}",
                                                                       "X-Request-Id": request_id,
                                                                       "X-Forwarded-For": "6.6.6.6, 203.0.113.9:51234",
                                                                       "User-Agent": "audit-test"})
            found = client.get("/api/v1/audit-logs", params={"action": action}, headers=auditor).json()
        mine = [e for e in found["auditLogs"] if e["requestId"] == request_id]
        assert [e["outcome"] for e in mine] == [str(answer.status_code), "started"], (action, found)
        for entry in mine:
            assert entry["clientIp"] == "203.0.113.9"
            assert entry["userAgent"] == "audit-test"
            assert entry["actor"]["type"] == "app"
            assert "AppConnections." in entry["actor"]["role"]
