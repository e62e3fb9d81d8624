"""OAuth connections end to end: a browser (httpx following redirects, trusting the stand-in's CA) goes from
``/oauth/authorize`` through the stand-in's authorize endpoint (auto-consent as a test user) to the anonymous
callback, which redeems the code; then the connection is used (validated) with its refresh token.

Every token the stand-in issues is added to ``secrets_used`` after each test, so the final secret scan looks
for all of them in the tables and the logs.
"""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from shared.oauth_start import code_challenge
from shared.store.oauth_states import OAUTH_STATES_TABLE, state_keys

pytestmark = pytest.mark.e2e

APPS = ["azure-key-vault", "azure-app-configuration", "azure-client-secrets"]
PREFIXES = {
    "azure-key-vault": "INF_APP_CONNECTION_AZURE_KEY_VAULT",
    "azure-app-configuration": "INF_APP_CONNECTION_AZURE_APP_CONFIGURATION",
    "azure-client-secrets": "INF_APP_CONNECTION_AZURE_CLIENT_SECRETS",
}
BASE = "/api/v1/app-connections"
CALLBACK = "/organization/app-connections/azure/oauth/callback"


def unique_name(prefix: str = "oauth") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(autouse=True)
def register_issued_tokens(admin, secrets_used) -> Iterator[None]:
    yield
    tokens = admin.oauth_tokens()
    secrets_used.add(*tokens["issued"], *[t["value"] for t in tokens["refreshTokens"]])


@pytest.fixture(scope="module")
def browser(local_env, tokens) -> Iterator[httpx.Client]:
    """A user's browser: follows redirects, trusts the stand-in; the service's authorize route is called with an
    administrator's token (the callback, the one anonymous route, needs none)."""
    trust = ssl.create_default_context(cafile=str(local_env.standin.ca_path))
    with httpx.Client(verify=trust, follow_redirects=True, timeout=60, auth=tokens.auth()) as client:
        yield client


@pytest.fixture(scope="module")
def states_table(local_env) -> Iterator[Any]:
    from azure.data.tables import TableServiceClient

    service = TableServiceClient.from_connection_string(local_env.azurite.connection_string)
    with service:
        yield service.get_table_client(local_env.table_prefix + OAUTH_STATES_TABLE)


def authorization_url(api: httpx.Client, app: str, **params: str) -> str:
    response = api.get(f"{BASE}/{app}/oauth/authorize", params=params, headers={"Accept": "application/json"})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return str(response.json()["authorizationUrl"])


def callback_url(browser: httpx.Client, api: httpx.Client, app: str, **params: str) -> str:
    """Sign in at the stand-in and return where Entra sends the browser back (not followed yet)."""
    answer = browser.get(authorization_url(api, app, **params), follow_redirects=False)
    assert answer.status_code == 302, answer.text
    return str(answer.headers["location"])


