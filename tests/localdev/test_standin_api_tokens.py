"""Access tokens for the service's own API: an API registration with app roles on the stand-in, roles assigned
to daemons (client credentials through azure-identity) and people (authorization code with PKCE, refresh), each
token checked the way the service checks it (signature against the JWKS of the discovery document, issuer,
audience); and ``python -m localdev token`` against an ``up``-like local environment.

One stand-in per module, as in test_standin.py (SSL_CERT_FILE and REQUESTS_CA_BUNDLE point at its CA).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import ssl
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ClientSecretCredential
from azure.identity.aio import ClientSecretCredential as AsyncClientSecretCredential

from localdev import api_token
from localdev.__main__ import main as localdev_main
from localdev.environment import DEMO_USERS, LocalEnvironment
from localdev.standin import AdminError, StandIn

ROLES = ["AppConnections.Reader", "AppConnections.Writer", "AppConnections.Admin",
         "AppConnections.Reader.azure-key-vault"]
REDIRECT = "https://client.example/callback"


@dataclass
class Daemon:
    app_id: str
    secret: str
    principal_id: str  # its service principal id


@dataclass
class World:
    standin: StandIn
    url: str
    ca: str
    tenant: str
    api: dict[str, Any]
    client: Daemon  # a confidential client: a daemon, and the app people sign in to
    user: dict[str, Any]

    @property
    def api_id(self) -> str:
        return str(self.api["appId"])


def new_daemon(standin: StandIn, tenant: str, name: str = "daemon") -> Daemon:
    app = standin.admin.add_app(tenant, name)
    secret = standin.admin.add_secret(tenant, app["appId"])
    return Daemon(app["appId"], secret["secretText"], app["servicePrincipalId"])


@pytest.fixture(scope="module")
def world(standin: StandIn) -> World:
    admin = standin.admin
    tenant = admin.add_tenant(display_name="Contoso")
    api = admin.add_api(tenant, "app-connections-api", ROLES)
    client = new_daemon(standin, tenant, "daemon and sign-in client")
    admin.add_redirect_uri(tenant, client.app_id, REDIRECT)
    user = admin.add_user(tenant, "ada@contoso.example", "Ada Lovelace")
    return World(standin, standin.url, str(standin.ca_path), tenant, api, client, user)


@pytest.fixture
def http(world: World) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=world.url, verify=ssl.create_default_context(cafile=world.ca)) as client:
        yield client


def credential(world: World, daemon: Daemon) -> ClientSecretCredential:
    return ClientSecretCredential(
        world.tenant, daemon.app_id, daemon.secret, authority=world.url, disable_instance_discovery=True
    )


def validate(world: World, token: str, audience: str | None = None) -> dict[str, Any]:
    """As the service does: discovery document, its jwks_uri, the key by kid, RS256, issuer, audience, times."""
    verify = ssl.create_default_context(cafile=world.ca)
    discovery = f"{world.url}/{world.tenant}/v2.0/.well-known/openid-configuration"
    config = httpx.get(discovery, verify=verify).json()
    keys = jwt.PyJWKSet.from_dict(httpx.get(config["jwks_uri"], verify=verify).json())
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256"
    key = next(k for k in keys.keys if k.key_id == header["kid"])
    assert config["issuer"] == f"{world.url}/{world.tenant}/v2.0"
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=["RS256"], audience=audience or world.api_id, issuer=config["issuer"],
        options={"require": ["exp", "nbf", "iat", "iss", "aud"]},
    )
    return claims


def challenge_of(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def sign_in(http: httpx.Client, world: World, scope: str, **extra: str) -> httpx.Response:
    """The authorization-code flow with PKCE; the token endpoint's answer."""
    verifier = secrets.token_urlsafe(48)
    params = {"client_id": world.client.app_id, "response_type": "code", "redirect_uri": REDIRECT, "scope": scope,
              "state": "s", "code_challenge": challenge_of(verifier), "code_challenge_method": "S256", **extra}
    answer = http.get(f"/{world.tenant}/oauth2/v2.0/authorize", params=params)
    assert answer.status_code == 302, answer.text
    query = {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["location"]).query).items()}
    assert "code" in query, query
    form = {"grant_type": "authorization_code", "client_id": world.client.app_id, "client_secret": world.client.secret,
            "code": query["code"], "redirect_uri": REDIRECT, "code_verifier": verifier, "scope": scope}
    return http.post(f"/{world.tenant}/oauth2/v2.0/token", data=form)


