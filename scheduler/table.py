"""The leader's in-memory table of schedules, kept in step with the jobs in Redis.

Source of truth: ``P:jobs`` (names) and each ``P:job:<name>`` hash (``settings`` JSON with
``schedule``, ``timezone``, ``overlap``, ``catch_up``; ``paused``; ``version``, raised by every
deploy and settings change). Changes reach the table two ways: the ``P:events`` messages name the
job to reload (fast path), and ``fingerprint()`` — one ``SMEMBERS`` plus one pipelined ``HMGET
version paused`` per job — is compared every poll interval (fallback for a missed message).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from apscheduler.triggers.cron import CronTrigger

from jobyard.cron import next_fire_time, parse_schedule
from jobyard.errors import InvalidInput
from jobyard.keys import Keys
from jobyard.models import Job

log = logging.getLogger(__name__)

OVERLAP_DEFAULT = "skip"
CATCH_UP_DEFAULT = "latest"
OVERLAPS = ("skip", "queue", "allow")
CATCH_UPS = ("none", "latest", "all")

Fingerprint = dict[str, tuple[int, int]]  # job -> (version, paused)


@dataclass
class Entry:
    """One job's schedule as the leader fires it."""

    job: Job
    expr: str
    timezone: str
    trigger: CronTrigger
    overlap: str
    catch_up: str
    cursor: float  # epoch seconds: the newest nominal fire time handled; fires come after it
    next_fire: float | None = None

    @property
    def name(self) -> str:
        """The job's name."""
        return self.job.name

    @property
    def paused(self) -> bool:
        """Whether the job's schedule is paused."""
        return bool(self.job.paused)

    def advance(self, fire_ts: float) -> None:
        """Mark ``fire_ts`` handled and compute the next fire time."""
        self.cursor = max(self.cursor, fire_ts)
        self.next_fire = next_fire_ts(self.trigger, self.cursor)


def next_fire_ts(trigger: CronTrigger, after_ts: float) -> float | None:
    """The first fire time strictly after epoch ``after_ts``, as epoch seconds."""
    nxt = next_fire_time(trigger, datetime.fromtimestamp(after_ts, UTC))
    return None if nxt is None else nxt.timestamp()


def schedule_of(job: Job) -> tuple[str, str, CronTrigger, str, str] | None:
    """(expr, timezone, trigger, overlap, catch_up) of a job with a valid schedule, else None."""
    settings = job.settings or {}
    expr = settings.get("schedule")
    if not expr:
        return None
    timezone = str(settings.get("timezone") or "UTC")
    try:
        trigger = parse_schedule(str(expr), timezone)
    except InvalidInput as exc:
        # Deploy validates schedules; this is a record written around the API. Say it loudly.
        log.error("job %s is not scheduled: %s", job.name, exc.message)
        return None
    overlap = str(settings.get("overlap") or OVERLAP_DEFAULT)
    catch_up = str(settings.get("catch_up") or CATCH_UP_DEFAULT)
    if overlap not in OVERLAPS:
        log.error(
            "job %s: overlap %r is not one of %s; using %r", job.name, overlap, OVERLAPS, OVERLAP_DEFAULT
        )
        overlap = OVERLAP_DEFAULT
    if catch_up not in CATCH_UPS:
        log.error(
            "job %s: catch_up %r is not one of %s; using %r", job.name, catch_up, CATCH_UPS, CATCH_UP_DEFAULT
        )
        catch_up = CATCH_UP_DEFAULT
    return str(expr), timezone, trigger, overlap, catch_up


def fingerprint(client: redis.Redis, keys: Keys) -> Fingerprint:
    """(version, paused) of every job: cheap enough to compare every second."""
    names = sorted(n.decode() if isinstance(n, bytes) else str(n) for n in client.smembers(keys.jobs))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hmget(keys.job(name), "version", "paused")
    out: Fingerprint = {}
    for name, (version, paused) in zip(names, pipe.execute(), strict=True):
        if version is None and paused is None:
            continue  # listed but already deleted
        out[name] = (int(version or 1), int(paused or 0))
    return out


