"""The schedule parser under hostile expressions: an ``InvalidInput`` or a trigger, never a crash or a hang.

A schedule reaches the parser from any admin's settings.job and is evaluated by every scheduler
replica, so an expression that raised something else, or whose next fire time took long to
find (an impossible date like February 30), would take the scheduler down or stall it. The
zip validator and the settings.job parser are fuzzed in tests/jobyard/test_fuzz_packages.py.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobyard.cron import describe, next_fire_time, next_fire_times, parse_schedule
from jobyard.errors import InvalidInput

MAX_SECONDS_PER_EXPRESSION = 2.0
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NUMBER = st.one_of(st.integers(min_value=0, max_value=60), st.integers(min_value=-3, max_value=10**6))
NAMES = st.sampled_from(["JAN", "feb", "DEC", "SUN", "mon", "SAT", "L", "W", "LW", "5L", "2#3", "?"])
VALUE = st.one_of(NUMBER.map(str), NUMBER.map(str), NAMES)
# Mostly well-formed items (a, a-b, a/n, a-b/n, *, */n) so that many expressions parse; junk mixed in.
ITEM = st.one_of(
    st.just("*"),
    NUMBER.map(lambda n: f"*/{n}"),
    VALUE,
    st.tuples(VALUE, VALUE).map("-".join),
    st.tuples(VALUE, NUMBER).map(lambda t: f"{t[0]}/{t[1]}"),
    st.tuples(VALUE, VALUE, NUMBER).map(lambda t: f"{t[0]}-{t[1]}/{t[2]}"),
    st.text(alphabet="*/-,?#LW0123456789 \t", max_size=6),
)
FIELD = st.lists(ITEM, min_size=1, max_size=3).map(",".join)
CRONISH = st.one_of(
    st.lists(FIELD, min_size=5, max_size=6).map(" ".join),
    st.lists(FIELD, min_size=0, max_size=9).map(" ".join),
)
RANGES = {
    "second": (0, 59),
    "minute": (0, 59),
    "hour": (0, 23),
    "day": (1, 31),
    "month": (1, 12),
    "dow": (0, 7),
}


def _valid_field(name: str) -> st.SearchStrategy[str]:
    lo, hi = RANGES[name]
    n = st.integers(min_value=lo, max_value=hi)
    step = st.integers(min_value=1, max_value=hi + 1)
    item = st.one_of(
        st.just("*"),
        step.map(lambda k: f"*/{k}"),
        n.map(str),
        st.tuples(n, n).map(lambda t: f"{min(t)}-{max(t)}"),
        st.tuples(n, n, step).map(lambda t: f"{min(t[:2])}-{max(t[:2])}/{t[2]}"),
        st.tuples(n, step).map(lambda t: f"{t[0]}/{t[1]}"),
    )
    if name == "month":
        item = st.one_of(item, st.sampled_from(["JAN", "feb", "Dec", "JAN-MAR"]))
    if name == "dow":
        item = st.one_of(item, st.sampled_from(["SUN", "mon", "SAT", "MON-FRI", "?"]))
    return st.lists(item, min_size=1, max_size=3).map(",".join)


# Well-formed NCRONTAB (6 fields) and cron (5 fields): these parse, and exercise fire times.
VALID = st.one_of(
    st.tuples(*(_valid_field(f) for f in RANGES)).map(" ".join),
    st.tuples(*(_valid_field(f) for f in list(RANGES)[1:])).map(" ".join),
)
TIMEZONES = st.sampled_from(
    ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu", "Nowhere/City", ""]
)
START = datetime(2025, 3, 30, 0, 59, 59, tzinfo=UTC)


def _exercise(expr: str, tz: str) -> None:
    started = time.monotonic()
    try:
        trigger = parse_schedule(expr, tz or "UTC")
    except InvalidInput as exc:
        assert exc.message and isinstance(exc.message, str)
        return
    # a trigger: its next fire times come promptly, in order, after the start
    times = next_fire_times(trigger, START, 3)
    assert times == sorted(times)
    assert all(t > START for t in times)
    single = next_fire_time(trigger, START + timedelta(days=400))
    assert single is None or single > START + timedelta(days=400)
    assert isinstance(describe(expr, tz or None), str)
    took = time.monotonic() - started
    assert took < MAX_SECONDS_PER_EXPRESSION, f"{expr!r} in {tz!r} took {took:.2f} s"


@FUZZ
@given(expr=CRONISH, tz=TIMEZONES)
def test_cron_like_expressions_parse_or_are_refused_promptly(expr: str, tz: str) -> None:
    _exercise(expr, tz)


@FUZZ
@given(expr=VALID, tz=TIMEZONES)
def test_well_formed_schedules_give_prompt_ordered_fire_times(expr: str, tz: str) -> None:
    _exercise(expr, tz)


@FUZZ
@given(expr=st.text(max_size=120), tz=TIMEZONES)
def test_arbitrary_text_is_refused_or_parsed(expr: str, tz: str) -> None:
    _exercise(expr, tz)


def test_impossible_and_rare_dates_do_not_hang() -> None:
    for expr in (
        "0 0 0 30 2 *",  # February 30: never
        "0 0 31 4 *",  # April 31: never
        "0 0 29 2 *",  # once in four years
        "0 0 13 * 5",  # Friday the 13th
        "59 59 23 31 12 6",  # a Saturday New Year's Eve, 23:59:59
        "* * * * * *",
        "0 0 0 1 1 0-7",
    ):
        _exercise(expr, "Europe/Berlin")
