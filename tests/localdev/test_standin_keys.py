"""Certificate self-rotation and app management policies in the stand-in's Graph, through the real msgraph-sdk
(and plain HTTP for the malformed requests the SDK cannot send).

An application signed in with its own certificate adds its successor with ``addKey`` and removes its
predecessor with ``removeKey``, proving possession of a current certificate with a JWT; the tenant's app
management policies cap new credentials' lifetimes and can forbid passwords.
"""

from __future__ import annotations

import base64
import datetime as dt
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from azure.identity import CertificateCredential, ClientSecretCredential
from azure.identity.aio import CertificateCredential as AsyncCertificateCredential
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from msgraph import GraphServiceClient
from msgraph.generated.applications.item.add_key.add_key_post_request_body import AddKeyPostRequestBody
from msgraph.generated.applications.item.remove_key.remove_key_post_request_body import RemoveKeyPostRequestBody
from msgraph.generated.models.key_credential import KeyCredential
from msgraph.generated.models.o_data_errors.o_data_error import ODataError

from localdev.standin import StandIn
from localdev.standin.admin import AdminError
from localdev.standin.pki import make_certificate

AAD_GRAPH = "00000002-0000-0000-c000-000000000000"


@dataclass
class Cert:
    pem: str
    key_pem: str

    @property
    def der_b64(self) -> str:
        cert = x509.load_pem_x509_certificate(self.pem.encode())
        return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()

    @property
    def x5t(self) -> str:
        cert = x509.load_pem_x509_certificate(self.pem.encode())
        return base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA1())).decode().rstrip("=")


@dataclass
class World:
    standin: StandIn
    url: str
    ca: str
    tenant: str
    app: dict[str, Any]
    cert: Cert
    writer_secret: str
    writer_id: str


def new_cert(days: int = 365) -> Cert:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    pem, key = make_certificate("self-rotating", not_before=start, not_after=start + dt.timedelta(days=days))
    return Cert(pem, key)


@pytest.fixture
def world(standin: StandIn) -> World:
    admin = standin.admin
    admin.reset()
    tenant = admin.add_tenant()
    app = admin.add_app(tenant, "self-rotating")
    cert = new_cert()
    admin.add_certificate(tenant, app["appId"], cert.pem)
    writer = admin.add_app(tenant, "writer", roles=["Application.ReadWrite.All", "Policy.Read.All"])
    secret = admin.add_secret(tenant, writer["appId"])["secretText"]
    return World(standin, standin.url, str(standin.ca_path), tenant, app, cert, secret, writer["appId"])


def proof(world: World, cert: Cert, **changes: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"aud": AAD_GRAPH, "iss": world.app["id"], "nbf": now, "exp": now + 600}
    claims.update(changes)
    key = serialization.load_pem_private_key(cert.key_pem.encode(), None)
    return jwt.encode(claims, key, algorithm="RS256", headers={"x5t": cert.x5t})  # type: ignore[arg-type]


@asynccontextmanager
async def graph_as_app(world: World) -> AsyncIterator[GraphServiceClient]:
    async with AsyncCertificateCredential(
        world.tenant,
        world.app["appId"],
        certificate_data=(world.cert.pem + world.cert.key_pem).encode(),
        authority=world.url,
        connection_verify=world.ca,
    ) as credential:
        client = GraphServiceClient(credentials=credential, scopes=[f"{world.url}/.default"])
        client.request_adapter.base_url = f"{world.url}/v1.0"
        yield client


def http_as_app(world: World) -> httpx.Client:
    token = (
        CertificateCredential(
            world.tenant,
            world.app["appId"],
            certificate_data=(world.cert.pem + world.cert.key_pem).encode(),
            authority=world.url,
            disable_instance_discovery=True,
        )
        .get_token(f"{world.url}/.default")
        .token
    )
    return httpx.Client(
        base_url=f"{world.url}/v1.0",
        headers={"Authorization": f"Bearer {token}"},
        verify=ssl.create_default_context(cafile=world.ca),
    )


def http_as_writer(world: World) -> httpx.Client:
    token = (
        ClientSecretCredential(
            world.tenant, world.writer_id, world.writer_secret, authority=world.url, disable_instance_discovery=True
        )
        .get_token(f"{world.url}/.default")
        .token
    )
    return httpx.Client(
        base_url=f"{world.url}/v1.0",
        headers={"Authorization": f"Bearer {token}"},
        verify=ssl.create_default_context(cafile=world.ca),
    )


def key_credential(cert: Cert) -> KeyCredential:
    return KeyCredential(type="AsymmetricX509Cert", usage="Verify", key=base64.b64decode(cert.der_b64))


# --- addKey / removeKey ---------------------------------------------------------------------------------