# --- daemons -------------------------------------------------------------------------------------------


def test_a_daemon_gets_its_assigned_roles_through_azure_identity(world: World) -> None:
    daemon = new_daemon(world.standin, world.tenant)
    admin = world.standin.admin
    assignment = admin.assign_role(world.tenant, world.api_id, daemon.app_id, "AppConnections.Writer")
    assert assignment["principalId"] == daemon.principal_id and assignment["principalType"] == "ServicePrincipal"
    # the service principal id names the same principal as the appId
    admin.assign_role(world.tenant, world.api_id, daemon.principal_id, "AppConnections.Reader.azure-key-vault")
    admin.assign_role(world.tenant, world.api_id, daemon.app_id, "AppConnections.Writer")  # idempotent
    token = credential(world, daemon).get_token(f"api://{world.api_id}/.default")
    claims = validate(world, token.token)
    assert claims["aud"] == world.api_id
    assert claims["iss"] == f"{world.url}/{world.tenant}/v2.0"
    assert claims["tid"] == world.tenant
    assert claims["oid"] == claims["sub"] == daemon.principal_id
    assert claims["azp"] == daemon.app_id
    assert claims["idtyp"] == "app" and claims["ver"] == "2.0"
    assert claims["roles"] == ["AppConnections.Reader.azure-key-vault", "AppConnections.Writer"]
    assert claims["nbf"] <= claims["iat"] + 1 and claims["exp"] > claims["iat"]
    assert "appid" not in claims and "scp" not in claims
    assert token.expires_on > claims["iat"]


def test_the_bare_app_id_scope_and_async_credentials_give_the_same_token_shape(world: World) -> None:
    import asyncio

    daemon = new_daemon(world.standin, world.tenant)
    world.standin.admin.assign_role(world.tenant, world.api_id, daemon.app_id, "AppConnections.Admin")
    sync = credential(world, daemon).get_token(f"{world.api_id}/.default")
    assert validate(world, sync.token)["roles"] == ["AppConnections.Admin"]

    async def get() -> str:
        async with AsyncClientSecretCredential(
            world.tenant, daemon.app_id, daemon.secret, authority=world.url, connection_verify=world.ca
        ) as cred:
            return (await cred.get_token(f"api://{world.api_id}/.default")).token

    claims = validate(world, asyncio.run(get()))
    assert claims["roles"] == ["AppConnections.Admin"] and claims["azp"] == daemon.app_id


def test_unassigned_roles_are_absent(world: World) -> None:
    daemon = new_daemon(world.standin, world.tenant)
    none = validate(world, credential(world, daemon).get_token(f"api://{world.api_id}/.default").token)
    assert "roles" not in none and none["idtyp"] == "app"
    admin = world.standin.admin
    admin.assign_role(world.tenant, world.api_id, daemon.app_id, "AppConnections.Reader")
    admin.assign_role(world.tenant, world.api_id, daemon.app_id, "AppConnections.Writer")
    admin.unassign_role(world.tenant, world.api_id, daemon.principal_id, "AppConnections.Writer")
    claims = validate(world, credential(world, daemon).get_token(f"api://{world.api_id}/.default").token)
    assert claims["roles"] == ["AppConnections.Reader"]
    with pytest.raises(AdminError) as missing:
        admin.unassign_role(world.tenant, world.api_id, daemon.app_id, "AppConnections.Writer")
    assert missing.value.status == 404


def test_roles_the_api_does_not_define_and_unknown_principals_are_refused(world: World) -> None:
    admin = world.standin.admin
    with pytest.raises(AdminError) as undefined:
        admin.assign_role(world.tenant, world.api_id, world.client.app_id, "AppConnections.Superuser")
    assert undefined.value.status == 400 and "defines no app role" in str(undefined.value)
    with pytest.raises(AdminError) as nobody:
        admin.assign_role(world.tenant, world.api_id, "00000000-0000-0000-0000-00000000dead", "AppConnections.Reader")
    assert nobody.value.status == 404
    plain = admin.add_app(world.tenant, "not an api")
    with pytest.raises(AdminError) as not_api:
        admin.assign_role(world.tenant, plain["appId"], world.client.app_id, "AppConnections.Reader")
    assert not_api.value.status == 400


