"""NCRONTAB schedules as the Azure Functions timer trigger reads them.

Six fields ``{second} {minute} {hour} {day} {month} {day-of-week}``; five fields mean no seconds (second 0).
Each field takes ``*``, ``a``, ``a-b``, ``a,b,c``, ``*/n``, ``a/n`` (``a`` to the field's maximum, every
``n``) and ``a-b/n``. Months take names (``Jan``/``January``), days of week take names (``Sun``/``Sunday``)
or 0-6 with 0 = Sunday (7 is accepted as Sunday too).

Day of month and day of week: Azure's timer trigger uses the NCrontab library, which requires *both*
fields to match (``0 0 0 13 * Fri`` = every Friday the 13th). That is the default here. Classic cron
(Vixie, POSIX) instead matches *either* field when both are restricted; pass ``day_or=True`` for that.

The TimeSpan form ``hh:mm:ss`` (or ``d.hh:mm:ss``) is an interval: the next occurrence is ``after + interval``.

Times are computed in UTC (Azure's default when ``WEBSITE_TIME_ZONE`` is not set).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["CronSchedule", "IntervalSchedule", "Schedule", "next_after", "parse"]

_MONTH_NAMES = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
_DAY_NAMES = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")

_FIELD_NAMES = ("second", "minute", "hour", "day", "month", "day-of-week")
_BOUNDS = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_DAYS_IN_MONTH_MAX = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

_TIMESPAN = re.compile(r"^(?:(?P<days>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{1,2})(?::(?P<s>\d{1,2}))?$")
_INT = re.compile(r"^\d+$")

# Guard against an expression that can never fire (checked at parse time too); the worst real case,
# Feb 29 on a given weekday, recurs within 28 years (40 across a skipped century leap year).
_MAX_YEARS_AHEAD = 60


def _names_for(index: int) -> tuple[str, ...] | None:
    if index == 4:
        return _MONTH_NAMES
    if index == 5:
        return _DAY_NAMES
    return None


def _value(token: str, index: int, expr: str) -> int:
    field = _FIELD_NAMES[index]
    low, high = _BOUNDS[index]
    if _INT.match(token):
        number = int(token)
    else:
        names = _names_for(index)
        lowered = token.lower()
        if names is None or not token.isalpha():
            raise ValueError(f"invalid NCRONTAB expression {expr!r}: {token!r} is not a number in the {field} field")
        matches = [i for i, name in enumerate(names) if len(lowered) >= 3 and name.startswith(lowered)]
        if not matches:
            known = ", ".join(name[:3].title() for name in names)
            raise ValueError(f"invalid NCRONTAB expression {expr!r}: unknown {field} name {token!r} (use {known})")
        number = matches[0] + (1 if index == 4 else 0)
    if not low <= number <= high:
        shown_high = 6 if index == 5 else high  # 7 (Sunday) is accepted but 0-6 is the documented range
        raise ValueError(
            f"invalid NCRONTAB expression {expr!r}: {number} is out of range for the {field} field ({low}-{shown_high})"
        )
    return number


def _field(text: str, index: int, expr: str) -> frozenset[int]:
    field = _FIELD_NAMES[index]
    low, high = _BOUNDS[index]
    if index == 5:
        high = 6  # "*" and "a/n" stop at Saturday; an explicit 7 still means Sunday
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise ValueError(f"invalid NCRONTAB expression {expr!r}: empty list item in the {field} field")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not _INT.match(step_text) or int(step_text) == 0:
                raise ValueError(
                    f"invalid NCRONTAB expression {expr!r}: step {step_text!r} in the {field} field "
                    "must be a positive whole number"
                )
            step = int(step_text)
        if base == "*":
            start, stop = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            if not first or not last:
                raise ValueError(f"invalid NCRONTAB expression {expr!r}: malformed range {base!r} in the {field} field")
            start, stop = _value(first, index, expr), _value(last, index, expr)
            if start > stop:
                raise ValueError(
                    f"invalid NCRONTAB expression {expr!r}: range {base!r} in the {field} field runs backwards"
                )
        elif base:
            start = _value(base, index, expr)
            stop = high if slash else start
        else:
            raise ValueError(f"invalid NCRONTAB expression {expr!r}: empty value in the {field} field")
        values.update(range(start, stop + 1, step))
    if index == 5 and 7 in values:
        values.discard(7)
        values.add(0)
    return frozenset(values)


@dataclass(frozen=True)
class CronSchedule:
    """A parsed six-field NCRONTAB expression."""

    expression: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: tuple[int, ...]
    weekdays: frozenset[int]  # 0 = Sunday
    day_restricted: bool
    weekday_restricted: bool
    day_or: bool = False

    def _day_matches(self, moment: datetime) -> bool:
        day_ok = moment.day in self.days
        weekday_ok = (moment.isoweekday() % 7) in self.weekdays
        if self.day_or and self.day_restricted and self.weekday_restricted:
            return day_ok or weekday_ok
        return day_ok and weekday_ok

    def next_after(self, after: datetime) -> datetime:
        """The first occurrence strictly after ``after`` (UTC, whole seconds)."""
        start = _as_utc(after).replace(microsecond=0) + timedelta(seconds=1)
        t = start
        limit_year = start.year + _MAX_YEARS_AHEAD
        while t.year <= limit_year:
            if t.month not in self.months:
                later = _first_at_least(self.months, t.month + 1)
                t = (
                    datetime(t.year, later, 1, tzinfo=UTC)
                    if later is not None
                    else datetime(t.year + 1, self.months[0], 1, tzinfo=UTC)
                )
                continue
            if not self._day_matches(t):
                t = datetime(t.year, t.month, t.day, tzinfo=UTC) + timedelta(days=1)
                continue
            hour = _first_at_least(self.hours, t.hour)
            if hour is None:
                t = datetime(t.year, t.month, t.day, tzinfo=UTC) + timedelta(days=1)
                continue
            if hour != t.hour:
                t = t.replace(hour=hour, minute=0, second=0)
            minute = _first_at_least(self.minutes, t.minute)
            if minute is None:
                t = t.replace(minute=0, second=0) + timedelta(hours=1)
                continue
            if minute != t.minute:
                t = t.replace(minute=minute, second=0)
            second = _first_at_least(self.seconds, t.second)
            if second is None:
                t = t.replace(second=0) + timedelta(minutes=1)
                continue
            return t.replace(second=second)
        raise ValueError(f"NCRONTAB expression {self.expression!r} has no occurrence after {after.isoformat()}")


@dataclass(frozen=True)
class IntervalSchedule:
    """The TimeSpan form (``hh:mm:ss``): every ``interval``."""

    expression: str
    interval: timedelta

    def next_after(self, after: datetime) -> datetime:
        return _as_utc(after) + self.interval


Schedule = CronSchedule | IntervalSchedule


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("next_after needs a timezone-aware datetime")
    return moment.astimezone(UTC)


def _first_at_least(sorted_values: tuple[int, ...], minimum: int) -> int | None:
    i = bisect_left(sorted_values, minimum)
    return sorted_values[i] if i < len(sorted_values) else None


def parse(expression: str, *, day_or: bool = False) -> Schedule:
    """Parse an NCRONTAB expression (six or five fields) or a TimeSpan (``hh:mm:ss``); ``ValueError`` if invalid."""
    text = expression.strip()
    span = _TIMESPAN.match(text)
    if span:
        hours, minutes, seconds = int(span["h"]), int(span["m"]), int(span["s"] or 0)
        if hours > 23 or minutes > 59 or seconds > 59:
            raise ValueError(f"invalid TimeSpan schedule {expression!r}: use hh:mm:ss with hh < 24, mm and ss < 60")
        interval = timedelta(days=int(span["days"] or 0), hours=hours, minutes=minutes, seconds=seconds)
        if interval <= timedelta(0):
            raise ValueError(f"invalid TimeSpan schedule {expression!r}: the interval must be positive")
        return IntervalSchedule(expression, interval)

    fields = text.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise ValueError(
            f"invalid NCRONTAB expression {expression!r}: expected 6 fields "
            "'{second} {minute} {hour} {day} {month} {day-of-week}' (or 5 without seconds), "
            f"got {len(text.split())}"
        )
    sets = [_field(part, i, expression) for i, part in enumerate(fields)]
    days, months = sets[3], sets[4]
    restricted_day = not fields[3].startswith("*")
    restricted_weekday = not fields[5].startswith("*")
    if not (day_or and restricted_day and restricted_weekday):
        latest = max(_DAYS_IN_MONTH_MAX[m - 1] for m in months)
        if min(days) > latest:
            raise ValueError(
                f"invalid NCRONTAB expression {expression!r}: day {min(days)} never occurs in the months it names"
            )
    return CronSchedule(
        expression=expression,
        seconds=tuple(sorted(sets[0])),
        minutes=tuple(sorted(sets[1])),
        hours=tuple(sorted(sets[2])),
        days=days,
        months=tuple(sorted(months)),
        weekdays=sets[5],
        day_restricted=restricted_day,
        weekday_restricted=restricted_weekday,
        day_or=day_or,
    )


def next_after(expr: str | Schedule, after: datetime, *, day_or: bool = False) -> datetime:
    """The next occurrence of ``expr`` strictly after ``after`` (a timezone-aware datetime), in UTC."""
    schedule = parse(expr, day_or=day_or) if isinstance(expr, str) else expr
    return schedule.next_after(after)
