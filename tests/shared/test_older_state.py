"""State an older version wrote, read by this one as that version meant it (a review of upgrades): a connection
rotated before ``key_made`` was recorded (7aca1c1) has no ``RotKeyMade`` column, and a clean-up of an application
left behind journaled before 93b3e95 kept ``managed``. Each is written here in its older shape through the Table
Storage mapping (the entity without the column), then driven by this version against in-memory fakes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.errors import CredentialsLeftLive
from shared.records import FINISHED, ConnectionRecord
from shared.store.tables import record_of_columns, to_entity
from tests.lifecycle_harness import APP, Crash, Harness


async def written_before_key_made(h: Harness, record: ConnectionRecord, **older: object) -> ConnectionRecord:
    """``record`` as a version before ``key_made`` wrote it (``older``: rotation fields as it had them): its entity
    without ``RotKeyMade``, read back through the mapping, in place of the stored one (the same ETag)."""
    stored = await h.record(record.id)
    assert stored is not None
    entity = to_entity(stored.evolve(rotation=stored.rotation.evolve(**older)))
    del entity["RotKeyMade"]
    read = record_of_columns(entity, stored.etag)
    h.fakes.connections.records[(APP, record.id)] = read
    return read


async def test_a_delete_lists_the_secret_a_rotation_made_before_key_made_was_recorded() -> None:
    """Read as False, the missing column made the secret the old rotation put in use the user's: a DELETE whose
    application cannot be read listed no Key ID ("none known") and left that secret live unnamed. Those versions
    listed the secret in use when ``managed``."""
    h = Harness()
    record = await h.create()
    older = await written_before_key_made(h, record)
    assert older.rotation.key_made is None and older.rotation.managed
    h.fakes.world.apps[record.client_id or ""].may_manage_itself = False
    with pytest.raises(CredentialsLeftLive) as refused:
        await h.api.delete(APP, record.id)
    assert refused.value.extensions["keyIds"] == [record.rotation.key_id]
    forced = await h.api.delete(APP, record.id, force=True)
    assert forced.key_ids_left_live == [record.rotation.key_id]
    assert forced.applications_not_read == [record.client_id]


async def test_a_rotation_an_older_version_left_at_its_finished_step_ends_with_the_credential_in_use_its_own(
) -> None:
    h = Harness()
    record = await h.create()
    await h.due()

    async def dies_after_the_switch(name: str, current: ConnectionRecord) -> None:
        if name == "after-finish":
            raise Crash(name)

    with pytest.raises(Crash):
        await h.sweep(dies_after_the_switch)
    stopped = await written_before_key_made(h, record)
    assert stopped.rotation.step == FINISHED and stopped.rotation.key_made is None
    h.lease_runs_out()
    await h.sweep()
    rotated = await h.record(record.id)
    assert rotated is not None and rotated.rotation.status == "succeeded", rotated.rotation.message
    assert rotated.rotation.key_id == stopped.rotation.key_id and rotated.rotation.key_made is True
    assert h.check() == []


async def _clean_up_journaled_before_93b3e95(h: Harness) -> tuple[ConnectionRecord, str]:
    """A rotated connection changed to another application with rotation off, the first application refusing its
    clean-up: journaled as versions before 93b3e95 did (``managed`` kept); the new application's client ID."""
    record = await h.create()
    h.fakes.clock.advance(timedelta(hours=1))
    left = h.fakes.world.apps[record.client_id or ""]
    left.may_manage_itself = False
    client_id, credentials = h.new_application()
    changed = await h.api.update(APP, record.id, {"credentials": credentials, "isAutoRotationEnabled": False})
    assert changed.rotation.retire_client_id == record.client_id and not changed.rotation.managed
    older = await written_before_key_made(h, record, managed=True)
    left.may_manage_itself = True
    return older, client_id


def _revoke_the_owner_s_secret(h: Harness, client_id: str) -> None:
    """The owner revokes the secret the connection now uses (theirs)."""
    passwords = h.fakes.world.apps[client_id].passwords
    for key_id in [key for key, password in passwords.items() if not password.created_by_service]:
        del passwords[key_id]


async def test_a_clean_up_journaled_before_93b3e95_ends_with_nothing_of_the_service_s_in_use() -> None:
    """The sweep finished it and left ``managed``: every DELETE then signed in to the application in use, where the
    service had created nothing, and answered 409 once the owner's secret there no longer worked."""
    h = Harness()
    older, client_id = await _clean_up_journaled_before_93b3e95(h)
    await h.due()
    await h.sweep()
    done = await h.record(older.id)
    assert done is not None and not done.rotation.cleaning_up and not done.rotation.managed
    _revoke_the_owner_s_secret(h, client_id)
    deleted = await h.api.delete(APP, older.id)
    assert deleted.removed_key_ids == [] and deleted.key_ids_left_live == []
    assert h.check() == []


async def test_a_refused_delete_that_finished_a_clean_up_journaled_before_93b3e95_leaves_nothing_in_use_managed(
) -> None:
    h = Harness()
    older, client_id = await _clean_up_journaled_before_93b3e95(h)
    _revoke_the_owner_s_secret(h, client_id)
    with pytest.raises(CredentialsLeftLive):  # the clean-up is done, then the application in use refuses
        await h.api.delete(APP, older.id)
    put_back = await h.record(older.id)
    assert put_back is not None and not put_back.rotation.cleaning_up and not put_back.rotation.managed
    deleted = await h.api.delete(APP, older.id)
    assert deleted.removed_key_ids == [] and deleted.key_ids_left_live == []


async def test_a_clean_up_journaled_before_key_made_keeps_managed_when_a_rotation_ended_since_the_change() -> None:
    """Versions from 93b3e95 to 7aca1c1 cleared ``managed`` at the change and a rotation since set it again: the
    secret that rotation put in use is the service's, and a DELETE removes it."""
    h = Harness()
    record = await h.create()
    h.fakes.clock.advance(timedelta(hours=1))
    left = h.fakes.world.apps[record.client_id or ""]
    left.may_manage_itself = False
    _, credentials = h.new_application()
    changed = await h.api.update(APP, record.id, {"credentials": credentials})  # rotated at once, on the new one
    assert changed.rotation.retire_client_id == record.client_id and changed.rotation.managed
    older = await written_before_key_made(h, record)
    assert older.rotation.last_rotated_at is not None and older.rotation.last_rotated_at >= older.updated_at
    left.may_manage_itself = True
    h.fakes.clock.advance(timedelta(hours=1))
    await h.sweep()
    done = await h.record(record.id)
    assert done is not None and not done.rotation.cleaning_up and done.rotation.managed
    deleted = await h.api.delete(APP, record.id)
    assert deleted.removed_key_ids == [changed.rotation.key_id]
    assert h.check() == []
