"""Workload identity federation in the stand-in, through the real azure-identity and msgraph-sdk over TLS.

A user-assigned managed identity gets a token for ``api://AzureADTokenExchange`` from the managed-identity
endpoint (``ManagedIdentityCredential`` with ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER``, as on Azure Functions),
and an application trusting it through a federated identity credential exchanges that token for its own
(``ClientAssertionCredential``). Each mismatch is refused with Entra's code.
"""

from __future__ import annotations

import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ClientAssertionCredential, ClientSecretCredential, ManagedIdentityCredential

from localdev.environment import LocalEnvironment
from localdev.standin import StandIn
from localdev.standin.admin import AdminError
from shared.settings import Settings, load_settings

EXCHANGE = "api://AzureADTokenExchange"


@dataclass
class World:
    standin: StandIn
    url: str
    ca: str
    tenant: str
    identity: dict[str, str]
    app: dict[str, str]
    admin_app: dict[str, str]
    admin_secret: str


@pytest.fixture
def world(standin: StandIn, monkeypatch: pytest.MonkeyPatch) -> World:
    admin = standin.admin
    admin.reset()
    tenant = admin.add_tenant()
    identity = admin.add_managed_identity(tenant, "id-func-local")
    app = admin.add_app(tenant, "customer-app", roles=["Application.Read.All"])
    admin_app = admin.add_app(tenant, "manager", roles=["Application.ReadWrite.All"])
    secret = admin.add_secret(tenant, admin_app["appId"])["secretText"]
    endpoint = admin.identity_endpoint()
    monkeypatch.setenv("IDENTITY_ENDPOINT", endpoint["endpoint"])
    monkeypatch.setenv("IDENTITY_HEADER", endpoint["header"])
    return World(standin, standin.url, str(standin.ca_path), tenant, identity, app, admin_app, secret)


def _tls(world: World) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=world.ca)


def _mi_token(world: World, resource: str = EXCHANGE) -> str:
    credential = ManagedIdentityCredential(client_id=world.identity["clientId"])
    token: str = credential.get_token(resource + "/.default").token
    return token


def _exchange(world: World, assertion: str) -> str:
    credential = ClientAssertionCredential(
        world.tenant, world.app["appId"], lambda: assertion, authority=world.url, disable_instance_discovery=True
    )
    return credential.get_token(world.url + "/.default").token


def test_the_managed_identity_endpoint_issues_a_token_of_the_identity_signed_by_the_stand_in(world: World) -> None:
    token = _mi_token(world)
    keys = httpx.get(f"{world.url}/{world.tenant}/discovery/v2.0/keys", verify=_tls(world)).json()
    jwks = jwt.PyJWKSet.from_dict(keys)
    claims = jwt.decode(token, jwks.keys[0].key, algorithms=["RS256"], audience=EXCHANGE)
    assert claims["iss"] == world.standin.admin.issuer(world.tenant)
    assert claims["sub"] == claims["oid"] == world.identity["principalId"]
    assert claims["appid"] == world.identity["clientId"]
    assert claims["tid"] == world.tenant
    assert claims["xms_mirid"] == world.identity["resourceId"]


def test_the_managed_identity_endpoint_refuses_a_wrong_header_and_an_unknown_identity(world: World) -> None:
    endpoint = world.standin.admin.identity_endpoint()
    params = {"api-version": "2019-08-01", "resource": EXCHANGE, "client_id": world.identity["clientId"]}
    wrong = httpx.get(endpoint["endpoint"], params=params, headers={"X-IDENTITY-HEADER": "x"}, verify=_tls(world))
    assert wrong.status_code == 401
    unknown = httpx.get(
        endpoint["endpoint"],
        params={**params, "client_id": str(uuid.uuid4())},
        headers={"X-IDENTITY-HEADER": endpoint["header"]},
        verify=_tls(world),
    )
    assert unknown.status_code == 400
    assert "No User Assigned" in unknown.json()["message"]
    with pytest.raises(ClientAuthenticationError):
        ManagedIdentityCredential(client_id=str(uuid.uuid4())).get_token(EXCHANGE + "/.default")