async def test_an_app_adds_its_successor_certificate_and_removes_its_predecessor_with_proofs(world: World) -> None:
    successor = new_cert()
    old_key_id = world.standin.admin.get_app(world.tenant, world.app["appId"])["keyCredentials"][0]["keyId"]
    async with graph_as_app(world) as graph:
        added = await graph.applications.by_application_id(world.app["id"]).add_key.post(
            AddKeyPostRequestBody(key_credential=key_credential(successor), proof=proof(world, world.cert))
        )
        assert added is not None and added.key_id is not None
        await graph.applications.by_application_id(world.app["id"]).remove_key.post(
            RemoveKeyPostRequestBody(key_id=uuid.UUID(old_key_id), proof=proof(world, world.cert))
        )
    keys = world.standin.admin.get_app(world.tenant, world.app["appId"])["keyCredentials"]
    assert [k["keyId"] for k in keys] == [str(added.key_id)]
    # The successor signs the app in; the predecessor no longer does.
    world.cert = successor
    with http_as_app(world) as http:
        assert http.get(f"/applications/{world.app['id']}").status_code == 200


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"aud": "https://graph.microsoft.com"}, 401),
        ({"iss": str(uuid.uuid4())}, 401),
        ({"exp": 1200}, 401),  # more than 10 minutes after nbf
        ({"nbf": -3600, "exp": -3000}, 401),  # expired
        ({"nbf": None}, 401),
    ],
    ids=["audience", "issuer", "too-long", "expired", "no-nbf"],
)
def test_a_proof_with_wrong_claims_is_refused_and_nothing_is_added(
    world: World, changes: dict[str, Any], status: int
) -> None:
    # Times are offsets from now, taken as the test runs (taken at collection, a run over 200 s after it made the
    # 'too long' proof a valid one).
    now = int(time.time())
    claims = {k: now + v if k in ("nbf", "exp") else v for k, v in changes.items() if v is not None}
    token = proof(world, world.cert, **claims)
    if changes.get("nbf", 0) is None:
        now = int(time.time())
        key = serialization.load_pem_private_key(world.cert.key_pem.encode(), None)
        token = jwt.encode(
            {"aud": AAD_GRAPH, "iss": world.app["id"], "exp": now + 300},
            key,  # type: ignore[arg-type]
            algorithm="RS256",
            headers={"x5t": world.cert.x5t},
        )
    body = {
        "keyCredential": {"type": "AsymmetricX509Cert", "usage": "Verify", "key": new_cert().der_b64},
        "passwordCredential": None,
        "proof": token,
    }
    with http_as_app(world) as http:
        answer = http.post(f"/applications/{world.app['id']}/addKey", json=body)
    assert answer.status_code == status
    assert answer.json()["error"]["code"] == "Authentication_MissingOrMalformed"
    assert len(world.standin.admin.get_app(world.tenant, world.app["appId"])["keyCredentials"]) == 1


def test_a_proof_signed_by_a_certificate_the_app_does_not_have_or_no_proof_is_refused(world: World) -> None:
    stranger = new_cert()
    body = {"keyCredential": {"type": "AsymmetricX509Cert", "usage": "Verify", "key": stranger.der_b64}}
    with http_as_app(world) as http:
        foreign = http.post(f"/applications/{world.app['id']}/addKey", json={**body, "proof": proof(world, stranger)})
        missing = http.post(f"/applications/{world.app['id']}/addKey", json=body)
        garbled = http.post(
            f"/applications/{world.app['id']}/removeKey", json={"keyId": str(uuid.uuid4()), "proof": "not-a-jwt"}
        )
    assert foreign.status_code == 401
    assert missing.status_code == 400
    assert garbled.status_code == 401


def test_another_app_without_write_permission_cannot_roll_the_app_s_keys(world: World) -> None:
    admin = world.standin.admin
    other = admin.add_app(world.tenant, "other")
    secret = admin.add_secret(world.tenant, other["appId"])["secretText"]
    token = (
        ClientSecretCredential(
            world.tenant, other["appId"], secret, authority=world.url, disable_instance_discovery=True
        )
        .get_token(f"{world.url}/.default")
        .token
    )
    body = {
        "keyCredential": {"type": "AsymmetricX509Cert", "usage": "Verify", "key": new_cert().der_b64},
        "proof": proof(world, world.cert),
    }
    answer = httpx.post(
        f"{world.url}/v1.0/applications/{world.app['id']}/addKey",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        verify=ssl.create_default_context(cafile=world.ca),
    )
    assert answer.status_code == 403


# --- app management policies ----------------------------------------------------------------------------


async def test_add_key_beyond_the_tenant_s_certificate_lifetime_is_refused_as_graph_does(world: World) -> None:
    world.standin.admin.set_default_app_management_policy(
        world.tenant, key_restrictions=[{"restrictionType": "asymmetricKeyLifetime", "maxLifetime": "P90D"}]
    )
    async with graph_as_app(world) as graph:
        with pytest.raises(ODataError) as raised:
            await graph.applications.by_application_id(world.app["id"]).add_key.post(
                AddKeyPostRequestBody(key_credential=key_credential(new_cert(days=180)), proof=proof(world, world.cert))
            )
        assert raised.value.response_status_code == 400
        assert raised.value.error is not None and raised.value.error.code == "CredentialInvalidLifetimeAsPerAppPolicy"
        assert "00000000-0000-0000-0000-000000000000" in str(raised.value.error.message)
        fits = await graph.applications.by_application_id(world.app["id"]).add_key.post(
            AddKeyPostRequestBody(key_credential=key_credential(new_cert(days=60)), proof=proof(world, world.cert))
        )
        assert fits is not None


