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

Time zones are IANA names (``Europe/Berlin``), default UTC. How daylight-saving changes are
handled (APScheduler 3.11.3's ``CronTrigger``, verified by ``tests/jobyard/test_cron.py``):

- **Spring forward (a wall time that does not exist)**: the fire is *moved* to the same minute and
  second one hour later, i.e. the first wall time after the gap. ``30 2 * * *`` in Europe/Berlin
  on 2025-03-30 fires at 03:30 CEST (01:30 UTC); a job every 15 minutes simply has no fires at
  02:00-02:45 that night (03:00, 03:15, ... follow 01:45). Times inside the gap are never fired
  twice: a daily 02:30 and a daily 03:30 both fire at 03:30 that day, once each job.
- **Fall back (a wall time that occurs twice)**: the fire happens *once*, at the first
  occurrence (the summer-time one, fold=0). ``30 2 * * *`` in Europe/Berlin on 2025-10-26 fires at
  02:30 CEST (00:30 UTC) only, not again at 02:30 CET. A job every 15 minutes fires at 02:00,
  02:15, 02:30, 02:45 CEST and then continues at 03:00 CET: the repeated hour is not fired again.
  An hourly job (``0 * * * *``) thus fires at 02:00 CEST and 03:00 CET, an interval of two real
  hours across the change.

Fire times are absolute instants (aware datetimes); the scheduler keys its exactly-once record
on their epoch seconds, which are the same on every replica whatever its local time zone.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.cron.fields import MAX_VALUES, MIN_VALUES

from jobyard.errors import InvalidInput

# Order of the 6-field form; the 5-field form drops the first.
FIELDS_6 = ("second", "minute", "hour", "day", "month", "day_of_week")
FIELDS_5 = FIELDS_6[1:]

# Cron numbering: 0 = Sunday .. 6 = Saturday (7 is Sunday too).
_CRON_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_APS_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # APScheduler 3.x order
_DOW_TOKEN = re.compile(r"^(?P<first>\w+)(?:-(?P<last>\w+))?(?:/(?P<step>\d+))?$")
_MICROSECOND = timedelta(microseconds=1)


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


def next_fire_time(trigger: CronTrigger, after: datetime) -> datetime | None:
    """The first fire time strictly after ``after`` (an aware datetime), in the trigger's zone."""
    return trigger.get_next_fire_time(None, after + _MICROSECOND)


def next_fire_times(trigger: CronTrigger, after: datetime, n: int) -> list[datetime]:
    """The next ``n`` fire times strictly after ``after`` (aware datetimes in the trigger's zone)."""
    out: list[datetime] = []
    current = after
    for _ in range(n):
        nxt = next_fire_time(trigger, current)
        if nxt is None:
            break
        out.append(nxt)
        current = nxt
    return out


def describe(expr: str, timezone: str | None = None) -> str:
    """The schedule in words for people ("Every 5 minutes"), with the zone when not UTC."""
    from cron_descriptor import ExpressionDescriptor, Options

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