def test_an_app_with_a_matching_federated_credential_gets_its_token_for_the_identity_s_token(world: World) -> None:
    admin = world.standin.admin
    admin.add_federated_credential(
        world.tenant, world.app["appId"], "func-mi", admin.issuer(world.tenant), world.identity["principalId"]
    )
    token = _exchange(world, _mi_token(world))
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["appid"] == world.app["appId"]
    assert claims["appidacr"] == "2"
    assert claims["roles"] == ["Application.Read.All"]
    last = [r for r in admin.requests() if r.get("path", "").endswith("/oauth2/v2.0/token")][-1]
    assert last["auth"] == "federated"


def test_an_identity_of_another_tenant_is_refused_as_entra_refuses_it(world: World) -> None:
    """Entra ID refuses its own tokens of another tenant in a federated sign-in (AADSTS700236): the application must
    be in the managed identity's tenant, whatever its federated credential says."""
    admin = world.standin.admin
    other = admin.add_tenant()
    app = admin.add_app(other, "customer-app-elsewhere", roles=["Application.Read.All"])
    admin.add_federated_credential(other, app["appId"], "func-mi", admin.issuer(world.tenant),
                                   world.identity["principalId"])
    credential = ClientAssertionCredential(other, app["appId"], lambda: _mi_token(world), authority=world.url,
                                           disable_instance_discovery=True)
    with pytest.raises(ClientAuthenticationError) as refused:
        credential.get_token(world.url + "/.default")
    assert "AADSTS700236" in str(refused.value)


@pytest.mark.parametrize(
    ("issuer", "subject", "audience", "code"),
    [
        ("https://token.actions.githubusercontent.com", None, None, "AADSTS700211"),
        (None, "11111111-1111-1111-1111-111111111111", None, "AADSTS700213"),
        (None, None, "api://AzureADTokenExchangeUSGov", "AADSTS700212"),
    ],
)
def test_a_federated_credential_that_differs_in_issuer_subject_or_audience_is_refused_with_entra_s_code(
    world: World, issuer: str | None, subject: str | None, audience: str | None, code: str
) -> None:
    admin = world.standin.admin
    admin.add_federated_credential(
        world.tenant,
        world.app["appId"],
        "func-mi",
        issuer or admin.issuer(world.tenant),
        subject or world.identity["principalId"],
        [audience or EXCHANGE],
    )
    with pytest.raises(ClientAuthenticationError) as raised:
        _exchange(world, _mi_token(world))
    assert code in str(raised.value)


def test_an_app_without_federated_credentials_refuses_the_identity_s_token_naming_issuer_subject_and_audience(
    world: World,
) -> None:
    with pytest.raises(ClientAuthenticationError) as raised:
        _exchange(world, _mi_token(world))
    message = str(raised.value)
    assert "AADSTS70021" in message
    assert f"Assertion Subject: '{world.identity['principalId']}'" in message
    assert f"Assertion Audience: '{EXCHANGE}'" in message


def test_a_forged_token_with_matching_claims_is_refused(world: World) -> None:
    admin = world.standin.admin
    admin.add_federated_credential(
        world.tenant, world.app["appId"], "func-mi", admin.issuer(world.tenant), world.identity["principalId"]
    )
    genuine = _mi_token(world)
    head, body, signature = genuine.split(".")
    forged = ".".join([head, body, signature[:-6] + ("AAAAAA" if not signature.endswith("AAAAAA") else "BBBBBB")])
    with pytest.raises(ClientAuthenticationError) as raised:
        _exchange(world, forged)
    assert "AADSTS700027" in str(raised.value)


def _graph(world: World) -> httpx.Client:
    token = (
        ClientSecretCredential(
            world.tenant,
            world.admin_app["appId"],
            world.admin_secret,
            authority=world.url,
            disable_instance_discovery=True,
        )
        .get_token(world.url + "/.default")
        .token
    )
    return httpx.Client(base_url=world.url + "/v1.0", headers={"Authorization": f"Bearer {token}"}, verify=_tls(world))


