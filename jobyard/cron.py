"""Schedules: NCRONTAB expressions parsed into APScheduler 3.x triggers, and their fire times.

Format (``settings.job`` ``schedule``):

- 6 fields, seconds first, as Azure WebJobs/NCRONTAB: ``second minute hour day month day_of_week``
  (``0 */5 * * * *`` = every five minutes on the minute);
- 5 fields, classic cron: ``minute hour day month day_of_week`` (the second is 0).

Each field takes ``*``, ``*/n``, ``a``, ``a-b``, ``a-b/n``, ``a/n`` and comma lists; months also
take ``JAN``..``DEC`` and days of the week ``SUN``..``SAT``. Day of week follows cron: 0 and 7
are Sunday (APScheduler 3.x counts from Monday, so the field is expanded here into an explicit
set of day names). ``?`` is read as ``*`` (Quartz style). When both day-of-month and day-of-week
are restricted, both must match (as NCRONTAB and APScheduler do; Vixie cron would OR them).

Time zones are IANA names (``Europe/Berlin``), default UTC. Daylight-saving changes follow
ISC/Vixie cron's rules, and the fire set depends on the schedule only, never on where a
computation starts (every replica and every catch-up must find the same instants):

- **Spring forward, a wall time that does not exist is moved** to the instant the clock jumps.
  ``30 2 * * *`` in Europe/Berlin fires on 2025-03-30 at 03:00 CEST (01:00 UTC); in
  America/New_York on 2025-03-09 at 03:00 EDT (07:00 UTC). Several times inside the gap fire
  once there: ``*/15 * * * *`` goes 01:45 CET, 03:00 CEST, 03:15 CEST.
- **Fall back, a wall time that occurs twice fires once**, at its first occurrence:
  ``30 2 * * *`` in Europe/Berlin fires on 2025-10-26 at 02:30 CEST (00:30 UTC) and not again at
  02:30 CET; ``30 1 * * *`` in America/New_York on 2025-11-02 at 01:30 EDT (05:30 UTC) only.
  Exception, as in cron: a schedule whose hour field is ``*`` runs by the real clock through both
  copies of the repeated hour (``*/15 * * * *`` fires 02:00..02:45 CEST, then 02:00..02:45 CET),
  because it describes an interval rather than a time of day.

Why not APScheduler's own DST handling: in 3.11.3 ``CronTrigger.get_next_fire_time`` treats the
gap by code path (``30 2 * * *`` comes out as the non-existent 02:30+01:00 = 03:30 CEST, while
``10,50 2 * * *`` skips that day altogether), and in the overlap it fires every repeated wall
time twice (a daily 02:30 job runs at 02:30 CEST and again at 02:30 CET). So APScheduler does the
field arithmetic on wall-clock time (the same fields evaluated in UTC, where it is exact) and
``next_fire_time`` maps wall times to instants with the rules above.

Fire times are absolute instants (aware datetimes); the scheduler keys its exactly-once record
on their epoch seconds, which are the same on every replica whatever its local time zone.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.cron.fields import MAX_VALUES, MIN_VALUES
from cron_descriptor import ExpressionDescriptor, Options

from jobyard.errors import InvalidInput

# Order of the 6-field form; the 5-field form drops the first.
FIELDS_6 = ("second", "minute", "hour", "day", "month", "day_of_week")
FIELDS_5 = FIELDS_6[1:]

# Cron numbering: 0 = Sunday .. 6 = Saturday (7 is Sunday too).
_CRON_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_APS_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # APScheduler 3.x order
_DOW_TOKEN = re.compile(r"^(?P<first>\w+)(?:-(?P<last>\w+))?(?:/(?P<step>\d+))?$")
_MICROSECOND = timedelta(microseconds=1)
_NEAR = timedelta(hours=3)  # wider than any DST shift


def _fail(expr: str, field: str, value: str, why: str) -> InvalidInput:
    return InvalidInput(
        f"schedule {expr!r}: field {field!r} ({value!r}) {why}",
        "NCRONTAB is 'second minute hour day month day_of_week' (6 fields) or "
        "'minute hour day month day_of_week' (5 fields); day_of_week 0-7 or SUN-SAT (0 and 7 = Sunday)",
    )


def _dow_number(expr: str, value: str, item: str) -> int:
    name = item.lower()
    if name in _CRON_DAY_NAMES:
        return _CRON_DAY_NAMES.index(name)
    if not item.isdigit():
        raise _fail(expr, "day_of_week", value, f"has {item!r}, which is neither 0-7 nor SUN..SAT")
    number = int(item)
    if number > 7:
        raise _fail(expr, "day_of_week", value, f"has {number}, above the maximum 7 (0 and 7 = Sunday)")
    return number


def cron_days_of_week(expr: str, value: str) -> set[int]:
    """Expand a cron day-of-week field into cron day numbers 0 (Sunday) .. 6 (Saturday)."""
    days: set[int] = set()
    for part in value.split(","):
        item = part.strip()
        if item in ("*", "?"):
            item = "0-6"
        elif item.startswith(("*/", "?/")):
            item = "0-6" + item[1:]
        match = _DOW_TOKEN.match(item)
        if not match:
            raise _fail(expr, "day_of_week", value, f"has {part!r}, expected *, */n, a, a-b, a-b/n or a/n")
        first = _dow_number(expr, value, match["first"])
        step_text = match["step"]
        if match["last"] is not None:
            last = _dow_number(expr, value, match["last"])
        else:
            # 'a/n' runs to the end of the week; without a step it is the one day.
            last = 6 if step_text is not None else first
        if first > last:
            raise _fail(expr, "day_of_week", value, f"has the range {part!r} whose start is after its end")
        step = int(step_text) if step_text is not None else 1
        if step == 0:
            raise _fail(expr, "day_of_week", value, "has a step of 0")
        days.update(d % 7 for d in range(first, last + 1, step))
    return days


def _aps_day_of_week(expr: str, value: str) -> str:
    days = cron_days_of_week(expr, value)
    if days == set(range(7)):
        return "*"
    return ",".join(name for name in _APS_DAY_NAMES if _CRON_DAY_NAMES.index(name) in days)


def parse_timezone(name: str) -> ZoneInfo:
    """An IANA time zone, or ``InvalidInput`` saying the name is not one."""
    try:
        if not name or name.startswith(("/", ".")) or ".." in name:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise InvalidInput(
            f"timezone {name!r} is not an IANA time zone name",
            "use a name such as 'UTC', 'Europe/Berlin' or 'America/New_York'",
        ) from exc


def split_fields(expr: str) -> dict[str, str]:
    """The fields of a 5- or 6-field expression by APScheduler name (a 5-field one gets second '0')."""
    if not isinstance(expr, str):
        raise InvalidInput(f"schedule {expr!r} is not a string", "give an NCRONTAB expression as text")
    parts = expr.split()
    if len(parts) == 6:
        return dict(zip(FIELDS_6, parts, strict=True))
    if len(parts) == 5:
        return {"second": "0", **dict(zip(FIELDS_5, parts, strict=True))}
    raise InvalidInput(
        f"schedule {expr!r} has {len(parts)} fields, expected 6 (second minute hour day month day_of_week) "
        "or 5 (minute hour day month day_of_week)",
        "for example '0 */5 * * * *' (every five minutes) or '30 2 * * *' (02:30 every day)",
    )


def parse_schedule(expr: str, timezone: str = "UTC") -> CronTrigger:
    """Parse an NCRONTAB expression (6 or 5 fields) in an IANA time zone into a ``CronTrigger``.

    Raises ``InvalidInput`` naming the field and what is wrong with it.
    """
    tz = parse_timezone(timezone or "UTC")
    values = split_fields(expr)
    kwargs: dict[str, str] = {}
    for name, value in values.items():
        if name == "day_of_week":
            kwargs[name] = _aps_day_of_week(expr, value)
            continue
        aps_value = "*" if value == "?" else value
        try:
            # Build each field alone so the error names the field that is wrong.
            CronTrigger.FIELDS_MAP[name](name, aps_value)
        except ValueError as exc:
            why = str(exc).split(": ", 1)[-1]
            if "Unrecognized expression" in why:
                allowed = f"{MIN_VALUES[name]}-{MAX_VALUES[name]}"
                why = f"is not valid (allowed: {allowed}, *, */n, a-b, a-b/n, lists)"
            raise _fail(expr, name, value, why) from exc
        kwargs[name] = aps_value
    trigger = CronTrigger(timezone=tz, **kwargs)
    if trigger.get_next_fire_time(None, datetime.now(tz)) is None:
        raise InvalidInput(
            f"schedule {expr!r} never fires (no date matches every field, e.g. day 31 in a 30-day month)",
            "check the day and month fields",
        )
    return trigger


def _wall_twin(trigger: CronTrigger) -> CronTrigger:
    """The same fields evaluated in UTC: its fire times, made naive, are the schedule's wall times.

    Wall-clock arithmetic in a zone without DST is exact; the DST rules are applied afterwards.
    """
    twin: CronTrigger = CronTrigger.__new__(CronTrigger)
    twin.__setstate__(
        {"version": 2, "timezone": UTC, "start_date": None, "end_date": None, "fields": trigger.fields}
    )
    return twin


def _next_wall(twin: CronTrigger, wall: datetime) -> datetime | None:
    """The first wall time of the schedule strictly after the naive wall time ``wall``."""
    nxt = twin.get_next_fire_time(None, wall.replace(tzinfo=UTC) + _MICROSECOND)
    return None if nxt is None else nxt.replace(tzinfo=None)


def _offset(tz: tzinfo, instant: datetime) -> timedelta:
    return instant.astimezone(tz).utcoffset() or timedelta(0)


def _transition(tz: tzinfo, lo: datetime, hi: datetime) -> datetime:
    """The first UTC instant in ``(lo, hi]`` with the offset of ``hi`` (offsets at lo and hi differ)."""
    target = _offset(tz, hi)
    lo_s, hi_s = int(lo.timestamp()), int(hi.timestamp())
    while hi_s - lo_s > 1:
        mid = (lo_s + hi_s) // 2
        if _offset(tz, datetime.fromtimestamp(mid, UTC)) == target:
            hi_s = mid
        else:
            lo_s = mid
    return datetime.fromtimestamp(hi_s, UTC)


def _fall_back_near(tz: tzinfo, t: datetime) -> tuple[datetime, timedelta, timedelta] | None:
    """A fall-back change within 3 h of ``t``: (instant, offset before, offset after), or None."""
    lo, hi = t - _NEAR, t + _NEAR
    before, after = _offset(tz, lo), _offset(tz, hi)
    if before <= after:
        return None
    return _transition(tz, lo, hi), before, after


def _primary_instant(tz: tzinfo, wall: datetime) -> datetime:
    """When a wall time fires: itself; its first occurrence if repeated; the clock jump if skipped."""
    first = wall.replace(tzinfo=tz, fold=0)
    second = wall.replace(tzinfo=tz, fold=1)
    off0, off1 = first.utcoffset(), second.utcoffset()
    if off0 is not None and off1 is not None and off0 < off1:
        # In the spring-forward gap: fold=0 reads it with the old offset (later), fold=1 with the
        # new one (earlier); the clock jumps between the two.
        return _transition(tz, second.astimezone(UTC), first.astimezone(UTC))
    return first.astimezone(UTC)


def _hourly(trigger: CronTrigger) -> bool:
    """Whether the hour field is ``*``: such schedules follow the real clock through a repeated hour."""
    return str(trigger.fields[CronTrigger.FIELD_NAMES.index("hour")]) == "*"


def next_fire_time(trigger: CronTrigger, after: datetime) -> datetime | None:
    """The first fire time strictly after ``after``, in the trigger's zone, with the DST rules above.

    Deterministic: the set of fire times is a function of the schedule alone, whatever ``after`` is,
    so every replica computes the same instants (the exactly-once record is keyed on them).
    """
    tz = trigger.timezone
    twin = _wall_twin(trigger)
    t = (after if after.tzinfo else after.replace(tzinfo=UTC)).astimezone(UTC)
    local = t.astimezone(tz)
    wall_from = local.replace(tzinfo=None, fold=0)
    near = _fall_back_near(tz, t) if (local.fold == 1 or _hourly(trigger)) else None
    if local.fold == 1 and near is not None:
        # In the repeated hour: wall times up to its end already fired in their first occurrence.
        change, before, after_off = near
        wall_from = max(
            wall_from, (change + after_off + (before - after_off)).replace(tzinfo=None) - _MICROSECOND
        )
    best: datetime | None = None
    wall = _next_wall(twin, wall_from)
    if wall is not None:
        best = _primary_instant(tz, wall)
    if near is not None and _hourly(trigger):
        # Hourly schedules also fire in the second occurrence of the repeated hour.
        change, before, after_off = near
        start, end = (change + after_off).replace(tzinfo=None), (change + before).replace(tzinfo=None)
        low = max(start - _MICROSECOND, (t + after_off).replace(tzinfo=None))
        second = _next_wall(twin, low)
        if second is not None and second < end:
            instant = (second - after_off).replace(tzinfo=UTC)
            if instant > t and (best is None or instant < best):
                best = instant
    return None if best is None else best.astimezone(tz)


def next_fire_times(trigger: CronTrigger, after: datetime, n: int) -> list[datetime]:
    """The next ``n`` fire times strictly after ``after`` (aware datetimes in the trigger's zone).

    Compare or sort them in UTC: Python compares two datetimes of the same zone by wall time and
    ignores ``fold``, so 02:30 CEST and 02:30 CET would look equal.
    """
    out: list[datetime] = []
    current = after
    for _ in range(n):
        nxt = next_fire_time(trigger, current)
        if nxt is None:
            break
        out.append(nxt)
        current = nxt
    return out


def fire_times_between(trigger: CronTrigger, start: datetime, end: datetime, limit: int) -> list[datetime]:
    """Fire times in ``(start, end]`` as UTC datetimes, oldest first, at most ``limit`` (the newest kept)."""
    out: list[datetime] = []
    current = start
    # Compared in UTC: two datetimes of one zone compare by wall time, ignoring fold.
    end_utc = end.astimezone(UTC)
    while True:
        nxt = next_fire_time(trigger, current)
        if nxt is None or nxt.astimezone(UTC) > end_utc:
            return out
        out.append(nxt.astimezone(UTC))
        if len(out) > limit:
            del out[0]
        current = nxt


def describe(expr: str, timezone: str | None = None) -> str:
    """The schedule in words for people ("Every 5 minutes"), with the zone when not UTC."""
    values = split_fields(expr)
    options = Options()
    options.use_24hour_time_format = True
    options.verbose = False
    options.throw_exception_on_parse_error = False
    # cron-descriptor reads 6 fields as seconds first and numbers days 0 = Sunday, like us;
    # feed it 7 as 0 so 'SUN' and '7' read the same.
    dow = ",".join(str(d) for d in sorted(cron_days_of_week(expr, values["day_of_week"])))
    if values["day_of_week"].strip() in ("*", "?"):
        dow = "*"
    six = " ".join([*(values[f] for f in FIELDS_6[:-1]), dow])
    try:
        text = str(ExpressionDescriptor(six, options))
    except Exception:  # the words are a nicety; never fail a listing over them
        text = expr
    if timezone and timezone != "UTC":
        text = f"{text} ({timezone})"
    return text
