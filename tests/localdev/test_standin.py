"""The Entra ID + Key Vault stand-in, exercised with the real SDKs over TLS.

One stand-in per module: Key Vault's challenge cache is global to the process and keyed by host:port.
Async clients get ``connection_verify=`` as well as the environment: aiohttp builds its default SSL context
when it is imported, so ``SSL_CERT_FILE`` set later does not reach it.
"""

from __future__ import annotations

import base64
import datetime as dt
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceExistsError
from azure.identity import CertificateCredential, ClientSecretCredential
from azure.identity.aio import CertificateCredential as AsyncCertificateCredential
from azure.identity.aio import ClientAssertionCredential as AsyncClientAssertionCredential
from azure.identity.aio import ClientSecretCredential as AsyncClientSecretCredential
from azure.keyvault.secrets import SecretClient
from azure.keyvault.secrets.aio import SecretClient as AsyncSecretClient
from cryptography import x509

from localdev.standin import StandIn, make_certificate
from localdev.standin.pki import Thumbprints

VAULT_SCOPE = "https://vault.azure.net/.default"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class World:
    standin: StandIn
    url: str
    ca: str
    tenant: str
    app_id: str
    secret: str
    key_id: str


@pytest.fixture(scope="module")
def world(standin: StandIn) -> World:
    admin = standin.admin
    tenant = admin.add_tenant()
    admin.set_vault_tenant(tenant)
    app = admin.add_app(tenant, "vault user", roles=["Application.ReadWrite.OwnedBy"])
    secret = admin.add_secret(tenant, app["appId"], display_name="main")
    return World(
        standin, standin.url, str(standin.ca_path), tenant, app["appId"], secret["secretText"], secret["keyId"]
    )


@pytest.fixture
def http(world: World) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=world.url, verify=ssl.create_default_context(cafile=world.ca)) as client:
        yield client


def sync_secret_credential(
    world: World, tenant: str | None = None, client: str | None = None, secret: str | None = None
) -> ClientSecretCredential:
    return ClientSecretCredential(
        tenant or world.tenant,
        client or world.app_id,
        secret or world.secret,
        authority=world.url,
        disable_instance_discovery=True,
    )


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def chain_text(exc: BaseException | None) -> str:
    texts = []
    while exc is not None:
        texts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(texts)


def new_app(world: World, **kwargs: Any) -> str:
    return str(world.standin.admin.add_app(world.tenant, **kwargs)["appId"])


# --- discovery --------------------------------------------------------------------------------------------


def test_discovery_documents(world: World, http: httpx.Client) -> None:
    config = http.get(f"/{world.tenant}/v2.0/.well-known/openid-configuration").json()
    assert config["issuer"] == f"{world.url}/{world.tenant}/v2.0"
    assert config["token_endpoint"] == f"{world.url}/{world.tenant}/oauth2/v2.0/token"
    assert config["authorization_endpoint"] == f"{world.url}/{world.tenant}/oauth2/v2.0/authorize"
    assert config["tenant_region_scope"]
    keys = http.get(config["jwks_uri"].removeprefix(world.url)).json()["keys"]
    assert keys[0]["kty"] == "RSA"
    assert keys[0]["kid"]

    alias = http.get("/organizations/v2.0/.well-known/openid-configuration").json()
    assert alias["issuer"] == f"{world.url}/{{tenantid}}/v2.0"

    missing = http.get(f"/{uuid.uuid4()}/v2.0/.well-known/openid-configuration")
    assert missing.status_code == 400
    assert missing.json()["error_codes"] == [90002]


# --- client secrets ----------------------------------------------------------------------------------------


def test_sync_client_secret_token(world: World, http: httpx.Client) -> None:
    token = sync_secret_credential(world).get_token(VAULT_SCOPE)
    assert token.expires_on > time.time() + 3000
    jwks = jwt.PyJWKSet.from_dict(http.get(f"/{world.tenant}/discovery/v2.0/keys").json())
    claims = jwt.decode(
        token.token,
        jwks.keys[0].key,
        algorithms=["RS256"],
        audience="https://vault.azure.net",
        issuer=f"{world.url}/{world.tenant}/v2.0",
    )
    assert claims["tid"] == world.tenant
    assert claims["appid"] == claims["azp"] == world.app_id
    assert claims["roles"] == ["Application.ReadWrite.OwnedBy"]
    app = world.standin.admin.get_app(world.tenant, world.app_id)
    assert claims["oid"] == app["servicePrincipalId"]
    assert {"iat", "nbf", "exp"} <= claims.keys()


