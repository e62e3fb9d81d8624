"""The federated method and migrate-to-federated, end to end: the host's real ``ManagedIdentityCredential`` (the
stand-in's managed-identity endpoint, ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER``) and ``ClientAssertionCredential``
against the stand-in's token endpoint, which checks the assertion against the application's federated identity
credentials; Graph's ``federatedIdentityCredentials`` through the service's Graph adapter; Key Vault and Tables."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError

from shared.azure.clients import AzureClients
from shared.rotation.sweep import sweep
from shared.store.tables import ConnectionsTable
from tests.e2e.entra import (
    ROTATION_ROLE,
    EntraApp,
    certificate_body,
    identity_tenant,
    register_app,
    register_rotatable_app,
    token_works,
)
from tests.e2e.sweeping import rotator_at

pytestmark = pytest.mark.e2e

BASE = "/api/v1/app-connections"
APP = "azure-key-vault"
EXCHANGE = "api://AzureADTokenExchange"


def trust(admin: Any, local_env: Any, app: EntraApp, name: str = "by-the-owner") -> None:
    """The owner adds the federated credential the options name (as in the portal or with az)."""
    federation = local_env.federation
    admin.add_federated_credential(app.tenant_id, app.client_id, name, federation.issuer, federation.principal_id)


def federated_body(app: EntraApp) -> dict[str, Any]:
    return {"name": f"fed-{uuid.uuid4().hex[:10]}", "method": "federated",
            "credentials": {"tenantId": app.tenant_id, "clientId": app.client_id}}


def test_the_options_show_the_federated_credential_of_the_service_s_identity(api: Any, local_env: Any) -> None:
    options = api.get(f"{BASE}/options").json()["appConnectionOptions"]
    for option in options:
        assert "federated" in option["methods"]
        assert option["unavailableMethods"] == {}
        credential = option["federated"]["federatedCredential"]
        assert credential["issuer"] == local_env.federation.issuer
        assert credential["subject"] == local_env.federation.principal_id
        assert credential["audiences"] == [EXCHANGE]


async def test_a_federated_connection_signs_in_with_the_identity_s_token_and_stores_nothing(
        api: Any, admin: Any, local_env: Any, secrets_used: Any, clients: AzureClients) -> None:
    app = register_app(admin, secrets_used, identity_tenant(local_env), name="federated")
    trust(admin, local_env, app)
    response = api.post(f"{BASE}/{APP}", json=federated_body(app))
    assert response.status_code == 201, response.text
    connection = response.json()["appConnection"]
    assert connection["method"] == "federated"
    assert connection["credentials"] == {"tenantId": app.tenant_id, "clientId": app.client_id}
    assert connection["credentialExpiresAt"] is None
    record = await ConnectionsTable(clients).get(APP, connection["id"])
    assert record.secret_version == ""
    with pytest.raises(ResourceNotFoundError):
        await clients.secrets().get_secret(record.secret_name)
    assert api.post(f"{BASE}/{APP}/{connection['id']}/validate").status_code == 200
    rotate = api.post(f"{BASE}/{APP}/{connection['id']}/rotate")
    assert rotate.status_code == 400
    assert "nothing to rotate" in rotate.json()["detail"]
    deleted = api.delete(f"{BASE}/{APP}/{connection['id']}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["keyIdsLeftLive"] == []
    assert admin.federated_credentials(app.tenant_id, app.client_id)  # the owner's own, left alone
    tokens = [r for r in admin.requests() if r.get("path", "").endswith("/oauth2/v2.0/token")
              and r.get("auth") == "federated"]
    assert tokens, "the token endpoint saw a federated client assertion"


def test_without_the_federated_credential_the_answer_is_400_with_aadsts70021_and_what_to_add(
        api: Any, admin: Any, local_env: Any, secrets_used: Any) -> None:
    app = register_app(admin, secrets_used, identity_tenant(local_env), name="untrusting")
    response = api.post(f"{BASE}/{APP}", json=federated_body(app))
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem["aadstsCode"] == "AADSTS70021"
    assert problem["expectedFederatedCredential"] == {
        "issuer": local_env.federation.issuer, "subject": local_env.federation.principal_id, "audiences": [EXCHANGE]}


def test_an_application_of_another_tenant_is_refused_with_aadsts700236_and_where_it_must_be(
        api: Any, admin: Any, local_env: Any, secrets_used: Any) -> None:
    """Entra ID refuses its managed identity's token for an application registered in another tenant, however it
    trusts the identity (AADSTS700236); the problem names the identity's tenant, where it must be registered."""
    app = register_app(admin, secrets_used, admin.add_tenant(), name="elsewhere")
    trust(admin, local_env, app)
    body = federated_body(app)
    response = api.post(f"{BASE}/{APP}", json=body)
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem["type"] == "urn:app-connections:problem:credential-rejected"
    assert problem["aadstsCode"] == "AADSTS700236"
    assert f"must be registered in the tenant of the service's managed identity, {identity_tenant(local_env)}" in (
        problem["detail"])
    assert api.get(f"{BASE}/{APP}/connection-name/{body['name']}").status_code == 404


