"""State an older version wrote, read by this one as that version meant it (a review of upgrades): a connection
rotated before ``key_made`` was recorded (7aca1c1) has no ``RotKeyMade`` column, and a clean-up of an application
left behind journaled by such a version ends with ``managed`` as it stood. Each is written here in its older shape
through the Table Storage mapping (the entity without the column), then driven by this version against in-memory
fakes."""

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


async def _moved_and_rotated_its_clean_up_refused() -> tuple[Harness, ConnectionRecord, ConnectionRecord]:
    """A rotated connection changed to another application, rotated at once there, while the application it left
    refuses its clean-up: the harness, the connection as created, and as the change left it."""
    h = Harness()
    record = await h.create()
    h.fakes.clock.advance(timedelta(hours=1))
    h.fakes.world.apps[record.client_id or ""].may_manage_itself = False
    _, credentials = h.new_application()
    changed = await h.api.update(APP, record.id, {"credentials": credentials})  # rotated at once, on the new one
    return h, record, changed


async def _clean_up_finished_then_deleted(h: Harness, record: ConnectionRecord, changed: ConnectionRecord) -> None:
    """The application left lets the clean-up through, the sweep finishes it with ``managed`` standing, and a DELETE
    removes the secret the rotation put in use."""
    h.fakes.world.apps[record.client_id or ""].may_manage_itself = True
    h.fakes.clock.advance(timedelta(hours=1))
    await h.sweep()
    done = await h.record(record.id)
    assert done is not None and not done.rotation.cleaning_up and done.rotation.managed
    deleted = await h.api.delete(APP, record.id)
    assert deleted.removed_key_ids == [changed.rotation.key_id]
    assert h.check() == []


async def test_a_clean_up_journaled_before_key_made_keeps_managed_when_a_rotation_ended_since_the_change() -> None:
    """Versions from 93b3e95 to 7aca1c1 cleared ``managed`` at the change and a rotation since set it again: the
    secret that rotation put in use is the service's, and a DELETE removes it."""
    h, record, changed = await _moved_and_rotated_its_clean_up_refused()
    assert changed.rotation.retire_client_id == record.client_id and changed.rotation.managed
    older = await written_before_key_made(h, record)
    assert older.rotation.last_rotated_at is not None and older.rotation.last_rotated_at >= older.updated_at
    await _clean_up_finished_then_deleted(h, record, changed)


async def test_a_clean_up_journaled_before_key_made_keeps_managed_after_a_later_edit_too() -> None:
    """(Review of the fix.) Nothing an older version stored tells when its credentials changed: a rule that kept
    ``managed`` only for a rotation ended since the last edit dropped it after a rename, and a DELETE then left the
    rotation's secret in use live, named nowhere. ``managed`` stands (a DELETE looks at the application in use)."""
    h, record, changed = await _moved_and_rotated_its_clean_up_refused()
    h.fakes.clock.advance(timedelta(minutes=10))
    renamed = await h.api.update(APP, record.id, {"name": "renamed", "isAutoRotationEnabled": False})
    assert renamed.rotation.managed and renamed.rotation.cleaning_up
    await written_before_key_made(h, record)
    await _clean_up_finished_then_deleted(h, record, changed)