def test_an_api_the_tenant_lacks_is_aadsts500011(world: World) -> None:
    with pytest.raises(ClientAuthenticationError) as caught:
        credential(world, world.client).get_token("api://00000000-0000-0000-0000-00000000beef/.default")
    assert "AADSTS500011" in str(caught.value)


def test_the_api_registration_is_described(world: World) -> None:
    api = world.api
    assert api["identifierUri"] == f"api://{api['appId']}"
    assert api["appRoles"] == ROLES
    described = world.standin.admin.get_api(world.tenant, world.api_id)
    assert described["appId"] == world.api_id and described["identifierUri"] == api["identifierUri"]
    app = world.standin.admin.get_app(world.tenant, world.api_id)  # it is an app registration too
    assert app["identifierUris"] == [api["identifierUri"]] and app["appRoles"] == ROLES


# --- people --------------------------------------------------------------------------------------------


def test_a_user_gets_their_roles_through_the_authorization_code_flow(world: World, http: httpx.Client) -> None:
    admin = world.standin.admin
    assignment = admin.assign_role(world.tenant, world.api_id, world.user["id"], "AppConnections.Admin")
    assert assignment["principalType"] == "User" and assignment["principalId"] == world.user["id"]
    admin.assign_role(world.tenant, world.api_id, "ada@contoso.example", "AppConnections.Reader")  # by UPN too
    answer = sign_in(http, world, f"openid profile offline_access api://{world.api_id}/.default",
                     login_hint="ada@contoso.example")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["scope"] == f"api://{world.api_id}/user_impersonation"
    claims = validate(world, body["access_token"])
    assert claims["aud"] == world.api_id and claims["tid"] == world.tenant
    assert claims["oid"] == world.user["id"] and claims["sub"]
    assert claims["name"] == "Ada Lovelace" and claims["preferred_username"] == "ada@contoso.example"
    assert claims["roles"] == ["AppConnections.Admin", "AppConnections.Reader"]
    assert claims["azp"] == world.client.app_id and claims["scp"] == "user_impersonation"
    assert "idtyp" not in claims and claims["ver"] == "2.0"
    identity = validate(world, body["id_token"], audience=world.client.app_id)
    assert identity["oid"] == world.user["id"] and identity["tid"] == world.tenant
    assert identity["preferred_username"] == "ada@contoso.example" and identity["name"] == "Ada Lovelace"

    # the refresh token grant gives the roles assigned now
    admin.unassign_role(world.tenant, world.api_id, world.user["id"], "AppConnections.Reader")
    refreshed = http.post(f"/{world.tenant}/oauth2/v2.0/token", data={
        "grant_type": "refresh_token", "client_id": world.client.app_id, "client_secret": world.client.secret,
        "refresh_token": body["refresh_token"], "scope": f"offline_access api://{world.api_id}/.default"})
    assert refreshed.status_code == 200, refreshed.text
    again = validate(world, refreshed.json()["access_token"])
    assert again["roles"] == ["AppConnections.Admin"] and again["oid"] == world.user["id"]


def test_a_user_without_assignments_has_no_roles(world: World, http: httpx.Client) -> None:
    other = world.standin.admin.add_user(world.tenant, "bob@contoso.example", "Bob")
    body = sign_in(http, world, f"{world.api_id}/.default", login_hint=other["userPrincipalName"]).json()
    claims = validate(world, body["access_token"])
    assert claims["oid"] == other["id"] and "roles" not in claims and "id_token" not in body


def test_login_hint_for_nobody_and_unknown_scopes_are_refused(world: World, http: httpx.Client) -> None:
    params = {"client_id": world.client.app_id, "response_type": "code", "redirect_uri": REDIRECT,
              "scope": f"api://{world.api_id}/.default", "login_hint": "nobody@contoso.example"}
    page = http.get(f"/{world.tenant}/oauth2/v2.0/authorize", params=params)
    assert page.status_code == 400 and "AADSTS50034" in page.text
    params.update(scope=f"api://{world.api_id}/Other.Scope", login_hint="ada@contoso.example")
    refused = http.get(f"/{world.tenant}/oauth2/v2.0/authorize", params=params)
    query = parse_qs(urlsplit(refused.headers["location"]).query)
    assert query["error"] == ["invalid_scope"] and "AADSTS65005" in query["error_description"][0]
    params.update(scope="api://00000000-0000-0000-0000-00000000beef/.default")
    missing = http.get(f"/{world.tenant}/oauth2/v2.0/authorize", params=params)
    assert parse_qs(urlsplit(missing.headers["location"]).query)["error"] == ["invalid_resource"]


