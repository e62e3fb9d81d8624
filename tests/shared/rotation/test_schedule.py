"""The next due time honours the interval, the local time of day and the time zone, across DST."""

from datetime import UTC, datetime, time

import pytest

from shared.rotation.schedule import RotationSchedule, ScheduleError, parse_hhmm, zone


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_utc_schedule_is_interval_days_after_at_the_time():
    schedule = RotationSchedule(30, time(3, 0))
    assert schedule.next_due(utc(2026, 1, 1, 22, 15)) == utc(2026, 1, 31, 3, 0)


def test_the_day_counts_in_local_time():
    # 23:30 UTC on Jan 1 is already Jan 2 in Tokyo: the next rotation is Jan 3 at 09:00 Tokyo (00:00 UTC).
    schedule = RotationSchedule(1, time(9, 0), "Asia/Tokyo")
    assert schedule.next_due(utc(2026, 1, 1, 23, 30)) == utc(2026, 1, 3, 0, 0)


def test_local_time_holds_across_a_dst_change():
    schedule = RotationSchedule(7, time(3, 0), "Europe/Paris")
    # 3 March 03:00 CET is 02:00 UTC; a week later (after 29 March) CEST: 03:00 local is 01:00 UTC.
    assert schedule.next_due(utc(2026, 3, 3, 2, 0)) == utc(2026, 3, 10, 2, 0)
    assert schedule.next_due(utc(2026, 3, 24, 2, 0)) == utc(2026, 3, 31, 1, 0)


def test_a_time_that_does_not_exist_moves_forward():
    # US spring forward 2026-03-08: 02:30 does not exist in New York; it becomes 03:30 EDT (07:30 UTC).
    schedule = RotationSchedule(1, time(2, 30), "America/New_York")
    due = schedule.next_due(utc(2026, 3, 7, 12, 0))
    assert due == utc(2026, 3, 8, 7, 30)
    assert due.astimezone(zone("America/New_York")).strftime("%H:%M") == "03:30"


def test_an_ambiguous_time_takes_the_first_occurrence():
    # US fall back 2026-11-01: 01:30 happens twice in New York; the first is EDT (05:30 UTC).
    schedule = RotationSchedule(1, time(1, 30), "America/New_York")
    assert schedule.next_due(utc(2026, 10, 31, 12, 0)) == utc(2026, 11, 1, 5, 30)


@pytest.mark.parametrize("days", [0, 366, -1])
def test_interval_out_of_range_is_refused(days):
    with pytest.raises(ScheduleError) as caught:
        RotationSchedule(days, time(0, 0))
    assert caught.value.field == "rotationInterval"


@pytest.mark.parametrize("name", ["Mars/Olympus", "../../etc/passwd", "", "utc+1", "localtime", "Factory"])
def test_unknown_time_zones_are_refused(name):
    with pytest.raises(ScheduleError) as caught:
        RotationSchedule(1, time(0, 0), name)
    assert caught.value.field == "timeZone"


@pytest.mark.parametrize("text", ["24:00", "3:00", "03:60", "0300", " 03:00"])
def test_bad_times_are_refused(text):
    with pytest.raises(ScheduleError):
        parse_hhmm(text)


def test_good_times_parse():
    assert parse_hhmm("23:59") == time(23, 59)


def test_a_rotation_made_just_after_midnight_for_a_time_before_it_keeps_the_schedule_s_day():
    schedule = RotationSchedule(30, time(23, 55))
    assert schedule.next_due(utc(2026, 1, 2, 0, 5)) == utc(2026, 1, 31, 23, 55)  # made for Jan 1 23:55
    assert schedule.next_due(utc(2026, 1, 1, 23, 56)) == utc(2026, 1, 31, 23, 55)
    assert schedule.next_due(utc(2026, 1, 2, 10, 0)) == utc(2026, 2, 1, 23, 55)  # later than that: its own day


def test_hourly_sweeps_keep_a_late_evening_schedule_from_drifting_a_day_a_cycle():
    from datetime import timedelta
    from itertools import pairwise

    schedule = RotationSchedule(7, time(23, 30), "Europe/Paris")
    due = schedule.next_due(utc(2026, 1, 1, 12, 0))
    dues = []
    for _ in range(12):  # the sweep runs on the hour and the rotation takes a few minutes
        swept = due.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        due = schedule.next_due(swept + timedelta(minutes=3))
        dues.append(due)
    assert all((b - a) in (timedelta(days=7), timedelta(days=7, hours=-1), timedelta(days=7, hours=1))
               for a, b in pairwise(dues))  # a week apart (DST moves UTC by an hour)
    assert all(d.astimezone(zone("Europe/Paris")).time() == time(23, 30) for d in dues)


def test_a_manual_rotation_early_in_the_day_still_counts_from_its_own_day():
    schedule = RotationSchedule(1, time(3, 0))
    assert schedule.next_due(utc(2026, 1, 5, 1, 0)) == utc(2026, 1, 6, 3, 0)  # 22 h after the last due time
