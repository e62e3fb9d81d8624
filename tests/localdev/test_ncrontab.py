"""NCRONTAB parsing and next occurrences, as the Azure timer trigger reads schedules."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from localdev.ncrontab import CronSchedule, IntervalSchedule, next_after, parse


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


JAN1 = utc(2024, 1, 1)  # a Monday

CASES = [
    # (expression, after, expected)
    ("*/1 * * * * *", JAN1, utc(2024, 1, 1, 0, 0, 1)),
    ("0 * * * * *", JAN1, utc(2024, 1, 1, 0, 1)),
    ("30 15 10 * * *", JAN1, utc(2024, 1, 1, 10, 15, 30)),
    ("30 15 10 * * *", utc(2024, 1, 1, 10, 15, 30), utc(2024, 1, 2, 10, 15, 30)),
    ("10/20 * * * * *", utc(2024, 1, 1, 0, 0, 31), utc(2024, 1, 1, 0, 0, 50)),
    ("0 5-20/5 * * * *", JAN1, utc(2024, 1, 1, 0, 5)),
    ("0 5-20/5 * * * *", utc(2024, 1, 1, 0, 20), utc(2024, 1, 1, 1, 5)),
    ("0 */15 * * * *", utc(2024, 1, 1, 0, 59), utc(2024, 1, 1, 1, 0)),
    ("0 0 9,17 * * *", utc(2024, 1, 1, 9, 0, 0), utc(2024, 1, 1, 17)),
    # names, ranges of names, steps over names
    ("0 0 12 * * Mon-Fri", utc(2024, 1, 6, 13), utc(2024, 1, 8, 12)),
    ("0 0 12 * * sat,SUN", JAN1, utc(2024, 1, 6, 12)),
    ("0 0 12 * * Saturday", JAN1, utc(2024, 1, 6, 12)),
    ("0 0 0 * * 7", JAN1, utc(2024, 1, 7)),  # 7 is Sunday too
    ("0 0 0 * * 0", JAN1, utc(2024, 1, 7)),
    ("0 0 0 * * 5-7", JAN1, utc(2024, 1, 5)),
    ("0 0 9 1 Jan-Mar/2 *", utc(2024, 1, 31, 10), utc(2024, 3, 1, 9)),
    ("0 0 9 1 jun *", JAN1, utc(2024, 6, 1, 9)),
    ("0 0 9 1 December *", JAN1, utc(2024, 12, 1, 9)),
    # month lengths, Feb 29, year rollover
    ("0 0 0 31 * *", utc(2024, 1, 31), utc(2024, 3, 31)),
    ("0 0 0 29 Feb *", utc(2024, 3, 1), utc(2028, 2, 29)),
    ("0 0 0 29 2 *", utc(2023, 1, 1), utc(2024, 2, 29)),
    ("0 0 0 1 Jan *", JAN1, utc(2025, 1, 1)),
    ("59 59 23 31 Dec *", utc(2024, 12, 31, 23, 59, 59), utc(2025, 12, 31, 23, 59, 59)),
    ("0 0 0 * * *", utc(2024, 12, 31, 12), utc(2025, 1, 1)),
    # day of month AND day of week (NCrontab, hence Azure): Friday the 13th
    ("0 0 0 13 * Fri", JAN1, utc(2024, 9, 13)),
    ("0 0 0 29 Feb Mon", JAN1, utc(2044, 2, 29)),
    # five fields: no seconds
    ("*/5 * * * *", utc(2024, 1, 1, 0, 3, 10), utc(2024, 1, 1, 0, 5)),
    ("0 0 * * Mon", utc(2024, 1, 1, 0, 0, 1), utc(2024, 1, 8)),
    # sub-second and non-UTC inputs
    ("*/1 * * * * *", utc(2024, 1, 1, micro=500_000), utc(2024, 1, 1, 0, 0, 1)),
    ("0 0 * * * *", datetime(2024, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1))), utc(2024, 1, 1, 1)),
]


@pytest.mark.parametrize(("expression", "after", "expected"), CASES)
def test_next_after(expression: str, after: datetime, expected: datetime) -> None:
    got = next_after(expression, after)
    assert got == expected
    assert got.tzinfo == UTC


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (JAN1, utc(2024, 1, 5)),  # the first Friday
        (utc(2024, 1, 12), utc(2024, 1, 13)),  # Saturday the 13th
        (utc(2024, 1, 13), utc(2024, 1, 19)),
    ],
)
def test_cron_or_semantics_on_request(after: datetime, expected: datetime) -> None:
    assert next_after("0 0 0 13 * Fri", after, day_or=True) == expected


def test_or_semantics_only_when_both_day_fields_are_restricted() -> None:
    assert next_after("0 0 0 * * Fri", JAN1, day_or=True) == utc(2024, 1, 5)
    assert next_after("0 0 0 13 * *", JAN1, day_or=True) == utc(2024, 1, 13)


def test_successive_occurrences() -> None:
    schedule = parse("0 30 9 * * Mon-Fri")
    seen, moment = [], utc(2024, 1, 5, 12)
    for _ in range(3):
        moment = schedule.next_after(moment)
        seen.append(moment)
    assert seen == [utc(2024, 1, 8, 9, 30), utc(2024, 1, 9, 9, 30), utc(2024, 1, 10, 9, 30)]


def test_parse_gives_fields() -> None:
    schedule = parse("0 */20 8-10 * * *")
    assert isinstance(schedule, CronSchedule)
    assert schedule.minutes == (0, 20, 40)
    assert schedule.hours == (8, 9, 10)


@pytest.mark.parametrize(
    ("expression", "interval"),
    [("00:05:00", timedelta(minutes=5)), ("01:00:00", timedelta(hours=1)), ("1.00:00:00", timedelta(days=1))],
)
def test_timespan_interval(expression: str, interval: timedelta) -> None:
    schedule = parse(expression)
    assert isinstance(schedule, IntervalSchedule)
    assert next_after(expression, JAN1) == JAN1 + interval


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "expected 6 fields"),
        ("* * * *", "got 4"),
        ("* * * * * * *", "got 7"),
        ("60 * * * * *", "out of range for the second field"),
        ("* * 24 * * *", "hour field"),
        ("* * * 0 * *", "day field"),
        ("* * * * 13 *", "month field"),
        ("* * * * * 8", "day-of-week field"),
        ("*/0 * * * * *", "positive whole number"),
        ("*/x * * * * *", "positive whole number"),
        ("5-1 * * * * *", "runs backwards"),
        ("-5 * * * * *", "malformed range"),
        ("* * * * Foo *", "unknown month name"),
        ("* * * * * Funday", "unknown day-of-week name"),
        ("a * * * * *", "not a number in the second field"),
        ("1,,2 * * * * *", "empty list item"),
        ("0 0 0 30 Feb *", "never occurs"),
        ("0 0 0 31 Apr,Jun *", "never occurs"),
        ("00:00:00", "must be positive"),
        ("25:00:00", "hh < 24"),
    ],
)
def test_malformed_expressions(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse(expression)
    if expression and ":" not in expression:
        assert repr(expression) in str(caught.value)


def test_naive_datetime_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_after("* * * * * *", datetime(2024, 1, 1))
