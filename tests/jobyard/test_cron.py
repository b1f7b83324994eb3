"""Schedules: parsing NCRONTAB, day-of-week numbering, errors, and fire times across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from jobyard.cron import (
    cron_days_of_week,
    describe,
    fire_times_between,
    next_fire_time,
    next_fire_times,
    parse_schedule,
)
from jobyard.errors import InvalidInput


def utc(text: str) -> datetime:
    """An ISO time without zone, read as UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def fires_utc(expr: str, tz: str, after: str, n: int) -> list[str]:
    """The next ``n`` fire times after ``after`` (UTC) as 'YYYY-MM-DDTHH:MM:SSZ' strings."""
    trigger = parse_schedule(expr, tz)
    return [f.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for f in next_fire_times(trigger, utc(after), n)]


def fires_local(expr: str, tz: str, after: str, n: int) -> list[str]:
    """The same, as local ISO times with their offsets."""
    return [f.isoformat() for f in next_fire_times(parse_schedule(expr, tz), utc(after), n)]


# -- parsing ---------------------------------------------------------------------------------


def test_six_fields_have_seconds_first() -> None:
    assert fires_utc("*/20 * * * * *", "UTC", "2025-01-01T00:00:00", 3) == [
        "2025-01-01T00:00:20Z",
        "2025-01-01T00:00:40Z",
        "2025-01-01T00:01:00Z",
    ]
    assert fires_utc("0 */5 * * * *", "UTC", "2025-01-01T00:00:00", 2) == [
        "2025-01-01T00:05:00Z",
        "2025-01-01T00:10:00Z",
    ]


def test_five_fields_are_classic_cron_on_second_zero() -> None:
    assert fires_utc("*/5 * * * *", "UTC", "2025-01-01T00:01:30", 2) == [
        "2025-01-01T00:05:00Z",
        "2025-01-01T00:10:00Z",
    ]


@pytest.mark.parametrize(
    ("field", "days"),
    [
        ("0", {0}),
        ("7", {0}),
        ("SUN", {0}),
        ("sat", {6}),
        ("1-5", {1, 2, 3, 4, 5}),
        ("MON-FRI", {1, 2, 3, 4, 5}),
        ("5-7", {5, 6, 0}),
        ("*/2", {0, 2, 4, 6}),
        ("1-5/2", {1, 3, 5}),
        ("1/2", {1, 3, 5}),
        ("0,3,SAT", {0, 3, 6}),
        ("*", set(range(7))),
        ("?", set(range(7))),
    ],
)
def test_day_of_week_uses_cron_numbering(field: str, days: set[int]) -> None:
    assert cron_days_of_week("x", field) == days


def test_sunday_is_sunday() -> None:
    # 2025-01-05 is a Sunday; APScheduler 3.x alone would read 0 as Monday.
    for field in ("0", "7", "SUN"):
        assert fires_utc(f"0 12 * * {field}", "UTC", "2025-01-01T00:00:00", 1) == ["2025-01-05T12:00:00Z"]
    assert fires_utc("0 12 * * 1", "UTC", "2025-01-01T00:00:00", 1) == ["2025-01-06T12:00:00Z"]
    # Weekdays 1-5 from a Friday: Friday, then Monday.
    assert fires_utc("0 9 * * 1-5", "UTC", "2025-01-03T00:00:00", 2) == [
        "2025-01-03T09:00:00Z",
        "2025-01-06T09:00:00Z",
    ]


