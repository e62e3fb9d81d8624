"""A credential the owner gave to two connections of one application (review C2, session 18): rotating one of them,
or migrating it with ``revokeOriginal``, revoked what the other signs in with: a lockout. What another connection
signs in with stays on the application, and the rotation says so; what none does is revoked as before."""

from __future__ import annotations

import pytest

from shared.errors import ServiceError, UpstreamError
from shared.records import ConnectionRecord
from tests.fakes import FakeVault
from tests.lifecycle_harness import ROTATION, Harness


async def _two_given_one_credential(h: Harness, rotated_by_its_key_id: bool = False,
                                    ) -> tuple[ConnectionRecord, ConnectionRecord, str]:
    """One application, one credential of the owner's, given to a Key Vault connection (rotation off) and to an
    App Configuration one: (the first, the second, the credential's Key ID)."""
    app = h.fakes.world.application()
    credentials = h.new_credential(app.client_id)
    [given] = [k for k in [*app.passwords.values(), *app.keys.values()]]
    body = {"method": h.method, "credentials": credentials}
    if rotated_by_its_key_id and h.method == "client-secret":
        body["credentials"] = {**credentials, "clientSecretKeyId": given.key_id}
    first = await h.api.create("azure-key-vault", {"name": "kv", **body})
    second = await h.api.create("azure-app-configuration", {"name": "config", **body})
    return first, second, given.key_id


@pytest.mark.parametrize("method", ["client-secret", "certificate"])
@pytest.mark.parametrize("by_key_id", [False, True], ids=["material", "key-id"])
async def test_rotating_one_of_two_connections_given_one_credential_leaves_it_for_the_other(
        method: str, by_key_id: bool) -> None:
    h = Harness(method=method)
    first, second, given = await _two_given_one_credential(h, rotated_by_its_key_id=by_key_id)
    rotated = await h.api.update("azure-app-configuration", second.id,
                                 {"isAutoRotationEnabled": True, "rotation": ROTATION})
    assert rotated.rotation.status == "succeeded"
    assert "left on the application: 'kv' (azure-key-vault)" in (rotated.rotation.message or "")
    assert h.fakes.world.credential(first.client_id or "", given) is not None  # the first still signs in with it
    assert h.check() == []
    # The next rotation replaces the service's own credential, and revokes it as always.
    await h.due()
    await h.sweep()
    again = await h.record(second.id)
    assert again is not None and "previous one is revoked" in (again.rotation.message or "")
    assert h.check() == []


@pytest.mark.parametrize("method", ["client-secret", "certificate"])
async def test_a_credential_no_other_connection_signs_in_with_is_revoked(method: str) -> None:
    """The other connection of the application was given a credential of its own: the rotated one's goes."""
    h = Harness(method=method)
    app = h.fakes.world.application()
    await h.api.create("azure-key-vault", {"name": "kv", "method": method,
                                           "credentials": h.new_credential(app.client_id)})
    mine = h.new_credential(app.client_id)
    before = {k.key_id for k in [*app.passwords.values(), *app.keys.values()]}
    rotated = await h.api.create("azure-app-configuration", {"name": "config", "method": method, "credentials": mine,
                                                             "isAutoRotationEnabled": True, "rotation": ROTATION})
    assert "previous one is revoked" in (rotated.rotation.message or "")
    left = {k.key_id for k in [*app.passwords.values(), *app.keys.values()] if not k.created_by_service}
    assert len(left) == 1 and left < before  # the other's own credential, alone
    assert h.check() == []


async def test_a_migration_that_revokes_the_original_leaves_it_when_another_connection_signs_in_with_it() -> None:
    h = Harness()
    first, second, given = await _two_given_one_credential(h)
    h.fakes.world.add_federated(first.client_id or "")
    done = await h.api.migrate_to_federated("azure-app-configuration", second.id, {"revokeOriginal": True})
    assert done.method == "federated"
    assert "left on the application ('kv' (azure-key-vault)" in (done.rotation.message or "")
    assert h.fakes.world.credential(first.client_id or "", given) is not None
    assert h.check() == []


async def test_a_resumed_migration_keeps_what_its_first_attempt_kept_for_another_connection() -> None:
    """(Review D1.) Resumed past the vault's versions (disabled by the first attempt), the migration could no
    longer read the material, skipped the question, and revoked the credential the other connection signs in
    with."""
    h = Harness()
    first, second, given = await _two_given_one_credential(h)
    h.fakes.world.add_federated(first.client_id or "")
    h.fakes.world.fail_next("vault.delete")  # after the removals (which kept it) and the versions disabled
    with pytest.raises(ServiceError):
        await h.api.migrate_to_federated("azure-app-configuration", second.id, {"revokeOriginal": True})
    assert h.fakes.world.credential(first.client_id or "", given) is not None
    done = await h.api.migrate_to_federated("azure-app-configuration", second.id, {"revokeOriginal": True})
    assert done.method == "federated" and "left on the application" in (done.rotation.message or "")
    assert h.fakes.world.credential(first.client_id or "", given) is not None
    assert h.check() == []