def load_jobs(client: redis.Redis, keys: Keys, names: list[str]) -> dict[str, Job | None]:
    """The job records of ``names`` (None for a job that no longer exists)."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(keys.job(name))
    out: dict[str, Job | None] = {}
    for name, data in zip(names, pipe.execute(), strict=True):
        out[name] = Job.from_hash(data) if data and b"name" in data else None
    return out


def schedule_base(client: redis.Redis, keys: Keys, names: list[str]) -> dict[str, tuple[float | None, float]]:
    """Per job: (last recorded fire, resumed_at): where catch-up of a new leader may start."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.get(keys.job_last_fire(name))
        pipe.hget(keys.job(name), "resumed_at")
    values = pipe.execute()
    out: dict[str, tuple[float | None, float]] = {}
    for i, name in enumerate(names):
        last, resumed = values[2 * i], values[2 * i + 1]
        out[name] = (float(last) if last else None, float(resumed) if resumed else 0.0)
    return out


class ScheduleTable:
    """Entries by job name, updated from Redis (see the module docstring)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self.entries: dict[str, Entry] = {}
        self.seen: Fingerprint = {}

    def clear(self) -> None:
        """Forget everything (on stepping down)."""
        self.entries.clear()
        self.seen = {}

    def next_due(self) -> float | None:
        """The earliest next fire time over unpaused entries (epoch seconds)."""
        times = [e.next_fire for e in self.entries.values() if e.next_fire is not None and not e.paused]
        return min(times) if times else None

    def sync(self, now: float, *, names: set[str] | None = None, new_term: bool = False) -> list[str]:
        """Reload the jobs whose fingerprint moved, and ``names``. Returns the reloaded names.

        ``new_term``: entries start from the last recorded fire (catch-up applies); otherwise a
        new or changed schedule starts from ``now`` (a change never fires the past).
        """
        current = fingerprint(self.client, self.keys)
        changed = {n for n, fp in current.items() if self.seen.get(n) != fp}
        changed |= set(self.seen) - set(current)
        # An event names a job even when its fingerprint did not move (a record edited in place).
        changed |= names or set()
        self.seen = current
        if not changed:
            return []
        ordered = sorted(changed)
        jobs = load_jobs(self.client, self.keys, ordered)
        bases = schedule_base(self.client, self.keys, ordered) if new_term else {}
        for name in ordered:
            self._apply(name, jobs.get(name), now, bases.get(name), new_term)
        return ordered

    def _apply(
        self, name: str, job: Job | None, now: float, base: tuple[float | None, float] | None, new_term: bool
    ) -> None:
        old = self.entries.get(name)
        spec = schedule_of(job) if job is not None else None
        if job is None or spec is None:
            if old is not None:
                log.info("job %s: schedule removed", name)
            self.entries.pop(name, None)
            return
        expr, timezone, trigger, overlap, catch_up = spec
        if new_term:
            last, resumed = base or (None, 0.0)
            # No record yet: the schedule counts from when the job got it (its last change).
            cursor = max(last if last is not None else job.updated_at or now, resumed)
        elif (
            old is not None
            and (old.expr, old.timezone) == (expr, timezone)
            and old.paused == bool(job.paused)
        ):
            cursor = old.cursor  # unchanged schedule: keep its place
        else:
            cursor = max(old.cursor if old else now, now)
        entry = Entry(job, expr, timezone, trigger, overlap, catch_up, cursor)
        entry.next_fire = next_fire_ts(trigger, cursor)
        if old is None or (old.expr, old.timezone, old.paused) != (expr, timezone, entry.paused):
            log.info(
                "job %s: schedule %r (%s)%s, next fire %s",
                name,
                expr,
                timezone,
                " paused" if entry.paused else "",
                datetime.fromtimestamp(entry.next_fire, UTC).isoformat() if entry.next_fire else "never",
            )
        self.entries[name] = entry
