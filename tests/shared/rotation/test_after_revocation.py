"""After a rotation or a migration revoked a credential: asking who else signs in with it is best effort (it never
fails what has already revoked), and the mark it leaves on such a connection outlives a check or a validation that
signed in just before the revocation."""

from __future__ import annotations

import asyncio

import pytest

from shared.errors import UpstreamError
from tests.fakes import FakeGraph
from tests.lifecycle_harness import APP, ROTATION, Harness


@pytest.mark.parametrize("method", ["client-secret", "certificate"])
async def test_a_key_vault_hiccup_in_the_stranded_question_does_not_fail_a_rotation_that_revoked(
        method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two connections of one application, each with its own credential of the owner's. The rotation of one
    revokes its predecessor; the question asked after the revocation (``surely``, best effort) reads the other's
    stored secret: a Key Vault hiccup there fails the whole attempt after the irreversible revocation."""
    h = Harness(method=method)
    app = h.fakes.world.application()
    await h.api.create("azure-key-vault", {"name": "kv", "method": method,
                                           "credentials": h.new_credential(app.client_id)})
    mine = await h.api.create("azure-app-configuration", {"name": "config", "method": method,
                                                          "credentials": h.new_credential(app.client_id)})
    removal = "remove_password" if method == "client-secret" else "remove_key"
    original = getattr(FakeGraph, removal)
    removed: list[str] = []

    async def removing(self, object_id, key_id, *args):  # type: ignore[no-untyped-def]
        await original(self, object_id, key_id, *args)
        removed.append(key_id)
        h.fakes.world.fail_next("vault.get", UpstreamError("Key Vault did not answer (injected)"))

    monkeypatch.setattr(FakeGraph, removal, removing)
    rotated = await h.api.update("azure-app-configuration", mine.id,
                                 {"isAutoRotationEnabled": True, "rotation": ROTATION})
    assert removed, "the predecessor was never revoked"
    assert rotated.rotation.status == "succeeded", rotated.rotation.message


async def test_a_key_vault_hiccup_in_the_stranded_question_does_not_fail_a_migration_that_revoked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same after a migration to the federated method with ``revokeOriginal``."""
    h = Harness(method="client-secret")
    app = h.fakes.world.application()
    await h.api.create("azure-key-vault", {"name": "kv", "method": "client-secret",
                                           "credentials": h.new_credential(app.client_id)})
    mine = await h.api.create("azure-app-configuration", {"name": "config", "method": "client-secret",
                                                          "credentials": h.new_credential(app.client_id)})
    original = FakeGraph.remove_password
    removed: list[str] = []

    async def removing(self, object_id, key_id, *args):  # type: ignore[no-untyped-def]
        await original(self, object_id, key_id, *args)
        removed.append(key_id)
        h.fakes.world.fail_next("vault.get", UpstreamError("Key Vault did not answer (injected)"))

    monkeypatch.setattr(FakeGraph, "remove_password", removing)
    h.fakes.world.add_federated(mine.client_id or "")
    try:
        done = await h.api.migrate_to_federated("azure-app-configuration", mine.id, {"revokeOriginal": True})
    except Exception as error:
        pytest.fail(f"the migration answered {type(error).__name__}: {error} after revoking {removed}")
    assert removed
    assert done.rotation.status == "succeeded", done.rotation.message


async def test_a_health_check_that_signed_in_before_the_revocation_does_not_write_active_over_the_mark(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection created with the owner's credential while a rotation revokes it (as in
    test_a_create_with_the_owners_credential_while_a_rotation_revokes_it_is_marked_invalid_and_named), and a health
    check of it that signed in just before the revocation and writes just after the mark: the check's write meets
    the mark's ETag, reads the record again, finds the same credential, and writes ``active`` over ``invalid``. The
    connection signs in with a revoked credential and says it is fine until its next check (a day on)."""
    from shared.health import HealthChecker
    from tests.lifecycle_harness import overtaken_at, user_operations

    h = Harness(method="client-secret")
    record = await h.create(rotation=False)
    checker = HealthChecker(h.fakes.adapters, h.api)
    created: list = []
    probed, go = asyncio.Event(), asyncio.Event()
    original_save = HealthChecker._save

    async def held_save(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        probed.set()  # signed in (the credential still live): its write waits for the rotation to end
        await go.wait()
        return await original_save(self, *args, **kwargs)

    monkeypatch.setattr(HealthChecker, "_save", held_save)
    checks: list[asyncio.Task] = []

    async def create() -> None:
        outcome = await user_operations(h, record.id)["create-same-credential"]()
        assert outcome.status == 200, outcome.error
        created.append(outcome.result)
        checks.append(asyncio.get_running_loop().create_task(checker.check(outcome.result)))
        await probed.wait()

    race = overtaken_at(monkeypatch, FakeGraph, "remove_password", 1, create)
    done = await h.api.update(APP, record.id, {"isAutoRotationEnabled": True, "rotation": ROTATION})
    assert race.ran and created and done.rotation.status == "succeeded"
    marked = await h.record(created[0].id)
    assert marked is not None and marked.status == "invalid"  # told at once ...
    go.set()
    await checks[0]
    after = await h.record(created[0].id)
    assert after is not None
    assert after.status == "invalid", (after.status, after.status_message)  # ... and still told after the check


async def test_a_validation_that_signed_in_before_the_revocation_does_not_write_active_over_the_mark(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As the health check above, for a user's POST .../validate: its sign-in worked just before the revocation, its
    write comes after the mark; the mark (newer news) stays, and the answer is the marked connection."""
    from shared.connections import ConnectionService
    from tests.lifecycle_harness import overtaken_at, user_operations

    h = Harness(method="client-secret")
    record = await h.create(rotation=False)
    created: list = []
    signed_in, go = asyncio.Event(), asyncio.Event()
    original = ConnectionService.record_status

    async def held(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        signed_in.set()  # the sign-in worked (the credential still live): its write waits for the rotation to end
        await go.wait()
        return await original(self, *args, **kwargs)

    validations: list[asyncio.Task] = []

    async def create() -> None:
        outcome = await user_operations(h, record.id)["create-same-credential"]()
        assert outcome.status == 200, outcome.error
        created.append(outcome.result)
        monkeypatch.setattr(ConnectionService, "record_status", held)
        validations.append(asyncio.get_running_loop().create_task(h.api.validate(APP, outcome.result.id)))
        await signed_in.wait()

    race = overtaken_at(monkeypatch, FakeGraph, "remove_password", 1, create)
    done = await h.api.update(APP, record.id, {"isAutoRotationEnabled": True, "rotation": ROTATION})
    assert race.ran and created and done.rotation.status == "succeeded"
    go.set()
    answered = await validations[0]
    after = await h.record(created[0].id)
    assert after is not None and after.status == "invalid", (after.status, after.status_message)
    assert answered.status == "invalid"
