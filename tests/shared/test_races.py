"""Two user requests on one connection, one overtaking the other at an adapter call (over the in-memory fakes):
whichever way they interleave, neither leaves a revoked credential in use, a credential live that nothing tracks,
a connection pointing at a disabled secret, or a connection that cannot be deleted; the one that loses answers a
4xx. (The rotation sweep against each user operation: tests/shared/rotation/test_invariants_stateful.py.)"""

from __future__ import annotations

import contextlib

import pytest

from shared.errors import ServiceError
from tests import fakes
from tests.fakes import TENANT, FakeDirectory, FakeGraph, FakeVault
from tests.lifecycle_harness import APP, Harness, Overtaken, overtaken_at


def _refusals_only(answered: Overtaken) -> None:
    assert answered.ran, "the overtaking request never ran: the race did not happen"
    assert all(400 <= error.status < 500 for error in answered), [(e.status, e.detail) for e in answered]


async def test_a_validation_during_a_delete_neither_undoes_the_deletion_nor_revives_the_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    record = await h.create()
    # The DELETE has marked the connection and reads its secret to remove what the service made: a validation
    # comes in then.
    answered = overtaken_at(monkeypatch, FakeVault, "get", 1, lambda: h.api.validate(APP, record.id))
    await h.api.delete(APP, record.id)
    assert [error.status for error in answered] == [409]  # "being deleted"
    assert await h.record(record.id) is None
    assert h.check() == []


@pytest.mark.parametrize("refused", [False, True])
@pytest.mark.parametrize("deletion", ["done", "stopped"])
async def test_a_validation_that_a_delete_overtakes_before_it_records_its_outcome_answers_404_or_409(
        monkeypatch: pytest.MonkeyPatch, refused: bool, deletion: str) -> None:
    """Entra has answered (the credential works, or is refused); the DELETE ends (or stops, marked, in Key Vault)
    before the outcome is written: the validation answers that the connection is gone (404) or being deleted
    (409), not 200 (or 400) with the record it read before, and writes nothing over the mark."""
    h = Harness()
    record = await h.create(rotation=False)  # the user's own secret: the DELETE needs no Graph call
    if refused:
        h.fakes.world.apps[record.client_id or ""].passwords.clear()  # revoked in the portal
    if deletion == "stopped":
        h.fakes.world.fail_next("vault.disable")
    answered = overtaken_at(monkeypatch, fakes.FakeConnections, "update", 1, lambda: h.api.delete(APP, record.id))
    with pytest.raises(ServiceError) as validated:
        await h.api.validate(APP, record.id)
    assert answered.ran and [error.status for error in answered] == ([] if deletion == "done" else [502])
    assert validated.value.status == (404 if deletion == "done" else 409), validated.value.detail
    left = await h.record(record.id)
    assert left is None if deletion == "done" else (left is not None and left.status == "deleting")
    assert h.check() == []


async def test_a_delete_that_another_delete_overtakes_answers_404() -> None:
    """Both read the connection; the other one deletes it before this one marks it: this one answers that it is
    gone (as a DELETE sent after would), not 409 "changed by another request"."""
    h = Harness()
    record = await h.create(rotation=False)
    original = h.fakes.connections.get

    async def read_then_overtaken(app: str, connection_id: str) -> object:
        read = await original(app, connection_id)
        h.fakes.connections.get = original  # type: ignore[method-assign]
        await h.api.delete(APP, record.id)
        return read

    h.fakes.connections.get = read_then_overtaken  # type: ignore[method-assign]
    with pytest.raises(ServiceError) as second:
        await h.api.delete(APP, record.id)
    assert second.value.status == 404, second.value.detail
    assert await h.record(record.id) is None
    assert h.check() == []


