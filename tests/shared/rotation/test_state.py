"""Rotation state lives on the connection entity and survives a round trip through it."""

from datetime import UTC, datetime, timedelta

from shared.records import BEGUN, ConnectionRecord, RotationState
from shared.rotation.protocol import MAX_BACKOFF, backoff
from shared.rotation.state import state_response
from shared.store.tables import from_entity, to_entity

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def record() -> ConnectionRecord:
    return ConnectionRecord(
        app="azure-key-vault", id="c1", name="n", method="client-secret", tenant_id="t", client_id="c",
        created_at=NOW, updated_at=NOW, secret_name="appconn-c1", secret_version="v1",
    )


class FakeEntity(dict):
    metadata = {"etag": "W/1"}


def test_state_round_trips_through_the_table_entity():
    state = RotationState(enabled=True, interval_days=30, rotate_at="03:00", time_zone="Europe/Paris",
                          rotation_id="r1", step=BEGUN, started_at=NOW, attempt=2, attempt_started_at=NOW,
                          managed=True, lease_until=NOW + timedelta(minutes=5))
    entity = FakeEntity(to_entity(record().evolve(rotation=state)))
    back = from_entity(entity)
    assert back.rotation == state
    assert back == record().evolve(rotation=state)
    assert back.etag == "W/1"


def test_clearing_fields_removes_them_from_the_entity():
    with_journal = record().evolve(rotation=RotationState(enabled=True, rotation_id="r1", step=BEGUN))
    cleared = with_journal.evolve(rotation=with_journal.rotation.cleared_journal())
    assert "RotRotationId" not in to_entity(cleared)
    assert "RotStep" not in to_entity(cleared)
    assert not cleared.rotation.in_progress and with_journal.rotation.in_progress


def test_no_rotation_shows_as_null():
    assert state_response(RotationState()) is None


def test_lease_is_held_until_it_runs_out():
    state = RotationState(lease_owner="a", lease_until=NOW + timedelta(seconds=1))
    assert state.leased(NOW)
    assert not state.leased(NOW + timedelta(seconds=1))


def test_failing_connections_back_off_exponentially_up_to_a_day():
    assert [backoff(n) for n in (1, 2, 3)] == [timedelta(minutes=5), timedelta(minutes=10), timedelta(minutes=20)]
    assert backoff(30) == MAX_BACKOFF == timedelta(days=1)
    assert [backoff(n) for n in (9, 10, 40, 10_000)] == [timedelta(minutes=5 * 256), *[MAX_BACKOFF] * 3]


def test_a_schedule_given_without_enabling_is_shown_as_disabled_settings():
    shown = state_response(RotationState(interval_days=7, rotate_at="04:00", time_zone="UTC"))
    assert shown is not None
    assert shown["enabled"] is False and shown["rotationInterval"] == 7 and shown["nextRotationAt"] is None
    assert shown["rotationId"] is None


def test_a_schedule_in_utc_reads_back_as_the_reference_s_clients_wrote_it():
    """(Review L, session 17.) ``rotateAtUtc`` was taken and never given back: a reference client could not read the
    field it wrote."""
    utc = state_response(RotationState(interval_days=7, rotate_at="03:05", time_zone="UTC"))
    assert utc is not None and utc["rotateAtUtc"] == {"hours": 3, "minutes": 5}
    local = state_response(RotationState(interval_days=7, rotate_at="03:05", time_zone="Europe/Berlin"))
    assert local is not None and local["rotateAtUtc"] is None


def test_a_connection_never_rotated_shows_its_rotation_only_while_a_clean_up_is_pending():
    """A federated connection created so (never rotated) that moved off an application: the clean-up of the one it
    left, and why it is not done yet, are told in its rotation (``lastRotationMessage``, ``nextRotationAt``)."""
    assert state_response(RotationState()) is None
    pending = RotationState(retire_federated_id="f1", retire_tenant_id="t", retire_client_id="c0",
                            message="could not be removed yet", next_at=NOW)
    shown = state_response(pending)
    assert shown is not None and shown["lastRotationMessage"] == "could not be removed yet"
    assert shown["nextRotationAt"] == "2026-11-23T12:00:00Z" and shown["enabled"] is False
    entity = FakeEntity(to_entity(record().evolve(rotation=pending)))
    assert from_entity(entity).rotation == pending