def test_token_response_shape(world: World, http: httpx.Client) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": world.app_id,
        "client_secret": world.secret,
        "scope": "https://graph.microsoft.com/.default",
    }
    body = http.post(f"/{world.tenant}/oauth2/v2.0/token", data=form).json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == body["ext_expires_in"] == 3599
    assert claims_of(body["access_token"])["aud"] == "https://graph.microsoft.com"


@pytest.mark.parametrize(
    ("case", "code"),
    [("wrong-secret", "AADSTS7000215"), ("unknown-app", "AADSTS700016"), ("expired", "AADSTS7000222")],
)
def test_sync_client_secret_errors(world: World, case: str, code: str) -> None:
    if case == "wrong-secret":
        credential = sync_secret_credential(world, secret="not-the-secret")
    elif case == "unknown-app":
        credential = sync_secret_credential(world, client=str(uuid.uuid4()))
    else:
        app_id = new_app(world, display_name="expired")
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        old = world.standin.admin.add_secret(
            world.tenant, app_id, expires_at=past, starts_at=past - dt.timedelta(days=30)
        )
        credential = sync_secret_credential(world, client=app_id, secret=old["secretText"])
    with pytest.raises(ClientAuthenticationError) as caught:
        credential.get_token(VAULT_SCOPE)
    assert code in str(caught.value)


def test_sync_unknown_tenant_fails_in_discovery(world: World) -> None:
    # As with Entra: MSAL's discovery gets 400 AADSTS90002; azure-identity's message drops it, the chain keeps it.
    with pytest.raises(ClientAuthenticationError) as caught:
        sync_secret_credential(world, tenant=str(uuid.uuid4())).get_token(VAULT_SCOPE)
    assert "Unable to get authority configuration" in str(caught.value)
    assert "AADSTS90002" in chain_text(caught.value)


def test_token_endpoint_errors_are_entra_shaped(world: World, http: httpx.Client) -> None:
    response = http.post(
        f"/{world.tenant}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": world.app_id,
            "client_secret": "x",
            "scope": VAULT_SCOPE,
        },
        headers={"client-request-id": "11111111-2222-3333-4444-555555555555"},
    )
    assert response.status_code == 401
    body = response.json()
    assert body["error"] == "invalid_client"
    assert body["error_codes"] == [7000215]
    assert body["correlation_id"] == "11111111-2222-3333-4444-555555555555"
    description = body["error_description"]
    assert description.startswith("AADSTS7000215: Invalid client secret provided.")
    assert f"for a secret added to app '{world.app_id}'." in description
    assert f"Trace ID: {body['trace_id']} Correlation ID: {body['correlation_id']} Timestamp: " in description
    assert body["timestamp"] in description

    unknown = http.post(f"/{uuid.uuid4()}/oauth2/v2.0/token", data={"grant_type": "client_credentials"})
    assert (unknown.status_code, unknown.json()["error"], unknown.json()["error_codes"]) == (
        400,
        "invalid_request",
        [90002],
    )
    grant = http.post(f"/{world.tenant}/oauth2/v2.0/token", data={"grant_type": "password", "client_id": world.app_id})
    assert (grant.status_code, grant.json()["error"], grant.json()["error_codes"]) == (
        400,
        "unsupported_grant_type",
        [70003],
    )
    scope = http.post(
        f"/{world.tenant}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": world.app_id, "client_secret": world.secret},
    )
    assert (scope.status_code, scope.json()["error_codes"]) == (400, [900144])


async def test_async_client_secret(world: World) -> None:
    async with AsyncClientSecretCredential(
        world.tenant, world.app_id, world.secret, authority=world.url, connection_verify=world.ca
    ) as credential:
        token = await credential.get_token(VAULT_SCOPE)
    assert claims_of(token.token)["appid"] == world.app_id

    async with AsyncClientSecretCredential(
        str(uuid.uuid4()), world.app_id, world.secret, authority=world.url, connection_verify=world.ca
    ) as credential:
        with pytest.raises(ClientAuthenticationError, match="AADSTS90002"):
            await credential.get_token(VAULT_SCOPE)
    async with AsyncClientSecretCredential(
        world.tenant, world.app_id, "wrong", authority=world.url, connection_verify=world.ca
    ) as credential:
        with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
            await credential.get_token(VAULT_SCOPE)