@pytest.mark.parametrize(
    ("expr", "tz", "words"),
    [
        ("0 */5 * * *x", "UTC", "schedule '0 */5 * * *x': field 'day_of_week'"),
        ("61 * * * *", "UTC", "field 'minute' ('61')"),
        ("0 0 25 * * *", "UTC", "field 'hour' ('25')"),
        ("* * * 13 *", "UTC", "field 'month' ('13')"),
        ("* * * * 8", "UTC", "above the maximum 7"),
        ("* * * * FRI-MON", "UTC", "start is after its end"),
        ("* * *", "UTC", "has 3 fields, expected 6"),
        ("0 0 30 2 *", "UTC", "never fires"),
        ("0 */5 * * * *", "Mars/Base", "timezone 'Mars/Base' is not an IANA time zone name"),
        ("0 */5 * * * *", "../../etc/passwd", "is not an IANA time zone name"),
    ],
)
def test_bad_schedules_name_what_is_wrong(expr: str, tz: str, words: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_schedule(expr, tz)
    assert words in info.value.message
    assert info.value.detail


def test_describe_in_words() -> None:
    assert describe("0 */5 * * * *") == "Every 5 minutes"
    assert describe("*/10 * * * * *") == "Every 10 seconds"
    assert describe("30 2 * * 7", "Europe/Berlin") == "At 02:30, only on Sunday (Europe/Berlin)"


def test_fire_times_are_strictly_after() -> None:
    trigger = parse_schedule("0 * * * * *")
    assert next_fire_time(trigger, utc("2025-01-01T00:01:00")) == utc("2025-01-01T00:02:00")
    assert next_fire_time(trigger, utc("2025-01-01T00:01:59.5")) == utc("2025-01-01T00:02:00")


def test_fire_times_between_keeps_the_newest() -> None:
    trigger = parse_schedule("* * * * * *")
    got = fire_times_between(trigger, utc("2025-01-01T00:00:00"), utc("2025-01-01T00:00:10"), 3)
    assert got == [utc("2025-01-01T00:00:08"), utc("2025-01-01T00:00:09"), utc("2025-01-01T00:00:10")]


# -- DST: Europe/Berlin (2025-03-30 02:00 CET -> 03:00 CEST; 2025-10-26 03:00 CEST -> 02:00 CET) --


def test_berlin_spring_daily_time_in_the_gap_moves_to_the_jump() -> None:
    assert fires_local("30 2 * * *", "Europe/Berlin", "2025-03-28T12:00:00", 4) == [
        "2025-03-29T02:30:00+01:00",
        "2025-03-30T03:00:00+02:00",  # 02:30 does not exist that night
        "2025-03-31T02:30:00+02:00",
        "2025-04-01T02:30:00+02:00",
    ]


def test_berlin_spring_interval_has_no_fires_in_the_gap() -> None:
    assert fires_utc("*/15 * * * *", "Europe/Berlin", "2025-03-30T00:30:00", 5) == [
        "2025-03-30T00:45:00Z",  # 01:45 CET
        "2025-03-30T01:00:00Z",  # 03:00 CEST: 02:00..02:45 fold into the jump, fired once
        "2025-03-30T01:15:00Z",
        "2025-03-30T01:30:00Z",
        "2025-03-30T01:45:00Z",
    ]


def test_berlin_spring_several_gap_times_fire_once() -> None:
    # APScheduler alone skips this day completely.
    assert fires_local("10,50 2 * * *", "Europe/Berlin", "2025-03-29T00:30:00", 4) == [
        "2025-03-29T02:10:00+01:00",
        "2025-03-29T02:50:00+01:00",
        "2025-03-30T03:00:00+02:00",
        "2025-03-31T02:10:00+02:00",
    ]


def test_berlin_autumn_daily_time_in_the_overlap_fires_once() -> None:
    # APScheduler alone fires at 02:30 CEST and again at 02:30 CET.
    assert fires_local("30 2 * * *", "Europe/Berlin", "2025-10-24T12:00:00", 3) == [
        "2025-10-25T02:30:00+02:00",
        "2025-10-26T02:30:00+02:00",
        "2025-10-27T02:30:00+01:00",
    ]
    assert fires_local("*/20 2 * * *", "Europe/Berlin", "2025-10-25T23:50:00", 4) == [
        "2025-10-26T02:00:00+02:00",
        "2025-10-26T02:20:00+02:00",
        "2025-10-26T02:40:00+02:00",
        "2025-10-27T02:00:00+01:00",
    ]


def test_berlin_autumn_hourly_schedule_follows_the_real_clock() -> None:
    assert fires_local("*/30 * * * *", "Europe/Berlin", "2025-10-25T23:40:00", 6) == [
        "2025-10-26T02:00:00+02:00",
        "2025-10-26T02:30:00+02:00",
        "2025-10-26T02:00:00+01:00",
        "2025-10-26T02:30:00+01:00",
        "2025-10-26T03:00:00+01:00",
        "2025-10-26T03:30:00+01:00",
    ]


def test_berlin_autumn_start_inside_the_repeated_hour() -> None:
    # From 02:10 CET (the second 02:10): a fixed-hour job already fired at 02:20 CEST that day.
    assert fires_local("*/20 2 * * *", "Europe/Berlin", "2025-10-26T01:10:00", 1) == [
        "2025-10-27T02:00:00+01:00"
    ]
    assert fires_local("*/20 * * * *", "Europe/Berlin", "2025-10-26T01:10:00", 2) == [
        "2025-10-26T02:20:00+01:00",
        "2025-10-26T02:40:00+01:00",
    ]
    # From 02:40 CEST (first copy): the hourly one continues into the second copy.
    assert fires_local("*/20 * * * *", "Europe/Berlin", "2025-10-26T00:40:00", 2) == [
        "2025-10-26T02:00:00+01:00",
        "2025-10-26T02:20:00+01:00",
    ]


# -- DST: America/New_York (2025-03-09 02:00 EST -> 03:00 EDT; 2025-11-02 02:00 EDT -> 01:00 EST) --


def test_new_york_spring_daily_time_in_the_gap_moves_to_the_jump() -> None:
    assert fires_utc("30 2 * * *", "America/New_York", "2025-03-08T12:00:00", 3) == [
        "2025-03-09T07:00:00Z",  # 03:00 EDT
        "2025-03-10T06:30:00Z",  # 02:30 EDT
        "2025-03-11T06:30:00Z",
    ]


def test_new_york_spring_seconds_schedule() -> None:
    assert fires_local("0 0 * * * *", "America/New_York", "2025-03-09T05:30:00", 3) == [
        "2025-03-09T01:00:00-05:00",
        "2025-03-09T03:00:00-04:00",
        "2025-03-09T04:00:00-04:00",
    ]


def test_new_york_autumn_daily_time_in_the_overlap_fires_once() -> None:
    assert fires_utc("30 1 * * *", "America/New_York", "2025-11-01T12:00:00", 3) == [
        "2025-11-02T05:30:00Z",  # 01:30 EDT, not again at 01:30 EST (06:30Z)
        "2025-11-03T06:30:00Z",
        "2025-11-04T06:30:00Z",
    ]


def test_new_york_autumn_hourly_schedule_follows_the_real_clock() -> None:
    assert fires_local("0 30 * * * *", "America/New_York", "2025-11-02T04:00:00", 5) == [
        "2025-11-02T00:30:00-04:00",
        "2025-11-02T01:30:00-04:00",
        "2025-11-02T01:30:00-05:00",
        "2025-11-02T02:30:00-05:00",
        "2025-11-02T03:30:00-05:00",
    ]


@pytest.mark.parametrize("tz", ["Europe/Berlin", "America/New_York"])
@pytest.mark.parametrize("expr", ["*/15 * * * *", "30 2 * * *", "30 1 * * *", "*/20 2 * * *", "0 * * * *"])
@pytest.mark.parametrize("start", ["2025-03-08T00:00:00", "2025-10-25T00:00:00"])
def test_fire_set_does_not_depend_on_where_counting_starts(tz: str, expr: str, start: str) -> None:
    """Every replica must find the same instants, whatever point it counts from."""
    trigger = parse_schedule(expr, tz)
    full = [f.astimezone(UTC) for f in next_fire_times(trigger, utc(start), 200)]
    assert full == sorted(set(full)), "fire times are strictly increasing"
    end = full[-1]
    for i in range(0, len(full) - 1, 23):
        # Restart from a fire time and from a moment between two fires.
        for origin in (full[i], full[i] + (full[i + 1] - full[i]) / 2):
            again = fire_times_between(trigger, origin, end, 10_000)
            assert again == full[i + 1 :]