# --- other resources are unchanged ---------------------------------------------------------------------


def test_tokens_for_other_resources_keep_their_shape(world: World, http: httpx.Client) -> None:
    admin = world.standin.admin
    admin.assign_role(world.tenant, world.api_id, world.client.app_id, "AppConnections.Admin")
    admin.grant_roles(world.tenant, world.client.app_id, ["Application.ReadWrite.OwnedBy"])
    vault = credential(world, world.client).get_token("https://vault.azure.net/.default").token
    claims = world.standin.ctx.signer.verify(vault, audience="https://vault.azure.net")
    assert claims["appid"] == world.client.app_id and claims["idtyp"] == "app"
    assert claims["roles"] == ["Application.ReadWrite.OwnedBy"]  # the app's own permissions, not API roles
    delegated = sign_in(http, world, "openid https://vault.azure.net/.default", login_hint="ada@contoso.example")
    access = world.standin.ctx.signer.verify(delegated.json()["access_token"], audience="https://vault.azure.net")
    assert access["idtyp"] == "user" and "roles" not in access and access["upn"] == "ada@contoso.example"


# --- python -m localdev token, against an `up`-like environment --------------------------------------


@pytest.fixture(scope="module")
def local_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    env = LocalEnvironment(tmp_path_factory.mktemp("localdev"), with_api=True)
    env.start()
    try:
        yield env
    finally:
        env.stop()


def run_token(capsys: pytest.CaptureFixture[str], env: LocalEnvironment, *args: str) -> tuple[int, str, str]:
    code = localdev_main(["token", "--state-dir", str(env.state_dir), *args])
    out, err = capsys.readouterr()
    return code, out.strip(), err


def env_world(env: LocalEnvironment) -> World:
    assert env.standin is not None and env.api is not None
    access = env.api
    daemon = Daemon(access.daemon_client_id, access.daemon_client_secret, access.daemon_principal_id)
    return World(env.standin, env.standin.url, str(env.standin.ca_path), access.tenant_id,
                 {"appId": access.api_app_id}, daemon, {"id": access.user_id})


def test_up_registers_the_api_and_sets_auth_settings(local_env: LocalEnvironment) -> None:
    access = local_env.api
    assert access is not None and local_env.standin is not None and local_env.identity is not None
    assert local_env.settings["AUTH_TENANT_ID"] == access.tenant_id == local_env.identity.tenant_id
    assert local_env.settings["AUTH_AUDIENCE"] == access.api_app_id
    environ: dict[str, str] = {}
    local_env.apply(environ)
    assert environ["AUTH_AUDIENCE"] == access.api_app_id and environ["AZURE_AUTHORITY_HOST"] == access.standin_url
    assert local_env.register_api() is access  # once
    path = local_env.api_access_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert api_token.ApiAccess.load(path) == access
    api = local_env.standin.admin.get_api(access.tenant_id, access.api_app_id)
    for role in ("Reader", "Writer", "Rotator", "Auditor", "Admin"):
        assert f"AppConnections.{role}" in api["appRoles"]
        for app in ("azure-key-vault", "azure-app-configuration", "azure-client-secrets"):
            assert f"AppConnections.{role}.{app}" in api["appRoles"]
    held = {(a["principalId"], a["role"]) for a in api["assignments"]}
    admins = {(access.user_id, "AppConnections.Admin"), (access.daemon_principal_id, "AppConnections.Admin")}
    assert admins <= held
    # The console's demo people (localdev.environment.DEMO_USERS) and nobody else.
    users = {u["userPrincipalName"]: u["id"] for u in local_env.standin.admin.oauth_tokens()["users"]}
    people = {(users[upn], role) for upn, (_, roles) in DEMO_USERS.items() for role in roles}
    assert held - admins == people
    # The console signs in with the host's managed identity, through a federated credential on the registration.
    assert "CONSOLE_CLIENT_SECRET" not in local_env.settings
    assert local_env.federation is not None
    federated = local_env.standin.admin.federated_credentials(access.tenant_id, access.api_app_id)
    assert [(f["issuer"], f["subject"]) for f in federated] == [
        (local_env.federation.issuer, local_env.federation.principal_id)]
    assert access.user_principal_name == "admin@contoso.example"