# --- certificates -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert_app(world: World) -> tuple[str, dict[str, str]]:
    """An app with two registered RSA certificates (PKCS#8 and PKCS#1 keys): {format: cert+key PEM}."""
    app_id = new_app(world, display_name="cert user")
    pems = {}
    for key_format in ("pkcs8", "pkcs1"):
        cert, key = make_certificate(f"cert-{key_format}", key_format=key_format)  # type: ignore[arg-type]
        registered = world.standin.admin.add_certificate(world.tenant, app_id, cert)
        assert registered["x5t"] == Thumbprints.of(x509.load_pem_x509_certificate(cert.encode())).x5t
        pems[key_format] = cert + key
    assert "BEGIN RSA PRIVATE KEY" in pems["pkcs1"]
    assert "BEGIN PRIVATE KEY" in pems["pkcs8"]
    return app_id, pems


def last_assertion(world: World) -> dict[str, Any]:
    return world.standin.admin.token_requests()[-1]["assertion"]


@pytest.mark.parametrize("key_format", ["pkcs8", "pkcs1"])
def test_sync_certificate_credential(world: World, cert_app: tuple[str, dict[str, str]], key_format: str) -> None:
    app_id, pems = cert_app
    credential = CertificateCredential(
        world.tenant,
        app_id,
        certificate_data=pems[key_format].encode(),
        authority=world.url,
        disable_instance_discovery=True,
    )
    token = credential.get_token(VAULT_SCOPE)
    assert claims_of(token.token)["appidacr"] == "2"
    assertion = last_assertion(world)
    assert assertion["header"]["alg"] == "RS256"
    assert "x5t" in assertion["header"]
    assert assertion["claims"]["aud"] == f"{world.url}/{world.tenant}/oauth2/v2.0/token"


@pytest.mark.parametrize("key_format", ["pkcs8", "pkcs1"])
async def test_async_certificate_credential(
    world: World, cert_app: tuple[str, dict[str, str]], key_format: str
) -> None:
    app_id, pems = cert_app
    async with AsyncCertificateCredential(
        world.tenant,
        app_id,
        certificate_data=pems[key_format].encode(),
        authority=world.url,
        connection_verify=world.ca,
    ) as credential:
        token = await credential.get_token(VAULT_SCOPE)
    assert claims_of(token.token)["appid"] == app_id
    assertion = last_assertion(world)
    assert assertion["header"]["alg"] == "PS256"
    assert "x5t#S256" in assertion["header"]
    assert assertion["claims"]["aud"] == f"{world.url}/{world.tenant}/oauth2/v2.0/token"


async def test_unregistered_certificate_is_refused(world: World, cert_app: tuple[str, dict[str, str]]) -> None:
    app_id, _ = cert_app
    cert, key = make_certificate("stranger")
    sync = CertificateCredential(
        world.tenant,
        app_id,
        certificate_data=(cert + key).encode(),
        authority=world.url,
        disable_instance_discovery=True,
    )
    with pytest.raises(ClientAuthenticationError, match="AADSTS700027"):
        sync.get_token(VAULT_SCOPE)
    async with AsyncCertificateCredential(
        world.tenant, app_id, certificate_data=(cert + key).encode(), authority=world.url, connection_verify=world.ca
    ) as credential:
        with pytest.raises(ClientAuthenticationError, match="AADSTS700027"):
            await credential.get_token(VAULT_SCOPE)


def test_certificate_credential_needs_rsa() -> None:
    cert, key = make_certificate("ec", key_type="ec")
    with pytest.raises(ValueError, match="RSA private key"):
        CertificateCredential(str(uuid.uuid4()), str(uuid.uuid4()), certificate_data=(cert + key).encode())


