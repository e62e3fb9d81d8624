"""The federated method and the one-step migration to it, against in-memory fakes.

A federated connection holds nothing secret (nothing in Key Vault), is never rotated, and is validated like any
other; ``migrate-to-federated`` adds the federated credential, proves it works, switches, and only then removes what
the service created (and the user's own credential when asked), resumable after a crash at any step with the
invariants I1 to I4 of :mod:`tests.lifecycle_harness` holding throughout.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from shared.errors import (
    ConcurrentChange,
    CredentialRejected,
    CredentialsLeftLive,
    InvalidRequest,
    NotFound,
    RotationInProgress,
    ServiceError,
    UpstreamError,
    UpstreamForbidden,
)
from shared.federation import credential_name
from shared.health import HealthChecker
from shared.options import app_options
from shared.records import MIGRATION_STEPS, ConnectionRecord
from shared.rotation.protocol import Checkpoint
from tests import fakes
from tests.fakes import IDENTITY_PRINCIPAL_ID, TENANT, build_fakes
from tests.lifecycle_harness import (
    APP,
    Crash,
    Harness,
    delete_once_the_refusal_holds,
    fails_once,
    overtaken_at,
    own_etag,
    user_operations,
)

NO_FEDERATION = {"FEDERATION_IDENTITY_CLIENT_ID": "", "FEDERATION_IDENTITY_PRINCIPAL_ID": "",
                 "FEDERATION_IDENTITY_TENANT_ID": ""}
ISSUER = f"https://login.microsoftonline.com/{TENANT}/v2.0"
OTHER_TENANT = "22222222-9999-9999-9999-999999999999"


def federated_body(client_id: str, name: str = "f1") -> dict[str, Any]:
    return {"name": name, "method": "federated", "credentials": {"tenantId": TENANT, "clientId": client_id}}


# -- the method ------------------------------------------------------------------------------------------------
async def test_a_federated_connection_is_validated_and_stores_nothing_in_the_vault() -> None:
    h = Harness()
    app = h.fakes.world.application()
    h.fakes.world.add_federated(app.client_id)
    record = await h.api.create(APP, federated_body(app.client_id))
    assert record.method == "federated"
    assert record.secret_version == ""
    assert record.secret_name not in h.fakes.vault.secrets
    assert record.health.credential_expires_at is None  # never expires
    assert f"federated:{app.client_id}" in h.fakes.world.worked
    validated = await h.api.validate(APP, record.id)
    assert validated.status == "active"
    assert h.check() == []


async def test_a_missing_federated_credential_is_a_400_with_the_aadsts_code_and_what_is_expected() -> None:
    h = Harness()
    app = h.fakes.world.application()
    with pytest.raises(CredentialRejected) as refused:
        await h.api.create(APP, federated_body(app.client_id))
    problem = refused.value.to_problem()
    assert problem["status"] == 400
    assert problem["aadstsCode"] == "AADSTS70021"
    assert problem["expectedFederatedCredential"] == {
        "issuer": ISSUER, "subject": IDENTITY_PRINCIPAL_ID, "audiences": ["api://AzureADTokenExchange"]}
    assert ISSUER in problem["detail"] and IDENTITY_PRINCIPAL_ID in problem["detail"]
    assert h.fakes.connections.records == {}


async def test_a_federated_credential_for_another_subject_does_not_count() -> None:
    h = Harness()
    app = h.fakes.world.application()
    h.fakes.world.add_federated(app.client_id, subject="55555555-5555-5555-5555-555555555555")
    with pytest.raises(CredentialRejected):
        await h.api.create(APP, federated_body(app.client_id))


async def test_an_application_of_another_tenant_than_the_identity_s_is_refused_saying_where_it_must_be() -> None:
    """Entra ID refuses a managed identity of another tenant than the application's (AADSTS700236), whatever the
    application's federated credential: the problem says the tenant it must be registered in, not a credential to
    add (it has it)."""
    h = Harness()
    app = h.fakes.world.application()
    app.home_tenant = OTHER_TENANT
    h.fakes.world.add_federated(app.client_id)
    body = federated_body(app.client_id)
    body["credentials"]["tenantId"] = OTHER_TENANT
    with pytest.raises(CredentialRejected) as refused:
        await h.api.create(APP, body)
    problem = refused.value.to_problem()
    assert (problem["status"], problem["aadstsCode"]) == (400, "AADSTS700236")
    assert f"must be registered in the tenant of the service's managed identity, {TENANT}" in problem["detail"]
    assert "needs a federated identity credential" not in problem["detail"]
    assert problem["expectedFederatedCredential"]["issuer"] == ISSUER
    assert h.fakes.connections.records == {}


async def test_the_credentials_are_checked_like_every_method_and_no_secret_field_is_accepted() -> None:
    h = Harness()
    with pytest.raises(InvalidRequest) as bad:
        await h.api.create(APP, {"name": "f1", "method": "federated",
                                 "credentials": {"tenantId": "x", "clientId": TENANT, "clientSecret": "s"}})
    pointers = {e.pointer for e in bad.value.errors}
    assert pointers == {"/credentials/tenantId", "/credentials/clientSecret"}


async def test_without_the_identity_settings_the_method_is_unavailable_and_creating_one_is_a_clear_400() -> None:
    h = Harness(fakes=build_fakes(NO_FEDERATION))
    app = h.fakes.world.application()
    with pytest.raises(InvalidRequest) as refused:
        await h.api.create(APP, federated_body(app.client_id))
    assert "FEDERATION_IDENTITY_CLIENT_ID" in refused.value.detail
    options = app_options(h.fakes.adapters.settings)
    assert all("federated" in o["unavailableMethods"] for o in options)
    assert options[0]["federated"]["available"] is False
    assert options[0]["federated"]["federatedCredential"] is None


OWN = "99999999-9999-4999-8999-999999999999"  # one of the service's own applications, in the tests below


@pytest.mark.parametrize(("setting", "value"), [
    ("AUTH_AUDIENCE", OWN), ("AUTH_AUDIENCE", f"api://{OWN.upper()}"),
    ("INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_ID", OWN), ("FEDERATION_IDENTITY_CLIENT_ID", OWN),
])
async def test_a_federated_connection_to_one_of_the_service_s_own_applications_is_refused(setting: str,
                                                                                          value: str) -> None:
    """(Review SSRF 4.) The API registration trusts the service's identity for the console's sign-in: a Writer of one
    app made a federated connection to it (201, active), and the service then signed in as itself for them. Refused
    on create and on a change of credentials, before any sign-in."""
    h = Harness(fakes=build_fakes({setting: value}))
    h.fakes.world.application(OWN)
    h.fakes.world.add_federated(OWN)
    with pytest.raises(InvalidRequest) as refused:
        await h.api.create(APP, federated_body(OWN))
    assert [(e.pointer, e.detail) for e in refused.value.errors] == [
        ("/credentials/clientId", "is one of this service's own applications")]
    assert h.fakes.connections.records == {} and h.fakes.world.worked == set()

    allowed = h.fakes.world.application()
    h.fakes.world.add_federated(allowed.client_id)
    record = await h.api.create(APP, federated_body(allowed.client_id))
    with pytest.raises(InvalidRequest, match="own applications"):
        await h.api.update(APP, record.id, {"credentials": {"tenantId": TENANT, "clientId": OWN}})
    after = await h.record(record.id)
    assert after is not None and after.client_id == allowed.client_id
    assert f"federated:{OWN}" not in h.fakes.world.worked


async def test_a_connection_to_one_of_the_service_s_own_applications_does_not_migrate_to_federated() -> None:
    """Its owner may hold its secret; the service's identity is not theirs to sign in with. Refused before anything
    changes, without a field error (the request names no client id)."""
    h = Harness(method="client-secret", fakes=build_fakes({"INF_APP_CONNECTION_AZURE_CLIENT_SECRETS_CLIENT_ID": OWN}))
    h.fakes.world.application(OWN)
    record = await h.api.create(APP, {"name": "own", "method": "client-secret",
                                      "credentials": h.credentials(OWN, h.fakes.world.add(OWN, "the owner's"))})
    with pytest.raises(InvalidRequest, match="own applications") as refused:
        await migrated(h, record)
    assert not refused.value.errors
    after = await h.record(record.id)
    assert after is not None and after.method == "client-secret" and not after.rotation.in_progress
    assert not h.fakes.world.apps[OWN].federated


def test_the_options_show_the_exact_federated_credential_and_its_limits() -> None:
    options = app_options(build_fakes().adapters.settings)
    federated = options[0]["federated"]
    assert federated["available"] is True
    assert options[0]["unavailableMethods"] == {}
    assert federated["federatedCredential"]["issuer"] == ISSUER
    assert federated["federatedCredential"]["subject"] == IDENTITY_PRINCIPAL_ID
    assert federated["federatedCredential"]["audiences"] == ["api://AzureADTokenExchange"]
    assert any("20" in limit for limit in federated["limits"])
    assert any("tenant" in limit for limit in federated["limits"])
    assert federated["migrationMethods"] == ["client-secret", "certificate"]


async def test_a_federated_connection_cannot_be_rotated_there_is_nothing_to_rotate() -> None:
    h = Harness()
    app = h.fakes.world.application()
    h.fakes.world.add_federated(app.client_id)
    record = await h.api.create(APP, federated_body(app.client_id))
    with pytest.raises(InvalidRequest, match="nothing to rotate"):
        await h.api.rotate(APP, record.id)
    with pytest.raises(InvalidRequest, match="nothing to rotate"):
        await h.api.update(APP, record.id, {"isAutoRotationEnabled": True,
                                            "rotation": {"rotationInterval": 30, "rotateAt": "03:00"}})
    with pytest.raises(InvalidRequest, match="nothing to rotate"):
        await h.api.create(APP, {**federated_body(app.client_id, "f2"), "isAutoRotationEnabled": True,
                                 "rotation": {"rotationInterval": 30, "rotateAt": "03:00"}})


async def test_health_validates_a_federated_connection_and_it_never_expires() -> None:
    h = Harness()
    app = h.fakes.world.application()
    credential = h.fakes.world.add_federated(app.client_id)
    record = await h.api.create(APP, federated_body(app.client_id))
    checker = HealthChecker(h.fakes.adapters, h.api)
    healthy = await checker.check(record)
    assert healthy.health.status == "healthy"
    assert healthy.health.credential_expires_at is None
    del h.fakes.world.apps[app.client_id].federated[credential.id]  # the owner removed it
    failing = await checker.check(healthy)
    assert failing.health.status == "failing"
    assert "AADSTS70021" in (failing.health.message or "")


async def test_the_credentials_of_a_federated_connection_change_without_the_vault() -> None:
    h = Harness()
    first, second = h.fakes.world.application(), h.fakes.world.application()
    h.fakes.world.add_federated(first.client_id)
    h.fakes.world.add_federated(second.client_id)
    record = await h.api.create(APP, federated_body(first.client_id))
    changed = await h.api.update(APP, record.id, {"credentials": {"tenantId": TENANT, "clientId": second.client_id}})
    assert changed.client_id == second.client_id
    assert changed.secret_version == ""
    assert record.secret_name not in h.fakes.vault.secrets


# -- migrate-to-federated ----------------------------------------------------------------------------------------
async def migrated(h: Harness, record: ConnectionRecord, revoke: bool = False) -> ConnectionRecord:
    result: ConnectionRecord = await h.api.migrate_to_federated(APP, record.id, {"revokeOriginal": revoke})
    return result


async def test_a_migration_body_that_is_json_null_is_refused_as_no_object() -> None:
    """(Review FB 9.) Only an empty body stands for ``{}`` (the route); a JSON ``null`` was taken as ``{}`` and the
    migration ran, where every other body that is no object is a 400."""
    h = Harness()
    record = await h.create()
    with pytest.raises(InvalidRequest) as refused:
        await h.api.migrate_to_federated(APP, record.id, None)
    assert [(e.pointer, e.detail) for e in refused.value.errors] == [("", "must be an object")]
    after = await h.record(record.id)
    assert after is not None and after.method == record.method and not after.rotation.in_progress


@pytest.mark.parametrize("method", ["client-secret", "certificate"])
async def test_migration_adds_the_credential_switches_and_removes_what_the_service_created(method: str) -> None:
    h = Harness(method=method)
    record = await h.create()  # rotated once: the credential in use is the service's own
    app = h.fakes.world.apps[record.client_id or ""]
    given = {p.key_id for p in [*app.passwords.values(), *app.keys.values()] if not p.created_by_service}
    done = await migrated(h, record)
    assert done.method == "federated"
    assert done.secret_version == ""
    assert record.rotation.key_made and not done.rotation.key_made  # a federated credential is listed by its own rule
    assert not done.rotation.in_progress
    assert done.rotation.status == "succeeded"
    assert not done.rotation.enabled
    [added] = app.federated.values()
    assert added.name == credential_name(record.id)
    assert (added.issuer, added.subject) == (ISSUER, IDENTITY_PRINCIPAL_ID)
    # what the service created is gone; what the user gave is left alone
    assert not [p for p in [*app.passwords.values(), *app.keys.values()] if p.created_by_service]
    assert {p.key_id for p in [*app.passwords.values(), *app.keys.values()]} == given
    # the vault secret is disabled and deleted, after the switch
    assert record.secret_name in h.fakes.vault.deleted
    assert not any(v.enabled for v in h.fakes.vault.secrets[record.secret_name])
    assert (await h.api.validate(APP, record.id)).status == "active"
    [event] = [e for e in h.fakes.history.of(record.id) if e.trigger == "migrate-to-federated"]
    assert event.outcome == "succeeded"
    actions = [(r.action, r.outcome) for r in h.fakes.audit.records]
    assert ("connection.migrate", "succeeded") in actions
    assert ("credential.add", "succeeded") in actions
    assert h.check() == []


async def test_revoke_original_also_removes_the_client_secret_the_user_gave_but_only_after_the_switch() -> None:
    h = Harness()
    record = await h.create(rotation=False)
    app = h.fakes.world.apps[record.client_id or ""]
    done = await migrated(h, record, revoke=True)
    assert done.method == "federated"
    assert app.passwords == {}
    assert h.check() == []  # I1: revoked only once the federated sign-in had worked


@pytest.mark.parametrize("name", ["added-by-the-owner", "app-connections-federation"])
async def test_an_existing_federated_credential_of_the_identity_is_reused_and_never_removed(name: str) -> None:
    """Whatever its name: the one the options suggest (``app-connections-federation``) shares the prefix of the names
    the service gives what it adds (review of the docs: a failed migration removed it, a DELETE too)."""
    h = Harness()
    record = await h.create(rotation=False)
    mine = h.fakes.world.add_federated(record.client_id or "", name)
    h.fakes.world.federation_delay = 10**6  # the sign-in never works: the migration fails
    with pytest.raises(CredentialRejected):
        await migrated(h, record)
    assert list(h.fakes.world.apps[record.client_id or ""].federated) == [mine.id]
    h.fakes.world.federation_delay = 0
    done = await migrated(h, record)
    assert done.method == "federated"
    assert list(h.fakes.world.apps[record.client_id or ""].federated) == [mine.id]
    deleted = await h.api.delete(APP, record.id)
    assert mine.id not in deleted.removed_key_ids
    assert list(h.fakes.world.apps[record.client_id or ""].federated) == [mine.id]


async def test_a_federated_sign_in_that_never_works_removes_what_was_added_and_leaves_the_connection_as_is() -> None:
    h = Harness()
    record = await h.create(rotation=False)
    h.fakes.world.federation_delay = 10**6
    with pytest.raises(CredentialRejected) as refused:
        await migrated(h, record)
    assert refused.value.to_problem()["expectedFederatedCredential"]["subject"] == IDENTITY_PRINCIPAL_ID
    after = await h.record(record.id)
    assert after is not None
    assert (after.method, after.secret_version) == ("client-secret", record.secret_version)
    assert not after.rotation.in_progress
    assert after.rotation.status == "failed"
    assert h.fakes.world.apps[record.client_id or ""].federated == {}
    assert await h.api.validate(APP, record.id)  # the secret still works
    assert h.check() == []


async def test_a_migration_of_an_application_of_another_tenant_stops_at_entra_s_first_refusal_of_the_identity(
        ) -> None:
    """AADSTS700236 (an identity of another tenant than the application's) is no propagation delay: the migration
    does not retry its sign-in for ROTATION_TEST_TIMEOUT_SECONDS, it stops at once, says where the application must
    be, and removes what it added."""
    h = Harness()
    client_id, credentials = h.new_application()
    h.fakes.world.apps[client_id].home_tenant = OTHER_TENANT
    record = await h.api.create(APP, {"name": "c1", "method": h.method,
                                      "credentials": {**credentials, "tenantId": OTHER_TENANT}})
    h.fakes.world.calls.clear()
    with pytest.raises(CredentialRejected) as refused:
        await migrated(h, record)
    assert refused.value.to_problem()["aadstsCode"] == "AADSTS700236"
    assert TENANT in refused.value.detail
    assert h.fakes.world.calls.count("probe") == 1
    after = await h.record(record.id)
    assert after is not None and (after.method, after.rotation.status) == ("client-secret", "failed")
    assert h.fakes.world.apps[record.client_id or ""].federated == {}
    assert h.check() == []


async def test_propagation_is_waited_for() -> None:
    h = Harness()
    record = await h.create(rotation=False)
    h.fakes.world.federation_delay = 3  # Entra refuses the first sign-ins after the credential was added
    assert (await migrated(h, record)).method == "federated"


async def test_only_secret_and_certificate_connections_of_an_application_that_may_edit_itself_migrate() -> None:
    h = Harness()
    app = h.fakes.world.application()
    h.fakes.world.add_federated(app.client_id)
    federated = await h.api.create(APP, federated_body(app.client_id))
    with pytest.raises(InvalidRequest, match="cannot be migrated"):
        await migrated(h, federated)
    record = await h.create(rotation=False)
    h.fakes.world.apps[record.client_id or ""].may_manage_itself = False
    with pytest.raises(ServiceError) as refused:
        await migrated(h, record)
    assert refused.value.status == 400
    assert "403" in refused.value.detail  # Graph refused: the application may not edit itself
    after = await h.record(record.id)
    assert after is not None
    assert after.method == "client-secret"
    assert not after.rotation.in_progress


async def test_without_the_identity_settings_a_migration_is_refused_before_anything_changes() -> None:
    h = Harness(fakes=build_fakes(NO_FEDERATION))
    record = await h.create(rotation=False)
    calls = len(h.fakes.world.calls)
    with pytest.raises(InvalidRequest, match="not available"):
        await migrated(h, record)
    assert [c for c in h.fakes.world.calls[calls:] if not c.startswith("store.get")] == []


@pytest.mark.parametrize("rotated", [False, True])
async def test_revoke_original_of_a_certificate_connection_removes_its_key_with_a_proof_signed_by_it(
        rotated: bool) -> None:
    h = Harness(method="certificate")
    record = await h.create(rotation=rotated)
    app = h.fakes.world.apps[record.client_id or ""]
    assert len(app.keys) == 1
    done = await migrated(h, record, revoke=True)
    assert done.method == "federated"
    assert app.keys == {}
    assert h.check() == []


CHECKPOINTS = ("before-add-federated", "after-add-federated", "after-test-federated", "after-switch",
               "after-remove-originals", "after-vault-delete")


@pytest.mark.parametrize("revoke", [False, True])
@pytest.mark.parametrize("where", CHECKPOINTS)
async def test_a_migration_interrupted_at_any_step_is_finished_by_the_same_request(where: str, revoke: bool) -> None:
    h = Harness()
    record = await h.create(rotation=False)  # the user's own client secret

    async def crash(name: str, current: ConnectionRecord) -> None:
        if name == where:
            raise Crash(name)

    crashing = h.services(checkpoint=crash).connections
    with pytest.raises(Crash):
        await crashing.migrate_to_federated(APP, record.id, {"revokeOriginal": revoke})
    assert h.check() == []
    stopped = await h.record(record.id)
    assert stopped is not None
    assert stopped.rotation.step in MIGRATION_STEPS
    # while it is leased, the same request (another worker) answers 409; an edit of the credentials too
    with pytest.raises(RotationInProgress):
        await h.api.migrate_to_federated(APP, record.id, {})
    with pytest.raises(RotationInProgress):
        await h.api.update(APP, record.id, {"credentials": {"tenantId": TENANT, "clientId": record.client_id,
                                                            "clientSecret": "not-checked"}})
    h.fakes.clock.advance(h.services().rotator.options.lease)  # the lease runs out
    done = await h.api.migrate_to_federated(APP, record.id, {})
    assert done.method == "federated"
    assert not done.rotation.in_progress
    app = h.fakes.world.apps[record.client_id or ""]
    assert not [p for p in app.passwords.values() if p.created_by_service]
    assert (app.passwords == {}) is revoke
    assert len(app.federated) == 1
    assert h.check() == []
    outcomes = sorted(e.outcome for e in h.fakes.history.of(record.id) if e.trigger == "migrate-to-federated")
    assert outcomes == ["interrupted", "succeeded"]


@pytest.mark.parametrize("operation", ["graph.fic.add.lost", "graph.fic.add", "graph.remove", "vault.delete",
                                       "store.update"])
async def test_an_azure_failure_at_any_step_is_reported_and_the_request_again_finishes_it(operation: str) -> None:
    h = Harness()
    record = await h.create()
    h.fakes.world.fail_next(operation)
    h.faults_armed = True
    with pytest.raises(Exception):  # a problem (4xx/5xx) or the injected failure itself
        await h.api.migrate_to_federated(APP, record.id, {})
    assert h.check() == []
    h.fakes.world.clear_faults()
    h.fakes.clock.advance(h.services().rotator.options.lease)
    done = await h.api.migrate_to_federated(APP, record.id, {})
    assert done.method == "federated"
    assert not done.rotation.in_progress
    assert len(h.fakes.world.apps[record.client_id or ""].federated) == 1
    assert h.check() == []


@pytest.mark.parametrize("where", ["after-add-federated", "after-test-federated", "after-switch"])
async def test_a_health_check_or_rename_during_a_migration_does_not_stop_it(where: str) -> None:
    h = Harness()
    record = await h.create(rotation=False)

    async def meanwhile(name: str, current: ConnectionRecord) -> None:
        if name == where:
            stored = await h.record(record.id)
            assert stored is not None
            checked = await HealthChecker(h.fakes.adapters, h.api).check(stored)
            await h.api.update(APP, checked.id, {"description": "renamed meanwhile"})

    done = await h.services(checkpoint=meanwhile).connections.migrate_to_federated(APP, record.id, {})
    assert done.method == "federated"
    assert done.description == "renamed meanwhile"
    assert not done.rotation.in_progress
    assert h.check() == []


USER_OPERATIONS = ["patch-credentials", "patch-other-app", "patch-rotation", "disable-rotation", "delete", "validate",
                   "rotate", "rename", "reauthorize", "migrate", "create-same-app"]
# While a migration runs (leased), these wait for it: 409 with the journal's id.
REFUSED_WHILE_MIGRATING = {"patch-credentials", "patch-other-app", "patch-rotation", "disable-rotation", "delete",
                           "rotate", "migrate"}


@pytest.mark.parametrize("operation", USER_OPERATIONS)
@pytest.mark.parametrize("where", CHECKPOINTS)
async def test_a_user_operation_during_a_migration_step_keeps_every_invariant(where: str, operation: str) -> None:
    h = Harness()
    record = await h.create()
    ops = user_operations(h, record.id)
    seen = []
    running: list[str | None] = []  # the id of the migration running where the operation came

    async def interleave(name: str, current: ConnectionRecord) -> None:
        if name == where and not seen:
            running.append(current.rotation.rotation_id)
            seen.append(await ops[operation]())

    done = await h.services(checkpoint=interleave).connections.migrate_to_federated(APP, record.id, {})
    assert seen, f"the migration never reached {where}"
    switched = CHECKPOINTS.index(where) >= CHECKPOINTS.index("after-switch")
    if operation == "patch-rotation" and switched:  # federated already: refused for what it asks
        assert seen[0].status == 400, seen[0]
        assert "nothing to rotate" in seen[0].error.detail if seen[0].error else False
    elif operation in REFUSED_WHILE_MIGRATING:
        assert seen[0].status == 409, seen[0]
        assert seen[0].error is not None
        assert running[0] is not None
        assert seen[0].error.extensions.get("rotationId") == running[0]
        assert "Retry-After" in seen[0].error.headers
    else:
        assert seen[0].status == 200, seen[0].error
    assert done.method == "federated"
    assert not done.rotation.in_progress
    assert h.check() == []


@pytest.mark.parametrize("operation", USER_OPERATIONS)
@pytest.mark.parametrize("where", CHECKPOINTS)
async def test_after_a_crash_mid_migration_and_its_lease_ran_out_a_user_operation_keeps_every_invariant(
        where: str, operation: str) -> None:
    """Edits and DELETE wait (409, naming migrate-to-federated) until the migration is finished; the same request
    (or POST .../rotate) finishes it; then nothing the service created is left untracked."""
    h = Harness()
    record = await h.create()

    async def crash(name: str, current: ConnectionRecord) -> None:
        if name == where:
            raise Crash(name)

    with pytest.raises(Crash):
        await h.services(checkpoint=crash).connections.migrate_to_federated(APP, record.id, {})
    h.fakes.clock.advance(h.services().rotator.options.lease)
    outcome = await user_operations(h, record.id)[operation]()
    if operation in ("migrate", "rotate"):
        assert outcome.status == 200, outcome
    elif operation in ("patch-credentials", "patch-other-app", "disable-rotation", "delete"):
        assert outcome.status == 409, outcome
        assert outcome.error is not None
        assert "migrate-to-federated" in outcome.error.detail
    assert h.check() == []
    finished = await h.api.migrate_to_federated(APP, record.id, {}) if operation not in ("migrate", "rotate") \
        else await h.record(record.id)
    assert finished is not None
    assert finished.method == "federated"
    assert not finished.rotation.in_progress
    assert h.check() == []
    assert (await h.api.delete(APP, record.id)).key_ids_left_live == []
    assert h.check() == []


async def test_deleting_a_migrated_connection_removes_the_federated_credential_the_service_added() -> None:
    h = Harness()
    record = await h.create()
    await migrated(h, record)
    app = h.fakes.world.apps[record.client_id or ""]
    [added] = app.federated
    deleted = await h.api.delete(APP, record.id)
    assert deleted.removed_key_ids == [added]
    assert app.federated == {}
    assert ("credential.remove", "succeeded") in [(r.action, r.outcome) for r in h.fakes.audit.records]


async def test_a_federated_credential_another_connection_relies_on_stays_when_one_is_deleted() -> None:
    h = Harness()
    record = await h.create()
    await migrated(h, record)
    app = h.fakes.world.apps[record.client_id or ""]
    other = await h.api.create("azure-key-vault", federated_body(app.client_id, "kv"))
    assert (await h.api.delete(APP, record.id)).removed_key_ids == []
    assert len(app.federated) == 1
    assert (await h.api.validate("azure-key-vault", other.id)).status == "active"


async def test_a_migration_that_failed_before_the_switch_leaves_the_rotation_schedule_as_it_was() -> None:
    h = Harness()
    record = await h.create()  # rotating on a schedule
    assert record.rotation.next_at is not None
    h.fakes.world.federation_delay = 10**6
    with pytest.raises(CredentialRejected):
        await migrated(h, record)
    after = await h.record(record.id)
    assert after is not None
    assert after.rotation.enabled
    assert after.rotation.next_at == record.rotation.next_at
    assert after.rotation.schedule_key is not None
    assert [e.connection_id for e in await h.fakes.schedule.due(after.rotation.next_at)] == [record.id]
    await h.due()
    await h.sweep()  # the schedule goes on: the next rotation runs
    rotated = await h.record(record.id)
    assert rotated is not None
    assert rotated.rotation.last_rotated_at != record.rotation.last_rotated_at
    assert h.check() == []


@pytest.mark.parametrize("where", CHECKPOINTS)
async def test_the_sweep_finishes_a_migration_whose_worker_died_once_its_lease_ran_out(where: str) -> None:
    h = Harness()
    record = await h.create()

    async def crash(name: str, current: ConnectionRecord) -> None:
        if name == where:
            raise Crash(name)

    with pytest.raises(Crash):
        await h.services(checkpoint=crash).connections.migrate_to_federated(APP, record.id, {})
    await h.sweep()  # leased still: nothing happens
    stopped = await h.record(record.id)
    assert stopped is not None
    assert stopped.rotation.step in MIGRATION_STEPS
    h.lease_runs_out()
    await h.sweep()
    done = await h.record(record.id)
    assert done is not None
    assert done.method == "federated"
    assert not done.rotation.in_progress
    assert done.rotation.schedule_key is None
    assert await h.fakes.schedule.due(h.fakes.clock.now + timedelta(days=3650)) == []
    # The audit log's started record of the attempt that died gets its outcome too: interrupted.
    migrations = [r.outcome for r in h.fakes.audit.records if r.action == "connection.migrate"]
    assert sorted(migrations) == ["interrupted", "started", "started", "succeeded"]
    assert h.check() == []


async def _migration_held_up_before_the_addition(h: Harness, record: ConnectionRecord
                                                 ) -> tuple[asyncio.Task[object], asyncio.Event]:
    """A migration whose worker is held up just before it adds the federated credential, its lease run out."""
    async def migrate(hold: Checkpoint) -> ConnectionRecord:
        result: ConnectionRecord = await h.services(checkpoint=hold).connections.migrate_to_federated(
            APP, record.id, {})
        return result

    return await h.held_up_at("before-add-federated", migrate)


async def _nothing_migrated(h: Harness, record: ConnectionRecord) -> None:
    """The migration is undone: no federated credential on the application, every invariant holds, and the
    connection is the client-secret one it was, with no journal under way."""
    assert h.fakes.world.apps[record.client_id or ""].federated == {}
    assert h.check() == []
    after = await h.record(record.id)
    assert after is not None
    assert (after.method, after.secret_version) == ("client-secret", record.secret_version)
    assert not after.rotation.in_progress
    _every_migration_has_an_outcome(h)


def _every_migration_has_an_outcome(h: Harness) -> list[tuple[str, str | None]]:
    """Each ``connection.migrate`` recorded ``started`` has its outcome too (no worker died here): the records. A
    worker held up past its lease has two: ``interrupted``, when the next attempt closed it, and its own, when it
    woke."""
    records = [(r.outcome, r.detail) for r in h.fakes.audit.records if r.action == "connection.migrate"]
    started = sum(outcome == "started" for outcome, _ in records)
    woke = sum(outcome == "interrupted" and "within its lease" in (detail or "") for outcome, detail in records)
    assert started == len(records) - started - woke, records
    return records


async def test_a_migration_worker_held_up_past_its_lease_adds_nothing_once_another_undid_the_migration() -> None:
    """A worker held up just before it adds the federated credential (a frozen host) while its lease runs out; the
    same request again takes the migration over, whose sign-in never works, so it undoes it. When the first worker
    wakes, its next write fails before the addition: nothing is left that no journal tracks."""
    h = Harness()
    record = await h.create(rotation=False)
    first, woken = await _migration_held_up_before_the_addition(h, record)
    h.fakes.world.federation_delay = 10**6
    with pytest.raises(CredentialRejected):
        await migrated(h, record)
    assert h.fakes.world.apps[record.client_id or ""].federated == {}
    h.fakes.world.federation_delay = 0
    woken.set()
    with pytest.raises(ServiceError):
        await first
    await _nothing_migrated(h, record)


async def test_a_migration_worker_whose_lease_ran_out_while_held_up_adds_nothing_and_the_request_again_does() -> None:
    """Held up just before the addition until its lease ran out, though nobody took the migration over: by its own
    clock the worker stops before changing anything, and the migration is undone as a failure before the switch
    is; the same request again migrates."""
    h = Harness()
    record = await h.create(rotation=False)
    first, woken = await _migration_held_up_before_the_addition(h, record)
    woken.set()
    with pytest.raises(ServiceError):
        await first
    await _nothing_migrated(h, record)
    assert (await migrated(h, record)).method == "federated"
    assert h.check() == []


async def test_a_migration_whose_claim_loses_a_race_records_it_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review of the audit, 2.) A rename landed between the migration's read and its claim: the request answered
    409 'try again', and its ``started`` record never got an outcome."""
    h = Harness()
    record = await h.create(rotation=False)
    race = overtaken_at(monkeypatch, fakes.FakeConnections, "update", 1,
                        lambda: h.api.update(APP, record.id, {"name": "renamed"}))
    with pytest.raises(ConcurrentChange):
        await migrated(h, record)
    assert race.ran and not race
    assert _every_migration_has_an_outcome(h) == [("started", "to federated"),
                                                  ("skipped", "not claimed: the connection changed meanwhile")]


@pytest.mark.parametrize("change", ["rename", "delete"])
async def test_a_migration_whose_claim_loses_a_race_leaves_no_schedule_entry_behind(
        monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    """Found by a review of two instances at once: a migration whose claim lost to a DELETE (or any change) on
    another instance left the schedule entry it had indexed for its lease, which nothing pointed at (a rotation's
    lost claim drops its own)."""
    h = Harness()
    record = await h.create(rotation=False)
    other = (lambda: h.api.update(APP, record.id, {"name": "renamed"})) if change == "rename" else (
        lambda: h.api.delete(APP, record.id))
    race = overtaken_at(monkeypatch, fakes.FakeConnections, "update", 1, other)
    with pytest.raises((ConcurrentChange, NotFound)):
        await migrated(h, record)
    assert race.ran and not race
    assert [key for key in h.fakes.schedule.keys if record.id in key] == []


async def test_a_migration_whose_claim_an_error_stops_records_it_failed_saying_what_failed() -> None:
    h = Harness()
    record = await h.create(rotation=False)
    fails_once(h, "update")  # the claim's write: Table Storage fails
    with pytest.raises(UpstreamError):
        await migrated(h, record)
    assert _every_migration_has_an_outcome(h) == [
        ("started", "to federated"), ("failed", "claiming the migration: Table Storage failed (injected).")]
    assert (await migrated(h, record)).method == "federated"


async def test_a_migration_that_fails_on_a_connection_deleted_meanwhile_records_it_failed() -> None:
    """(Review of the audit, 2.) Its failure, which could not be written on the record, was recorded nowhere."""
    h = Harness()
    record = await h.create(rotation=False)

    async def fails_and_is_deleted(name: str, current: ConnectionRecord) -> None:
        if name == "before-add-federated":
            fails_once(h, "get", error=NotFound("No such connection (injected: deleted meanwhile)."))
            raise UpstreamError("Graph failed (injected).")

    with pytest.raises(UpstreamError):
        await h.services(fails_and_is_deleted).connections.migrate_to_federated(APP, record.id, {})
    assert _every_migration_has_an_outcome(h)[-1] == (
        "failed", "Graph failed (injected). (the connection was deleted meanwhile)")


async def test_a_migration_a_defect_stops_records_it_failed_naming_the_kind_of_error() -> None:
    h = Harness()
    record = await h.create(rotation=False)

    async def defect(name: str, current: ConnectionRecord) -> None:
        if name == "before-add-federated":
            raise RuntimeError("a defect, with text nobody is to record")

    with pytest.raises(RuntimeError):
        await h.services(defect).connections.migrate_to_federated(APP, record.id, {})
    assert _every_migration_has_an_outcome(h)[-1] == ("failed", "RuntimeError")


async def test_a_lost_addition_then_a_refused_clean_up_keeps_the_journal_so_the_credential_is_found_again() -> None:
    # Graph applied the federated credential's addition but its answer was lost; the clean-up that follows then
    # met a 403. Only Graph refusing the migration itself says nothing was added: the journal is kept, and the
    # request again finds the credential by its name and goes on (DELETE meanwhile asks for that request first).
    h = Harness()
    record = await h.create(rotation=False)
    world = h.fakes.world
    app = world.apps[record.client_id or ""]
    world.fail_next("graph.fic.add.lost")
    h.faults_armed = True  # the 502 is Graph's lost answer, said as such
    append = h.fakes.audit.append

    async def refused_after_the_addition(entry: Any) -> None:
        await append(entry)
        if entry.action == "credential.add" and entry.outcome == "failed":
            app.may_manage_itself = False  # Graph refuses the clean-up (a 403)

    h.fakes.audit.append = refused_after_the_addition  # type: ignore[method-assign]
    outcome = await h.op("migrate", record.id, lambda: h.api.migrate_to_federated(APP, record.id, {}),
                         may_change_on_error=True)
    h.fakes.audit.append = append  # type: ignore[method-assign]
    app.may_manage_itself = True
    assert outcome.error is not None and "did not start" not in outcome.error.detail
    kept = await h.record(record.id)
    assert kept is not None and kept.rotation.step in MIGRATION_STEPS  # tracked: the journal names the migration
    assert [c for c in app.federated.values() if c.name == credential_name(record.id)]
    assert h.check() == []
    finished = await h.api.migrate_to_federated(APP, record.id, {})  # the request again finds it and goes on
    assert finished.method == "federated"
    assert len([c for c in app.federated.values() if c.name == credential_name(record.id)]) == 1
    assert h.check() == []


@pytest.mark.parametrize("method", ["client-secret", "certificate"])
async def test_a_migration_worker_whose_lease_ran_out_after_its_switch_removes_nothing_and_the_request_again_does(
        method: str) -> None:
    """Held up right after the switch until its lease ran out (a frozen host): by its own clock the worker stops
    before asking Graph to remove anything, as another may have taken the migration over, and says to send the
    request again, which finishes the clean-up."""
    h = Harness(method=method)
    record = await h.create()

    async def migrate(hold: Checkpoint) -> ConnectionRecord:
        result: ConnectionRecord = await h.services(checkpoint=hold).connections.migrate_to_federated(
            APP, record.id, {"revokeOriginal": True})
        return result

    first, woken = await h.held_up_at("after-switch", migrate)
    removals = list(h.fakes.world.revocations)
    woken.set()
    with pytest.raises(ServiceError, match="migrate-to-federated again to finish") as stopped:
        await first
    assert 400 <= stopped.value.status < 500
    assert h.fakes.world.revocations == removals  # nothing removed past the lease
    finished = await h.api.migrate_to_federated(APP, record.id, {})  # resumes the half-done migration
    assert finished.method == "federated" and not finished.rotation.in_progress
    assert len(h.fakes.world.revocations) > len(removals)
    assert h.check() == []


@pytest.mark.parametrize(("refusal", "kept"), [
    ("AADSTS53003: Access has been blocked by Conditional Access policies.", True),
    ("AADSTS7000112: Application is disabled.", True),
    ("AADSTS70021: No matching federated identity record found for presented assertion.", True),
    ("AADSTS70025: The client application has no configured federated identity credentials.", False),
    # (Review of the stand-in's fidelity, 2: also when the service principal alone was deleted, the registration
    # and its federated credentials staying.)
    ("AADSTS700016: Application with identifier 'x' was not found in the directory.", True),
])
async def test_leaving_a_federated_application_that_refuses_the_sign_in_keeps_its_clean_up_until_it_is_done(
        refusal: str, kept: bool) -> None:
    """A federated connection moved to another application removes the federated credential the service added to
    the one it left. Only "no federated credential at all" (70025) says that nothing is left there: not 700016,
    "no such application in the tenant", nor (review N, session 17) 70021, "none matches the service's identity
    now" (one added for an identity the service no longer has would still be there). Any other refusal (a
    Conditional Access policy, the application disabled) leaves it perhaps live: it was once only audited as left
    live, tracked by nothing; the clean-up now stays in the journal (``retire_*``), is said in the rotation's
    message, and the sweep tries it again, with back-off, until it is done."""
    h = Harness()
    record = await h.create()
    migrated = await h.api.migrate_to_federated(APP, record.id, {})
    left = h.fakes.world.apps[migrated.client_id or ""]
    other = h.fakes.world.application()
    h.fakes.world.add_federated(other.client_id)
    code = refusal.partition(":")[0]
    h.fakes.world.fail_next("graph.token", CredentialRejected(refusal, extensions={"aadstsCode": code}))
    moved = await h.api.update(APP, record.id, {"credentials": {"tenantId": TENANT, "clientId": other.client_id}})
    assert moved.client_id == other.client_id
    assert (moved.rotation.retire_federated_id == migrated.rotation.key_id) == kept
    assert not [r for r in h.fakes.audit.records if r.outcome == "credentials-left-live"]
    assert h.unscheduled() == []  # (the refusals that say nothing is left are injected: the world is not checked)
    if kept:
        assert h.check() == []
        assert moved.rotation.retire_client_id == migrated.client_id
        assert "could not be removed yet" in (moved.rotation.message or "")
        assert migrated.rotation.key_id in left.federated
        await h.due()
        await h.sweep()
        done = await h.record(record.id)
        assert done is not None and not done.rotation.cleaning_up and done.rotation.next_at is None
        assert migrated.rotation.key_id not in left.federated
        assert h.check() == [] and h.unscheduled() == []


async def _moved_off(h: Harness, refusal: str | None = None) -> tuple[ConnectionRecord, ConnectionRecord, str]:
    """A migrated connection (tracking the federated credential its migration added) moved to another application;
    ``refusal``: Entra refuses the service's sign-in at the application it left meanwhile (the clean-up fails).
    The connection before and after, and the credential left at the first application."""
    record = await h.create()
    before = await migrated(h, record)
    other = h.fakes.world.application()
    h.fakes.world.add_federated(other.client_id)
    if refusal is not None:
        code = refusal.partition(":")[0]
        h.fakes.world.fail_next("graph.token", CredentialRejected(refusal, extensions={"aadstsCode": code}),
                                times=1000)
    moved = await h.api.update(APP, record.id, {"credentials": {"tenantId": TENANT, "clientId": other.client_id}})
    return before, moved, before.rotation.key_id or ""


BLOCKED = "AADSTS53003: Access has been blocked by Conditional Access policies."


async def test_a_worker_that_dies_right_after_the_move_is_saved_leaves_the_clean_up_to_the_sweep(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The federated credential the service added to the application a connection left was removed after the
    change was saved, tracked by nothing in between: a worker that died there (a host recycled) left it live and
    trusted for good. The change now journals the clean-up (``retire_*``) with a due time; the sweep makes it."""
    h = Harness()
    record = await h.create()
    before = await migrated(h, record)
    left = h.fakes.world.apps[before.client_id or ""]
    other = h.fakes.world.application()
    h.fakes.world.add_federated(other.client_id)

    async def dies(self: Any, object_id: str, credential_id: str) -> None:
        raise Crash("graph.fic.remove")

    monkeypatch.setattr(fakes.FakeGraph, "remove_federated_credential", dies)
    with pytest.raises(Crash):
        await h.api.update(APP, record.id, {"credentials": {"tenantId": TENANT, "clientId": other.client_id}})
    monkeypatch.undo()
    saved = await h.record(record.id)
    assert saved is not None and saved.client_id == other.client_id
    assert saved.rotation.retire_federated_id == before.rotation.key_id
    assert before.rotation.key_id in left.federated
    assert h.check() == [] and h.unscheduled() == []
    h.lease_runs_out()
    await h.due()
    await h.sweep()
    done = await h.record(record.id)
    assert done is not None and not done.rotation.cleaning_up and done.rotation.key_id is None
    assert before.rotation.key_id not in left.federated
    assert h.fakes.world.federated_live(other.client_id)
    assert h.check() == [] and h.unscheduled() == []


async def test_moved_back_before_its_clean_up_is_done_the_connection_takes_its_credential_back() -> None:
    """Moved back to the application whose clean-up is pending, the connection signs in with the federated
    credential the service added there: it is the connection's again (tracked, removed by its DELETE), not
    removed by a clean-up that comes later."""
    h = Harness()
    before, moved, credential_id = await _moved_off(h, BLOCKED)
    assert moved.rotation.retire_federated_id == credential_id
    h.fakes.world.clear_faults()
    back = await h.api.update(APP, before.id, {"credentials": {"tenantId": TENANT,
                                                               "clientId": before.client_id}})
    assert back.client_id == before.client_id and back.rotation.key_id == credential_id
    assert not back.rotation.cleaning_up and back.rotation.next_at is None
    await h.settle()
    assert credential_id in h.fakes.world.apps[before.client_id or ""].federated
    assert h.check() == [] and h.unscheduled() == []
    await h.api.delete(APP, before.id)
    assert credential_id not in h.fakes.world.apps[before.client_id or ""].federated
    assert h.check() == []


async def test_a_move_elsewhere_before_the_clean_up_is_done_finishes_it_first_or_changes_nothing() -> None:
    """One clean-up at a time, as for the client secrets a change leaves behind: a second move finishes the
    first one's clean-up first; while the application left still refuses, the second move answers 409 and
    changes nothing."""
    h = Harness()
    before, moved, credential_id = await _moved_off(h, BLOCKED)
    third = h.fakes.world.application()
    h.fakes.world.add_federated(third.client_id)
    body = {"credentials": {"tenantId": TENANT, "clientId": third.client_id}}
    with pytest.raises(ServiceError) as refused:
        await h.api.update(APP, before.id, body)
    assert refused.value.status == 409 and "could not be removed yet" in refused.value.detail
    unchanged = await h.record(before.id)
    assert unchanged is not None and unchanged.client_id == moved.client_id
    assert unchanged.rotation.retire_federated_id == credential_id
    h.fakes.world.clear_faults()
    h.lease_runs_out()
    done = await h.api.update(APP, before.id, body)
    assert done.client_id == third.client_id and not done.rotation.cleaning_up
    assert credential_id not in h.fakes.world.apps[before.client_id or ""].federated
    assert h.check() == [] and h.unscheduled() == []


@pytest.mark.parametrize("force", [False, True])
async def test_a_delete_before_the_clean_up_is_done_makes_it_or_says_what_stays_live(force: bool) -> None:
    """A DELETE removes what the service added to the application the connection left, as its clean-up would;
    while that application refuses, a DELETE answers 409 and deletes nothing, and a forced one names the
    credential it leaves live."""
    h = Harness()
    before, _, credential_id = await _moved_off(h, BLOCKED)
    if force:
        deleted = await h.api.delete(APP, before.id, force=True)
        assert credential_id in deleted.key_ids_left_live
        assert credential_id in h.fakes.world.apps[before.client_id or ""].federated
        return
    with pytest.raises(ServiceError) as refused:
        await h.api.delete(APP, before.id)
    assert refused.value.status == 409 and credential_id in refused.value.extensions["keyIds"]
    assert await h.record(before.id) is not None and h.check() == []
    h.fakes.world.clear_faults()
    h.lease_runs_out()
    await h.api.delete(APP, before.id)
    assert credential_id not in h.fakes.world.apps[before.client_id or ""].federated
    assert h.check() == []


def refused_at(monkeypatch: pytest.MonkeyPatch, *client_ids: str) -> set[str]:
    """Entra refuses the service's federated sign-in at these applications only (a Conditional Access policy), for
    as long as the set returned holds them."""
    blocked = set(client_ids)
    original = fakes.FakeDirectory._federated

    def federated(self: Any, client_id: str) -> None:
        if client_id in blocked:
            raise CredentialRejected(BLOCKED, extensions={"aadstsCode": "AADSTS53003"})
        original(self, client_id)

    monkeypatch.setattr(fakes.FakeDirectory, "_federated", federated)
    return blocked


def moved_to(client_id: str) -> dict[str, Any]:
    return {"credentials": {"tenantId": TENANT, "clientId": client_id}}


async def _two_migrated_one_moved_onto_the_other(h: Harness, monkeypatch: pytest.MonkeyPatch
                                                 ) -> tuple[str, str, str, str, str, set[str]]:
    """c1 migrated on A (F1), c2 on B (F2); c1 moved to B while A refuses (F1's clean-up journaled), then c2
    deleted (F2 handed over to c1). c1's id, A, F1, B, F2, and the applications refusing (none by then)."""
    c1 = await h.api.migrate_to_federated(APP, (await h.create("c1")).id, {})
    c2 = await h.api.migrate_to_federated(APP, (await h.create("c2")).id, {})
    a, f1, b, f2 = c1.client_id or "", c1.rotation.key_id or "", c2.client_id or "", c2.rotation.key_id or ""
    blocked = refused_at(monkeypatch, a)
    assert (await h.api.update(APP, c1.id, moved_to(b))).rotation.retire_federated_id == f1
    blocked.clear()
    await h.api.delete(APP, c2.id)
    record = await h.record(c1.id)
    assert record is not None and record.rotation.key_id == f2 and record.rotation.retire_federated_id == f1
    return c1.id, a, f1, b, f2, blocked


@pytest.mark.parametrize("no_match", ["AADSTS70021", "AADSTS700213", "AADSTS7002138"])
async def test_a_clean_up_whose_removal_went_through_unrecorded_is_done_at_its_next_attempt(
        monkeypatch: pytest.MonkeyPatch, no_match: str) -> None:
    """(Review F, D1.) The removal went through but the worker died before forgetting the clean-up: every retry
    then failed to sign in there (AADSTS70021: nothing matches the service's identity any more), for ever, and
    refused every later move and DELETE (409). The removal is journaled ahead (``retire_removing_key_id``): once
    sent, that refusal means it went, whichever of Entra's codes for "none matches" it comes with (review of the
    stand-in's fidelity, 4: the application may have federated credentials of its owner's, for other issuers),
    provided it still comes ``REMOVAL_CONFIRMATION_SECONDS`` after the first (the next attempt, after its
    back-off); only then is the removal audited ``confirmed``."""
    h = Harness()
    h.fakes.world.no_match_code = no_match
    before, _moved, credential_id = await _moved_off(h, BLOCKED)
    h.fakes.world.clear_faults()

    async def dies(name: str, current: ConnectionRecord) -> None:
        if name == "after-retire":
            raise Crash(name)

    await h.due()
    with pytest.raises(Crash):
        await h.sweep(checkpoint=dies)
    assert credential_id not in h.fakes.world.apps[before.client_id or ""].federated
    h.lease_runs_out()
    await h.due()
    await h.sweep()
    waiting = await h.record(before.id)  # refused: not proof yet
    assert waiting is not None and waiting.rotation.retire_removing_refused_at == h.fakes.clock.now
    assert waiting.rotation.retire_federated_id == credential_id and not confirmed(h)
    await h.due()
    await h.sweep()
    done = await h.record(before.id)
    assert done is not None and not done.rotation.cleaning_up
    assert done.rotation.failures == 0 and "could not be removed" not in (done.rotation.message or "")
    assert confirmed(h) == [credential_id]
    assert h.check() == [] and h.unscheduled() == []
    await h.api.delete(APP, before.id)


def confirmed(h: Harness) -> list[str]:
    """The credentials whose removal Entra's refusal confirmed (``credential.remove`` ``confirmed``), in order."""
    return [(r.detail or "").split()[3] for r in h.fakes.audit.records
            if r.action == "credential.remove" and r.outcome == "confirmed"]


@pytest.mark.parametrize("by", ["sweep", "move", "delete"])
async def test_a_refusal_right_after_the_removal_of_the_federated_credential_left_failed_is_not_its_removal(
        by: str) -> None:
    """(Review of the clean-ups' confirmation.) The clean-up's removal of the federated credential at the
    application left failed unmade (a 5xx); the next attempt's sign-in there came to a part of Entra ID that the
    credential had not reached (AADSTS70021): taken for the removal, the clean-up was forgotten, and the
    credential stayed live, trusting the service, tracked by nothing. As a DELETE's, that refusal must hold
    ``REMOVAL_CONFIRMATION_SECONDS``: until then the clean-up fails as one that could not finish (a request
    answers 409 with Retry-After); by then the sign-in works, and the removal is made."""
    h = Harness()
    before = await migrated(h, await h.create())
    credential_id = before.rotation.key_id or ""
    world = h.fakes.world
    left = world.apps[before.client_id or ""]
    other, third = world.application(), world.application()
    world.add_federated(other.client_id)
    world.add_federated(third.client_id)
    world.fail_next("graph.fic.remove")  # a 5xx: not made
    moved = await h.api.update(APP, before.id, moved_to(other.client_id))
    assert moved.rotation.retire_removing_key_id == credential_id and credential_id in left.federated
    window = int(h.fakes.adapters.settings.removal_confirmation_seconds)
    world.federation_delay = 1  # one sign-in refused by a part of Entra ID the credential has not reached
    refused: ServiceError | None = None
    try:
        if by == "sweep":
            await h.due()
            await h.sweep()
        elif by == "move":
            await h.api.update(APP, before.id, moved_to(third.client_id))
        else:
            await h.api.delete(APP, before.id)
    except ServiceError as error:
        refused = error
    assert (refused is None) == (by == "sweep")
    if refused is not None:
        assert refused.status == 409 and refused.headers["Retry-After"] == str(window)
    waiting = await h.record(before.id)
    assert waiting is not None and waiting.client_id == other.client_id
    assert waiting.rotation.retire_federated_id == credential_id
    assert waiting.rotation.retire_removing_refused_at == h.fakes.clock.now
    assert credential_id in left.federated and not confirmed(h) and h.check() == []
    h.fakes.clock.advance(timedelta(seconds=window))
    if by == "sweep":
        await h.due()
        await h.sweep()
    elif by == "move":
        assert (await h.api.update(APP, before.id, moved_to(third.client_id))).client_id == third.client_id
    else:
        assert (await h.api.delete(APP, before.id)).removed_key_ids == [credential_id]
    assert credential_id not in left.federated and not confirmed(h)  # removed, not confirmed by a refusal
    done = await h.record(before.id)
    assert done is None if by == "delete" else (done is not None and not done.rotation.cleaning_up)
    assert h.check() == []


async def test_a_move_back_while_the_clean_up_is_removing_the_credential_waits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review F, D2.) A move back to the application left, while the sweep's clean-up held the lease between its
    checks and the removal, took the credential back, and the clean-up then removed it: a lockout. Refused (409)
    while the clean-up holds the lease; a move back read before it took the lease fails on the ETag."""
    h = Harness()
    before, moved, _credential_id = await _moved_off(h, BLOCKED)
    h.fakes.world.clear_faults()
    back = overtaken_at(monkeypatch, fakes.FakeGraph, "remove_federated_credential", 1,
                        lambda: h.api.update(APP, before.id, moved_to(before.client_id or "")))
    await h.due()
    await h.sweep()
    assert back.ran and back and back[0].status == 409, back
    after = await h.record(before.id)
    assert after is not None and after.client_id == moved.client_id and not after.rotation.cleaning_up
    assert h.check() == []


async def test_a_delete_that_removed_the_credential_left_and_then_failed_leaves_nothing_to_retry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review F, D3.) A DELETE removed the federated credential at the application left, then failed at the one in
    use: the connection was given back its clean-up, which then could never finish (D1). The DELETE that is undone
    keeps what it finished."""
    h = Harness()
    connection_id, a, f1, b, f2, blocked = await _two_migrated_one_moved_onto_the_other(h, monkeypatch)
    blocked.add(b)
    with pytest.raises(ServiceError) as refused:
        await h.api.delete(APP, connection_id)
    assert refused.value.status == 409 and refused.value.extensions["keyIds"] == [f2]
    kept = await h.record(connection_id)
    assert kept is not None and not kept.rotation.cleaning_up and f1 not in h.fakes.world.apps[a].federated
    blocked.clear()
    h.lease_runs_out()
    await h.api.delete(APP, connection_id)
    assert await h.record(connection_id) is None and f2 not in h.fakes.world.apps[b].federated
    assert h.check() == []


async def test_a_forced_delete_still_cleans_up_the_application_in_use_when_the_one_left_refuses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review F, D4.) The failure at the application left stopped a forced DELETE before the federated credential
    on the application in use, which accepted: left live, and not handed over to a connection relying on it."""
    h = Harness()
    connection_id, a, f1, b, f2, blocked = await _two_migrated_one_moved_onto_the_other(h, monkeypatch)
    blocked.add(a)
    deleted = await h.api.delete(APP, connection_id, force=True)
    assert deleted.key_ids_left_live == [f1] and f2 in deleted.removed_key_ids
    assert f2 not in h.fakes.world.apps[b].federated and f1 in h.fakes.world.apps[a].federated


@pytest.mark.parametrize("how", ["sweep", "delete"])
@pytest.mark.parametrize("error", [UpstreamError("Graph answered 503 (injected)"),
                                   UpstreamForbidden("Microsoft Graph refused (403 Authorization_RequestDenied).")])
async def test_a_sent_removal_is_taken_as_made_only_while_the_service_has_the_identity_it_named(
        how: str, error: ServiceError) -> None:
    """(Review G, G1.) Once a removal had been journaled as sent, a sign-in there refused with AADSTS70021 was taken
    as proof it went through: but the service's identity had changed (a new managed identity), so nothing matched
    it any more, and the credential, still there and trusting the old identity, was forgotten (a DELETE even listed
    it as removed). The journal names the identity the credential matched; under another one it proves nothing."""
    h = Harness()
    before = await migrated(h, await h.create())
    left = h.fakes.world.apps[before.client_id or ""]
    credential_id = before.rotation.key_id or ""
    other = h.fakes.world.application()
    h.fakes.world.add_federated(other.client_id)
    h.fakes.world.fail_next("graph.fic.remove", error)
    moved = await h.api.update(APP, before.id, moved_to(other.client_id))
    assert moved.rotation.retire_removing_key_id == credential_id and credential_id in left.federated
    assert moved.rotation.retire_removing_identity == IDENTITY_PRINCIPAL_ID
    new_principal = "55555555-aaaa-4bbb-8ccc-dddddddddddd"  # the operator gives the service another identity
    world = h.fakes.world
    assert world.federation is not None
    world.federation = dataclasses.replace(world.federation, principal_id=new_principal)
    h.fakes.adapters = dataclasses.replace(h.fakes.adapters, settings=dataclasses.replace(
        h.fakes.adapters.settings, federation_identity_principal_id=new_principal))
    world.add_federated(other.client_id, "for-the-new-identity")
    if how == "sweep":
        await h.due()
        await h.sweep()
        after = await h.record(before.id)
        assert after is not None and after.rotation.retire_federated_id == credential_id  # still tracked
    else:
        with pytest.raises(ServiceError) as refused:
            await h.api.delete(APP, before.id)
        assert refused.value.status == 409 and credential_id in refused.value.extensions["keyIds"]
    assert credential_id in left.federated and h.check() == []


async def test_a_move_back_waits_while_a_removal_sent_may_still_land(monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review G, G2.) The sweep's worker, held up past its lease between the journal of the removal and Graph's
    answer: a move back (no lease any more) took the credential back, then the held-up removal landed (a lockout).
    A move back waits (409) while the journal says the removal was sent."""
    h = Harness()
    before, moved, credential_id = await _moved_off(h, BLOCKED)
    h.fakes.world.clear_faults()

    async def held_up_then_back() -> None:
        h.lease_runs_out()
        await h.api.update(APP, before.id, moved_to(before.client_id or ""))

    race = overtaken_at(monkeypatch, fakes.FakeGraph, "remove_federated_credential", 1, held_up_then_back)
    await h.due()
    await h.sweep()
    assert race.ran and race and race[0].status == 409, race
    after = await h.record(before.id)
    assert after is not None and after.client_id == moved.client_id and after.rotation.key_id is None
    assert credential_id not in h.fakes.world.apps[before.client_id or ""].federated and h.check() == []


async def test_a_key_vault_failure_in_the_clean_up_after_the_switch_is_a_502_and_the_request_again_finishes_it(
) -> None:
    """Found by a review: the clean-up took any failure to read the old vault version for one already deleted,
    signed the proof of its certificate's removal with nothing, and answered 400 with a field error about a
    certificate the request never had (a client does not send a 400 again). Key Vault not answering is now the
    attempt's failure, a 502, and the request sent again finishes."""
    h = Harness(method="certificate")
    record = await h.create(rotation=False)

    async def vault_fails(name: str, current: ConnectionRecord) -> None:
        if name == "after-switch":
            h.fakes.world.fail_next("vault.get")

    with pytest.raises(ServiceError) as failed:
        await h.services(checkpoint=vault_fails).connections.migrate_to_federated(
            APP, record.id, {"revokeOriginal": True})
    assert failed.value.status == 502 and not failed.value.errors, (failed.value.status, failed.value.errors)
    h.fakes.clock.advance(h.services().rotator.options.lease)
    done = await h.api.migrate_to_federated(APP, record.id, {})
    assert done.method == "federated" and not done.rotation.in_progress
    assert h.fakes.world.apps[record.client_id or ""].keys == {}
    assert h.check() == []


async def test_moving_to_another_application_whose_write_landed_with_its_answer_lost_leaves_the_first_one(
) -> None:
    """Found by a review: the write of a federated connection's new application landed with its answer lost (a
    409); the federated credential the service had added to the application it left stayed there, trusted,
    tracked by nothing, and the PATCH sent again changed nothing. Read back, the change is made and the credential
    left."""
    h = Harness()
    record = await h.create()
    moved_once = await migrated(h, record)
    left = h.fakes.world.apps[moved_once.client_id or ""]
    assert moved_once.rotation.key_id in left.federated
    other = h.fakes.world.application()
    h.fakes.world.add_federated(other.client_id)
    fails_once(h, "update", applied=True, error=own_etag())
    moved = await h.api.update(APP, record.id, {"credentials": {"tenantId": TENANT, "clientId": other.client_id}})
    assert moved.client_id == other.client_id
    assert moved_once.rotation.key_id not in left.federated
    assert h.check() == []


@pytest.mark.parametrize("nth", [1, 2, 3, 4, 5, 6])  # 1 the claim, 2 before the addition, 3 added, 4 tested,
async def test_a_migration_whose_journal_write_landed_with_its_answer_lost_goes_on(nth: int) -> None:  # 5, 6
    """Found by a review: a migration took its own write, landed with its answer lost (the retry met its own
    ETag), for another's. Its claim answered 409, then the lease it held refused every request for 15 minutes;
    a step's write undid what the migration had added (a 400), or answered 409 for a migration that was done,
    then 400 for good ("a federated connection cannot be migrated") with no audit record of its success."""
    h = Harness()
    record = await h.create(rotation=False)
    fails_once(h, "update", nth, applied=True, error=own_etag())
    done = await h.api.migrate_to_federated(APP, record.id, {})
    assert done.method == "federated" and not done.rotation.in_progress
    assert ("connection.migrate", "succeeded") in [(r.action, r.outcome) for r in h.fakes.audit.records]
    assert h.check() == []


async def test_a_failed_migration_whose_last_write_landed_with_its_answer_lost_stays_scheduled() -> None:
    """Found by the stateful test: a migration that failed wrote its failure with the schedule entry of its retry;
    that write landed with its answer lost (a conflict with its own ETag), and it then removed that entry as one
    nothing pointed at. The connection pointed at an entry that was gone: the sweep never resumed the migration."""
    h = Harness()
    record = await h.create(rotation=False)
    h.fakes.world.fail_next("graph.find", times=2)  # the addition, and the clean-up of what it may have added
    store = h.fakes.connections
    update = store.update

    async def landed(target: ConnectionRecord, *args: Any, **kwargs: Any) -> ConnectionRecord:
        saved = await update(target, *args, **kwargs)
        if target.rotation.status == "failed":
            store.update = update  # type: ignore[method-assign]
            raise own_etag()
        return saved

    store.update = landed  # type: ignore[method-assign]
    with pytest.raises(ServiceError):
        await h.api.migrate_to_federated(APP, record.id, {})
    failed = await h.record(record.id)
    assert failed is not None and failed.rotation.status == "failed" and failed.rotation.step in MIGRATION_STEPS
    assert h.unscheduled() == []
    h.fakes.clock.now = (failed.rotation.next_at or h.fakes.clock.now) + timedelta(minutes=1)
    await h.sweep()
    done = await h.record(record.id)
    assert done is not None and done.method == "federated"
    assert h.check() == []


# -- a federated credential that several connections of one application rely on (review C, session 17) --------
async def _two_on_one_application(h: Harness) -> tuple[ConnectionRecord, ConnectionRecord, str]:
    client_id, given = h.new_application()
    a = await h.api.create(APP, {"name": "a", "method": "client-secret", "credentials": given})
    b = await h.api.create(APP, {"name": "b", "method": "client-secret",
                                 "credentials": h.new_credential(client_id)})
    return a, b, client_id


async def test_a_migration_that_reuses_another_connection_s_federated_credential_shares_it_and_the_last_removes_it(
) -> None:
    """B's migration reused the credential A's had added, and tracked nothing: deleting A kept it (B relies on it),
    deleting B removed nothing, and it stayed live on the application with no connection left."""
    h = Harness()
    a, b, client_id = await _two_on_one_application(h)
    await h.api.migrate_to_federated(APP, a.id, {})
    b_done = await h.api.migrate_to_federated(APP, b.id, {})
    app = h.fakes.world.apps[client_id]
    [added] = app.federated
    assert b_done.rotation.key_id == added
    assert (await h.api.delete(APP, a.id)).removed_key_ids == []  # b relies on it
    assert (await h.api.validate(APP, b.id)).status == "active"
    assert (await h.api.delete(APP, b.id)).removed_key_ids == [added]
    assert app.federated == {}
    assert h.check() == []


async def test_a_federated_credential_kept_for_a_connection_created_federated_is_handed_over_to_it() -> None:
    """A connection created federated on an application whose credential a migration added tracks nothing of its
    own: when the migrated one is deleted, the credential it keeps becomes the other's, which removes it last."""
    h = Harness()
    record, other, client_id, added = await _migrated_and_created(h)
    app = h.fakes.world.apps[client_id]
    assert other.rotation.key_id is None
    assert (await h.api.delete(APP, record.id)).removed_key_ids == []
    assert h.check() == []
    heir = await h.record(other.id)
    assert heir is not None and heir.rotation.key_id == added
    assert (await h.api.delete("azure-key-vault", other.id)).removed_key_ids == [added]
    assert app.federated == {} and h.check() == []


async def test_a_federated_credential_a_migration_under_way_relies_on_is_kept_when_its_adder_is_deleted() -> None:
    """Deleting A at the moment B's migration had tested A's credential removed it: B switched to a sign-in that no
    longer worked, and was stuck (every PATCH and DELETE refused, every retry AADSTS70021)."""
    h = Harness()
    a, b, client_id = await _two_on_one_application(h)
    await h.api.migrate_to_federated(APP, a.id, {})
    deleted: list[Any] = []

    async def meanwhile(name: str, current: Any) -> None:
        if name == "after-test-federated" and not deleted:
            deleted.append(await h.api.delete(APP, a.id))

    done = await h.services(checkpoint=meanwhile).connections.migrate_to_federated(APP, b.id, {"revokeOriginal": True})
    assert deleted[0].removed_key_ids == []
    assert done.method == "federated" and h.fakes.world.federated_live(client_id)
    assert (await h.api.validate(APP, b.id)).status == "active"
    assert h.check() == []


async def test_a_migration_resumed_after_its_test_tests_again_before_it_switches() -> None:
    """Resumed from migrate-tested, the switch came without a test: a credential removed meanwhile (or never
    propagated to where the sign-in goes) left a federated connection that could not sign in."""
    h = Harness()
    record = await h.create(rotation=False)
    update = h.fakes.connections.update

    async def crash_at_the_switch(target: ConnectionRecord, *args: Any, **kwargs: Any) -> ConnectionRecord:
        if target.method == "federated":
            raise Crash("the worker dies as it switches")
        return await update(target, *args, **kwargs)

    h.fakes.connections.update = crash_at_the_switch  # type: ignore[method-assign]
    with pytest.raises(Crash):
        await h.api.migrate_to_federated(APP, record.id, {})
    h.fakes.connections.update = update  # type: ignore[method-assign]
    stopped = await h.record(record.id)
    assert stopped is not None and stopped.rotation.step == "migrate-tested"
    app = h.fakes.world.apps[record.client_id or ""]
    app.federated.clear()  # gone meanwhile (removed by hand, say)
    h.fakes.clock.advance(h.services().rotator.options.lease)
    with pytest.raises(CredentialRejected):
        await h.api.migrate_to_federated(APP, record.id, {})
    after = await h.record(record.id)
    assert after is not None and after.method == "client-secret" and after.rotation.step is None
    assert (await h.api.validate(APP, record.id)).status == "active"
    assert h.check() == []


async def test_a_failed_migration_s_outcome_is_written_over_an_edit_that_landed_meanwhile() -> None:
    """The failure's single write met a validation that landed meanwhile and gave up: the request answered that the
    migration failed, the journal stayed (leased, revokeOriginal set), and the sweep later completed it, revoking
    the user's secret."""
    h = Harness()
    record = await h.create(rotation=False)
    app = h.fakes.world.apps[record.client_id or ""]
    given = set(app.passwords)
    h.fakes.world.fail_next("graph.fic.add")  # nothing added: the migration fails before its switch
    history_record = h.fakes.history.record
    raced: list[Any] = []

    async def record_then_validate(event: Any) -> None:  # between the failure's read and its write
        if event.outcome == "failed" and not raced:
            raced.append(await h.api.validate(APP, record.id))
        await history_record(event)

    h.fakes.history.record = record_then_validate  # type: ignore[method-assign]
    with pytest.raises(ServiceError, match="did not complete"):
        await h.api.migrate_to_federated(APP, record.id, {"revokeOriginal": True})
    h.fakes.history.record = history_record  # type: ignore[method-assign]
    after = await h.record(record.id)
    assert after is not None and raced
    assert (after.rotation.step, after.rotation.lease_owner, after.rotation.revoke_original) == (None, None, False)
    h.fakes.clock.advance(h.services().rotator.options.lease)
    await h.sweep()
    done = await h.record(record.id)
    assert done is not None and done.method == "client-secret" and given <= set(app.passwords)
    assert h.check() == []


async def test_a_connection_being_deleted_neither_keeps_nor_takes_over_the_federated_credential() -> None:
    """Two DELETEs at once: the one of the connection that tracks the credential saw the other, still there but
    being deleted, as relying on it, and handed the credential over to a record about to go."""
    h = Harness()
    record, other, client_id, added = await _migrated_and_created(h)
    app = h.fakes.world.apps[client_id]
    going = await h.record(other.id)
    assert going is not None
    await h.fakes.connections.update(going.evolve(status="deleting"))  # its DELETE is under way
    assert (await h.api.delete(APP, record.id)).removed_key_ids == [added]
    assert app.federated == {}
    still = await h.record(other.id)
    assert still is not None and still.rotation.key_id is None


async def _migrated_and_created(h: Harness) -> tuple[ConnectionRecord, ConnectionRecord, str, str]:
    """A migrated connection tracking the credential its migration added, and one created federated on the same
    application (it tracks nothing of its own)."""
    record = await h.create()
    await migrated(h, record)
    app = h.fakes.world.apps[record.client_id or ""]
    [added] = app.federated
    other = await h.api.create("azure-key-vault", federated_body(app.client_id, "kv"))
    return record, other, app.client_id, added


async def test_the_heir_moved_to_another_application_meanwhile_is_not_handed_the_credential(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review E.) The heir, PATCHed onto another application between the DELETE's listing and its hand-over,
    was handed a credential that is not on its application: deleting it later removed nothing."""
    from shared.rotation import sharing

    h = Harness()
    record, other, client_id, added = await _migrated_and_created(h)
    elsewhere = h.fakes.world.application()
    h.fakes.world.add_federated(elsewhere.client_id)
    hand_over = sharing.hand_over
    moved: list[ConnectionRecord] = []

    async def moved_first(store: Any, giver: ConnectionRecord, heirs: list[ConnectionRecord], credential_id: str,
                          tenant_id: str, audit: Any) -> ConnectionRecord | None:
        if not moved:
            moved.append(await h.api.update("azure-key-vault", other.id, {
                "credentials": {"tenantId": TENANT, "clientId": elsewhere.client_id}}))
        return await hand_over(store, giver, heirs, credential_id, tenant_id, audit)

    monkeypatch.setattr(sharing, "hand_over", moved_first)
    await h.api.delete(APP, record.id)  # nobody relies on it any more: removed
    heir = await h.record(other.id)
    assert heir is not None and heir.client_id == elsewhere.client_id and heir.rotation.key_id is None
    assert added not in h.fakes.world.apps[client_id].federated
    assert h.check() == []


async def test_a_hand_over_that_cannot_be_written_asks_for_the_delete_again_and_keeps_the_credential() -> None:
    """(Review E.) A Table Storage failure of the hand-over was answered as credentials left live ('grant the
    permission, or force'); it is a failure to send again, and nothing is lost meanwhile."""
    from tests.lifecycle_harness import fails_once

    h = Harness()
    record, other, client_id, added = await _migrated_and_created(h)
    fails_once(h, "update", nth=2)  # 1: the DELETE's mark; 2: the hand-over to the other connection
    h.faults_armed = True  # its 502 is Table Storage's, said as such
    outcome = await h.op("delete", record.id, lambda: h.api.delete(APP, record.id))
    assert outcome.error is not None and "send the DELETE again" in outcome.error.detail, outcome.error
    assert added in h.fakes.world.apps[client_id].federated and h.check() == []
    again = await h.api.delete(APP, record.id)
    assert again.removed_key_ids == [] and (await h.record(other.id)).rotation.key_id == added  # type: ignore[union-attr]
    assert h.check() == []


async def test_a_migration_that_relied_on_a_deleted_connection_s_credential_and_failed_removes_it() -> None:
    """(Review E.) A was deleted while B's migration had tested A's credential (kept: B relies on it); B's migration
    then failed, removed only what it had added itself, and A's credential stayed with nothing tracking it."""
    h = Harness()
    client_id, given = h.new_application()
    a = await h.api.create(APP, {"name": "a", "method": "client-secret", "credentials": given})
    b = await h.api.create(APP, {"name": "b", "method": "client-secret", "credentials": h.new_credential(client_id)})
    await h.api.migrate_to_federated(APP, a.id, {})
    deleted: list[Any] = []

    async def meanwhile(name: str, current: Any) -> None:
        if name == "after-test-federated" and not deleted:
            deleted.append(await h.api.delete(APP, a.id))
            h.fakes.world.fail_next("store.update")  # B's migrate-tested write fails: the migration fails

    with pytest.raises(ServiceError):
        await h.services(checkpoint=meanwhile).connections.migrate_to_federated(APP, b.id, {})
    after = await h.record(b.id)
    assert after is not None and after.method == "client-secret" and after.rotation.step is None
    assert h.fakes.world.apps[client_id].federated == {}
    assert h.check() == []


async def test_a_failed_migration_keeps_its_credential_when_another_connection_has_taken_it_up() -> None:
    """(Review E.) A's migration added its credential; B's migration reused it, switched and tracked it; A's then
    failed and removed it: B, federated, could no longer sign in."""
    h = Harness()
    client_id, given = h.new_application()
    a = await h.api.create(APP, {"name": "a", "method": "client-secret", "credentials": given})
    b = await h.api.create(APP, {"name": "b", "method": "client-secret", "credentials": h.new_credential(client_id)})
    done: list[ConnectionRecord] = []

    async def meanwhile(name: str, current: Any) -> None:
        if name == "after-add-federated" and current.id == a.id and not done:
            done.append(await h.api.migrate_to_federated(APP, b.id, {}))
            h.fakes.world.fail_next("store.update")  # A's migrate-added write fails: its migration fails

    with pytest.raises(ServiceError):
        await h.services(checkpoint=meanwhile).connections.migrate_to_federated(APP, a.id, {})
    assert done[0].method == "federated" and h.fakes.world.federated_live(client_id)
    assert (await h.api.validate(APP, b.id)).status == "active"
    assert h.check() == []


async def test_a_failed_migration_hands_its_credential_to_a_connection_created_federated_meanwhile() -> None:
    """(Review H.) A's migration added its credential; a connection created federated on the same application
    meanwhile signs in with it (tracking nothing); A's migration then failed and removed it: that connection
    could no longer sign in."""
    h = Harness()
    client_id, given = h.new_application()
    a = await h.api.create(APP, {"name": "a", "method": "client-secret", "credentials": given})
    made: list[ConnectionRecord] = []

    async def meanwhile(name: str, current: Any) -> None:
        if name == "after-add-federated" and not made:
            made.append(await h.api.create("azure-key-vault", federated_body(client_id, "kv")))
            h.fakes.world.fail_next("store.update")  # A's migrate-added write fails: its migration fails

    with pytest.raises(ServiceError):
        await h.services(checkpoint=meanwhile).connections.migrate_to_federated(APP, a.id, {})
    [added] = h.fakes.world.apps[client_id].federated
    heir = await h.record(made[0].id)
    assert heir is not None and heir.rotation.key_id == added and h.check() == []
    assert (await h.api.delete("azure-key-vault", heir.id)).removed_key_ids == [added]


async def test_a_credential_a_migration_has_not_journaled_yet_is_not_kept_for_it() -> None:
    """(Review H.) A was deleted while B's migration had begun but not yet found A's credential: it was kept for
    B, whose migration then failed before journaling it, and stayed on the application with nothing tracking it.
    It is removed; a migration that had not journaled it finds none, or fails its test, and can be sent again."""
    h = Harness()
    client_id, given = h.new_application()
    a = await h.api.create(APP, {"name": "a", "method": "client-secret", "credentials": given})
    b = await h.api.create(APP, {"name": "b", "method": "client-secret", "credentials": h.new_credential(client_id)})
    await h.api.migrate_to_federated(APP, a.id, {})
    history_record = h.fakes.history.record
    deleted: list[Any] = []

    async def running_then_delete(event: Any) -> None:  # B claimed (migrate-begun), nothing journaled yet
        await history_record(event)
        if event.outcome == "running" and event.connection_id == b.id and not deleted:
            deleted.append(await h.api.delete(APP, a.id))
            h.fakes.world.fail_next("graph.find")  # B's migration then fails before it journals anything

    h.fakes.history.record = running_then_delete  # type: ignore[method-assign]
    with pytest.raises(ServiceError):
        await h.api.migrate_to_federated(APP, b.id, {})
    h.fakes.history.record = history_record  # type: ignore[method-assign]
    assert h.fakes.world.apps[client_id].federated == {} and h.check() == []
    again = await h.api.migrate_to_federated(APP, b.id, {})  # sent again: it adds its own
    assert again.method == "federated" and h.fakes.world.federated_live(client_id) and h.check() == []


async def test_moving_away_hands_the_credential_over_before_the_change_is_saved() -> None:
    """(Review M.) A PATCH that moved a federated connection to another application saved first, then handed the
    credential over to the connection still signing in with it: a hand-over that failed left it tracked by
    nobody (and the PATCH answered 200). It is handed over first; a failure answers 502, nothing changed."""
    from shared.errors import UpstreamError

    h = Harness()
    record, other, client_id, added = await _migrated_and_created(h)
    elsewhere = h.fakes.world.application()
    h.fakes.world.add_federated(elsewhere.client_id)
    update = h.fakes.connections.update

    async def hand_over_fails(target: ConnectionRecord, *args: Any, **kwargs: Any) -> ConnectionRecord:
        if target.id == other.id:
            raise UpstreamError("Table Storage failed (injected)")
        return await update(target, *args, **kwargs)

    h.fakes.connections.update = hand_over_fails  # type: ignore[method-assign]
    h.faults_armed = True
    move = {"credentials": {"tenantId": TENANT, "clientId": elsewhere.client_id}}
    outcome = await h.op("update", record.id, lambda: h.api.update(APP, record.id, move))
    h.fakes.connections.update = update  # type: ignore[method-assign]
    assert outcome.status == 502 and (await h.record(record.id)).client_id == client_id  # type: ignore[union-attr]
    assert h.check() == []
    await h.api.update(APP, record.id, move)
    heir = await h.record(other.id)
    assert heir is not None and heir.rotation.key_id == added and h.check() == []


async def test_a_connection_that_takes_the_credential_up_while_a_delete_reads_the_application_keeps_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review M.) The DELETE decided from one listing, then signed in and read the application: a migration that
    journaled the credential (and switched to it), or a connection created federated, in that gap lost it."""
    from tests.fakes import FakeGraph
    from tests.lifecycle_harness import overtaken_at

    h = Harness()
    record = await h.create()
    await migrated(h, record)
    client_id = record.client_id or ""
    made: list[ConnectionRecord] = []

    async def create_federated() -> None:
        made.append(await h.api.create("azure-key-vault", federated_body(client_id, "kv")))

    ran = overtaken_at(monkeypatch, FakeGraph, "federated_credentials", 1, create_federated)
    assert (await h.api.delete(APP, record.id)).removed_key_ids == []
    monkeypatch.undo()
    assert ran.ran and h.fakes.world.federated_live(client_id) and h.check() == []


def test_a_federated_credential_trusts_the_identity_only_as_entra_matches_it_exactly() -> None:
    """(Review of the stand-in's fidelity, 7.) Entra ID matches the subject case-sensitively and the issuer as
    written: a credential that only looks like it trusts the identity was taken as usable, and never worked."""
    from shared.federation import federation_identity

    found = federation_identity(build_fakes().adapters.settings)
    assert found is not None
    identity = dataclasses.replace(found, principal_id="aaaaaaaa-4444-4444-4444-444444444444")
    exact = (identity.issuer, identity.principal_id, [identity.audience])
    assert identity.matches(*exact)
    assert not identity.matches(identity.issuer + "/", identity.principal_id, [identity.audience])
    assert not identity.matches(identity.issuer, identity.principal_id.upper(), [identity.audience])
    assert not identity.matches(identity.issuer, identity.principal_id, ["api://AzureADTokenExchange/"])


@pytest.mark.parametrize(("code", "gone"), [("AADSTS70025", True), ("AADSTS700016", False), ("AADSTS70021", False)])
async def test_a_delete_whose_sign_in_entra_refuses_deletes_only_when_nothing_can_be_left(code: str, gone: bool
                                                                                        ) -> None:
    """(Reviews M and N.) The DELETE signs in with the credential it removes. "The application has none at all"
    (70025) leaves nothing to remove: deleted. "None matches the service's identity now" (70021) does not say so
    (one added for an identity the service no longer has would still be there), nor does "no such application in
    the tenant" (700016: its service principal may be deleted, the registration and the credential staying; review
    of the stand-in's fidelity, 2): a 409, and with ?force=true the connection goes and the audit log says what may
    be left live."""
    h = Harness()
    record = await h.create()
    await migrated(h, record)
    h.fakes.world.fail_next("graph.token", CredentialRejected(f"{code}: refused", extensions={"aadstsCode": code}))
    outcome = await h.op("delete", record.id, lambda: h.api.delete(APP, record.id))
    assert (outcome.error is None) == gone, outcome.error
    if not gone:
        assert outcome.status == 409 and await h.record(record.id) is not None
        h.fakes.world.fail_next("graph.token", CredentialRejected(f"{code}: refused", extensions={"aadstsCode": code}))
        forced = await h.api.delete(APP, record.id, force=True)
        assert forced.key_ids_left_live or [r for r in h.fakes.audit.records if r.outcome == "credentials-left-live"]
    assert await h.record(record.id) is None


async def test_a_delete_that_cannot_read_the_other_connections_asks_to_be_sent_again() -> None:
    """(Review M.) A Table Storage failure while reading who relies on the credential was answered 409 'grant the
    permission, or force': forced, it left the credential the other connection signs in with untracked."""
    from shared.errors import UpstreamError

    h = Harness()
    record, other, _, added = await _migrated_and_created(h)
    h.faults_armed = True
    list_page = h.fakes.connections.list_page

    async def fails_once(*args: Any, **kwargs: Any) -> Any:
        h.fakes.connections.list_page = list_page  # type: ignore[method-assign]
        raise UpstreamError("Table Storage failed (injected)")

    h.fakes.connections.list_page = fails_once  # type: ignore[method-assign]
    outcome = await h.op("delete", record.id, lambda: h.api.delete(APP, record.id))
    assert outcome.status == 502 and "send the DELETE again" in outcome.error.detail  # type: ignore[union-attr]
    await h.api.delete(APP, record.id)
    assert (await h.record(other.id)).rotation.key_id == added and h.check() == []  # type: ignore[union-attr]


async def test_a_connection_tracking_its_own_credential_is_not_handed_another() -> None:
    """(Review O.) A hand-over wrote the credential onto a connection that tracked another credential of the
    service's (one for the identity the service has now, the first for one it had before): that one was left
    tracked by nobody."""
    import dataclasses

    h = Harness()
    a, b, client_id = await _two_on_one_application(h)
    await h.api.migrate_to_federated(APP, a.id, {})
    app = h.fakes.world.apps[client_id]
    [first] = app.federated
    app.federated[first] = dataclasses.replace(app.federated[first], subject="an-identity-the-service-had")
    own = (await h.api.migrate_to_federated(APP, b.id, {})).rotation.key_id
    assert own is not None and own != first
    await h.op("delete", a.id, lambda: h.api.delete(APP, a.id))  # its sign-in fails (70021): a 409, or forced
    if await h.record(a.id) is not None:
        await h.api.delete(APP, a.id, force=True)
    kept = await h.record(b.id)
    assert kept is not None and kept.rotation.key_id == own and own in app.federated



@pytest.mark.parametrize("leaves", ["delete", "move"])
async def test_a_multi_tenant_application_s_connection_in_another_tenant_takes_over_the_credential(
        leaves: str) -> None:
    """(Review D3, session 18, left then.) A multi-tenant application's federated credential is on its one
    application object, in its home tenant; a federated connection of it in another tenant signs in with it too.
    The last connection of the home tenant to go removed it (federated sharing kept to one tenant): a lockout. It
    is handed over to that connection now, with the tenant where it is (``key_tenant_id``), where that
    connection's DELETE removes it (Graph finds only a service principal in the other tenant)."""
    h = Harness()
    record = await h.create()
    migrated = await h.api.migrate_to_federated(APP, record.id, {})
    app = h.fakes.world.apps[migrated.client_id or ""]
    app.home_tenant = TENANT
    credential_id = migrated.rotation.key_id or ""
    elsewhere = await h.api.create("azure-key-vault", {
        "name": "kv", "method": "federated", "credentials": {"tenantId": OTHER_TENANT, "clientId": app.client_id}})
    assert elsewhere.rotation.key_id is None
    if leaves == "delete":
        await h.api.delete(APP, record.id)
    else:
        other = h.fakes.world.application()
        h.fakes.world.add_federated(other.client_id)
        moved = await h.api.update(APP, record.id, moved_to(other.client_id))
        assert not moved.rotation.cleaning_up  # handed over before the change was saved: nothing to clean up
    heir = await h.record(elsewhere.id)
    assert heir is not None and heir.rotation.key_id == credential_id and heir.rotation.key_tenant_id == TENANT
    assert credential_id in app.federated and h.check() == []
    assert (await h.api.validate("azure-key-vault", elsewhere.id)).status == "active"
    deleted = await h.api.delete("azure-key-vault", elsewhere.id)
    assert deleted.removed_key_ids == [credential_id] and credential_id not in app.federated
    assert h.check() == []


async def test_a_migrated_connection_keeps_to_its_tenant_while_its_client_id_stays() -> None:
    """(Review D2, session 18.) Moved to another tenant with the same client ID, the federated credential it signs
    in with was removed as left behind (a lockout); kept, no DELETE could have reached it from there (Graph finds
    only a service principal outside the application's home tenant). Refused, nothing changed."""
    h = Harness()
    record = await h.create()
    migrated = await h.api.migrate_to_federated(APP, record.id, {"revokeOriginal": False})
    with pytest.raises(InvalidRequest) as refused:
        await h.api.update(APP, record.id, {"credentials": {"tenantId": "22222222-9999-9999-9999-999999999999",
                                                            "clientId": record.client_id}})
    assert refused.value.errors[0].pointer == "/credentials/tenantId"
    after = await h.record(record.id)
    assert after is not None and after.tenant_id == migrated.tenant_id
    assert after.rotation.key_id == migrated.rotation.key_id and h.check() == []


def removals_answer_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    """Graph removes a federated credential, and its answer is lost (a 503 after the change was made)."""
    original = fakes.FakeGraph.remove_federated_credential

    async def lost(self: Any, object_id: str, credential_id: str) -> None:
        await original(self, object_id, credential_id)
        raise UpstreamError("Microsoft Graph failed to remove the federated credential (503).")

    monkeypatch.setattr(fakes.FakeGraph, "remove_federated_credential", lost)


async def test_a_delete_undone_after_its_clean_up_removal_was_sent_keeps_as_whom_so_the_clean_up_finishes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review J, J1.) A DELETE sent the removal at the application the connection left (journaled with the
    service's identity), Graph made it and the answer was lost, and the DELETE was undone: the journal came back
    without the identity, so the service's sign-in there, refused as matching nothing, proved nothing, and the
    clean-up failed at every retry, refusing every move and DELETE. The undone DELETE keeps both."""
    h = Harness()
    before, _, credential_id = await _moved_off(h, BLOCKED)
    h.fakes.world.clear_faults()
    removals_answer_lost(monkeypatch)
    with pytest.raises(ServiceError):
        await h.api.delete(APP, before.id)
    monkeypatch.undo()
    assert credential_id not in h.fakes.world.apps[before.client_id or ""].federated  # it went
    kept = await h.record(before.id)
    assert kept is not None and kept.rotation.retire_removing_key_id == credential_id
    assert kept.rotation.retire_removing_identity == IDENTITY_PRINCIPAL_ID
    h.lease_runs_out()
    await h.due()
    await h.sweep()  # refused: proof once the refusal holds REMOVAL_CONFIRMATION_SECONDS, at the next attempt
    waiting = await h.record(before.id)
    assert waiting is not None and waiting.rotation.retire_removing_identity == IDENTITY_PRINCIPAL_ID
    assert waiting.rotation.retire_removing_refused_at is not None
    await h.due()
    await h.sweep()
    after = await h.record(before.id)
    assert after is not None and not after.rotation.cleaning_up and after.rotation.message is None
    assert h.check() == [] and not h.unscheduled()
    await h.api.delete(APP, before.id)
    assert await h.record(before.id) is None


async def test_a_delete_whose_removal_of_the_credential_in_use_went_through_unanswered_finishes_when_sent_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review J, J2.) A DELETE's removal of the federated credential the connection signs in with, its last, was
    made by Graph and the answer lost: the DELETE was undone onto a connection whose credential was gone, and
    every DELETE after it failed to sign in there (409 until forced). The removal is journaled ahead with the
    identity it names: the DELETE keeps its mark and says to send it again, and the next one finishes."""
    h = Harness()
    record = await migrated(h, await h.create())
    credential_id = record.rotation.key_id or ""
    removals_answer_lost(monkeypatch)
    with pytest.raises(ServiceError) as first:
        await h.api.delete(APP, record.id)
    monkeypatch.undo()
    assert first.value.status >= 500 and "send the DELETE again" in first.value.detail
    assert credential_id not in h.fakes.world.apps[record.client_id or ""].federated
    marked = await h.record(record.id)
    assert marked is not None and marked.status == "deleting"
    assert (marked.rotation.removing_key_id, marked.rotation.removing_identity) == (credential_id,
                                                                                    IDENTITY_PRINCIPAL_ID)
    deleted = await delete_once_the_refusal_holds(h, record.id)  # (review of the fidelity fixes, 1)
    assert deleted.removed_key_ids == [credential_id] and deleted.key_ids_left_live == []
    assert [r.outcome for r in h.fakes.audit.records if r.action == "credential.remove"][-1] == "confirmed"
    assert await h.record(record.id) is None and h.check() == []


async def test_a_credential_handed_over_while_the_sweep_cleans_up_does_not_leave_that_clean_up_unscheduled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review J, J3.) While the sweep removed the credential at the application the connection left, another
    connection's DELETE handed its credential over to this one: the clean-up's last write, made only when nothing
    had changed, was skipped, yet the sweep took it as done and unscheduled it, so a journal nothing would run again
    kept refusing a move back. The clean-up is forgotten on top of what changed meanwhile but itself."""
    h = Harness()
    c1 = await migrated(h, await h.create("c1"))
    c2 = await migrated(h, await h.create("c2"))
    a, f1, b, f2 = c1.client_id or "", c1.rotation.key_id, c2.client_id or "", c2.rotation.key_id
    blocked = refused_at(monkeypatch, a)
    moved = await h.api.update(APP, c1.id, moved_to(b))  # c1 signs in at B with c2's credential
    assert moved.rotation.retire_federated_id == f1
    blocked.clear()
    race = overtaken_at(monkeypatch, fakes.FakeGraph, "remove_federated_credential", 1,
                        lambda: h.api.delete(APP, c2.id))
    await h.due()
    await h.sweep()
    assert race.ran and not race, race
    after = await h.record(c1.id)
    assert after is not None and after.rotation.key_id == f2 and not after.rotation.cleaning_up
    assert f1 not in h.fakes.world.apps[a].federated and h.check() == [] and not h.unscheduled()


async def test_a_hand_over_is_audited_on_the_heir_before_it_is_written_and_the_giver_says_who_keeps_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review H, M1.) A connection of another app, which its owner cannot see, took over the federated credential
    when the owner deleted theirs to revoke it: the DELETE answered that nothing was left live, and nothing in the
    audit log said where the credential had gone. The hand-over is audited on the heir before it is written (no
    record, no hand-over), and the giver's record names the connection that keeps the credential."""
    h = Harness()
    record, other, client_id, added = await _migrated_and_created(h)
    original = fakes.FakeAudit.append

    async def refused(self: Any, entry: Any) -> None:
        if entry.action == "credential.hand-over":
            raise UpstreamError("Table Storage failed (injected)")
        await original(self, entry)

    monkeypatch.setattr(fakes.FakeAudit, "append", refused)
    with pytest.raises(ServiceError):
        await h.api.delete(APP, record.id)
    monkeypatch.undo()
    heir = await h.record(other.id)
    assert heir is not None and heir.rotation.key_id is None  # not handed over: no record of it
    assert added in h.fakes.world.apps[client_id].federated and h.check() == []

    h.lease_runs_out()
    await h.api.delete(APP, record.id)
    handed, done = [r for r in h.fakes.audit.records if r.action == "credential.hand-over"]
    assert (handed.outcome, handed.app, handed.connection_id) == ("started", "azure-key-vault", other.id)
    assert added in (handed.detail or "") and record.id in (handed.detail or "")
    assert (done.outcome, done.app, done.connection_id) == ("succeeded", "azure-key-vault", other.id)
    [kept] = [r for r in h.fakes.audit.records if (r.action, r.outcome) == ("credential.remove", "kept")]
    assert (kept.app, kept.connection_id) == (APP, record.id)
    assert f"{other.id} (azure-key-vault)" in (kept.detail or "") and added in (kept.detail or "")
    heir = await h.record(other.id)
    assert heir is not None and heir.rotation.key_id == added and h.check() == []


def _hand_overs(h: Harness, heir_id: str) -> list[tuple[str, str | None]]:
    return [(r.outcome, r.detail) for r in h.fakes.audit.records
            if r.action == "credential.hand-over" and r.connection_id == heir_id]


async def test_a_hand_over_records_its_outcome_on_the_heir_once_it_is_written() -> None:
    """(Review of the audit, 3.) ``credential.hand-over`` was recorded ``started`` and never got an outcome: the
    heir's auditor (another app's, perhaps) could not tell a hand-over that happened from one that did not."""
    h = Harness()
    record, other, client_id, added = await _migrated_and_created(h)
    await h.api.delete(APP, record.id)
    heir = await h.record(other.id)
    assert heir is not None and heir.rotation.key_id == added
    records = _hand_overs(h, other.id)
    assert [outcome for outcome, _ in records] == ["started", "succeeded"]
    assert records[1][1] == f"Federated identity credential {added} on the application {client_id}: handed over"


async def test_a_hand_over_whose_write_fails_records_that_it_failed() -> None:
    h = Harness()
    record, other, client_id, added = await _migrated_and_created(h)
    fails_once(h, "update", nth=2)  # 1: the DELETE's mark; 2: the hand-over's write
    h.faults_armed = True
    await h.op("delete", record.id, lambda: h.api.delete(APP, record.id))
    heir = await h.record(other.id)
    assert heir is not None and heir.rotation.key_id is None  # not handed over: the giver keeps it
    records = _hand_overs(h, other.id)
    assert [outcome for outcome, _ in records] == ["started", "failed"]
    assert records[1][1] == (f"Federated identity credential {added} on the application {client_id}: not handed "
                             "over: UpstreamError")
    assert h.check() == []


async def test_a_hand_over_to_an_heir_that_changed_meanwhile_records_that_it_failed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The heir's write meets a change (a PATCH onto another application): read again, it no longer qualifies, so
    nothing is handed over to it, and its ``started`` record gets ``failed``."""
    h = Harness()
    record, other, client_id, added = await _migrated_and_created(h)
    elsewhere = h.fakes.world.application()
    h.fakes.world.add_federated(elsewhere.client_id)
    race = overtaken_at(monkeypatch, fakes.FakeConnections, "update", 2,  # 1: the DELETE's mark; 2: the hand-over
                        lambda: h.api.update("azure-key-vault", other.id, {
                            "credentials": {"tenantId": TENANT, "clientId": elsewhere.client_id}}))
    await h.api.delete(APP, record.id)  # nobody relies on it any more: removed
    assert race.ran and not race
    heir = await h.record(other.id)
    assert heir is not None and heir.client_id == elsewhere.client_id and heir.rotation.key_id is None
    records = _hand_overs(h, other.id)
    assert [outcome for outcome, _ in records] == ["started", "failed"]
    assert records[1][1] == (f"Federated identity credential {added} on the application {client_id}: not handed "
                             "over: the connection changed meanwhile")
    assert added not in h.fakes.world.apps[client_id].federated and h.check() == []


async def test_a_federated_connection_is_bound_to_an_application_only_by_a_writer_of_every_app_that_uses_it(
) -> None:
    """(Review H, M1.) A Writer of one app created a federated connection on an application another app's
    connections used (its only proof: the service's own sign-in), read what that application may read, and kept
    its federated credential alive when its owners deleted theirs to revoke it. Binding an application, by a create
    or a move, needs Writer of every app whose connections use it."""
    from shared.audit import RequestContext, acting
    from shared.records import Actor

    h = Harness()
    owned = await migrated(h, await h.create())  # another team's connection (azure-client-secrets), on X
    x = owned.client_id or ""
    mallory = Actor("mallory", "Mallory", "user")

    def as_writer_of(*apps: str) -> Any:
        return acting(RequestContext(mallory, frozenset(f"AppConnections.Writer.{app}" for app in apps)))

    calls = len(h.fakes.world.calls)
    with as_writer_of("azure-key-vault"), pytest.raises(ServiceError) as refused:
        await h.api.create("azure-key-vault", federated_body(x, "kv"))
    assert refused.value.status == 403 and refused.value.extensions["apps"] == [APP]
    assert [r.id for r in h.fakes.connections.records.values()] == [owned.id]
    # (Review M.) Refused before any sign-in: the service does not sign in as the other team's application for it.
    assert not [c for c in h.fakes.world.calls[calls:] if c.startswith(("probe", "graph"))]

    # (Review M.) Nor while the owners' DELETE is pending (it failed at Graph, and is to be sent again): their
    # connection still counts, or the DELETE sent again would hand the credential over to the one bound meanwhile.
    h.fakes.world.fail_next("graph.fic.remove", UpstreamError("Microsoft Graph answered 503 (injected)"))
    with pytest.raises(ServiceError):
        await h.api.delete(APP, owned.id)
    pending = await h.record(owned.id)
    assert pending is not None and pending.status == "deleting"
    with as_writer_of("azure-key-vault"), pytest.raises(ServiceError) as while_deleting:
        await h.api.create("azure-key-vault", federated_body(x, "kv"))
    assert while_deleting.value.status == 403
    h.lease_runs_out()
    await h.api.delete(APP, owned.id)
    assert owned.rotation.key_id not in h.fakes.world.apps[x].federated
    owned = await migrated(h, await h.create("again", method="client-secret"))
    x = owned.client_id or ""

    y = h.fakes.world.application()
    h.fakes.world.add_federated(y.client_id)
    with as_writer_of("azure-key-vault"):
        own = await h.api.create("azure-key-vault", federated_body(y.client_id, "kv"))
        with pytest.raises(ServiceError) as moved:
            await h.api.update("azure-key-vault", own.id, moved_to(x))
    assert moved.value.status == 403 and (await h.record(own.id)) == own

    with as_writer_of("azure-key-vault", APP):  # a Writer of both apps may
        both = await h.api.create("azure-key-vault", federated_body(x, "kv2"))
    assert both.client_id == x and h.check() == []


async def test_a_delete_that_failed_after_removing_the_federated_credential_in_use_finishes_when_sent_again() -> None:
    """(Review L.) A DELETE removed the federated credential the connection signed in with, journaled its removals
    as done, then failed to delete the record (Table Storage): every DELETE sent again signed in with the removed
    credential, answered 409, and a forced one listed it as left live. Once the removals are done, the credential is
    no longer the connection's to remove."""
    h = Harness()
    record = await migrated(h, await h.create())
    credential_id = record.rotation.key_id or ""
    h.fakes.world.fail_next("store.delete", UpstreamError("Table Storage answered 503 (injected)"))
    with pytest.raises(ServiceError) as first:
        await h.api.delete(APP, record.id)
    assert "send the DELETE again" in first.value.detail
    assert credential_id not in h.fakes.world.apps[record.client_id or ""].federated
    deleted = await h.api.delete(APP, record.id)
    assert deleted.key_ids_left_live == [] and await h.record(record.id) is None and h.check() == []
    assert not [r for r in h.fakes.audit.records if r.outcome == "credentials-left-live"]


async def test_a_move_that_leaves_the_credential_to_another_connection_records_it_only_once_saved() -> None:
    """(Review L.) A PATCH that would leave the federated credential to another connection recorded it as given
    up before the change was checked and saved: a PATCH refused after (a name taken) left that record behind."""
    h = Harness()
    record, other, _, added = await _migrated_and_created(h)
    await h.create("taken")
    elsewhere = h.fakes.world.application()
    h.fakes.world.add_federated(elsewhere.client_id)

    def kept() -> list[Any]:
        return [r for r in h.fakes.audit.records if (r.action, r.outcome) == ("credential.remove", "kept")]

    with pytest.raises(ServiceError) as refused:
        await h.api.update(APP, record.id, {"name": "taken", **moved_to(elsewhere.client_id)})
    assert refused.value.status == 409 and kept() == []
    moved = await h.api.update(APP, record.id, moved_to(elsewhere.client_id))
    assert moved.client_id == elsewhere.client_id
    [entry] = kept()
    assert entry.connection_id == record.id and other.id in (entry.detail or "") and added in (entry.detail or "")
    assert h.check() == []


async def test_a_refusal_right_after_the_removal_of_the_federated_credential_in_use_failed_is_not_its_removal() -> None:
    """(Review of the fidelity fixes, 1.) The removal failed unmade (a 5xx); the next DELETE's sign-in came to a part
    of Entra ID the credential, just added by a migration, had not reached (AADSTS70021): it was taken for the
    removal, and the credential stayed live, tracked by nothing. As for a secret, the refusal must hold
    ``REMOVAL_CONFIRMATION_SECONDS``; by then the sign-in works, and the removal is made."""
    h = Harness()
    record = await migrated(h, await h.create())
    credential_id = record.rotation.key_id or ""
    world = h.fakes.world
    app = world.apps[record.client_id or ""]
    world.fail_next("graph.fic.remove")  # a 5xx: not made
    with pytest.raises(ServiceError):
        await h.api.delete(APP, record.id)
    world.federation_delay = 1  # one sign-in refused by a part of Entra ID the credential has not reached
    with pytest.raises(CredentialsLeftLive) as unconfirmed:
        await h.api.delete(APP, record.id)
    assert unconfirmed.value.extensions["keyIds"] == [credential_id] and credential_id in app.federated
    assert h.check() == []
    h.fakes.clock.advance(timedelta(seconds=h.fakes.adapters.settings.removal_confirmation_seconds))
    deleted = await h.api.delete(APP, record.id)
    assert deleted.removed_key_ids == [credential_id] and credential_id not in app.federated
    assert await h.record(record.id) is None and h.check() == []


async def test_a_migration_an_azure_call_failed_as_it_came_says_which_service_never_a_class_name() -> None:
    """(Review of operations.) A network error or an azure-core error no adapter had mapped stopped a migration
    with its class name as the message ("ConnectionResetError: the call did not complete.") or, for the latter, with
    no outcome but the raised error. It is the service's failure now, told as a rotation's is, and the migration
    fails as for any Azure failure: what it added is removed and the connection is as it was."""
    from azure.core.exceptions import ServiceRequestError

    for error in (ConnectionResetError("reset by peer"), ServiceRequestError("the connection was refused")):
        h = Harness()
        record = await h.create(rotation=False)
        h.fakes.world.fail_next("graph.fic.add", error)  # type: ignore[arg-type]
        with pytest.raises(ServiceError, match="did not complete") as raised:
            await h.api.migrate_to_federated(APP, record.id, {})
        assert "Error" not in raised.value.detail and "could not be reached" in raised.value.detail, raised.value.detail
        after = await h.record(record.id)
        assert after is not None and after.method == "client-secret" and after.rotation.step is None
        assert h.check() == []