def query_of(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


def dance(browser: httpx.Client, host_url: str, app: str, **params: str) -> httpx.Response:
    """The whole flow as a browser sees it: authorize -> stand-in (consent) -> callback page."""
    return browser.get(f"{host_url}{BASE}/{app}/oauth/authorize", params=params)


def by_name(api: httpx.Client, app: str, name: str) -> dict[str, Any] | None:
    response = api.get(f"{BASE}/{app}/connection-name/{name}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return dict(response.json()["appConnection"])


def vault_value(admin, connection_id: str, version: str | None = None) -> dict[str, str]:
    secret = admin.vault_secrets()[f"appconn-{connection_id}"]
    chosen = secret["versions"][-1] if version is None else next(
        v for v in secret["versions"] if v["version"] == version)
    return dict(json.loads(chosen["value"]))


def refresh_tokens(admin) -> dict[str, str]:
    return {t["value"]: t["status"] for t in admin.oauth_tokens()["refreshTokens"]}


def assert_failure_page(response: httpx.Response, *fragments: str) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert "was not authorized" in response.text
    for fragment in fragments:
        assert fragment in response.text, response.text


def entity_of(states_table, url: str) -> dict[str, Any]:
    keys = state_keys(query_of(url)["state"])
    assert keys is not None
    return dict(states_table.get_entity(*keys))


# -- start ---------------------------------------------------------------------------------------------
def test_options_show_oauth_configured_with_the_instance_client(api, local_env):
    options = {o["app"]: o for o in api.get(f"{BASE}/options").json()["appConnectionOptions"]}
    for app, prefix in PREFIXES.items():
        assert options[app]["oauthConfigured"] is True
        assert options[app]["oauthClientId"] == local_env.oauth_clients[prefix].client_id
        assert options[app]["redirectUri"] == local_env.settings["SITE_URL"] + CALLBACK


@pytest.mark.parametrize("app", APPS)
def test_start_stores_a_state_with_pkce_and_points_at_the_authorize_endpoint(api, admin, local_env, host_url,
                                                                            states_table, app):
    tenant = admin.add_tenant()
    url = authorization_url(api, app, name=unique_name(), tenantId=tenant.upper(), description="d")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{local_env.standin.url}/{tenant}/oauth2/v2.0/authorize"
    query = query_of(url)
    scope = "https://vault.azure.net" if app == "azure-key-vault" else (
        "https://azconfig.io" if app == "azure-app-configuration" else local_env.standin.url)
    assert query["client_id"] == local_env.oauth_clients[PREFIXES[app]].client_id
    assert query["redirect_uri"] == host_url + CALLBACK
    assert query["scope"] == f"openid profile offline_access {scope}/.default"
    assert (query["response_type"], query["response_mode"], query["code_challenge_method"]) == ("code", "query", "S256")
    entity = entity_of(states_table, url)
    assert entity["App"] == app and entity["TenantId"] == tenant and entity["Description"] == "d"
    assert code_challenge(entity["Verifier"]) == query["code_challenge"]
    assert query["state"] not in json.dumps(entity, default=str)  # stored by hash only
    expires = entity["ExpiresAt"]
    assert timedelta(minutes=9) < expires - datetime.now(UTC) <= timedelta(minutes=10)
    # Without Accept: application/json, a browser is redirected.
    redirect = api.get(f"{BASE}/{app}/oauth/authorize", params={"name": unique_name()})
    assert redirect.status_code == 302
    assert redirect.headers["location"].startswith(f"{local_env.standin.url}/organizations/oauth2/v2.0/authorize?")


def test_start_validates_fields_like_the_rest_of_the_api(api, admin, secrets_used):
    from tests.e2e.entra import register_app

    def problem(params: dict[str, str], status: int, pointer: str | None = None) -> dict[str, Any]:
        response = api.get(f"{BASE}/azure-key-vault/oauth/authorize", params=params,
                           headers={"Accept": "application/json"})
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        body = dict(response.json())
        if pointer is not None:
            assert pointer in [e["pointer"] for e in body.get("errors", [])], body
        return body

    problem({}, 400, "/name")
    problem({"name": "Has Spaces"}, 400, "/name")
    problem({"name": "ok-name", "tenantId": "not-a-guid"}, 400, "/tenantId")
    problem({"name": "ok-name", "redirect_uri": "https://evil.example.com"}, 400, "/redirect_uri")
    problem({"connectionId": str(uuid.uuid4())}, 404, "/connectionId")
    assert api.get(f"{BASE}/no-such-app/oauth/authorize", params={"name": "x"}).status_code == 404
    entra = register_app(admin, secrets_used)
    taken = unique_name("taken")
    created = api.post(f"{BASE}/azure-key-vault", json={"name": taken, "method": "client-secret",
                                                        "credentials": entra.client_secret_body()})
    assert created.status_code == 201, created.text
    problem({"name": taken}, 409, "/name")
    problem({"connectionId": created.json()["appConnection"]["id"]}, 400, "/connectionId")


# -- the whole dance -----------------------------------------------------------------------------------
@pytest.mark.parametrize("app", APPS)
def test_the_whole_dance_creates_a_connection_that_validates(api, admin, browser, host_url, app):
    tenant = admin.add_tenant()
    name = unique_name(app)
    page = dance(browser, host_url, app, name=name, tenantId=tenant, description="made by signing in")
    assert page.status_code == 200, page.text
    assert [r.status_code for r in page.history] == [302, 302]
    assert page.url.path == CALLBACK and "session_state" in page.url.params  # Entra's extra is ignored
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert page.headers["referrer-policy"] == "no-referrer"
    connection = by_name(api, app, name)
    assert connection is not None
    assert connection["method"] == "oauth" and connection["status"] == "active"
    assert connection["credentials"] == {"tenantId": tenant}
    assert connection["description"] == "made by signing in"
    assert name in page.text and connection["id"] in page.text and "authorized" in page.text
    stored = vault_value(admin, connection["id"])
    assert list(stored) == ["refreshToken"]
    assert refresh_tokens(admin)[stored["refreshToken"]] == "active"
    for token in admin.oauth_tokens()["issued"]:
        assert token not in page.text
    tags = admin.vault_secrets()[f"appconn-{connection['id']}"]["versions"][-1]["tags"]
    assert tags == {"connectionId": connection["id"], "app": app, "method": "oauth"}

    validated = api.post(f"{BASE}/{app}/{connection['id']}/validate")
    assert validated.status_code == 200, validated.text
    assert validated.json()["appConnection"]["status"] == "active"
    assert validated.json()["appConnection"]["credentials"] == {"tenantId": tenant}
    # OAuth credentials are not changed by PATCH; the connection can be renamed and deleted as any other.
    patched = api.patch(f"{BASE}/{app}/{connection['id']}", json={"credentials": {"refreshToken": "x"}})
    assert patched.status_code == 400
    assert api.delete(f"{BASE}/{app}/{connection['id']}").status_code == 200


def test_without_a_tenant_the_tenant_comes_from_the_token(api, admin, browser, host_url):
    tenant = admin.add_tenant()
    user = admin.add_user(tenant, "someone@contoso.example")
    admin.set_sign_in(tenant, user["id"])
    try:
        name = unique_name()
        page = dance(browser, host_url, "azure-key-vault", name=name)
    finally:
        admin.set_sign_in(None)
    assert page.status_code == 200, page.text
    assert "someone@contoso.example" in page.text
    connection = by_name(api, "azure-key-vault", name)
    assert connection is not None and connection["credentials"] == {"tenantId": tenant}


# -- refused callbacks: nothing is created ---------------------------------------------------------------
def test_a_replayed_callback_is_refused(api, browser):
    app, name = "azure-key-vault", unique_name()
    back = callback_url(browser, api, app, name=name)
    assert browser.get(back).status_code == 200
    replay = browser.get(back)
    assert_failure_page(replay, "unknown or was already used")
    listed = api.get(f"{BASE}/{app}", params={"limit": 1000}).json()["appConnections"]
    assert [c["name"] for c in listed].count(name) == 1


def test_an_expired_state_is_refused(api, browser, states_table):
    from azure.data.tables import UpdateMode

    name = unique_name()
    back = callback_url(browser, api, "azure-key-vault", name=name)
    entity = entity_of(states_table, back)
    entity["ExpiresAt"] = datetime.now(UTC) - timedelta(seconds=1)
    states_table.update_entity(entity, mode=UpdateMode.MERGE)
    assert_failure_page(browser.get(back), "expired")
    assert by_name(api, "azure-key-vault", name) is None
    from azure.core.exceptions import ResourceNotFoundError

    with pytest.raises(ResourceNotFoundError):
        entity_of(states_table, back)  # consumed all the same


def test_a_state_of_another_app_is_refused(api, browser, host_url):
    vault_name, config_name = unique_name(), unique_name()
    for_vault = query_of(callback_url(browser, api, "azure-key-vault", name=vault_name))
    for_config = query_of(callback_url(browser, api, "azure-app-configuration", name=config_name))
    # The Key Vault code with the App Configuration state: redeemed with the wrong client, Entra refuses.
    mixed = browser.get(f"{host_url}{CALLBACK}?" + urlencode({"code": for_vault["code"], "state": for_config["state"]}))
    assert_failure_page(mixed, "AADSTS70000")
    assert by_name(api, "azure-key-vault", vault_name) is None
    assert by_name(api, "azure-app-configuration", config_name) is None


def test_a_missing_state_is_refused(api, browser, host_url):
    name = unique_name()
    back = query_of(callback_url(browser, api, "azure-key-vault", name=name))
    assert_failure_page(browser.get(f"{host_url}{CALLBACK}?" + urlencode({"code": back["code"]})), "no state")
    assert_failure_page(browser.get(f"{host_url}{CALLBACK}"), "no state")
    assert_failure_page(browser.get(f"{host_url}{CALLBACK}?state=1234567890.abc&code=x"), "unknown")
    assert by_name(api, "azure-key-vault", name) is None


def test_a_wrong_pkce_verifier_is_refused(api, browser, states_table):
    from azure.data.tables import UpdateMode

    name = unique_name()
    back = callback_url(browser, api, "azure-app-configuration", name=name)
    entity = entity_of(states_table, back)
    entity["Verifier"] = "tampered-" + entity["Verifier"][9:]
    states_table.update_entity(entity, mode=UpdateMode.MERGE)
    assert_failure_page(browser.get(back), "AADSTS50148")
    assert by_name(api, "azure-app-configuration", name) is None


def test_declined_consent_is_refused(api, admin, browser, host_url):
    name = unique_name()
    admin.set_consent(decline=True)
    try:
        url = authorization_url(api, "azure-client-secrets", name=name)
        page = browser.get(url)
    finally:
        admin.set_consent(decline=False)
    assert_failure_page(page, "access_denied, AADSTS65004")  # the code and its number: never the description
    assert "User declined to consent" not in page.text
    assert by_name(api, "azure-client-secrets", name) is None
    # Its state was consumed: the same sign-in cannot be finished later.
    state = query_of(url)["state"]
    later = browser.get(f"{host_url}{CALLBACK}?" + urlencode({"code": "x", "state": state}))
    assert_failure_page(later, "unknown or was already used")


# -- using the connection: refresh-token rotation, revocation, re-authorization -----------------------------
def test_refreshing_rotates_the_refresh_token_and_stores_the_newest(api, admin, browser, host_url, states_table,
                                                                  local_env):
    from azure.data.tables import TableServiceClient

    app, name = "azure-key-vault", unique_name()
    assert dance(browser, host_url, app, name=name).status_code == 200
    connection = by_name(api, app, name)
    assert connection is not None
    first = vault_value(admin, connection["id"])["refreshToken"]
    for _ in range(2):
        assert api.post(f"{BASE}/{app}/{connection['id']}/validate").status_code == 200
    secret = admin.vault_secrets()[f"appconn-{connection['id']}"]
    assert len(secret["versions"]) == 3
    newest = json.loads(secret["versions"][-1]["value"])["refreshToken"]
    second = json.loads(secret["versions"][1]["value"])["refreshToken"]
    statuses = refresh_tokens(admin)
    assert (statuses[first], statuses[second], statuses[newest]) == ("redeemed", "redeemed", "active")
    with TableServiceClient.from_connection_string(local_env.azurite.connection_string) as service:
        entity = service.get_table_client(local_env.table_prefix + "Connections").get_entity(app, connection["id"])
    assert entity["SecretVersion"] == secret["versions"][-1]["version"]
    # Only the newest refresh token's version is enabled: the superseded ones are disabled.
    assert [v["enabled"] for v in secret["versions"]] == [False, False, True]
    # The oldest refresh token no longer works at Entra.
    client = local_env.oauth_clients[PREFIXES[app]]
    trust = ssl.create_default_context(cafile=str(local_env.standin.ca_path))
    with httpx.Client(verify=trust) as entra:
        answer = entra.post(f"{local_env.standin.url}/{connection['credentials']['tenantId']}/oauth2/v2.0/token", data={
            "grant_type": "refresh_token", "client_id": client.client_id, "client_secret": client.client_secret,
            "refresh_token": first, "scope": "offline_access https://vault.azure.net/.default"})
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


def test_refreshes_disable_the_version_they_replaced_without_listing_the_vault_versions(api, admin, browser,
                                                                                     host_url):
    """Each refresh stores the refresh token Entra rotated to as a new version: Key Vault keeps every version, so
    listing them (one request per 25) on each refresh cost more the older the connection. None is listed."""
    app, name = "azure-key-vault", unique_name()
    assert dance(browser, host_url, app, name=name).status_code == 200
    connection = by_name(api, app, name)
    assert connection is not None
    secret = f"appconn-{connection['id']}"

    def listings() -> int:
        return sum(1 for r in admin.requests() if r["method"] == "GET" and r["path"].rstrip("/").endswith(
            f"/secrets/{secret}/versions"))

    for _ in range(30):  # past a page of 25 versions
        assert api.post(f"{BASE}/{app}/{connection['id']}/validate").status_code == 200
    versions = admin.vault_secrets()[secret]["versions"]
    assert len(versions) == 31 and [v["enabled"] for v in versions] == [False] * 30 + [True]
    assert listings() == 0


def test_a_version_key_vault_refused_to_disable_is_disabled_by_the_next_health_check(api, admin, browser, host_url,
                                                                                    local_env):
    """Entra keeps a redeemed refresh token working: a superseded version still enabled holds a live one. Key Vault
    refuses the disable of the sign-in's version once; the connection's row journals it (``SupersededVersions``),
    later refreshes keep it, and the next health check disables it and forgets it. Each version expires with its
    token (90 days unused)."""
    from azure.data.tables import TableServiceClient

    app, name = "azure-key-vault", unique_name()
    assert dance(browser, host_url, app, name=name).status_code == 200
    connection = by_name(api, app, name)
    assert connection is not None
    secret = f"appconn-{connection['id']}"
    [first] = admin.vault_secrets()[secret]["versions"]
    admin.set_faults([{"method": "PATCH", "path": f"/secrets/{secret}/{first['version']}", "status": 403,
                       "body": {"error": {"code": "Forbidden", "message": "Caller is not authorized"}}}])
    try:
        assert api.post(f"{BASE}/{app}/{connection['id']}/validate").status_code == 200
    finally:
        admin.set_faults([])
    for _ in range(2):
        assert api.post(f"{BASE}/{app}/{connection['id']}/validate").status_code == 200
    versions = admin.vault_secrets()[secret]["versions"]
    assert [v["enabled"] for v in versions] == [True, False, False, True]
    with TableServiceClient.from_connection_string(local_env.azurite.connection_string) as service:
        table = service.get_table_client(local_env.table_prefix + "Connections")
        assert first["version"] in table.get_entity(app, connection["id"])["SupersededVersions"].split()
        assert api.post(f"{BASE}/{app}/{connection['id']}/health").status_code == 200
        assert "SupersededVersions" not in table.get_entity(app, connection["id"])
    versions = admin.vault_secrets()[secret]["versions"]
    assert [v["enabled"] for v in versions] == [False] * (len(versions) - 1) + [True]
    assert all(v["expires"] for v in versions)


def test_a_revoked_refresh_token_needs_reauthorization_which_restores_the_connection(api, admin, browser, host_url):
    app, name, tenant = "azure-client-secrets", unique_name(), admin.add_tenant()
    assert dance(browser, host_url, app, name=name, tenantId=tenant).status_code == 200
    connection = by_name(api, app, name)
    assert connection is not None
    assert admin.revoke_refresh_tokens(tenant) >= 1

    refused = api.post(f"{BASE}/{app}/{connection['id']}/validate")
    assert refused.status_code == 400, refused.text
    problem = refused.json()
    assert problem["aadstsCode"] == "AADSTS50173" and problem["entraError"] == "invalid_grant"
    assert problem["connectionStatus"] == "reauthorization-required"
    shown = api.get(f"{BASE}/{app}/{connection['id']}").json()["appConnection"]
    assert shown["status"] == "reauthorization-required"
    assert shown["statusMessage"].startswith("AADSTS50173: ")
    assert f"connectionId={connection['id']}" in shown["statusMessage"]

    page = dance(browser, host_url, app, connectionId=connection["id"])
    assert page.status_code == 200, page.text
    assert "authorized again" in page.text
    restored = api.get(f"{BASE}/{app}/{connection['id']}").json()["appConnection"]
    assert restored["id"] == connection["id"] and restored["name"] == name
    assert restored["status"] == "active" and restored["statusMessage"] is None
    assert restored["credentials"] == {"tenantId": tenant}  # the connection's tenant is signed in to again
    assert restored["version"] == connection["version"] + 1
    versions = admin.vault_secrets()[f"appconn-{connection['id']}"]["versions"]
    assert [v["enabled"] for v in versions] == [False, True]  # the superseded refresh token is disabled
    assert api.post(f"{BASE}/{app}/{connection['id']}/validate").json()["appConnection"]["status"] == "active"
    # Re-authorizing can rename, with the same uniqueness rule as creating.
    renamed = dance(browser, host_url, app, connectionId=connection["id"], name=name + "-b")
    assert renamed.status_code == 200, renamed.text
    assert by_name(api, app, name + "-b")["id"] == connection["id"]


def test_entra_unavailable_when_refreshing_is_a_503_and_the_connection_stays_active(api, admin, browser, host_url):
    """Entra still answering 503 past the retries: a 503 to try later (with Retry-After), not a refused grant."""
    app, name, tenant = "azure-key-vault", unique_name(), admin.add_tenant()
    assert dance(browser, host_url, app, name=name, tenantId=tenant).status_code == 200
    connection = by_name(api, app, name)
    assert connection is not None
    admin.set_faults([{"method": "POST", "path": r"/oauth2/v2\.0/token$", "status": 503,
                       "headers": {"Retry-After": "0.01"},
                       "body": {"error": "temporarily_unavailable",
                                "error_description": "AADSTS90033: A transient error has occurred."}}])
    try:
        failed = api.post(f"{BASE}/{app}/{connection['id']}/validate")
    finally:
        admin.set_faults([])
    assert failed.status_code == 503 and "retry-after" in failed.headers, failed.text
    assert "aadstsCode" not in failed.json()
    shown = api.get(f"{BASE}/{app}/{connection['id']}").json()["appConnection"]
    assert (shown["status"], shown["statusMessage"]) == ("active", None)
    assert api.post(f"{BASE}/{app}/{connection['id']}/validate").status_code == 200  # the grant was kept


# -- the page escapes what it shows ----------------------------------------------------------------------
def test_the_callback_page_escapes_every_value(api, browser, host_url):
    """Names are slugs (``[a-z0-9-]``), so they cannot hold HTML: escaping is shown with the description (on
    the success page); Entra's ``error_description`` is not shown at all (whoever sends a browser here with a
    valid state writes it), only the error code and an AADSTS number found in it."""
    name = unique_name()
    description = "<script>alert('x')</script> & \"quotes\""
    page = dance(browser, host_url, "azure-key-vault", name=name, description=description)
    assert page.status_code == 200, page.text
    assert "<script>" not in page.text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in page.text
    assert by_name(api, "azure-key-vault", name)["description"] == description

    state = query_of(authorization_url(api, "azure-key-vault", name=unique_name()))["state"]
    hostile = "<img src=x onerror=alert(1)>"
    failed = browser.get(f"{host_url}{CALLBACK}?" + urlencode(
        {"error": "access_denied<i>", "error_description": hostile + " Call +1 555 0100.", "state": state,
         "extra": "<b>ignored</b>"}))
    assert_failure_page(failed, "(access_deniedi)")
    assert "<img" not in failed.text and "<b>ignored" not in failed.text
    assert "img src" not in failed.text and "555" not in failed.text


# -- concurrency, housekeeping and the token cache ---------------------------------------------------------
def test_concurrent_callbacks_with_one_state_create_one_connection(api, browser):
    from concurrent.futures import ThreadPoolExecutor

    name = unique_name()
    back = callback_url(browser, api, "azure-app-configuration", name=name)
    with ThreadPoolExecutor(6) as pool:
        statuses = sorted(pool.map(lambda _: browser.get(back).status_code, range(6)))
    assert statuses == [200] + [400] * 5
    listed = api.get(f"{BASE}/azure-app-configuration", params={"limit": 1000}).json()["appConnections"]
    assert [c["name"] for c in listed].count(name) == 1


def test_abandoned_states_are_purged_when_a_new_sign_in_starts(api, states_table):
    stale = {"PartitionKey": "2000010100", "RowKey": "f" * 64, "Kind": "oauth-state", "App": "azure-key-vault"}
    states_table.upsert_entity(stale)
    authorization_url(api, "azure-key-vault", name=unique_name())
    assert list(states_table.query_entities("PartitionKey eq '2000010100'")) == []


def test_access_tokens_are_cached_and_refreshed_only_when_needed(api, admin, browser, host_url):
    import asyncio

    from shared import wiring
    from shared.azure.clients import AzureClients
    from shared.oauth_tokens import TOKEN_CACHE
    from shared.settings import get_settings

    app, name = "azure-key-vault", unique_name()
    assert dance(browser, host_url, app, name=name).status_code == 200
    connection = by_name(api, app, name)
    assert connection is not None

    def refreshes() -> int:
        return sum(1 for r in admin.token_requests() if r.get("grant_type") == "refresh_token")

    async def tokens(count: int) -> list[str]:
        clients = AzureClients(get_settings())
        try:
            service = wiring.services(wiring.adapters(clients)).connections
            record = await service.get(app, connection["id"])
            async with service.oauth_tokens.credential(record) as credential:
                return [(await credential.get_token("https://vault.azure.net/.default")).token for _ in range(count)]
        finally:
            await clients.close()

    before = refreshes()
    cached = asyncio.run(tokens(3))
    assert len(set(cached)) == 1 and refreshes() == before  # the token from the sign-in itself
    TOKEN_CACHE.clear()
    fresh = asyncio.run(tokens(2))
    assert len(set(fresh)) == 1 and fresh[0] != cached[0] and refreshes() == before + 1
    assert len(admin.vault_secrets()[f"appconn-{connection['id']}"]["versions"]) == 2  # the rotated one is kept


def test_an_oauth_graph_connection_lists_the_app_registrations_it_sees(api, admin, browser, host_url):
    tenant = admin.add_tenant()
    admin.add_app(tenant, display_name="seen-by-oauth")
    name = unique_name("graph")
    assert dance(browser, host_url, "azure-client-secrets", name=name, tenantId=tenant).status_code == 200
    connection = by_name(api, "azure-client-secrets", name)
    assert connection is not None
    listed = api.get(f"{BASE}/azure-client-secrets/{connection['id']}/clients")
    assert listed.status_code == 200, listed.text
    assert "seen-by-oauth" in {c["name"] for c in listed.json()["clients"]}


# -- who did it -----------------------------------------------------------------------------------------
def test_the_connection_and_the_page_say_who_started_the_sign_in_and_who_consented(api, admin, browser, host_url):
    tenant = admin.add_tenant()
    user = admin.add_user(tenant, f"ada-{uuid.uuid4().hex[:6]}@contoso.example", "Ada")
    admin.set_sign_in(tenant, user["id"])
    name = unique_name("who")
    try:
        page = dance(browser, host_url, "azure-key-vault", name=name, tenantId=tenant)
    finally:
        admin.set_sign_in(None, None)
    assert page.status_code == 200, page.text
    connection = by_name(api, "azure-key-vault", name)
    assert connection is not None
    assert connection["authorizedBy"] == {"oid": user["id"], "upn": user["userPrincipalName"], "tenantId": tenant}
    assert connection["createdBy"]["type"] == "app"  # the administrator daemon of the tests started it
    assert connection["createdBy"] == connection["updatedBy"]
    assert f"Started by {connection['createdBy']['name']}." in page.text
    assert f"Signed in as {user['userPrincipalName']}." in page.text
    audit = api.get("/api/v1/audit-logs", params={"connectionId": connection["id"]}).json()["auditLogs"]
    assert audit[0]["action"] == "connection.create"
    assert audit[0]["outcome"] == "succeeded"
    assert user["userPrincipalName"] in audit[0]["detail"]


def test_reauthorizing_as_another_person_needs_allow_different_user_and_is_audited(api, admin, browser, host_url):
    tenant = admin.add_tenant()
    first = admin.add_user(tenant, f"first-{uuid.uuid4().hex[:6]}@contoso.example", "First")
    second = admin.add_user(tenant, f"second-{uuid.uuid4().hex[:6]}@contoso.example", "Second")
    name = unique_name("reauth")
    try:
        admin.set_sign_in(tenant, first["id"])
        assert dance(browser, host_url, "azure-key-vault", name=name, tenantId=tenant).status_code == 200
        connection = by_name(api, "azure-key-vault", name)
        assert connection is not None
        admin.set_sign_in(tenant, second["id"])
        refused = dance(browser, host_url, "azure-key-vault", connectionId=connection["id"])
        assert_failure_page(refused, "allowDifferentUser=true", first["userPrincipalName"])
        assert by_name(api, "azure-key-vault", name)["authorizedBy"]["oid"] == first["id"]
        allowed = dance(browser, host_url, "azure-key-vault", connectionId=connection["id"],
                        allowDifferentUser="true")
        assert allowed.status_code == 200, allowed.text
    finally:
        admin.set_sign_in(None, None)
    after = by_name(api, "azure-key-vault", name)
    assert after["authorizedBy"]["oid"] == second["id"]
    records = api.get("/api/v1/audit-logs", params={"connectionId": connection["id"],
                                                    "action": "connection.reauthorize"}).json()["auditLogs"]
    outcomes = [(e["action"], e["outcome"]) for e in records]
    assert ("connection.reauthorize", "refused") in outcomes
    assert outcomes[0] == ("connection.reauthorize", "succeeded")
    # the callback's records name the browser that brought the answer back (here httpx), not nobody
    assert all((e["userAgent"] or "").startswith("python-httpx/") and e["requestId"] for e in records)


@pytest.mark.parametrize("lost", ["PATCH", "DELETE"])
async def test_a_state_taken_with_its_answer_lost_is_this_callback_s_and_no_other_s(local_env, lost: str) -> None:
    """Found by a review: the take of a state was its deletion under its ETag; one applied with its answer lost was
    sent again, answered 404 and taken for another's, and the callback that had consumed it was refused as 'unknown
    or already used' (the person had to consent again). The take is now the state marked with the taker's own
    value (a PATCH, not sent again: read back), then deleted: with either answer lost, the callback has it, and
    nobody else can take it or see it pending."""
    from shared.records import PendingAuthorization
    from shared.store.oauth_state_reads import OAuthStateReads
    from shared.store.oauth_states import OAuthStates, new_state
    from shared.store.table_reads import TableReads
    from tests.answer_dropper import answers_lost

    now = datetime.now(UTC)
    value = new_state(now + timedelta(minutes=10))
    pending = PendingAuthorization(app="azure-client-secrets", client_id="c", redirect_uri="https://x/cb",
                                   verifier="v" * 43, created_at=now, expires_at=now + timedelta(minutes=10),
                                   name=f"n-{uuid.uuid4().hex[:8]}")

    def drops(verb: str, target: str, body: bytes) -> bool:
        return verb == lost and OAUTH_STATES_TABLE in target

    async with answers_lost(drops) as (dropper, proxied):
        states = OAuthStates(proxied)
        await states.put(value, pending)
        taken = await states.take(value)
        assert [name.split(" ")[0] for name in dropper.dropped] == [lost]
        assert taken is not None and taken.name == pending.name
        assert await states.take(value) is None  # single use all the same
        assert await OAuthStateReads(TableReads(proxied)).pending(value) is False