def signed_assertion(cert_pem: str, key_pem: str, client_id: str, audience: str, alg: str = "RS256",
                     **overrides: Any) -> str:
    thumbprints = Thumbprints.of(x509.load_pem_x509_certificate(cert_pem.encode()))
    now = int(time.time())
    claims = {
        "aud": audience,
        "iss": client_id,
        "sub": client_id,
        "jti": str(uuid.uuid4()),
        "nbf": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return jwt.encode(claims, key_pem, algorithm=alg, headers={"x5t#S256": thumbprints.x5t_s256})


async def test_an_rs256_client_assertion_signs_in_and_an_es256_one_is_refused_as_entra_refuses_it(
        world: World) -> None:
    app_id = new_app(world, display_name="assertion user")
    cert, key = make_certificate("rsa", key_format="pkcs1")
    world.standin.admin.add_certificate(world.tenant, app_id, cert)
    audience = f"{world.url}/{world.tenant}/oauth2/v2.0/token"
    async with AsyncClientAssertionCredential(
        world.tenant,
        app_id,
        lambda: signed_assertion(cert, key, app_id, audience),
        authority=world.url,
        connection_verify=world.ca,
    ) as credential:
        token = await credential.get_token(VAULT_SCOPE)
    assert claims_of(token.token)["appid"] == app_id
    assert last_assertion(world)["header"]["alg"] == "RS256"

    ec_cert, ec_key = make_certificate("ec", key_type="ec")
    world.standin.admin.add_certificate(world.tenant, app_id, ec_cert)
    async with AsyncClientAssertionCredential(
        world.tenant,
        app_id,
        lambda: signed_assertion(ec_cert, ec_key, app_id, audience, alg="ES256"),
        authority=world.url,
        connection_verify=world.ca,
    ) as credential:
        with pytest.raises(ClientAuthenticationError, match=r"AADSTS5002738.*'ES256' is not a supported"):
            await credential.get_token(VAULT_SCOPE)


def test_assertion_checks(world: World, http: httpx.Client) -> None:
    app_id = new_app(world, display_name="assertion checks")
    cert, key = make_certificate("rsa")
    world.standin.admin.add_certificate(world.tenant, app_id, cert)
    endpoint = f"{world.url}/{world.tenant}/oauth2/v2.0/token"

    def post(assertion: str) -> httpx.Response:
        return http.post(
            f"/{world.tenant}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": app_id,
                "scope": VAULT_SCOPE,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
            },
        )

    for audience in (
        endpoint,
        endpoint + "/",
        endpoint.replace("127.0.0.1", "localhost"),
        f"{world.url}/{world.tenant}/v2.0",
    ):
        assert post(signed_assertion(cert, key, app_id, audience)).status_code == 200, audience

    def code(response: httpx.Response) -> int:
        assert response.status_code == 401
        return int(response.json()["error_codes"][0])

    now = int(time.time())
    assert code(post(signed_assertion(cert, key, app_id, f"{world.url}/other/oauth2/v2.0/token"))) == 700027
    assert code(post(signed_assertion(cert, key, app_id, endpoint, exp=now - 3600, nbf=now - 7200))) == 700024
    assert code(post(signed_assertion(cert, key, app_id, endpoint, nbf=now + 3600, exp=now + 7200))) == 700024
    assert code(post(signed_assertion(cert, key, app_id, endpoint, iss=str(uuid.uuid4())))) == 700021
    _, other_key = make_certificate("other")
    assert code(post(signed_assertion(cert, other_key, app_id, endpoint))) == 700027  # same x5t, wrong key
    assert code(post("not.a.jwt")) == 50027


# --- Key Vault ------------------------------------------------------------------------------------------------


