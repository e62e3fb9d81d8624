"""App connections over HTTP, through the local host, the real Azure SDKs, Azurite and the stand-in."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from shared import wiring
from shared.store.tables import ConnectionsTable
from shared.store.vault import SecretVault
from tests.answer_dropper import answers_lost
from tests.e2e.entra import add_secret, certificate_body, register_app

pytestmark = pytest.mark.e2e

APPS = ["azure-key-vault", "azure-app-configuration", "azure-client-secrets"]
BASE = "/api/v1/app-connections"


def unique_name(prefix: str = "conn") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create(api, app: str, method: str, credentials: dict, name: str | None = None, **extra):
    body = {"name": name or unique_name(), "method": method, "credentials": credentials, **extra}
    return api.post(f"{BASE}/{app}", json=body)


def assert_problem(response, status: int, pointer: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status
    assert problem["type"].startswith("urn:app-connections:problem:")
    if pointer is not None:
        assert pointer in [e["pointer"] for e in problem.get("errors", [])], problem
    return problem


# -- options -----------------------------------------------------------------------------------
def test_options_list_every_app_with_methods_permissions_and_redirect_uri(api):
    response = api.get(f"{BASE}/options")
    assert response.status_code == 200
    options = {o["app"]: o for o in response.json()["appConnectionOptions"]}
    assert sorted(options) == sorted(APPS)
    for option in options.values():
        assert option["methods"] == ["oauth", "client-secret", "certificate", "federated"]
        assert option["redirectUri"].endswith("/organization/app-connections/azure/oauth/callback")
        assert option["oauthConfigured"] is True  # the local environment registers the instance OAuth apps
    assert options["azure-key-vault"]["scope"] == "https://vault.azure.net/.default"


# -- the whole life of a connection, per app and method ------------------------------------------
@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize("method", ["client-secret", "certificate"])
def test_create_read_update_validate_delete(api, admin, secrets_used, app, method):
    entra = register_app(admin, secrets_used)
    if method == "client-secret":
        credentials = entra.client_secret_body()
    else:
        credentials = certificate_body(admin, secrets_used, entra)
    name = unique_name(app)

    created = create(api, app, method, credentials, name=name, description="first")
    assert created.status_code == 201, created.text
    connection = created.json()["appConnection"]
    assert connection["credentials"] == {"tenantId": entra.tenant_id, "clientId": entra.client_id}
    assert connection["app"] == app and connection["method"] == method and connection["version"] == 1
    assert connection["status"] == "active" and connection["lastValidatedAt"]
    assert created.headers["location"] == f"{BASE}/{app}/{connection['id']}"
    for secret in credentials.values():
        if len(secret) > 40:
            assert secret not in created.text
    cid = connection["id"]

    assert api.get(f"{BASE}/{app}/{cid}").json()["appConnection"] == connection
    assert api.get(f"{BASE}/{app}/connection-name/{name}").json()["appConnection"]["id"] == cid
    assert api.get(f"{BASE}/{app}/connection-name/{name.upper()}").json()["appConnection"]["id"] == cid
    listed = api.get(f"{BASE}/{app}", params={"limit": 1000}).json()
    assert cid in [c["id"] for c in listed["appConnections"]]

    vault = admin.vault_secrets()[f"appconn-{cid}"]
    assert len(vault["versions"]) == 1
    (version,) = vault["versions"]
    assert version["tags"] == {"connectionId": cid, "app": app, "method": method}
    assert version["contentType"] == "application/vnd.app-connections.credentials+json"  # DESIGN: content type
    assert json.loads(version["value"]) == {k: v for k, v in credentials.items() if k not in ("tenantId", "clientId")}

    renamed = api.patch(f"{BASE}/{app}/{cid}", json={"name": name + "-b", "description": None})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["appConnection"]["name"] == name + "-b"
    assert renamed.json()["appConnection"]["description"] is None
    assert renamed.json()["appConnection"]["version"] == 2
    assert api.get(f"{BASE}/{app}/connection-name/{name}").status_code == 404
    # The old name is free again.
    reuse = create(api, app, method, credentials, name=name)
    assert reuse.status_code == 201, reuse.text
    assert api.delete(f"{BASE}/{app}/{reuse.json()['appConnection']['id']}").status_code == 200

    if method == "client-secret":
        fresh = add_secret(admin, secrets_used, entra)
        new_credentials = entra.client_secret_body(clientSecret=fresh["secretText"])
    else:
        new_credentials = certificate_body(admin, secrets_used, entra, key_type="rsa", key_format="pkcs1")
    changed = api.patch(f"{BASE}/{app}/{cid}", json={"credentials": new_credentials})
    assert changed.status_code == 200, changed.text
    assert changed.json()["appConnection"]["version"] == 3
    assert len(admin.vault_secrets()[f"appconn-{cid}"]["versions"]) == 2

    validated = api.post(f"{BASE}/{app}/{cid}/validate")
    assert validated.status_code == 200, validated.text
    assert validated.json()["appConnection"]["status"] == "active"

    deleted = api.delete(f"{BASE}/{app}/{cid}")
    assert deleted.status_code == 200
    assert_problem(api.get(f"{BASE}/{app}/{cid}"), 404)
    assert_problem(api.get(f"{BASE}/{app}/connection-name/{name}-b"), 404)
    assert admin.vault_secrets()[f"appconn-{cid}"]["deleted"] is True


def test_an_ec_certificate_is_refused_with_the_reason_and_nothing_stored(api, admin, secrets_used):
    entra = register_app(admin, secrets_used)
    credentials = certificate_body(admin, secrets_used, entra, key_type="ec")  # on the application, but EC
    vault_before = set(admin.vault_secrets())
    admin.clear_requests()
    response = create(api, "azure-key-vault", "certificate", credentials)
    problem = assert_problem(response, 400)
    assert "Entra ID accepts RSA certificates only" in problem["errors"][0]["detail"]
    assert problem["errors"][0]["pointer"] == "/credentials/certificateBody"
    assert admin.token_requests() == []  # refused before Entra is asked
    assert set(admin.vault_secrets()) == vault_before


# -- Entra refusals: a clear 400 with the AADSTS code, nothing stored -----------------------------
def _assert_nothing_stored(api, admin, app: str, name: str, vault_before: set[str]) -> None:
    assert api.get(f"{BASE}/{app}/connection-name/{name}").status_code == 404
    assert set(admin.vault_secrets()) == vault_before


@pytest.mark.parametrize(
    ("case", "code"),
    [("wrong-secret", "AADSTS7000215"), ("unknown-app", "AADSTS700016"), ("unknown-tenant", "AADSTS90002"),
     ("expired-secret", "AADSTS7000222"), ("unregistered-certificate", "AADSTS700027")],
)
def test_refused_credentials_give_the_aadsts_code_and_store_nothing(api, admin, secrets_used, case, code):
    entra = register_app(admin, secrets_used)
    method = "client-secret"
    if case == "wrong-secret":
        credentials = entra.client_secret_body(clientSecret="not-the-secret-" + uuid.uuid4().hex)
        secrets_used.add(credentials["clientSecret"])
    elif case == "unknown-app":
        credentials = entra.client_secret_body(clientId=str(uuid.uuid4()))
    elif case == "unknown-tenant":
        credentials = entra.client_secret_body(tenantId=str(uuid.uuid4()))
    elif case == "expired-secret":
        expired = add_secret(admin, secrets_used, entra, expires_in=timedelta(seconds=-60))
        credentials = entra.client_secret_body(clientSecret=expired["secretText"])
    else:
        method = "certificate"
        credentials = certificate_body(admin, secrets_used, entra, register=False)
    name = unique_name()
    before = set(admin.vault_secrets())
    problem = assert_problem(create(api, "azure-app-configuration", method, credentials, name=name), 400)
    assert problem["aadstsCode"] == code
    assert problem["detail"].startswith(code + ": ")
    assert "Trace ID" not in problem["detail"]
    for value in credentials.values():
        if len(value) > 40:
            assert value not in json.dumps(problem)
    _assert_nothing_stored(api, admin, "azure-app-configuration", name, before)


def test_entra_unreachable_gives_502_and_stores_nothing(api, admin, secrets_used):
    entra = register_app(admin, secrets_used)
    name = unique_name()
    before = set(admin.vault_secrets())
    admin.set_faults([{"method": "POST", "path": r"/oauth2/v2\.0/token$", "action": "drop"}])
    try:
        response = create(api, "azure-key-vault", "client-secret", entra.client_secret_body(), name=name)
    finally:
        admin.set_faults([])
    assert_problem(response, 502)
    _assert_nothing_stored(api, admin, "azure-key-vault", name, before)


# Entra's own failures: their bodies carry an AADSTS code too, but they say nothing about the credential.
ENTRA_DOWN = [
    (503, "temporarily_unavailable", "AADSTS90033: A transient error has occurred. Please try again."),
    (500, "server_error", "AADSTS90100: An internal error occurred."),
    (429, "temporarily_unavailable", "AADSTS50196: The server terminated an operation because it encountered a "
                                     "client request loop."),
]


@pytest.mark.parametrize(("status", "error", "description"), ENTRA_DOWN, ids=["503", "500", "429"])
def test_entra_failing_or_throttling_is_an_upstream_failure_not_a_refused_credential(api, admin, secrets_used, status,
                                                                                    error, description):
    """Failing (500), a 502; still busy past the retries (429, 503), a 503 with Retry-After (review Z2); never a
    credential refused, and nothing marked invalid."""
    entra = register_app(admin, secrets_used)
    cid = create(api, "azure-key-vault", "client-secret", entra.client_secret_body()).json()["appConnection"]["id"]
    name = unique_name()
    before = set(admin.vault_secrets())
    admin.set_faults([{"method": "POST", "path": r"/oauth2/v2\.0/token$", "status": status,
                       "headers": {"Retry-After": "0.01"},  # retried at once, in vain
                       "body": {"error": error, "error_description": description, "error_codes": [0]}}])
    try:
        created = create(api, "azure-key-vault", "client-secret", entra.client_secret_body(), name=name)
        validated = api.post(f"{BASE}/azure-key-vault/{cid}/validate")
    finally:
        admin.set_faults([])
    answered = 502 if status == 500 else 503
    problem = assert_problem(created, answered)
    assert "aadstsCode" not in problem and "not checked" in problem["detail"]
    assert ("retry-after" in created.headers) is (answered == 503)
    _assert_nothing_stored(api, admin, "azure-key-vault", name, before)
    assert_problem(validated, answered)
    shown = api.get(f"{BASE}/azure-key-vault/{cid}").json()["appConnection"]
    assert (shown["status"], shown["statusMessage"]) == ("active", None)  # not marked invalid for Entra's outage


def test_a_credential_change_that_entra_refuses_leaves_the_connection_as_it_was(api, admin, secrets_used):
    entra = register_app(admin, secrets_used)
    cid = create(api, "azure-key-vault", "client-secret", entra.client_secret_body()).json()["appConnection"]["id"]
    bad = entra.client_secret_body(clientSecret="wrong-" + uuid.uuid4().hex)
    secrets_used.add(bad["clientSecret"])
    assert_problem(api.patch(f"{BASE}/azure-key-vault/{cid}", json={"credentials": bad}), 400)
    after = api.get(f"{BASE}/azure-key-vault/{cid}").json()["appConnection"]
    assert after["version"] == 1
    assert len(admin.vault_secrets()[f"appconn-{cid}"]["versions"]) == 1


def test_validate_reports_a_secret_revoked_in_entra(api, admin, secrets_used):
    entra = register_app(admin, secrets_used)
    cid = create(api, "azure-client-secrets", "client-secret", entra.client_secret_body()).json()["appConnection"]["id"]
    admin.remove_secret(entra.tenant_id, entra.client_id, entra.key_id)
    problem = assert_problem(api.post(f"{BASE}/azure-client-secrets/{cid}/validate"), 400)
    assert problem["aadstsCode"] == "AADSTS7000215"
    shown = api.get(f"{BASE}/azure-client-secrets/{cid}").json()["appConnection"]
    assert shown["status"] == "invalid" and "AADSTS7000215" in shown["statusMessage"]


# -- bad input: a clear problem, never a 500 -------------------------------------------------------
GUID = "00000000-0000-0000-0000-000000000001"


@pytest.mark.parametrize(
    ("body", "status", "pointer"),
    [
        (b"{not json", 400, None),
        (b"[]", 400, ""),
        (b'{"name": "a", "name": "b"}', 400, ""),
        (json.dumps({"method": "client-secret", "credentials": {}}).encode(), 400, "/name"),
        (json.dumps({"name": "Bad Name", "method": "client-secret", "credentials": {}}).encode(), 400, "/name"),
        (json.dumps({"name": "a", "method": "password", "credentials": {}}).encode(), 400, "/method"),
        (json.dumps({"name": "a", "method": "oauth", "credentials": {}}).encode(), 400, "/method"),
        (json.dumps({"name": "a", "method": "client-secret", "credentials": {}, "extra": 1}).encode(), 400, "/extra"),
        (json.dumps({"name": "a", "method": "client-secret",
                     "credentials": {"tenantId": "x", "clientId": GUID, "clientSecret": "s"}}).encode(),
         400, "/credentials/tenantId"),
        (json.dumps({"name": "a", "method": "client-secret",
                     "credentials": {"tenantId": GUID, "clientId": GUID}}).encode(), 400, "/credentials/clientSecret"),
        (json.dumps({"name": "a", "method": "certificate",
                     "credentials": {"tenantId": GUID, "clientId": GUID, "certificateBody": "garbage",
                                     "privateKey": "garbage"}}).encode(), 400, "/credentials/certificateBody"),
        (json.dumps({"name": "a", "description": "x" * 70_000, "method": "client-secret",
                     "credentials": {}}).encode(), 413, None),
    ],
    ids=["malformed", "array", "duplicate-key", "missing-name", "bad-name", "unknown-method", "oauth-by-post",
         "unknown-field", "bad-guid", "missing-secret", "garbage-pem", "too-large"],
)
def test_bad_create_bodies_get_problems(api, body, status, pointer):
    response = api.post(f"{BASE}/azure-key-vault", content=body, headers={"content-type": "application/json"})
    assert_problem(response, status, pointer)


def test_a_secret_that_is_not_unicode_text_is_a_400_before_anything_is_sent(api, admin, secrets_used):
    entra = register_app(admin, secrets_used)
    body = json.dumps({"name": unique_name(), "method": "client-secret",
                       "credentials": entra.client_secret_body(clientSecret="abc\ud800")}).encode()
    problem = assert_problem(api.post(f"{BASE}/azure-key-vault", content=body,
                                      headers={"content-type": "application/json"}), 400)
    assert "lone surrogate" in problem["detail"]  # the body's own problem: nothing was read or sent


def test_wrong_content_type_is_415(api):
    assert_problem(api.post(f"{BASE}/azure-key-vault", content=b"name=a", headers={"content-type": "text/plain"}), 415)


def test_a_key_that_does_not_match_its_certificate_is_refused(api, admin, secrets_used):
    entra = register_app(admin, secrets_used)
    first = certificate_body(admin, secrets_used, entra, register=False)
    second = certificate_body(admin, secrets_used, entra, register=False)
    credentials = {**first, "privateKey": second["privateKey"]}
    assert_problem(create(api, "azure-key-vault", "certificate", credentials), 400, "/credentials/privateKey")


def test_an_expired_certificate_is_refused(api, admin, secrets_used):
    entra = register_app(admin, secrets_used)
    now = datetime.now(UTC)
    credentials = certificate_body(admin, secrets_used, entra, not_before=now - timedelta(days=30),
                                   not_after=now - timedelta(days=1))
    assert_problem(create(api, "azure-key-vault", "certificate", credentials), 400, "/credentials/certificateBody")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", f"{BASE}/azure-nothing"), ("POST", f"{BASE}/azure-nothing"), ("GET", f"{BASE}/azure-key-vault/{GUID}"),
     ("PATCH", f"{BASE}/azure-key-vault/{GUID}"), ("DELETE", f"{BASE}/azure-key-vault/{GUID}"),
     ("POST", f"{BASE}/azure-key-vault/{GUID}/validate"),
     ("GET", f"{BASE}/azure-key-vault/connection-name/nobody"), ("GET", f"{BASE}/azure-key-vault/~name~x")],
)
def test_unknown_apps_and_ids_are_404(api, method, path):
    response = api.request(method, path, json={"description": "x"} if method in ("POST", "PATCH") else None)
    assert_problem(response, 404)


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "abc"}, {"continuationToken": "%%%"}])
def test_bad_list_queries_are_400(api, query):
    assert_problem(api.get(f"{BASE}/azure-key-vault", params=query), 400)


@pytest.mark.parametrize(("method", "path", "query", "pointers"), [
    ("GET", f"{BASE}/azure-key-vault", {"limt": "5"}, ["/limt"]),  # misspelt: not silently the default page
    ("GET", f"{BASE}/options", {"app": "azure-key-vault"}, ["/app"]),
    ("GET", "/api/v1/audit-logs", {"limit": "5", "user": "x", "since": "y"}, ["/since", "/user"]),
    ("GET", f"{BASE}/azure-key-vault/{GUID}/rotations", {"force": "true"}, ["/force"]),
])
def test_a_query_parameter_a_route_does_not_read_is_400(api, method, path, query, pointers):
    problem = assert_problem(api.request(method, path, params=query), 400)
    assert [e["pointer"] for e in problem["errors"]] == pointers


def test_the_function_key_may_travel_in_any_query(api):
    assert api.get(f"{BASE}/options", params={"code": "a-function-key"}).status_code == 200


def test_list_is_paged_with_a_continuation_token(api, admin, secrets_used):
    entra = register_app(admin, secrets_used)
    app = "azure-app-configuration"
    made = {create(api, app, "client-secret", entra.client_secret_body()).json()["appConnection"]["id"]
            for _ in range(5)}
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        params = {"limit": 2, **({"continuationToken": token} if token else {})}
        page = api.get(f"{BASE}/{app}", params=params).json()
        assert len(page["appConnections"]) <= 2
        seen += [c["id"] for c in page["appConnections"]]
        pages += 1
        token = page["continuationToken"]
        if not token:
            break
    assert made <= set(seen) and len(seen) == len(set(seen)) and pages >= 3
    # (Review FB 12.) A token is its list's: another app's list refuses it, on the parameter, not an empty last page
    first = api.get(f"{BASE}/{app}", params={"limit": 2}).json()["continuationToken"]
    problem = assert_problem(api.get(f"{BASE}/azure-key-vault", params={"limit": 2, "continuationToken": first}), 400)
    assert [e["pointer"] for e in problem["errors"]] == ["/continuationToken"]
    some = next(iter(made))
    problem = assert_problem(api.get(f"{BASE}/{app}/{some}/rotations", params={"continuationToken": first}), 400)
    assert [e["pointer"] for e in problem["errors"]] == ["/continuationToken"]


def test_a_limit_too_large_for_any_page_is_out_of_range_not_a_non_integer(api):
    """(Review FB 10.)"""
    problem = assert_problem(api.get(f"{BASE}/azure-key-vault", params={"limit": "10000000000"}), 400)
    assert problem["errors"] == [{"pointer": "/limit", "detail": "must be between 1 and 1000"}]


# -- races ------------------------------------------------------------------------------------------
def test_names_are_unique_per_app_even_when_created_at_once(api, admin, secrets_used):
    entra = register_app(admin, secrets_used)
    name = unique_name("race")
    before = {n for n, s in admin.vault_secrets().items() if not s["deleted"]}
    def attempt(_: int) -> int:
        return create(api, "azure-key-vault", "client-secret", entra.client_secret_body(), name=name).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(attempt, range(8)))
    assert statuses.count(201) == 1 and statuses.count(409) == 7, statuses
    # The same name in another app is fine.
    other = create(api, "azure-app-configuration", "client-secret", entra.client_secret_body(), name=name)
    assert other.status_code == 201
    # The losers left no secret behind: the only new live secrets are the two connections'.
    winner = api.get(f"{BASE}/azure-key-vault/connection-name/{name}").json()["appConnection"]
    live = {n for n, s in admin.vault_secrets().items() if not s["deleted"]}
    assert live - before == {f"appconn-{winner['id']}", f"appconn-{other.json()['appConnection']['id']}"}


def test_concurrent_patches_never_lose_an_update(api, admin, secrets_used):
    entra = register_app(admin, secrets_used)
    cid = create(api, "azure-key-vault", "client-secret", entra.client_secret_body()).json()["appConnection"]["id"]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(
            lambda i: api.patch(f"{BASE}/azure-key-vault/{cid}", json={"description": f"writer {i}"}), range(8)))
    ok = [r for r in responses if r.status_code == 200]
    assert {r.status_code for r in responses} <= {200, 409}
    assert ok
    final = api.get(f"{BASE}/azure-key-vault/{cid}").json()["appConnection"]
    assert final["version"] == 1 + len(ok)
    assert final["description"] in {r.json()["appConnection"]["description"] for r in ok}


# -- a write whose answer was lost ------------------------------------------------------------------
@pytest.mark.parametrize(("method", "renamed"), [("client-secret", False), ("certificate", True)])
async def test_new_credentials_whose_table_write_lost_its_answer_keep_the_secret_version_they_point_at(
        api, admin, secrets_used, method, renamed):
    """Table Storage applied the write of new credentials and the connection dropped before its answer. Alone,
    it is a PUT, which the Tables SDK sends again and which then meets its own ETag; with a new name, a `$batch`
    POST, which the SDK does not send again. Either way the change is made and answered, and its Key Vault version
    stays enabled: the connection can read the secret it points at."""
    entra = register_app(admin, secrets_used)
    if method == "client-secret":
        given = entra.client_secret_body()
        new = entra.client_secret_body(clientSecret=add_secret(admin, secrets_used, entra)["secretText"])
    else:
        given = certificate_body(admin, secrets_used, entra)
        new = certificate_body(admin, secrets_used, entra)
    cid = create(api, "azure-key-vault", method, given).json()["appConnection"]["id"]

    def drops(verb: str, target: str, body: bytes) -> bool:  # the write of the connection's record
        return (verb == "PUT" and cid in target) or (verb == "POST" and "$batch" in target and cid.encode() in body)

    async with answers_lost(drops) as (dropper, proxied):
        saved = await wiring.services(wiring.adapters(proxied)).connections.update(
            "azure-key-vault", cid, {"credentials": new, **({"name": unique_name()} if renamed else {})})
        assert [name.split(" ")[0] for name in dropper.dropped] == ["POST" if renamed else "PUT"]
        stored = await ConnectionsTable(proxied).get("azure-key-vault", cid)
        assert stored.secret_version == saved.secret_version
        material = await SecretVault(proxied).get(stored.secret_name, stored.secret_version)
        assert material == {k: v for k, v in new.items() if k not in ("tenantId", "clientId")}
    validated = api.post(f"{BASE}/azure-key-vault/{cid}/validate")
    assert validated.status_code == 200, validated.text


async def test_a_create_whose_table_write_lost_its_answer_is_created_with_its_secret(api, admin, secrets_used):
    """The create's `$batch` (the record and its name) applied, its answer lost: the connection is answered created,
    and the secret it points at is still in Key Vault (it was deleted, and the name taken by a broken connection)."""
    entra = register_app(admin, secrets_used)
    name = unique_name()

    def drops(verb: str, target: str, body: bytes) -> bool:
        return verb == "POST" and "$batch" in target and name.encode() in body

    async with answers_lost(drops) as (dropper, proxied):
        created = await wiring.services(wiring.adapters(proxied)).connections.create(
            "azure-key-vault", {"name": name, "method": "client-secret", "credentials": entra.client_secret_body()})
        assert len(dropper.dropped) == 1
        material = await SecretVault(proxied).get(created.secret_name, created.secret_version)
        assert material == {"clientSecret": entra.client_secret}
    read = api.get(f"{BASE}/azure-key-vault/{created.id}")
    assert read.status_code == 200 and read.json()["appConnection"]["name"] == name
    validated = api.post(f"{BASE}/azure-key-vault/{created.id}/validate")
    assert validated.status_code == 200, validated.text


async def test_a_delete_whose_last_table_write_lost_its_answer_is_answered_deleted(api, admin, secrets_used):
    """DELETE's last write, the record and its name (a `$batch` POST, not sent again), applied with its answer
    lost: answered deleted, with what it removed (it was a 502, then a 404 to the DELETE sent again)."""
    entra = register_app(admin, secrets_used)
    cid = create(api, "azure-key-vault", "client-secret", entra.client_secret_body()).json()["appConnection"]["id"]

    def drops(verb: str, target: str, body: bytes) -> bool:
        return verb == "POST" and "$batch" in target and cid.encode() in body and b"DELETE " in body

    async with answers_lost(drops) as (dropper, proxied):
        deleted = await wiring.services(wiring.adapters(proxied)).connections.delete("azure-key-vault", cid)
        assert len(dropper.dropped) == 1 and deleted.record.id == cid
    assert api.get(f"{BASE}/azure-key-vault/{cid}").status_code == 404


async def test_a_connection_left_being_deleted_answers_so_and_says_no_retry(api, admin, secrets_used, clients):
    """(Review FB 1.) It answered rotation-in-progress with ``Retry-After: 1``: no rotation ran, and no retry could
    succeed. Only another DELETE ends the state."""
    entra = register_app(admin, secrets_used)
    cid = create(api, "azure-key-vault", "client-secret", entra.client_secret_body()).json()["appConnection"]["id"]
    table = ConnectionsTable(clients)
    await table.update((await table.get("azure-key-vault", cid)).evolve(status="deleting"))  # a DELETE stopped
    for method, suffix in (("POST", "/validate"), ("POST", "/health"), ("POST", "/rotate"), ("PATCH", "")):
        response = api.request(method, f"{BASE}/azure-key-vault/{cid}{suffix}",
                               json={"description": "x"} if method == "PATCH" else None)
        problem = assert_problem(response, 409)
        assert problem["type"] == "urn:app-connections:problem:connection-being-deleted", (method, suffix)
        assert problem["connectionStatus"] == "deleting" and "retry-after" not in response.headers
    assert api.delete(f"{BASE}/azure-key-vault/{cid}").status_code == 200


def test_if_match_on_a_rotation_is_evaluated_before_it_runs(api, admin, secrets_used):
    """RFC 9110 13.1.1: a server that receives If-Match evaluates it before performing the method. A rotate (and a
    migrate, a validate, a health check) with an If-Match naming a version the connection does not have answers 412
    with the current ETag: nothing is rotated (no history entry, no secret revoked); with the current ETag it runs."""
    from tests.e2e.entra import register_rotatable_app

    entra = register_rotatable_app(admin, secrets_used)
    created = create(api, "azure-key-vault", "client-secret", entra.client_secret_body(), isAutoRotationEnabled=True,
                     rotation={"rotationInterval": 30, "rotateAtUtc": {"hours": 3, "minutes": 0}})
    assert created.status_code == 201, created.text
    item = f"{BASE}/azure-key-vault/{created.json()['appConnection']['id']}"
    current = api.get(item)
    before = api.get(f"{item}/rotations").json()["rotations"]
    for action in ("rotate", "migrate-to-federated", "validate", "health"):
        refused = api.post(f"{item}/{action}", headers={"If-Match": '"999"'})
        problem = assert_problem(refused, 412)
        assert problem["type"].endswith(":precondition-failed") and refused.headers["etag"] == current.headers["etag"]
        assert problem["version"] == current.json()["appConnection"]["version"]
    assert api.get(f"{item}/rotations").json()["rotations"] == before
    assert api.get(item).json() == current.json()
    rotated = api.post(f"{item}/rotate", headers={"If-Match": current.headers["etag"]})
    assert rotated.status_code == 200, rotated.text


def test_an_audit_continuation_token_is_taken_by_its_own_search_only(api, admin, secrets_used):
    """The document: continuationToken is 'the continuationToken of the previous page of the same list (any other:
    400)'. A token names its search (its filters): handed to a search for another connection it is a 400, not a
    cursor that silently skips that connection's records newer than the first search's page."""
    first = create(api, "azure-key-vault", "client-secret", register_app(admin, secrets_used).client_secret_body())
    second = create(api, "azure-key-vault", "client-secret", register_app(admin, secrets_used).client_secret_body())
    ids = [r.json()["appConnection"]["id"] for r in (first, second)]
    for cid in ids:
        assert api.post(f"{BASE}/azure-key-vault/{cid}/validate").status_code == 200
    page = api.get("/api/v1/audit-logs", params={"connectionId": ids[0], "limit": 1})
    token = page.json()["continuationToken"]
    assert token
    crossed = api.get("/api/v1/audit-logs", params={"connectionId": ids[1], "continuationToken": token})
    assert_problem(crossed, 400, "/continuationToken")
    assert_problem(api.get("/api/v1/audit-logs", params={"connectionId": ids[0], "continuationToken": token,
                                                        "action": "connection.validate"}), 400, "/continuationToken")
    following = api.get("/api/v1/audit-logs", params={"connectionId": ids[0], "limit": 1, "continuationToken": token})
    assert following.status_code == 200 and following.json()["auditLogs"], following.text  # its own search: the rest
    assert following.json()["auditLogs"][0]["id"] != page.json()["auditLogs"][0]["id"]


def test_a_json_patch_or_a_compressed_body_is_refused_with_what_is_taken(api, admin, secrets_used):
    """RFC 5789 2.2: a patch document of a format the resource does not take is a 415 with Accept-Patch (a JSON
    Patch's type ends in +json, but it is an array of operations); RFC 7694: a body with a content coding is a 415
    with Accept-Encoding. Nothing changes."""
    import gzip

    created = create(api, "azure-key-vault", "client-secret", register_app(admin, secrets_used).client_secret_body())
    item = f"{BASE}/azure-key-vault/{created.json()['appConnection']['id']}"
    patched = api.patch(item, content=b'[{"op": "replace", "path": "/description", "value": "x"}]',
                        headers={"Content-Type": "application/json-patch+json"})
    assert_problem(patched, 415)
    assert patched.headers["accept-patch"] == "application/json, application/merge-patch+json"
    compressed = api.patch(item, content=gzip.compress(b'{"description": "x"}'),
                           headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert_problem(compressed, 415)
    assert compressed.headers["accept-encoding"] == "identity"
    merged = api.patch(item, json={"description": "x"}, headers={"Content-Type": "application/merge-patch+json"})
    assert merged.status_code == 200 and merged.json()["appConnection"]["description"] == "x", merged.text
    assert api.get(item).json()["appConnection"]["version"] == created.json()["appConnection"]["version"] + 1
