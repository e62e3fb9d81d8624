"""The public view of a connection's rotation: its settings, status and what comes next (never a secret)."""

from __future__ import annotations

from datetime import time
from typing import Any

from shared.json_codec import iso
from shared.records import RotationState


def state_response(state: RotationState) -> dict[str, Any] | None:
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
        "rotationId": state.rotation_id,
    }


def rotate_at_utc(hours: int, minutes: int) -> str:
    return time(hours, minutes).strftime("%H:%M")