def test_key_vault_sync(world: World) -> None:
    client = SecretClient(world.url, sync_secret_credential(world), verify_challenge_resource=False)
    first = client.set_secret("conn-1", "v1", tags={"app": "azure-key-vault"}, content_type="application/json")
    assert first.id == f"{world.url}/secrets/conn-1/{first.properties.version}"
    assert len(first.properties.version) == 32
    second = client.set_secret("conn-1", "v2")
    assert client.get_secret("conn-1").value == "v2"
    old = client.get_secret("conn-1", first.properties.version)
    assert (old.value, old.properties.tags, old.properties.content_type) == (
        "v1",
        {"app": "azure-key-vault"},
        "application/json",
    )
    assert old.properties.recovery_level == "Recoverable+Purgeable"
    versions = {p.version for p in client.list_properties_of_secret_versions("conn-1")}
    assert versions == {first.properties.version, second.properties.version}
    assert "conn-1" in {p.name for p in client.list_properties_of_secrets()}

    updated = client.update_secret_properties("conn-1", first.properties.version, enabled=False, tags={"state": "old"})
    assert updated.enabled is False
    assert updated.tags == {"state": "old"}
    with pytest.raises(HttpResponseError) as disabled:
        client.get_secret("conn-1", first.properties.version)
    assert disabled.value.status_code == 403
    assert "SecretDisabled" in str(disabled.value)

    poller = client.begin_delete_secret("conn-1")
    poller.wait()
    deleted = poller.result()
    assert deleted.recovery_id == f"{world.url}/deletedsecrets/conn-1"
    assert deleted.deleted_date is not None
    assert deleted.scheduled_purge_date is not None
    assert client.get_deleted_secret("conn-1").name == "conn-1"
    with pytest.raises(ResourceExistsError):
        client.set_secret("conn-1", "v3")
    client.begin_recover_deleted_secret("conn-1").wait()
    assert client.get_secret("conn-1").value == "v2"

    client.begin_delete_secret("conn-1").wait()
    client.purge_deleted_secret("conn-1")
    assert "conn-1" not in world.standin.admin.vault_secrets()
    assert client.set_secret("conn-1", "fresh").value == "fresh"
    # A value is at most 25 KB, as Key Vault's
    assert len(client.set_secret("conn-1", "x" * 25 * 1024).value or "") == 25 * 1024
    with pytest.raises(HttpResponseError) as too_big:
        client.set_secret("conn-1", "x" * (25 * 1024 + 1))
    assert too_big.value.status_code == 400 and "BadParameter" in str(too_big.value)
    client.close()


def test_key_vault_paging(world: World) -> None:
    client = SecretClient(world.url, sync_secret_credential(world), verify_challenge_resource=False)
    for i in range(30):
        client.set_secret("many", str(i))
    assert len(list(client.list_properties_of_secret_versions("many", max_page_size=7))) == 30
    client.close()


async def test_key_vault_async(world: World) -> None:
    async with (
        AsyncClientSecretCredential(
            world.tenant, world.app_id, world.secret, authority=world.url, connection_verify=world.ca
        ) as credential,
        AsyncSecretClient(
            world.url,
            credential,
            verify_challenge_resource=False,
            connection_verify=world.ca,
        ) as client,
    ):
        first = await client.set_secret("async-1", "a1", tags={"k": "v"}, content_type="text/plain")
        await client.set_secret("async-1", "a2")
        assert (await client.get_secret("async-1")).value == "a2"
        assert (await client.get_secret("async-1", first.properties.version)).value == "a1"
        versions = [p.version async for p in client.list_properties_of_secret_versions("async-1")]
        assert len(versions) == 2
        await client.update_secret_properties("async-1", first.properties.version, enabled=False)
        with pytest.raises(HttpResponseError, match="SecretDisabled"):
            await client.get_secret("async-1", first.properties.version)
        deleted = await client.delete_secret("async-1")  # the aio client polls GET /deletedsecrets/{name}
        assert deleted.recovery_id == f"{world.url}/deletedsecrets/async-1"
        with pytest.raises(ResourceExistsError):
            await client.set_secret("async-1", "a3")
        await client.purge_deleted_secret("async-1")
    stored = world.standin.admin.vault_secrets()
    assert "async-1" not in stored