def test_add_password_beyond_the_lifetime_or_where_passwords_are_forbidden_is_refused(world: World) -> None:
    admin = world.standin.admin
    admin.set_default_app_management_policy(
        world.tenant, password_restrictions=[{"restrictionType": "passwordLifetime", "maxLifetime": "P180D"}]
    )
    end = (dt.datetime.now(dt.UTC) + dt.timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
    short = (dt.datetime.now(dt.UTC) + dt.timedelta(days=90)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with http_as_writer(world) as http:
        too_long = http.post(
            f"/applications/{world.app['id']}/addPassword", json={"passwordCredential": {"endDateTime": end}}
        )
        default_two_years = http.post(f"/applications/{world.app['id']}/addPassword", json={"passwordCredential": {}})
        fits = http.post(
            f"/applications/{world.app['id']}/addPassword", json={"passwordCredential": {"endDateTime": short}}
        )
        assert too_long.status_code == default_two_years.status_code == 400
        assert too_long.json()["error"]["code"] == "CredentialInvalidLifetimeAsPerAppPolicy"
        assert too_long.json()["error"]["details"][0]["target"] == "EndDate"
        assert fits.status_code == 200
        policy = admin.add_app_management_policy(
            world.tenant, [world.app["appId"]], password_restrictions=[{"restrictionType": "passwordAddition"}]
        )
        forbidden = http.post(
            f"/applications/{world.app['id']}/addPassword", json={"passwordCredential": {"endDateTime": short}}
        )
        assert forbidden.status_code == 400
        assert forbidden.json()["error"]["code"] == "CredentialTypeNotAllowedAsPerAppPolicy"
        assert policy["id"] in forbidden.json()["error"]["message"]
        assigned = http.get(f"/applications(appId='{world.app['appId']}')/appManagementPolicies").json()["value"]
        assert [p["id"] for p in assigned] == [policy["id"]]
        default = http.get("/policies/defaultAppManagementPolicy").json()
        assert default["applicationRestrictions"]["passwordCredentials"][0]["maxLifetime"] == "P180D"


def test_a_restriction_spares_apps_created_before_its_date_and_a_disabled_one_nothing_enforces(world: World) -> None:
    admin = world.standin.admin
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    admin.set_default_app_management_policy(
        world.tenant,
        password_restrictions=[
            {"restrictionType": "passwordAddition", "restrictForAppsCreatedAfterDateTime": later},
            {"restrictionType": "passwordLifetime", "maxLifetime": "P1D", "state": "disabled"},
        ],
    )
    with http_as_writer(world) as http:
        assert (
            http.post(f"/applications/{world.app['id']}/addPassword", json={"passwordCredential": {}}).status_code
            == 200
        )


def test_patching_key_credentials_keeps_named_ones_adds_new_ones_and_checks_their_lifetime(world: World) -> None:
    admin = world.standin.admin
    current = admin.get_app(world.tenant, world.app["appId"])["keyCredentials"][0]["keyId"]
    new = {"type": "AsymmetricX509Cert", "usage": "Verify", "key": new_cert(days=30).der_b64}
    with http_as_writer(world) as http:
        patched = http.patch(f"/applications/{world.app['id']}", json={"keyCredentials": [{"keyId": current}, new]})
        assert patched.status_code == 204
        assert len(admin.get_app(world.tenant, world.app["appId"])["keyCredentials"]) == 2
        admin.set_default_app_management_policy(
            world.tenant, key_restrictions=[{"restrictionType": "asymmetricKeyLifetime", "maxLifetime": "P10D"}]
        )
        refused = http.patch(f"/applications/{world.app['id']}", json={"keyCredentials": [new]})
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "CredentialInvalidLifetimeAsPerAppPolicy"
    assert len(admin.get_app(world.tenant, world.app["appId"])["keyCredentials"]) == 2


def test_reading_the_default_policy_needs_a_policy_permission_and_bad_restrictions_are_refused(world: World) -> None:
    with http_as_app(world) as http:
        assert http.get("/policies/defaultAppManagementPolicy").status_code == 403
    with pytest.raises(AdminError):
        world.standin.admin.set_default_app_management_policy(
            world.tenant, password_restrictions=[{"restrictionType": "passwordLifetime", "maxLifetime": "180 days"}]
        )
    with pytest.raises(AdminError):
        world.standin.admin.set_default_app_management_policy(
            world.tenant, key_restrictions=[{"restrictionType": "passwordAddition"}]
        )