def test_a_migration_of_an_application_of_another_tenant_stops_at_the_refusal_and_leaves_it_as_it_was(
        api: Any, admin: Any, local_env: Any, secrets_used: Any) -> None:
    """The same refusal in a migration's test of the federated sign-in: no propagation wait (it would last
    ROTATION_TEST_TIMEOUT_SECONDS), what it added is removed and the connection keeps its client secret."""
    app = register_rotatable_app(admin, secrets_used, name="elsewhere-secret")  # in a tenant of its own
    created = api.post(f"{BASE}/{APP}", json={"name": f"mig-{uuid.uuid4().hex[:10]}", "method": "client-secret",
                                              "credentials": app.client_secret_body()})
    assert created.status_code == 201, created.text
    cid = created.json()["appConnection"]["id"]
    response = api.post(f"{BASE}/{APP}/{cid}/migrate-to-federated", json={})
    assert response.status_code == 400, response.text
    assert response.json()["aadstsCode"] == "AADSTS700236"
    assert f"tenant of the service's managed identity, {identity_tenant(local_env)}" in response.json()["detail"]
    assert admin.federated_credentials(app.tenant_id, app.client_id) == []
    connection = api.get(f"{BASE}/{APP}/{cid}").json()["appConnection"]
    assert (connection["method"], connection["rotation"]["status"]) == ("client-secret", "failed")
    assert api.post(f"{BASE}/{APP}/{cid}/validate").status_code == 200
    assert api.delete(f"{BASE}/{APP}/{cid}").status_code == 200


@pytest.mark.parametrize("revoke", [False, True])
def test_migrate_to_federated_goes_secretless_in_one_step(api: Any, admin: Any, local_env: Any, secrets_used: Any,
                                                          revoke: bool) -> None:
    app = register_rotatable_app(admin, secrets_used, name="going-secretless", tenant_id=identity_tenant(local_env))
    created = api.post(f"{BASE}/{APP}", json={"name": f"mig-{uuid.uuid4().hex[:10]}", "method": "client-secret",
                                              "credentials": app.client_secret_body()})
    assert created.status_code == 201, created.text
    cid = created.json()["appConnection"]["id"]
    response = api.post(f"{BASE}/{APP}/{cid}/migrate-to-federated", json={"revokeOriginal": revoke})
    assert response.status_code == 200, response.text
    connection = response.json()["appConnection"]
    assert connection["method"] == "federated"
    assert connection["rotation"]["status"] == "succeeded"
    [credential] = admin.federated_credentials(app.tenant_id, app.client_id)
    assert credential["name"] == f"app-connections-{cid}"
    assert (credential["issuer"], credential["subject"]) == (local_env.federation.issuer,
                                                             local_env.federation.principal_id)
    assert token_works(admin_standin(local_env), app, app.client_secret) is not revoke
    assert api.post(f"{BASE}/{APP}/{cid}/validate").status_code == 200
    history = api.get(f"{BASE}/{APP}/{cid}/rotations").json()["rotations"]
    assert [(e["trigger"], e["outcome"]) for e in history] == [("migrate-to-federated", "succeeded")]
    again = api.post(f"{BASE}/{APP}/{cid}/migrate-to-federated", json={})
    assert again.status_code == 400  # federated already


