"""When a rotation is due: ``rotateAt`` local time in ``timeZone``, ``rotationInterval`` days after the last one.

Time zones are IANA names (tzdata ships with the app, so every zone is known on every host). Across a DST
change a local time that does not exist that day moves forward by the gap (02:30 on a spring-forward day
becomes 03:30), and an ambiguous one (fall back) takes its first occurrence, as PEP 495's ``fold=0`` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from shared.fields import HHMM_PATTERN

MIN_INTERVAL_DAYS = 1
MAX_INTERVAL_DAYS = 365
_HHMM = re.compile(HHMM_PATTERN.removesuffix("$") + r"\Z")


class ScheduleError(ValueError):
    """A schedule field is not valid; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


# Files of the zone database that name no place: the host's own zone (which follows the machine, not the owner)
# and tzdata's placeholder.
_NOT_ZONES = frozenset({"localtime", "Factory"})


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones()) - _NOT_ZONES


def zone(name: str) -> ZoneInfo:
    if name not in _zones() and name != "UTC":
        raise ScheduleError("timeZone", "must be an IANA time zone name such as Europe/Paris or UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError("timeZone", "must be an IANA time zone name such as Europe/Paris or UTC") from None


def parse_hhmm(value: str) -> time:
    match = _HHMM.match(value)
    if not match:
        raise ScheduleError("rotateAt", "must be a 24-hour time HH:MM, such as 03:30")
    return time(int(match.group(1)), int(match.group(2)))


SLOT_TOLERANCE = timedelta(hours=6)  # how late after its due time a rotation still counts for that day


@dataclass(frozen=True)
class RotationSchedule:
    interval_days: int
    rotate_at: time
    time_zone: str = "UTC"

    def __post_init__(self) -> None:
        if not MIN_INTERVAL_DAYS <= self.interval_days <= MAX_INTERVAL_DAYS:
            raise ScheduleError(
                "rotationInterval", f"must be a whole number of days from {MIN_INTERVAL_DAYS} to {MAX_INTERVAL_DAYS}"
            )
        zone(self.time_zone)

    def at_local(self, day: date) -> datetime:
        """``rotate_at`` on ``day`` in the zone, as UTC (gaps move forward, folds take the first)."""
        tz = zone(self.time_zone)
        local = datetime.combine(day, self.rotate_at, tzinfo=tz).replace(fold=0)
        return local.astimezone(UTC)

    def next_due(self, last_rotated_at: datetime) -> datetime:
        """The first due time on the day ``interval_days`` after the last rotation's local date. A rotation made
        less than ``SLOT_TOLERANCE`` after a due time counts for that due time's day: one due at 23:55 that a
        late sweep makes at 00:05 would otherwise move the schedule a day later at every rotation."""
        tz = zone(self.time_zone)
        day = last_rotated_at.astimezone(tz).date()
        slot = self.at_local(day)
        if slot > last_rotated_at and last_rotated_at - self.at_local(day - timedelta(days=1)) < SLOT_TOLERANCE:
            day -= timedelta(days=1)
        return self.at_local(day + timedelta(days=self.interval_days))

    @property
    def rotate_at_text(self) -> str:
        return self.rotate_at.strftime("%H:%M")