@pytest.mark.parametrize("other", ["rotate", "new credentials"])
async def test_a_credentials_change_cleaning_up_does_not_remove_what_a_later_request_made_current(
        monkeypatch: pytest.MonkeyPatch, other: str) -> None:
    h = Harness()
    record = await h.create()
    client_id = record.client_id or ""

    async def change() -> object:
        if other == "rotate":
            return await h.api.rotate(APP, record.id)
        return await h.api.update(APP, record.id, {"credentials": h.new_credential(client_id)})

    # The third Graph read is the first change's clean-up of the secret the service made, after its switch.
    answered = overtaken_at(monkeypatch, FakeGraph, "find", 3, change)
    try:
        await h.api.update(APP, record.id, {"credentials": h.new_credential(client_id)})
    except ServiceError as error:
        answered.append(error)
    _refusals_only(answered)
    assert h.check() == []
    current = await h.record(record.id)
    assert current is not None
    await h.api.validate(APP, record.id)  # the credential it points at is there and works


async def test_two_credentials_changes_at_once_leave_the_current_version_enabled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    record = await h.create(rotation=False)
    client_id = record.client_id or ""
    # The first change is saved and about to disable what it superseded: the second one comes in then.
    answered = overtaken_at(monkeypatch, FakeVault, "disable", 1,
                            lambda: h.api.update(APP, record.id, {"credentials": h.new_credential(client_id)}))
    await h.api.update(APP, record.id, {"credentials": h.new_credential(client_id)})
    _refusals_only(answered)
    validated = await h.api.validate(APP, record.id)
    assert validated.status == "active"
    assert h.check() == []


async def test_a_delete_sent_again_while_the_first_one_finishes_leaves_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    record = await h.create()
    answered = overtaken_at(monkeypatch, FakeVault, "delete", 1, lambda: h.api.delete(APP, record.id))
    try:
        await h.api.delete(APP, record.id)
    except ServiceError as error:
        answered.append(error)
    _refusals_only(answered)
    monkeypatch.undo()
    if await h.record(record.id) is not None:
        await h.api.delete(APP, record.id)  # a DELETE sent again finishes it
    assert await h.record(record.id) is None
    assert h.check() == []


async def test_a_delete_that_failed_at_its_last_write_is_finished_by_the_next_one() -> None:
    h = Harness()
    record = await h.create()
    h.fakes.world.fail_next("store.delete")
    with pytest.raises(ServiceError):
        await h.api.delete(APP, record.id)
    deleted = await h.api.delete(APP, record.id)
    assert deleted.key_ids_left_live == []
    assert await h.record(record.id) is None
    assert h.check() == []


@pytest.mark.parametrize("same_application", [True, False])
async def test_new_credentials_for_a_migrated_connection_leave_no_federated_credential_untracked(
        same_application: bool) -> None:
    h = Harness()
    record = await h.create()
    await h.api.migrate_to_federated(APP, record.id, {})
    client_id = record.client_id or ""
    if not same_application:
        other = h.fakes.world.application()
        h.fakes.world.add_federated(other.client_id)
        client_id = other.client_id
    await h.api.update(APP, record.id, {"credentials": {"tenantId": TENANT, "clientId": client_id}})
    await h.api.delete(APP, record.id)
    assert h.check() == []


async def test_a_rotation_with_no_journal_is_not_started_on_a_connection_with_nothing_to_rotate() -> None:
    h = Harness()
    record = await h.create()
    migrated = await h.api.migrate_to_federated(APP, record.id, {})  # a migration landed under a stale request
    assert await h.services().rotator.claim(migrated, "credential-change") is None
    off = await h.create(name="off", rotation=False)
    assert await h.services().rotator.claim(off, "manual") is None


async def test_a_migration_during_a_credentials_change_leaves_a_connection_that_can_be_deleted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    record = await h.create()
    answered = overtaken_at(monkeypatch, FakeVault, "get", 1, lambda: h.api.migrate_to_federated(APP, record.id, {}))
    try:
        await h.api.update(APP, record.id, {"credentials": h.new_credential(record.client_id or "")})
    except ServiceError as error:
        answered.append(error)
    _refusals_only(answered)
    current = await h.record(record.id)
    assert current is not None
    if current.method == "federated":
        assert current.rotation.rotation_id is None, current.rotation
    monkeypatch.undo()
    await h.api.delete(APP, record.id)
    assert await h.record(record.id) is None
    assert h.check() == []