def test_the_token_command_gives_a_daemon_exactly_the_roles_asked(
    local_env: LocalEnvironment, capsys: pytest.CaptureFixture[str]
) -> None:
    world = env_world(local_env)
    code, token, err = run_token(capsys, local_env, "--role", "AppConnections.Admin")
    assert code == 0, err
    claims = validate(world, token)
    assert claims["roles"] == ["AppConnections.Admin"] and claims["idtyp"] == "app"
    assert claims["oid"] == world.client.principal_id
    code, token, err = run_token(capsys, local_env, "--role", "Reader", "--role", "AppConnections.Auditor")
    assert code == 0, err
    assert validate(world, token)["roles"] == ["AppConnections.Auditor", "AppConnections.Reader"]
    code, token, err = run_token(capsys, local_env, "--role", "Writer", "--role", "Rotator", "--app", "azure-key-vault",
                                 "--claims")
    assert code == 0, err
    assert validate(world, token)["roles"] == ["AppConnections.Rotator.azure-key-vault",
                                               "AppConnections.Writer.azure-key-vault"]
    assert '"roles"' in err  # --claims shows them on stderr
    code, token, err = run_token(capsys, local_env)  # no --role: the roles as they are
    assert code == 0 and validate(world, token)["roles"] == ["AppConnections.Rotator.azure-key-vault",
                                                             "AppConnections.Writer.azure-key-vault"]
    code, token, err = run_token(capsys, local_env, "--role", "AppConnections.Admin")
    assert code == 0 and validate(world, token)["roles"] == ["AppConnections.Admin"]


def test_the_token_command_signs_the_demo_administrator_in(
    local_env: LocalEnvironment, capsys: pytest.CaptureFixture[str]
) -> None:
    world = env_world(local_env)
    code, token, err = run_token(capsys, local_env, "--role", "AppConnections.Admin", "--user")
    assert code == 0, err
    claims = validate(world, token)
    assert claims["roles"] == ["AppConnections.Admin"] and "idtyp" not in claims
    assert claims["oid"] == world.user["id"] and claims["preferred_username"] == "admin@contoso.example"
    code, token, err = run_token(capsys, local_env, "--role", "Auditor", "--app", "azure-client-secrets", "--user")
    assert code == 0, err
    assert validate(world, token)["roles"] == ["AppConnections.Auditor.azure-client-secrets"]
    code, token, err = run_token(capsys, local_env, "--role", "Admin", "--user")
    assert code == 0 and validate(world, token)["roles"] == ["AppConnections.Admin"]


def test_the_token_command_explains_what_it_cannot_do(
    local_env: LocalEnvironment, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run_token(capsys, local_env, "--role", "Superuser")
    assert code == 1 and out == "" and "defines no app role AppConnections.Superuser" in err
    code = localdev_main(["token", "--state-dir", str(tmp_path), "--role", "Admin"])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and "python -m localdev up" in err


def test_stopping_the_environment_removes_the_access_file(tmp_path: Path) -> None:
    env = LocalEnvironment(tmp_path)
    env.start()
    try:
        assert "AUTH_AUDIENCE" not in env.settings and env.api is None  # only when asked for
        access = env.register_api()
        assert env.settings["AUTH_AUDIENCE"] == access.api_app_id
        assert env.api_access_path.exists()
    finally:
        env.stop()
    assert not env.api_access_path.exists()


def test_role_names() -> None:
    assert api_token.role_names(["Admin", "AppConnections.Reader", "Admin"]) == [
        "AppConnections.Admin", "AppConnections.Reader"]
    assert api_token.role_names(["Writer"], "azure-key-vault") == ["AppConnections.Writer.azure-key-vault"]
    with pytest.raises(ValueError):
        api_token.role_names(["AppConnections."])
