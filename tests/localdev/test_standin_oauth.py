"""The stand-in's authorization-code flow: authorize (auto-consent), codes bound to client, redirect URI and
PKCE, single use; refresh tokens that rotate and can be revoked."""

from __future__ import annotations

import base64
import hashlib
import secrets
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest

from localdev.standin import StandIn

REDIRECT = "https://app.example.com/organization/app-connections/azure/oauth/callback"
SCOPE = "openid profile offline_access https://vault.azure.net/.default"


@dataclass
class Client:
    tenant: str
    app_id: str
    secret: str


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    server = StandIn().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(standin: StandIn) -> Client:
    admin = standin.admin
    tenant = admin.add_tenant()
    app = admin.add_app(tenant, "instance oauth app")
    admin.add_redirect_uri(tenant, app["appId"], REDIRECT)
    secret = admin.add_secret(tenant, app["appId"])
    return Client(tenant, app["appId"], secret["secretText"])


@pytest.fixture
def http(standin: StandIn) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=standin.url, verify=ssl.create_default_context(cafile=str(standin.ca_path))) as c:
        yield c


def challenge_of(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def authorize(http: httpx.Client, client: Client, tenant: str = "organizations", **extra: str) -> httpx.Response:
    params = {
        "client_id": client.app_id,
        "response_type": "code",
        "response_mode": "query",
        "redirect_uri": REDIRECT,
        "scope": SCOPE,
        "state": "st-1",
        **extra,
    }
    return http.get(f"/{tenant}/oauth2/v2.0/authorize", params=params)


def query_of(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def code_for(http: httpx.Client, client: Client, verifier: str, tenant: str = "organizations") -> str:
    return query_of(authorize(http, client, tenant, code_challenge=challenge_of(verifier),
                              code_challenge_method="S256"))["code"]


def redeem(http: httpx.Client, client: Client, code: str, verifier: str, tenant: str = "organizations",
           **extra: str) -> httpx.Response:
    form = {"grant_type": "authorization_code", "client_id": client.app_id, "client_secret": client.secret,
            "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier, "scope": SCOPE, **extra}
    return http.post(f"/{tenant}/oauth2/v2.0/token", data=form)


def refresh(http: httpx.Client, client: Client, token: str, tenant: str = "organizations") -> httpx.Response:
    form = {"grant_type": "refresh_token", "client_id": client.app_id, "client_secret": client.secret,
            "refresh_token": token, "scope": "offline_access https://vault.azure.net/.default"}
    return http.post(f"/{tenant}/oauth2/v2.0/token", data=form)


def aadsts(response: httpx.Response) -> str:
    body: dict[str, Any] = response.json()
    return f"{body['error']} {body['error_description'].split(':', 1)[0]}"


def test_the_whole_flow_gives_delegated_tokens_and_a_refresh_token(standin, client, http):
    verifier = secrets.token_urlsafe(64)
    answer = query_of(authorize(http, client, code_challenge=challenge_of(verifier), code_challenge_method="S256"))
    assert answer["state"] == "st-1" and answer["session_state"]
    token = redeem(http, client, answer["code"], verifier)
    assert token.status_code == 200, token.text
    body = token.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0
    assert body["scope"] == "https://vault.azure.net/user_impersonation"
    access = standin.ctx.signer.verify(body["access_token"], audience="https://vault.azure.net")
    assert access["tid"] == client.tenant and access["appid"] == client.app_id and access["scp"]
    identity = jwt.decode(body["id_token"], options={"verify_signature": False})
    assert identity["tid"] == client.tenant and identity["aud"] == client.app_id
    assert identity["oid"] == access["oid"] and identity["preferred_username"]
    issued = standin.admin.oauth_tokens()
    assert {body["access_token"], body["refresh_token"], body["id_token"]} <= set(issued["issued"])


def test_without_the_profile_scope_the_id_token_names_nobody_as_entra_s_does(standin, client, http):
    # Entra's ID token claims reference: oid, preferred_username and name need the profile scope.
    verifier = secrets.token_urlsafe(64)
    answer = query_of(authorize(http, client, code_challenge=challenge_of(verifier), code_challenge_method="S256",
                                scope="openid offline_access https://vault.azure.net/.default"))
    token = redeem(http, client, answer["code"], verifier, scope="openid offline_access https://vault.azure.net/.default")
    assert token.status_code == 200, token.text
    identity = jwt.decode(token.json()["id_token"], options={"verify_signature": False})
    assert identity["tid"] == client.tenant and identity["sub"]
    assert not {"oid", "preferred_username", "name"} & identity.keys()
    access = jwt.decode(token.json()["access_token"], options={"verify_signature": False})
    assert access["oid"] and access["upn"]  # the user's access token still says who it is


def test_codes_are_single_use_and_bound_to_pkce_client_and_redirect_uri(standin, client, http):
    verifier = secrets.token_urlsafe(64)
    code = code_for(http, client, verifier)
    assert aadsts(redeem(http, client, code, "x" * 64)) == "invalid_grant AADSTS50148"
    assert aadsts(redeem(http, client, code, verifier)) == "invalid_grant AADSTS54005"  # used up by the try
    code = code_for(http, client, verifier)
    assert redeem(http, client, code, verifier).status_code == 200
    assert aadsts(redeem(http, client, code, verifier)) == "invalid_grant AADSTS54005"
    code = code_for(http, client, verifier)
    assert aadsts(redeem(http, client, code, verifier, redirect_uri=REDIRECT + "x")) == "invalid_grant AADSTS500112"
    other = standin.admin.add_app(client.tenant, "another")
    other_secret = standin.admin.add_secret(client.tenant, other["appId"])["secretText"]
    code = code_for(http, client, verifier)
    thief = Client(client.tenant, other["appId"], other_secret)
    assert aadsts(redeem(http, thief, code, verifier)) == "invalid_grant AADSTS70000"
    code = code_for(http, client, verifier)
    wrong_secret = Client(client.tenant, client.app_id, "not-the-secret")
    assert redeem(http, wrong_secret, code, verifier).json()["error"] == "invalid_client"


def test_unregistered_redirect_uris_and_unknown_clients_get_an_error_page(client, http):
    page = authorize(http, client, redirect_uri="https://evil.example.com/cb")
    assert page.status_code == 400 and "AADSTS50011" in page.text
    assert page.headers["content-type"].startswith("text/html")
    unknown = authorize(http, Client(client.tenant, "00000000-0000-0000-0000-00000000dead", ""))
    assert unknown.status_code == 400 and "AADSTS700016" in unknown.text


def test_declined_consent_redirects_with_access_denied(standin, client, http):
    standin.admin.set_consent(decline=True)
    try:
        answer = query_of(authorize(http, client))
    finally:
        standin.admin.set_consent(decline=False)
    assert answer["error"] == "access_denied"
    assert answer["error_description"].startswith("AADSTS65004: User declined to consent")
    assert answer["state"] == "st-1" and "code" not in answer


def test_sign_in_tenant_and_tenant_bound_token_endpoint(standin, client, http):
    other_tenant = standin.admin.add_tenant()
    user = standin.admin.add_user(other_tenant, "someone@other.example")
    verifier = secrets.token_urlsafe(64)
    code = code_for(http, client, verifier, tenant=other_tenant)
    assert aadsts(redeem(http, client, code, verifier, tenant=client.tenant)) == "invalid_grant AADSTS700005"
    standin.admin.set_sign_in(other_tenant, user["id"])
    try:
        code = code_for(http, client, verifier)
    finally:
        standin.admin.set_sign_in(None)
    body = redeem(http, client, code, verifier, tenant=other_tenant).json()
    identity = jwt.decode(body["id_token"], options={"verify_signature": False})
    assert identity["tid"] == other_tenant and identity["oid"] == user["id"]
    assert identity["preferred_username"] == "someone@other.example"


def test_refresh_tokens_rotate_and_can_be_revoked(standin, client, http):
    verifier = secrets.token_urlsafe(64)
    first = redeem(http, client, code_for(http, client, verifier), verifier).json()["refresh_token"]
    second = refresh(http, client, first).json()["refresh_token"]
    third = refresh(http, client, second, tenant=client.tenant).json()["refresh_token"]
    assert len({first, second, third}) == 3
    assert aadsts(refresh(http, client, first)) == "invalid_grant AADSTS70000"
    assert aadsts(refresh(http, client, "1.Anot-a-token")) == "invalid_grant AADSTS9002313"
    statuses = {t["value"]: t["status"] for t in standin.admin.oauth_tokens()["refreshTokens"]}
    assert (statuses[first], statuses[second], statuses[third]) == ("redeemed", "redeemed", "active")
    assert standin.admin.revoke_refresh_tokens(client.tenant) >= 1
    assert aadsts(refresh(http, client, third)) == "invalid_grant AADSTS50173"


def test_other_grants_at_organizations_still_get_entras_answer(client, http):
    form = {"grant_type": "client_credentials", "client_id": client.app_id, "client_secret": client.secret,
            "scope": "https://vault.azure.net/.default"}
    response = http.post("/organizations/oauth2/v2.0/token", data=form)
    assert response.status_code == 400 and "AADSTS50059" in response.text


# --- signing people in to an app's own API (the console's sign-in) ---------------------------------------------


@pytest.fixture
def own_api(standin: StandIn) -> Iterator[dict[str, Any]]:
    """An API registration that signs people in to itself, a reader and an operator; the account picker on."""
    admin = standin.admin
    tenant = admin.add_tenant()
    api = admin.add_api(tenant, "console api", ["AppConnections.Reader", "AppConnections.Writer"])
    admin.add_redirect_uri(tenant, api["appId"], REDIRECT)
    secret = admin.add_secret(tenant, api["appId"])
    reader = admin.add_user(tenant, f"reader-{secrets.token_hex(3)}@contoso.example", "Reader Person")
    operator = admin.add_user(tenant, f"operator-{secrets.token_hex(3)}@contoso.example", "Operator Person")
    admin.assign_role(tenant, api["appId"], reader["id"], "AppConnections.Reader")
    for role in ("AppConnections.Reader", "AppConnections.Writer"):
        admin.assign_role(tenant, api["appId"], operator["id"], role)
    admin.set_account_picker(True)
    try:
        yield {"client": Client(tenant, api["appId"], secret["secretText"]), "reader": reader, "operator": operator}
    finally:
        admin.set_account_picker(False)


def test_the_account_picker_links_each_user_with_their_roles(own_api, http):  # type: ignore[no-untyped-def]
    client = own_api["client"]
    picker = authorize(http, client, client.tenant, scope="openid profile", nonce="n-1",
                       code_challenge=challenge_of("v" * 43), code_challenge_method="S256")

    assert picker.status_code == 200 and picker.headers["content-type"].startswith("text/html")
    assert "Sign in as Operator Person" in picker.text and "AppConnections.Reader, AppConnections.Writer" in picker.text
    links = [part.split('"', 1)[0].replace("&amp;", "&") for part in picker.text.split('href="')[1:]]
    chosen = next(link for link in links if "operator-" in link)
    assert parse_qs(urlsplit(chosen).query)["login_hint"] == [own_api["operator"]["userPrincipalName"]]
    answered = http.get(chosen)
    assert answered.status_code == 302 and query_of(answered)["state"] == "st-1"


def test_the_id_token_of_a_sign_in_to_the_apps_own_api_has_nonce_and_roles(own_api, http):  # type: ignore[no-untyped-def]
    client, reader = own_api["client"], own_api["reader"]
    verifier = secrets.token_urlsafe(48)
    code = query_of(authorize(http, client, client.tenant, scope="openid profile", nonce="nonce-42",
                              login_hint=reader["userPrincipalName"], code_challenge=challenge_of(verifier),
                              code_challenge_method="S256"))["code"]

    wrong = redeem(http, client, code, "x" * 43, client.tenant, scope="openid profile")
    assert aadsts(wrong) == "invalid_grant AADSTS50148"  # PKCE checked (and the code used up)
    code = query_of(authorize(http, client, client.tenant, scope="openid profile", nonce="nonce-42",
                              login_hint=reader["userPrincipalName"], code_challenge=challenge_of(verifier),
                              code_challenge_method="S256"))["code"]
    body = redeem(http, client, code, verifier, client.tenant, scope="openid profile").json()
    identity = jwt.decode(body["id_token"], options={"verify_signature": False})
    assert identity["aud"] == client.app_id and identity["nonce"] == "nonce-42"
    assert identity["roles"] == ["AppConnections.Reader"]
    assert identity["oid"] == reader["id"] and identity["name"] == "Reader Person"
    assert "refresh_token" not in body  # no offline_access asked


def test_an_id_token_for_another_app_has_no_roles_and_no_nonce_unless_asked(standin, client, http):  # type: ignore[no-untyped-def]
    verifier = secrets.token_urlsafe(48)
    body = redeem(http, client, code_for(http, client, verifier), verifier).json()
    identity = jwt.decode(body["id_token"], options={"verify_signature": False})
    assert "roles" not in identity and "nonce" not in identity
