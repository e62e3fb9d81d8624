"""GraphApps' key credentials and app-management policies against the stand-in, through the service's own
clients: addKey / removeKey with proofs of possession, a lost addKey answer found again by thumbprint (never a
duplicate key), Graph's refusals as domain errors, and the effective policy (the application's, then the
tenant's for what the application's does not name; a default it may not read is unknown)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from localdev.standin.graph import graph_fault
from shared.apps import Method
from shared.azure.clients import AzureClients
from shared.azure.graph import GraphApps
from shared.credentials import build_credential, parse_certificate
from shared.errors import CredentialLifetimeRefused, UpstreamError
from shared.rotation.certificates import new_certificate, proof_of_possession
from tests.e2e.entra import EntraApp, certificate_body, register_app

pytestmark = pytest.mark.e2e


def graph_for(clients: AzureClients, entra: EntraApp, material: dict[str, str]) -> tuple[Any, GraphApps]:
    credential = build_credential(clients, Method.CERTIFICATE, entra.tenant_id, entra.client_id, material)
    return credential, GraphApps(clients, credential, read_keys=True)


async def test_add_and_remove_a_key_with_proofs_and_a_lost_answer_adds_no_duplicate(
        admin: Any, clients: AzureClients, secrets_used: Any, no_faults: None) -> None:
    entra = register_app(admin, secrets_used, name="graph-keys")  # no Graph role: it rolls its own keys
    given = certificate_body(admin, secrets_used, entra, key_type="rsa")
    in_use = parse_certificate(given["certificateBody"], given["privateKey"])
    credential, graph = graph_for(clients, entra, given)
    async with credential:
        found = await graph.find(entra.client_id)
        (owners,) = found.keys
        assert owners.thumbprint == in_use.thumbprint_sha1 and owners.usage == "Verify"
        made = new_certificate(in_use, entra.client_id, datetime.now(UTC) + timedelta(days=20))
        # Graph applies the addKey, then the connection drops before the answer: the retry finds it.
        admin.set_faults([{"method": "POST", "path": r"/addKey$", "action": "drop_after", "times": 1}])
        added = await graph.add_key(found.object_id, "rotation marker", made.certificate_der,
                                    proof_of_possession(in_use, found.object_id))
        assert [f["hits"] for f in admin.faults()] == [1]
        admin.clear_faults()
        keys = (await graph.find(entra.client_id)).keys
        assert sorted(k.key_id for k in keys) == sorted([owners.key_id, added.key_id])  # one new key, not two
        assert added.display_name == "rotation marker" and added.end_date_time is not None
        # removeKey of the owner's key, proven by the new one.
        fresh = parse_certificate(made.certificate_pem, made.private_key_pem)
        await graph.remove_key(found.object_id, owners.key_id, proof_of_possession(fresh, found.object_id))
        assert [k.key_id for k in (await graph.find(entra.client_id)).keys] == [added.key_id]
        # A proof signed by a key the application no longer has is refused.
        with pytest.raises(UpstreamError, match="remove a certificate"):
            await graph.remove_key(found.object_id, added.key_id, proof_of_possession(in_use, found.object_id))


@pytest.mark.parametrize("status", [500, 502])
async def test_an_add_key_applied_then_answered_5xx_is_found_not_sent_again(
        admin: Any, clients: AzureClients, secrets_used: Any, no_faults: None, status: int) -> None:
    """(Review of the retries 1.) Graph applied the addKey, then answered 500 or 502: the application's keys are
    read before anything else, and the key of the certificate's thumbprint is the answer (no second addKey: it
    would be refused, or add a duplicate; a 502 of a POST is not retried at all)."""
    entra = register_app(admin, secrets_used, name=f"graph-keys-{status}")
    given = certificate_body(admin, secrets_used, entra, key_type="rsa")
    in_use = parse_certificate(given["certificateBody"], given["privateKey"])
    credential, graph = graph_for(clients, entra, given)
    async with credential:
        found = await graph.find(entra.client_id)
        (owners,) = found.keys
        made = new_certificate(in_use, entra.client_id, datetime.now(UTC) + timedelta(days=20))
        admin.clear_requests()
        admin.set_faults([{**graph_fault(status, "UnknownError", "gateway", method="POST", path=r"/addKey$"),
                           "action": "respond_after"}])
        added = await graph.add_key(found.object_id, "rotation marker", made.certificate_der,
                                    proof_of_possession(in_use, found.object_id))
        assert [f["hits"] for f in admin.faults()] == [1]
        admin.clear_faults()
        keys = (await graph.find(entra.client_id)).keys
    assert sorted(k.key_id for k in keys) == sorted([owners.key_id, added.key_id])
    assert [r["method"] for r in admin.requests() if r["path"].endswith("/addKey")] == ["POST"]


async def test_the_effective_policy_and_graphs_lifetime_refusal(
        admin: Any, clients: AzureClients, secrets_used: Any) -> None:
    entra = register_app(admin, secrets_used, name="graph-policies")
    given = certificate_body(admin, secrets_used, entra)
    in_use = parse_certificate(given["certificateBody"], given["privateKey"])
    credential, graph = graph_for(clients, entra, given)
    async with credential:
        found = await graph.find(entra.client_id)
        nothing = await graph.lifetime_policy(found.object_id, found.created_at)
        assert nothing is not None and nothing.key_max_lifetime is None and nothing.password_max_lifetime is None
        admin.add_app_management_policy(entra.tenant_id, [entra.client_id], key_restrictions=[
            {"restrictionType": "asymmetricKeyLifetime", "maxLifetime": "P40D"}])
        admin.set_default_app_management_policy(entra.tenant_id, password_restrictions=[
            {"restrictionType": "passwordLifetime", "maxLifetime": "P10D"}])
        try:
            policy = await graph.lifetime_policy(found.object_id, found.created_at)
            assert policy is not None and policy.source == "application"
            assert policy.key_max_lifetime == timedelta(days=40)
            assert policy.password_max_lifetime is None  # the tenant's default needs Policy.Read.All: unknown
            admin.grant_roles(entra.tenant_id, entra.client_id, ["Policy.Read.All"])
            credential2, reader = graph_for(clients, entra, given)
            async with credential2:
                merged = await reader.lifetime_policy(found.object_id, found.created_at)
            assert merged is not None and merged.key_max_lifetime == timedelta(days=40)
            assert merged.password_max_lifetime == timedelta(days=10)
            too_long = new_certificate(in_use, entra.client_id, datetime.now(UTC) + timedelta(days=60))
            with pytest.raises(CredentialLifetimeRefused) as refused:
                await graph.add_key(found.object_id, "too long", too_long.certificate_der,
                                    proof_of_possession(in_use, found.object_id))
            assert refused.value.extensions["graphCode"] == "CredentialInvalidLifetimeAsPerAppPolicy"
        finally:
            admin.set_default_app_management_policy(entra.tenant_id, enabled=False)
