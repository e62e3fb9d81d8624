"""A credential the owner gave to two connections of one application (review C2, session 18): rotating one of them,
or migrating it with ``revokeOriginal``, revoked what the other signs in with: a lockout. What another connection
signs in with stays on the application, and the rotation says so; what none does is revoked as before."""

from __future__ import annotations

import pytest

from shared.records import ConnectionRecord
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
