"""The public view of a connection's rotation: its settings, status and what comes next (never a secret)."""

from __future__ import annotations

from datetime import time
from typing import Any

from shared.json_codec import iso
from shared.records import RotationState


def state_response(state: RotationState) -> dict[str, Any] | None:
    if not state.enabled and state.status is None and state.interval_days is None and not state.cleaning_up:
        return None  # never configured, and no clean-up to tell of
    return {
        "enabled": state.enabled,
        "rotationInterval": state.interval_days,
        "rotateAt": state.rotate_at,
        "timeZone": state.time_zone,
        "rotateAtUtc": _utc_time(state),
        "status": state.status,
        "lastRotatedAt": iso(state.last_rotated_at),
        "lastRotationAttemptedAt": iso(state.last_attempt_at),
        "lastRotationMessage": state.message,
        "nextRotationAt": iso(state.next_at),
        "rotationId": state.rotation_id,
    }


def _utc_time(state: RotationState) -> dict[str, int] | None:
    """``{hours, minutes}``, as the reference's clients write and read it, for a schedule in UTC (one in another
    time zone has no one UTC time of day: it moves with daylight saving time)."""
    if state.rotate_at is None or (state.time_zone or "UTC") != "UTC":
        return None
    hours, minutes = state.rotate_at.split(":")
    return {"hours": int(hours), "minutes": int(minutes)}


def rotate_at_utc(hours: int, minutes: int) -> str:
    return time(hours, minutes).strftime("%H:%M")