def test_key_vault_challenge_and_auth(world: World, http: httpx.Client) -> None:
    challenge = f'Bearer authorization="{world.url}/{world.tenant}", resource="https://vault.azure.net"'
    graph_token = sync_secret_credential(world).get_token("https://graph.microsoft.com/.default").token
    vault_token = sync_secret_credential(world).get_token(VAULT_SCOPE).token
    before = world.standin.admin.connections_opened()
    response = http.put("/secrets/raw?api-version=7.6", json={"value": "x"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == challenge
    garbage = http.put(
        "/secrets/raw?api-version=7.6", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert garbage.status_code == 401  # answered before the body is parsed

    wrong_audience = http.get("/secrets/raw", headers={"Authorization": f"Bearer {graph_token}"})
    assert wrong_audience.status_code == 401
    assert wrong_audience.headers["www-authenticate"] == challenge
    ok = http.put(
        "/secrets/raw?api-version=2026-04-01", json={"value": "x"}, headers={"Authorization": f"Bearer {vault_token}"}
    )
    assert ok.status_code == 200
    assert ok.json()["value"] == "x"
    missing = http.get("/secrets/nope", headers={"Authorization": f"Bearer {vault_token}"})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "SecretNotFound"
    assert world.standin.admin.connections_opened() == before + 1  # all of it on one keep-alive connection


def test_admin_views(world: World) -> None:
    admin = world.standin.admin
    client = SecretClient(world.url, sync_secret_credential(world), verify_challenge_resource=False)
    client.set_secret("viewed", "value-1", tags={"t": "1"})
    view = admin.vault_secrets()["viewed"]
    assert view["deleted"] is False
    assert view["versions"][-1]["value"] == "value-1"
    assert view["versions"][-1]["tags"] == {"t": "1"}
    puts = [r for r in admin.requests() if r["method"] == "PUT" and r["path"] == "/secrets/viewed"]
    assert [r["status"] for r in puts] == [200]
    assert puts[0]["appid"] == world.app_id
    assert puts[0]["auth"] == "bearer"
    tokens = admin.token_requests()
    assert tokens
    assert all(r["headers"].get("authorization") in (None, "Basic ...") for r in tokens)
    client.close()


# --- faults --------------------------------------------------------------------------------------------------


def test_fault_injection(world: World, http: httpx.Client) -> None:
    admin = world.standin.admin
    path = f"/{world.tenant}/v2.0/.well-known/openid-configuration"
    admin.set_faults(
        [{"method": "GET", "path": "openid-configuration$", "status": 429, "headers": {"Retry-After": "2"}, "times": 1}]
    )
    try:
        throttled = http.get(path)
        assert throttled.status_code == 429
        assert throttled.headers["retry-after"] == "2"
        assert http.get(path).status_code == 200
        assert admin.faults()[0]["hits"] == 1

        admin.set_faults([{"path": "openid-configuration$", "action": "drop", "times": 1}])
        with pytest.raises(httpx.TransportError):
            http.get(path)
        assert http.get(path).status_code == 200

        admin.set_faults([{"path": "openid-configuration$", "status": 503, "skip": 1, "times": 1, "body": {"e": 1}}])
        assert http.get(path).status_code == 200
        failed = http.get(path)
        assert failed.status_code == 503
        assert failed.json() == {"e": 1}

        admin.set_faults([{"path": "openid-configuration$", "action": "delay", "delay_ms": 150, "times": 1}])
        started = time.monotonic()
        assert http.get(path).status_code == 200
        assert time.monotonic() - started >= 0.15

        admin.set_faults([])
        admin.set_latency(100)
        started = time.monotonic()
        http.get(path)
        assert time.monotonic() - started >= 0.1
    finally:
        admin.set_faults([])
        admin.set_latency(0)
    logged = [r for r in admin.requests() if r["path"] == path and r["fault"]]
    assert {r["fault"]["action"] for r in logged} == {"respond", "drop", "delay"}


# --- lifecycle -----------------------------------------------------------------------------------------------


def test_reset_and_ca_reuse(tmp_path: Path) -> None:
    with StandIn(ca_dir=tmp_path) as first:
        ca = first.ca_path.read_text()
        admin = first.admin
        tenant = admin.add_tenant("72f988bf-86f1-41af-91ab-2d7cd011db47")
        admin.add_app(tenant)
        admin.reset()
        assert admin.tenants()["tenants"] == []
        assert admin.stats()["connectionsOpened"] == 0
    with StandIn(ca_dir=tmp_path) as second:
        assert second.ca_path.read_text() == ca
        assert second.admin.add_tenant() != tenant
    assert first.ca_path.exists()  # a given ca_dir is kept


def test_command_line(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "localdev.standin", "--port", "0", "--ca-dir", str(tmp_path)]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().split()[-1]
            ca = process.stdout.readline().split()[-1]
            assert url.startswith("https://127.0.0.1:")
            assert Path(ca) == tmp_path / "standin-ca.pem"
            health = httpx.get(f"{url}/_admin/health", verify=ssl.create_default_context(cafile=ca))
            assert health.json()["status"] == "ok"
        finally:
            process.terminate()
            process.wait(timeout=10)


def test_basic_client_authentication(world: World, http: httpx.Client) -> None:
    basic = base64.b64encode(f"{world.app_id}:{world.secret}".encode()).decode()
    response = http.post(
        f"/{world.tenant}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "scope": VAULT_SCOPE},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert response.status_code == 200