async def test_a_rotation_held_up_past_its_lease_while_the_sweep_rotated_answers_409_not_the_sweeps_outcome(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    record = await h.create()

    async def take_over() -> None:  # the request's worker is held up past its lease; the sweep takes it over
        h.lease_runs_out()
        await h.due()
        await h.sweep()

    overtaken_at(monkeypatch, FakeVault, "get", 1, take_over)
    with pytest.raises(ServiceError) as stopped:
        await h.api.rotate(APP, record.id)
    assert stopped.value.status == 409 and "took the rotation" in stopped.value.detail
    rotated = await h.record(record.id)
    assert rotated is not None and rotated.rotation.status == "succeeded"  # the sweep's outcome, told by the record
    assert h.check() == []


async def test_a_credentials_change_held_up_in_its_clean_up_past_its_lease_leaves_what_the_sweep_made_current(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    record = await h.create()

    async def take_over() -> None:  # the change's clean-up call hangs past its lease; the sweep rotates meanwhile
        h.lease_runs_out()
        await h.due()
        await h.sweep()

    overtaken_at(monkeypatch, FakeGraph, "remove_password", 1, take_over)
    await h.api.update(APP, record.id, {"credentials": h.new_credential(record.client_id or "")})
    monkeypatch.undo()
    validated = await h.api.validate(APP, record.id)  # the version the sweep made current is still enabled
    assert validated.status == "active"
    assert h.check() == []


async def test_a_migration_whose_graph_call_outlived_its_lease_answers_409_not_graphs_refusal_as_a_502(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    record = await h.create()

    async def take_over() -> None:  # the addition hangs past the lease; the request sent again finishes it
        h.lease_runs_out()
        await h.api.migrate_to_federated(APP, record.id, {})

    overtaken_at(monkeypatch, FakeGraph, "add_federated_credential", 1, take_over)
    with pytest.raises(ServiceError) as stopped:
        await h.api.migrate_to_federated(APP, record.id, {})
    assert 400 <= stopped.value.status < 500, stopped.value.detail
    monkeypatch.undo()
    migrated = await h.record(record.id)
    assert migrated is not None and migrated.method == "federated" and not migrated.rotation.in_progress
    assert h.check() == []


async def test_a_removal_that_outlived_its_lease_answers_409_not_graphs_refusal_as_a_502(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(method="certificate")
    record = await h.create()

    async def take_over() -> None:  # the removal hangs past the lease; the request sent again finishes the clean-up
        h.lease_runs_out()
        await h.api.migrate_to_federated(APP, record.id, {"revokeOriginal": True})

    overtaken_at(monkeypatch, FakeGraph, "remove_key", 1, take_over)
    with pytest.raises(ServiceError) as stopped:
        await h.api.migrate_to_federated(APP, record.id, {"revokeOriginal": True})
    assert 400 <= stopped.value.status < 500, stopped.value.detail
    monkeypatch.undo()
    assert h.check() == []


async def test_moving_a_migrated_connection_that_the_store_refuses_changes_nothing_on_either_application() -> None:
    h = Harness()
    await h.create(name="taken")
    record = await h.create(name="mine")
    await h.api.migrate_to_federated(APP, record.id, {})
    other = h.fakes.world.application()
    h.fakes.world.add_federated(other.client_id)
    with pytest.raises(ServiceError) as refused:  # the name is taken: the write is refused, after the checks
        await h.api.update(APP, record.id, {"name": "taken",
                                            "credentials": {"tenantId": TENANT, "clientId": other.client_id}})
    assert refused.value.status == 409
    assert (await h.api.validate(APP, record.id)).status == "active"  # still signs in where it was
    assert h.check() == []


async def test_a_migrated_connection_whose_application_dropped_the_trust_can_still_move_to_another() -> None:
    h = Harness()
    record = await h.create()
    migrated = await h.api.migrate_to_federated(APP, record.id, {})
    h.fakes.world.apps[migrated.client_id or ""].federated.clear()  # the owner removed it by hand
    other = h.fakes.world.application()
    h.fakes.world.add_federated(other.client_id)
    moved = await h.api.update(APP, record.id, {"credentials": {"tenantId": TENANT, "clientId": other.client_id}})
    assert moved.client_id == other.client_id and moved.rotation.key_id is None
    assert h.check() == []


async def test_a_superseded_version_a_failed_call_left_enabled_is_disabled_by_the_next_change() -> None:
    h = Harness()
    record = await h.create(rotation=False)
    client_id = record.client_id or ""
    h.fakes.vault.refused_disables = 1  # throttled once: the adapter's disable is best effort
    for _ in range(3):
        await h.api.update(APP, record.id, {"credentials": h.new_credential(client_id)})
    current = await h.record(record.id)
    assert current is not None
    assert [v.version for v in h.fakes.vault.secrets[current.secret_name] if v.enabled] == [current.secret_version]


async def test_a_validation_whose_credential_was_replaced_while_entra_refused_it_answers_409_not_invalid(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    record = await h.create()  # its secret is the service's: the change below removes it from the application
    answered = overtaken_at(monkeypatch, FakeDirectory, "probe", 1, lambda: h.api.update(
        APP, record.id, {"credentials": h.new_credential(record.client_id or "")}))
    with pytest.raises(ServiceError) as refused:
        await h.api.validate(APP, record.id)
    _refusals_only(answered)
    assert refused.value.status == 409 and "changed while it was being validated" in refused.value.detail
    current = await h.record(record.id)
    assert current is not None and current.status == "active"  # the new credential's own validation stands


async def test_a_validation_saved_just_before_a_credentials_changes_clean_up_does_not_put_the_clean_up_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    record = await h.create()
    _, moved_to = h.new_application()
    # The change's second write takes the clean-up's lease: a validation's status lands just before it.
    answered = overtaken_at(monkeypatch, fakes.FakeConnections, "update", 2, lambda: h.api.validate(APP, record.id))
    changed = await h.api.update(APP, record.id, {"credentials": moved_to, "isAutoRotationEnabled": False})
    _refusals_only(answered)
    assert changed.rotation.retire_version is None  # the application it left is cleaned up now, not by a sweep
    assert h.check() == []


@pytest.mark.parametrize("method", ["client-secret", "certificate"])
async def test_a_first_rotation_s_addition_applied_with_its_answer_lost_after_a_delete_is_withdrawn(
        method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review C2.) The addition of the first rotation (turned on by a PATCH) hangs past its lease; a DELETE
    finishes meanwhile (it leaves the owner's credential); then Graph applies the addition and its answer is
    lost. The withdrawal of a certificate had nothing to sign its proof with (the connection and its vault
    secret gone): the new certificate stayed live, tracked by nothing. It signs with what signed the addition."""
    from tests.lifecycle_harness import ROTATION, user_operations

    h = Harness(method=method)
    record = await h.create(rotation=False)

    async def deleted_meanwhile() -> None:
        h.lease_runs_out()
        deleted = await user_operations(h, record.id)["delete"]()
        assert deleted.status == 200, deleted.error
        h.fakes.world.fail_next("graph.add.lost")  # Graph applies the addition; its answer is lost

    overtaken_at(monkeypatch, FakeGraph, "add_key" if method == "certificate" else "add_password", 1,
                 deleted_meanwhile)
    with contextlib.suppress(ServiceError):  # (whatever it answers: what is left on the application counts)
        await h.api.update(APP, record.id, {"isAutoRotationEnabled": True, "rotation": ROTATION})
    assert await h.record(record.id) is None
    assert h.check() == []