async def test_a_connection_of_a_multi_tenant_application_in_another_tenant_counts() -> None:
    """(Review D1.) A multi-tenant application's credentials are those of its one application object: a connection
    of it in another tenant signs in with the same ones."""
    h = Harness()
    app = h.fakes.world.application()
    credentials = h.new_credential(app.client_id)
    [given] = list(app.passwords.values())
    elsewhere = await h.api.create("azure-key-vault", {"name": "kv", "method": "client-secret", "credentials": {
        **credentials, "tenantId": "11111111-2222-3333-4444-555555555555"}})
    home = await h.api.create("azure-app-configuration", {"name": "config", "method": "client-secret",
                                                          "credentials": credentials})
    rotated = await h.api.update("azure-app-configuration", home.id,
                                 {"isAutoRotationEnabled": True, "rotation": ROTATION})
    assert "left on the application: 'kv' (azure-key-vault)" in (rotated.rotation.message or "")
    assert h.fakes.world.credential(elsewhere.client_id or "", given.key_id) is not None


async def test_a_key_vault_failure_reading_another_connection_fails_the_attempt_and_the_next_one_revokes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review D1.) One failed read of the other connection's secret counted as 'it signs in with it': the rotated
    connection's own credential stayed live for good, and the message named the other. It fails the attempt."""
    h = Harness()
    app = h.fakes.world.application()
    other = await h.api.create("azure-key-vault", {"name": "kv", "method": "client-secret",
                                                   "credentials": h.new_credential(app.client_id)})
    mine = h.new_credential(app.client_id)
    given = next(p for p in app.passwords.values() if p.secret == mine["clientSecret"])
    real_get = FakeVault.get
    failed: list[str] = []

    async def once_unavailable(self: FakeVault, name: str, version: str) -> dict[str, str]:
        if name == other.secret_name and not failed:
            failed.append(name)
            raise UpstreamError("Key Vault answered 503 (injected, once)")
        return await real_get(self, name, version)

    monkeypatch.setattr(FakeVault, "get", once_unavailable)
    record = await h.api.create("azure-app-configuration", {"name": "config", "method": "client-secret",
                                                            "credentials": mine, "isAutoRotationEnabled": True,
                                                            "rotation": ROTATION})
    assert failed and record.rotation.status == "failed" and record.rotation.step == "finished"
    assert "'kv'" not in (record.rotation.message or "")
    await h.due()
    await h.sweep()
    done = await h.record(record.id)
    assert done is not None and "previous one is revoked" in (done.rotation.message or "")
    assert h.fakes.world.credential(app.client_id, given.key_id) is None and h.check() == []


@pytest.mark.parametrize("unreadable", ["disabled", "deleted", "version-gone"])
async def test_a_connection_whose_stored_credential_cannot_be_read_still_keeps_it(unreadable: str) -> None:
    """Whether the other connection signs in with the credential cannot be told when its stored material is
    disabled, deleted or its version is gone: it counts as signing in with it, and the credential stays on the
    application (a revocation cannot be undone)."""
    h = Harness()
    first, second, given = await _two_given_one_credential(h)
    vault = h.fakes.vault
    if unreadable == "disabled":
        await vault.disable(first.secret_name, first.secret_version or "")
    elif unreadable == "deleted":
        await vault.delete(first.secret_name)
    else:
        vault.secrets[first.secret_name] = [v for v in vault.secrets[first.secret_name]
                                            if v.version != first.secret_version]
    rotated = await h.api.update("azure-app-configuration", second.id,
                                 {"isAutoRotationEnabled": True, "rotation": ROTATION})
    assert rotated.rotation.status == "succeeded"
    assert "left on the application: 'kv' (azure-key-vault)" in (rotated.rotation.message or "")
    assert h.fakes.world.credential(first.client_id or "", given) is not None


async def test_a_key_id_another_connection_tracks_matches_in_any_case() -> None:
    """A Key ID is a GUID: another connection that tracks the rotated credential's Key ID in upper case signs in
    with it, and it stays on the application."""
    h = Harness()
    first, second, given = await _two_given_one_credential(h, rotated_by_its_key_id=True)
    stored = await h.record(first.id)
    assert stored is not None and stored.rotation.key_id == given.lower()
    await h.fakes.connections.update(stored.evolve(rotation=stored.rotation.evolve(key_id=given.upper())))
    rotated = await h.api.update("azure-app-configuration", second.id,
                                 {"isAutoRotationEnabled": True, "rotation": ROTATION})
    assert "left on the application: 'kv' (azure-key-vault)" in (rotated.rotation.message or "")
    assert h.fakes.world.credential(first.client_id or "", given) is not None


