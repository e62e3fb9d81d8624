"""A connection's rotation settings, status and journal, kept on its Table entity (never a secret).

The journal (``rotation_id``, ``step``, pending and previous Key IDs and vault versions) is what makes
every step resumable: each step is written here, ETag-guarded, before the next one starts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime, time
from typing import Any

from shared.rotation.schedule import RotationSchedule, parse_hhmm
from shared.store.tables import ConnectionRecord

# Steps, in order. "begun": the rotation is claimed and its previous credential noted; "created": the new
# password exists and its secret is in the vault as a pending version; "tested": a token was acquired
# with it; "finished": it is the current version. Revoking the previous one ends the rotation.
BEGUN, CREATED, TESTED, FINISHED = "begun", "created", "tested", "finished"

STATUS_SCHEDULED = "scheduled"
STATUS_ROTATING = "rotating"
STATUS_SUCCEEDED = "succeeded"
STATUS_FAILED = "failed"
STATUS_DISABLED = "disabled"

_PREFIX = "Rot"


@dataclass(frozen=True)
class RotationState:
    enabled: bool = False
    interval_days: int | None = None
    rotate_at: str | None = None  # "HH:MM"
    time_zone: str | None = None
    status: str | None = None
    message: str | None = None
    last_rotated_at: datetime | None = None
    last_attempt_at: datetime | None = None
    next_at: datetime | None = None
    schedule_key: str | None = None
    failures: int = 0
    key_id: str | None = None  # Key ID of the client secret in use
    # The journal of the rotation under way.
    rotation_id: str | None = None
    step: str | None = None
    trigger: str | None = None
    started_at: datetime | None = None
    pending_key_id: str | None = None
    pending_version: str | None = None
    previous_key_id: str | None = None
    previous_version: str | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None

    @property
    def schedule(self) -> RotationSchedule | None:
        if not self.enabled or self.interval_days is None or self.rotate_at is None:
            return None
        return RotationSchedule(self.interval_days, parse_hhmm(self.rotate_at), self.time_zone or "UTC")

    def leased(self, now: datetime) -> bool:
        return self.lease_until is not None and self.lease_until > now

    def cleared_journal(self) -> RotationState:
        return replace(
            self, rotation_id=None, step=None, trigger=None, started_at=None, pending_key_id=None,
            pending_version=None, previous_key_id=None, previous_version=None, lease_owner=None, lease_until=None,
        )

    def evolve(self, **changes: Any) -> RotationState:
        return replace(self, **changes)


def _column(name: str) -> str:
    return _PREFIX + "".join(part.capitalize() for part in name.split("_"))


_COLUMNS = {f.name: _column(f.name) for f in fields(RotationState)}


def read_state(record: ConnectionRecord) -> RotationState:
    values: dict[str, Any] = {}
    for attr, column in _COLUMNS.items():
        if column in record.extra:
            value = record.extra[column]
            if isinstance(value, datetime):
                value = value.astimezone(UTC)
            values[attr] = value
    return RotationState(**values)


def with_state(record: ConnectionRecord, state: RotationState) -> ConnectionRecord:
    """The record carrying ``state`` (absent fields are removed from the entity)."""
    extra = {k: v for k, v in record.extra.items() if not k.startswith(_PREFIX)}
    for attr, value in asdict(state).items():
        if value is not None:
            extra[_COLUMNS[attr]] = value
    return record.evolve(extra=extra)


def state_response(state: RotationState) -> dict[str, Any] | None:
    def iso(value: datetime | None) -> str | None:
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None

    if not state.enabled and state.status is None and state.interval_days is None:
        return None  # never configured
    return {
        "enabled": state.enabled,
        "rotationInterval": state.interval_days,
        "rotateAt": state.rotate_at,
        "timeZone": state.time_zone,
        "status": state.status,
        "lastRotatedAt": iso(state.last_rotated_at),
        "lastRotationAttemptedAt": iso(state.last_attempt_at),
        "lastRotationMessage": state.message,
        "nextRotationAt": iso(state.next_at),
    }


def rotate_at_utc(hours: int, minutes: int) -> str:
    return time(hours, minutes).strftime("%H:%M")
