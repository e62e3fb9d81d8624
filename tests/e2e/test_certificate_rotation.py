"""Certificate self-rotation end to end: the real SDKs and the service's Graph adapter against the stand-in
(addKey / removeKey with proofs of possession checked there, app-management policies enforced there), Azurite
for the connection records and the stand-in's Key Vault for the versions."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared import wiring
from shared.azure.clients import AzureClients
from shared.errors import CredentialLifetimeRefused, RotationIntervalTooLong
from shared.records import ConnectionRecord
from shared.store.tables import ConnectionsTable
from tests.e2e.entra import EntraApp, certificate_body, register_app

pytestmark = pytest.mark.e2e

APP = "azure-key-vault"
ROTATION = {"rotationInterval": 30, "rotateAtUtc": {"hours": 3, "minutes": 0}}


def thumbprint(pem: str) -> str:
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()


async def create(clients: AzureClients, body: dict[str, Any],
                 rotation: dict[str, Any] | None = None) -> ConnectionRecord:
    service = wiring.services(wiring.adapters(clients)).connections
    created = await service.create(APP, {
        "name": f"cert-{uuid.uuid4().hex[:8]}", "method": "certificate", "credentials": body,
        "isAutoRotationEnabled": True, "rotation": rotation or ROTATION,
    })
    return await ConnectionsTable(clients).get(APP, created.id)


def current_material(admin: Any, record: ConnectionRecord, secrets_used: Any) -> dict[str, str]:
    versions = admin.vault_secrets()[record.secret_name]["versions"]
    value = next(v["value"] for v in versions if v["version"] == record.secret_version)
    material: dict[str, str] = json.loads(value)
    secrets_used.add(material["privateKey"], *[ln for ln in material["privateKey"].splitlines() if len(ln) >= 40])
    return material


def keys_of(admin: Any, entra: EntraApp) -> list[dict[str, Any]]:
    return list(admin.get_app(entra.tenant_id, entra.client_id)["keyCredentials"])


async def test_a_certificate_connection_rolls_its_own_key_with_no_graph_permission(
        admin: Any, clients: AzureClients, secrets_used: Any) -> None:
    entra = register_app(admin, secrets_used, name="cert-rotated")  # no Graph role, not its own owner
    given = certificate_body(admin, secrets_used, entra)
    admin.clear_requests()
    record = await create(clients, given)
    state = record.rotation
    assert state.status == "succeeded", state.message
    material = current_material(admin, record, secrets_used)
    assert material["certificateBody"] != given["certificateBody"]
    # The application keeps exactly one key: the new certificate's; the one the owner uploaded was removed.
    keys = keys_of(admin, entra)
    assert [k["thumbprint"] for k in keys] == [thumbprint(material["certificateBody"])]
    assert keys[0]["keyId"] == state.key_id
    key = serialization.load_pem_private_key(material["privateKey"].encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 3072
    log = admin.requests()
    graph = [(e.get("graph") or e["path"].rsplit("/", 1)[-1], e["status"]) for e in log
             if "/v1.0/" in e["path"] and e["path"].endswith(("addKey", "removeKey"))]
    assert graph == [("addKey", 200), ("removeKey", 204)], graph
    # The new certificate works: validating the connection acquires a token with it.
    validated = await wiring.services(wiring.adapters(clients)).connections.validate(APP, record.id)
    assert validated.status == "active"
    versions = admin.vault_secrets()[record.secret_name]["versions"]
    assert [v["version"] for v in versions if v["enabled"]] == [record.secret_version]


async def test_the_certificate_is_capped_at_the_applications_key_lifetime_policy(
        admin: Any, clients: AzureClients, secrets_used: Any) -> None:
    entra = register_app(admin, secrets_used, name="cert-capped")
    given = certificate_body(admin, secrets_used, entra)
    admin.add_app_management_policy(entra.tenant_id, [entra.client_id],
                                    key_restrictions=[{"restrictionType": "asymmetricKeyLifetime",
                                                       "maxLifetime": "P40D"}])
    before = datetime.now(UTC)
    record = await create(clients, given)
    assert record.rotation.status == "succeeded", record.rotation.message
    cert = x509.load_pem_x509_certificate(current_material(admin, record, secrets_used)["certificateBody"].encode())
    assert before + timedelta(days=39) < cert.not_valid_after_utc <= before + timedelta(days=40)
    assert record.rotation.next_at is not None and record.rotation.next_at <= cert.not_valid_after_utc


async def test_a_tenant_policy_the_connection_cannot_read_is_met_by_one_retry_within_the_interval(
        admin: Any, clients: AzureClients, secrets_used: Any) -> None:
    entra = register_app(admin, secrets_used, name="cert-tenant-capped")
    given = certificate_body(admin, secrets_used, entra)
    # The default policy needs Policy.Read.All to be read, which the connection lacks; Graph enforces it all the same.
    admin.set_default_app_management_policy(entra.tenant_id, key_restrictions=[
        {"restrictionType": "asymmetricKeyLifetime", "maxLifetime": "P20D"}])
    try:
        record = await create(clients, given, {"rotationInterval": 14, "rotateAtUtc": {"hours": 3, "minutes": 0}})
        assert record.rotation.status == "succeeded", record.rotation.message
        material = current_material(admin, record, secrets_used)
        cert = x509.load_pem_x509_certificate(material["certificateBody"].encode())
        lifetime = cert.not_valid_after_utc - datetime.now(UTC)
        assert timedelta(days=16) < lifetime <= timedelta(days=17)  # the interval and the grace period
        refused = [e for e in admin.requests() if e["path"].endswith("addKey") and e["status"] == 400]
        assert len(refused) == 1
    finally:
        admin.set_default_app_management_policy(entra.tenant_id, enabled=False)


async def test_a_tenant_that_forbids_client_secrets_fails_the_rotation_proposing_a_certificate_or_federated(
        admin: Any, clients: AzureClients, secrets_used: Any) -> None:
    entra = register_app(admin, secrets_used, name="no-passwords", roles=("Application.ReadWrite.OwnedBy",))
    details = admin.get_app(entra.tenant_id, entra.client_id)
    admin.add_owner(entra.tenant_id, entra.client_id, details["servicePrincipalId"])
    admin.add_app_management_policy(entra.tenant_id, [entra.client_id],
                                    password_restrictions=[{"restrictionType": "passwordAddition"}])
    service = wiring.services(wiring.adapters(clients)).connections
    with pytest.raises(CredentialLifetimeRefused) as refused:
        await service.create(APP, {
            "name": f"pw-{uuid.uuid4().hex[:8]}", "method": "client-secret",
            "credentials": entra.client_secret_body(clientSecretKeyId=entra.key_id),
            "isAutoRotationEnabled": True, "rotation": ROTATION,
        })
    assert refused.value.status == 400
    assert "certificate method" in refused.value.detail and "federated method" in refused.value.detail
    live = [p for p in admin.app_passwords(entra.tenant_id, entra.client_id) if not p["revoked"]]
    assert [p["keyId"] for p in live] == [entra.key_id]


async def test_an_interval_longer_than_the_applications_policy_allows_is_refused_naming_the_limit(
        admin: Any, clients: AzureClients, secrets_used: Any) -> None:
    entra = register_app(admin, secrets_used, name="cert-short-policy")
    given = certificate_body(admin, secrets_used, entra)
    admin.add_app_management_policy(entra.tenant_id, [entra.client_id],
                                    key_restrictions=[{"restrictionType": "asymmetricKeyLifetime",
                                                       "maxLifetime": "P30D"}])
    with pytest.raises(RotationIntervalTooLong) as refused:
        await create(clients, given, {"rotationInterval": 45, "rotateAtUtc": {"hours": 3, "minutes": 0}})
    problem = refused.value.to_problem()
    assert problem["status"] == 400 and problem["maxRotationInterval"] == 26
    assert problem["restrictionType"] == "asymmetricKeyLifetime" and "30 days" in problem["detail"]
    assert [k["thumbprint"] for k in keys_of(admin, entra)] == [thumbprint(given["certificateBody"])]


class Crash(BaseException):
    """The process dies here: nothing after this point runs."""


CHECKPOINTS = ["before-add-password", "after-add-password", "after-vault-write", "after-test", "after-finish",
               "after-revoke"]


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
async def test_a_certificate_rotation_cut_at_any_step_is_resumed_and_leaves_one_key(
        admin: Any, clients: AzureClients, secrets_used: Any, checkpoint: str) -> None:
    entra = register_app(admin, secrets_used, name="cert-crash")
    record = await create(clients, certificate_body(admin, secrets_used, entra))
    assert record.rotation.status == "succeeded", record.rotation.message

    async def crash(name: str, _: ConnectionRecord) -> None:
        if name == checkpoint:
            raise Crash(name)

    # The real clock throughout: a new certificate is valid from the rotator's "now", and Entra checks it with its
    # own. The sweep's due time is not needed to claim; the crashed worker's lease is made to run out instead.
    doomed = wiring.services(wiring.adapters(clients), checkpoint=crash).rotator
    claimed = await doomed.claim(record, "schedule")
    assert claimed is not None
    with pytest.raises(Crash):
        await doomed.run(claimed)
    table = ConnectionsTable(clients)
    crashed = await table.get(APP, record.id)
    assert crashed.rotation.in_progress
    await table.update(crashed.evolve(rotation=crashed.rotation.evolve(
        lease_until=datetime.now(UTC) - timedelta(seconds=1))))
    resumer = wiring.services(wiring.adapters(clients)).rotator
    again = await resumer.claim(await table.get(APP, record.id), "schedule")
    assert again is not None and again.rotation.trigger == "resume"
    done = (await resumer.run(again)).record
    assert done.rotation.status == "succeeded", done.rotation.message
    assert not done.rotation.in_progress
    material = current_material(admin, done, secrets_used)
    assert [k["thumbprint"] for k in keys_of(admin, entra)] == [thumbprint(material["certificateBody"])]
    versions = admin.vault_secrets()[done.secret_name]["versions"]
    assert [v["version"] for v in versions if v["enabled"]] == [done.secret_version]
    validated = await wiring.services(wiring.adapters(clients)).connections.validate(APP, done.id)
    assert validated.status == "active"