@pytest.mark.parametrize("named_when", ["create", "edit"])
async def test_a_key_id_naming_a_secret_with_the_same_hint_keeps_the_one_another_connection_holds(
        named_when: str) -> None:
    """(Review of this session's changes.) A Key ID given for a client secret is checked only against Graph's hint
    (its first three characters): where two of the application's secrets share it, the Key ID may name the twin.
    When another connection that tracks no Key ID holds a secret with that hint, it may be the twin, so the
    rotation keeps it on the application (naming the connection) rather than revoke what another signs in with."""
    from tests.shared.test_connections import twin_of

    h = Harness()
    client_id, given = h.new_app()
    twin = twin_of(h, client_id, given)
    body = {"name": "x", "method": "client-secret", "credentials": h.credentials(client_id, given)}
    if named_when == "create":
        body["credentials"] = {**body["credentials"], "clientSecretKeyId": twin.key_id}
    x = await h.api.create("azure-app-configuration", body)
    other = await h.api.create("azure-key-vault", {"name": "y", "method": "client-secret",
                                                   "credentials": h.credentials(client_id, twin)})
    assert other.rotation.key_id is None  # created without rotation: it tracks no Key ID
    change: dict[str, object] = {"isAutoRotationEnabled": True, "rotation": ROTATION}
    if named_when == "edit":
        change["credentials"] = {"clientSecretKeyId": twin.key_id}
    rotated = await h.api.update("azure-app-configuration", x.id, change)
    assert rotated.rotation.status == "succeeded"
    assert "left on the application: 'y' (azure-key-vault)" in (rotated.rotation.message or "")
    assert twin.key_id in h.fakes.world.apps[client_id].passwords  # y still signs in
    assert h.check() == []


async def test_a_migration_revoking_the_original_keeps_a_secret_with_the_same_hint_another_connection_holds() -> None:
    """The same, when the connection named with the twin's Key ID moves to federated with ``revokeOriginal``: the
    twin another connection may sign in with stays, and the migration's message names that connection."""
    from tests.shared.test_connections import twin_of

    h = Harness()
    client_id, given = h.new_app()
    twin = twin_of(h, client_id, given)
    x = await h.api.create("azure-app-configuration", {"name": "x", "method": "client-secret",
                                                       "credentials": h.credentials(client_id, given)})
    await h.api.create("azure-key-vault", {"name": "y", "method": "client-secret",
                                           "credentials": h.credentials(client_id, twin)})
    await h.api.update("azure-app-configuration", x.id, {"credentials": {"clientSecretKeyId": twin.key_id}})
    h.fakes.world.add_federated(client_id)
    moved = await h.api.migrate_to_federated("azure-app-configuration", x.id, {"revokeOriginal": True})
    assert moved.method == "federated"
    assert "'y' (azure-key-vault)" in (moved.rotation.message or "")
    assert twin.key_id in h.fakes.world.apps[client_id].passwords
    assert h.check() == []


async def test_what_is_told_of_a_revoked_credential_is_only_who_surely_signed_in_with_it() -> None:
    """Once a credential is revoked, the connections that began to sign in with it meanwhile are marked invalid
    (``surely``): not one whose secret only shares its hint (kept before a revocation, as it may be the same), nor
    one whose stored version cannot be read, nor any when the revoked material is not known."""
    from shared.rotation.kinds import ROLLS
    from shared.rotation.sharing import signing_in_with
    from tests.shared.test_connections import twin_of

    h = Harness()
    app = h.fakes.world.application()
    given = h.fakes.world.add(app.client_id, "given")
    twin = twin_of(h, app.client_id, given)
    rotated = await h.api.create("azure-key-vault", {"name": "kv", "method": "client-secret",
                                                     "credentials": h.credentials(app.client_id, given)})
    same = await h.api.create("azure-app-configuration", {"name": "same", "method": "client-secret",
                                                          "credentials": h.credentials(app.client_id, given)})
    hinted = await h.api.create("azure-app-configuration", {"name": "twin", "method": "client-secret",
                                                            "credentials": h.credentials(app.client_id, twin)})
    unread = await h.api.create("azure-app-configuration", {"name": "unread", "method": "client-secret",
                                                            "credentials": h.credentials(app.client_id, given)})
    await h.fakes.vault.disable(unread.secret_name, unread.secret_version)
    material = {"clientSecret": given.secret}
    roll = ROLLS["client-secret"]

    async def asked(surely: bool, known: dict[str, str] | None = material) -> set[str]:
        found = await signing_in_with(h.fakes.connections, h.fakes.vault, roll, rotated, given.key_id, known,
                                      surely=surely)
        return {c.name for c in found}

    assert await asked(surely=False) == {"same", "twin", "unread"}  # kept for them all before a revocation
    assert await asked(surely=True) == {"same"}
    assert await asked(surely=True, known=None) == set()
    assert {same.id, hinted.id} <= {r.id for r in h.fakes.connections.records.values()}