def test_graph_adds_lists_and_deletes_federated_credentials_by_object_id_and_app_id(world: World) -> None:
    body = {
        "name": "func-mi",
        "issuer": world.standin.admin.issuer(world.tenant),
        "subject": world.identity["principalId"],
        "audiences": [EXCHANGE],
        "description": "the Function App's identity",
    }
    with _graph(world) as graph:
        created = graph.post(f"/applications/{world.app['id']}/federatedIdentityCredentials", json=body)
        assert created.status_code == 201
        assert {k: created.json()[k] for k in body} == body
        listed = graph.get(f"/applications(appId='{world.app['appId']}')/federatedIdentityCredentials")
        assert [c["id"] for c in listed.json()["value"]] == [created.json()["id"]]
        assert graph.post(f"/applications/{world.app['id']}/federatedIdentityCredentials", json=body).status_code == 409
        by_name = graph.get(f"/applications/{world.app['id']}/federatedIdentityCredentials(name='func-mi')")
        assert by_name.json()["id"] == created.json()["id"]
        deleted = graph.delete(f"/applications/{world.app['id']}/federatedIdentityCredentials/{created.json()['id']}")
        assert deleted.status_code == 204
        assert graph.get(f"/applications/{world.app['id']}/federatedIdentityCredentials").json()["value"] == []


def test_an_app_holds_at_most_twenty_federated_credentials(world: World) -> None:
    admin = world.standin.admin
    for n in range(20):
        admin.add_federated_credential(world.tenant, world.app["appId"], f"fic-{n:02}", "https://issuer", f"s{n}")
    with pytest.raises(AdminError) as raised:
        admin.add_federated_credential(world.tenant, world.app["appId"], "fic-20", "https://issuer", "s20")
    assert raised.value.status == 400
    with _graph(world) as graph:
        refused = graph.post(
            f"/applications/{world.app['id']}/federatedIdentityCredentials",
            json={"name": "fic-21", "issuer": "https://issuer", "subject": "s21", "audiences": [EXCHANGE]},
        )
    assert refused.status_code == 400
    assert len(admin.federated_credentials(world.tenant, world.app["appId"])) == 20


# --- the local environment ----------------------------------------------------------------------------------


def test_the_local_environment_gives_the_host_a_managed_identity_an_app_can_trust(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LocalEnvironment(tmp_path) as env:
        assert env.standin is not None and env.federation is not None
        settings = load_settings(env.settings)
        identity = federation_identity_of(settings)
        assert identity == (env.federation.client_id, env.federation.principal_id, env.federation.tenant_id)
        for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
            monkeypatch.setenv(name, env.settings[name])
        assertion = ManagedIdentityCredential(client_id=settings.federation_identity_client_id).get_token(
            settings.token_exchange_audience + "/.default"
        )
        claims = jwt.decode(assertion.token, options={"verify_signature": False})
        issuer = f"{settings.authority_host}/{settings.federation_identity_tenant_id}/v2.0"
        assert (claims["iss"], claims["sub"], claims["aud"]) == (
            issuer,
            settings.federation_identity_principal_id,
            "api://AzureADTokenExchange",
        )
        admin = env.standin.admin
        tenant = env.federation.tenant_id  # an application of the identity's tenant (Entra refuses another's)
        customer = admin.add_app(tenant, "customer")
        admin.add_federated_credential(tenant, customer["appId"], "app-connections", issuer, claims["sub"])
        token = ClientAssertionCredential(
            tenant,
            customer["appId"],
            lambda: assertion.token,
            authority=settings.authority_host,
            disable_instance_discovery=True,
        ).get_token(settings.scope_for(None))
        assert jwt.decode(token.token, options={"verify_signature": False})["appid"] == customer["appId"]


def federation_identity_of(settings: Settings) -> tuple[str | None, str | None, str | None]:
    return (
        settings.federation_identity_client_id,
        settings.federation_identity_principal_id,
        settings.federation_identity_tenant_id,
    )