def admin_standin(local_env: Any) -> Any:
    return local_env.standin


@pytest.mark.parametrize("revoke", [False, True])
def test_a_certificate_connection_migrates_too_and_its_certificate_is_revoked_only_when_asked(
        api: Any, admin: Any, local_env: Any, secrets_used: Any, revoke: bool) -> None:
    app = register_rotatable_app(admin, secrets_used, name="certificate-to-federated",
                                 tenant_id=identity_tenant(local_env))
    body = certificate_body(admin, secrets_used, app)
    created = api.post(f"{BASE}/{APP}", json={"name": f"mig-{uuid.uuid4().hex[:10]}", "method": "certificate",
                                              "credentials": body})
    assert created.status_code == 201, created.text
    cid = created.json()["appConnection"]["id"]
    response = api.post(f"{BASE}/{APP}/{cid}/migrate-to-federated", json={"revokeOriginal": revoke})
    assert response.status_code == 200, response.text
    assert response.json()["appConnection"]["method"] == "federated"
    # the owner's certificate stays, unless asked (removeKey with a proof signed by it)
    assert len(admin.get_app(app.tenant_id, app.client_id)["keyCredentials"]) == (0 if revoke else 1)
    assert [f["name"] for f in admin.federated_credentials(app.tenant_id, app.client_id)] == [
        f"app-connections-{cid}"]


async def test_a_connection_moved_off_an_application_cleans_it_up_now_or_by_the_sweep(
        api: Any, admin: Any, local_env: Any, secrets_used: Any, clients: AzureClients) -> None:
    """Moved to another application, a migrated connection's federated credential on the first is the change's
    clean-up, journaled with it: removed at once when that application lets the service, else kept in the
    journal, said in the connection's rotation message, and removed by the sweep once it does."""
    first = register_rotatable_app(admin, secrets_used, name="left-behind", tenant_id=identity_tenant(local_env))
    created = api.post(f"{BASE}/{APP}", json={"name": f"mov-{uuid.uuid4().hex[:10]}", "method": "client-secret",
                                              "credentials": first.client_secret_body()})
    assert created.status_code == 201, created.text
    cid = created.json()["appConnection"]["id"]
    assert api.post(f"{BASE}/{APP}/{cid}/migrate-to-federated", json={}).status_code == 200
    [added] = admin.federated_credentials(first.tenant_id, first.client_id)
    second = register_app(admin, secrets_used, identity_tenant(local_env), name="moved-to")
    trust(admin, local_env, second)
    admin.revoke_roles(first.tenant_id, first.client_id, [ROTATION_ROLE])  # the first refuses the clean-up
    moved = api.patch(f"{BASE}/{APP}/{cid}", json={"credentials": {"tenantId": second.tenant_id,
                                                                    "clientId": second.client_id}})
    assert moved.status_code == 200, moved.text
    assert moved.json()["appConnection"]["credentials"]["clientId"] == second.client_id
    assert "could not be removed yet" in moved.json()["appConnection"]["rotation"]["lastRotationMessage"]
    assert [c["id"] for c in admin.federated_credentials(first.tenant_id, first.client_id)] == [added["id"]]
    record = await ConnectionsTable(clients).get(APP, cid)
    assert record.rotation.retire_federated_id == added["id"] and record.rotation.next_at is not None

    admin.grant_roles(first.tenant_id, first.client_id, [ROTATION_ROLE])
    report = await sweep(rotator_at(clients, record.rotation.next_at + timedelta(minutes=1), only=[cid]))
    assert report.outcomes[cid] == "retired"
    assert admin.federated_credentials(first.tenant_id, first.client_id) == []
    done = await ConnectionsTable(clients).get(APP, cid)
    assert not done.rotation.cleaning_up and done.rotation.next_at is None
    assert api.post(f"{BASE}/{APP}/{cid}/validate").status_code == 200
    assert api.delete(f"{BASE}/{APP}/{cid}").status_code == 200
