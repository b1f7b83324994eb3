"""Firing one nominal fire time exactly once, and catching up on fire times nobody fired.

Each fire is one ``create_run.lua`` call (``RunStore.create`` with a ``Fence``): it checks the
leader term, claims ``P:fire:<job>:<ts>`` with NX and writes the run and its queue message, all
or nothing. So a leader dying mid-fire leaves either no trace (the next leader fires it) or the
whole run (the next leader finds the fire key: ``duplicate``), and a stale leader is refused
(``fenced``). After each handled fire the job's ``last_fire`` and counters are updated; that
write is not part of the atomic step on purpose: losing it only makes the next leader look back
a little further, where every fire key it meets answers ``duplicate``.

Missed fires (``catch_up``): fire times older than ``MISFIRE_GRACE_S`` when the leader gets to
them — because no leader lived then, Redis was down, or this process stalled — are missed.
Of those within ``catch_up_window_seconds``: ``none`` fires none, ``latest`` fires the most recent
one, ``all`` fires each (at most ``MAX_CATCH_UP_FIRES``, the newest). Every one not fired is
logged (the first ``LOG_SKIPPED_EACH`` one by one, then a summary) and counted as
``skipped_missed``. Fire times before the window are neither fired nor counted.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import redis
from apscheduler.triggers.cron import CronTrigger

from jobyard.cron import fire_times_between, next_fire_times
from jobyard.keys import Keys
from jobyard.models import Trigger, iso
from jobyard.runs import EnqueueSpec, Fence, RunStore, parse_create, prepare_create
from scheduler.stats import (
    DUPLICATE,
    FENCED,
    FIRED,
    FROM_CREATE,
    SKIPPED_MISSED,
    SKIPPED_OVERLAP,
    SchedulerStats,
)
from scheduler.table import Entry

log = logging.getLogger(__name__)

MISFIRE_GRACE_S = 1.0  # a fire handled later than this after its time is a missed one
MAX_CATCH_UP_FIRES = 1000  # catch_up=all fires at most this many (the newest)
MAX_COUNTED_MISSES = 20_000  # counting missed fires stops here (an every-second job down a day)
LOG_SKIPPED_EACH = 10
NOJOB = "nojob"


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def newest_fires(trigger: CronTrigger, start: float, cutoff: float, k: int) -> list[float]:
    """Up to ``k`` newest fire times in ``(start, cutoff]``, oldest first (epoch seconds).

    Looks back from ``cutoff`` in growing spans, so an every-second schedule after a day of
    downtime costs a minute of arithmetic, not a day.
    """
    span = 60.0
    while True:
        lo = max(start, cutoff - span)
        got = fire_times_between(trigger, _dt(lo), _dt(cutoff), k)
        if len(got) >= k or lo <= start:
            return [g.timestamp() for g in got]
        span *= 8


def count_fires(trigger: CronTrigger, start: float, cutoff: float, cap: int) -> int:
    """How many fire times lie in ``(start, cutoff]``, counting at most ``cap``."""
    return len(fire_times_between(trigger, _dt(start), _dt(cutoff), cap)) if cap > 0 else 0


class Firer:
    """Fires entries of the schedule table on one Redis client (see the module docstring)."""

    def __init__(self, store: RunStore, keys: Keys, stats: SchedulerStats, catch_up_window_s: float) -> None:
        self.store = store
        self.client: redis.Redis = store.r
        self.keys = keys
        self.stats = stats
        self.catch_up_window_s = catch_up_window_s

    def fire(self, entry: Entry, fire_ts: float, term: int | None) -> str:
        """Fire ``entry`` for ``fire_ts`` once; returns our outcome (``scheduler.stats``) or ``nojob``."""
        return self.fire_many([(entry, fire_ts)], term)[0]

    def fire_many(self, items: list[tuple[Entry, float]], term: int | None) -> list[str]:
        """Fire several (entry, fire time) pairs in one round trip; their outcomes, in order.

        Each fire is still its own atomic ``create_run`` script; pipelining them only saves the
        round trips when many jobs share a fire time (every minute on the minute, say).
        """
        pipe = self.client.pipeline(transaction=False)
        runs = []
        for entry, fire_ts in items:
            spec = EnqueueSpec(entry.name, trigger=Trigger.SCHEDULE, scheduled_for=fire_ts)
            fence = Fence(fire_ts=fire_ts, term=term, overlap=entry.overlap)
            keys, args, run = prepare_create(self.keys, self.store.settings, spec, entry.job, fence=fence)
            self.store.scripts.create_run(keys=keys, args=args, client=pipe)
            runs.append(run)
        results = pipe.execute()
        now = time.time()
        records = self.client.pipeline(transaction=False)
        outcomes = []
        for (entry, fire_ts), result, run in zip(items, results, runs, strict=True):
            created = parse_create(result, run)
            outcome = NOJOB if created.outcome == NOJOB else FROM_CREATE.get(created.outcome, created.outcome)
            outcomes.append(outcome)
            if outcome == NOJOB:
                log.info("job %s was deleted: its fire at %s is dropped", entry.name, iso(fire_ts))
                continue
            if outcome == FENCED:
                log.warning(
                    "fire of job %s at %s refused: term %s is stale (leader term now %s)",
                    entry.name,
                    iso(fire_ts),
                    term,
                    created.run_id,
                )
                # Counted for operators to see; last_fire is the new leader's to write.
                records.hincrby(self.keys.job_fire_stats(entry.name), FENCED, 1)
            else:
                self._record(entry.name, fire_ts, outcome, pipe=records)
            self.stats.fire(entry.name, outcome, fire_ts, now)
            self._log(entry, fire_ts, outcome, created.run_id, now)
        records.execute()
        return outcomes

    @staticmethod
    def _log(entry: Entry, fire_ts: float, outcome: str, ref: str | None, now: float) -> None:
        if outcome == FIRED:
            log.info(
                "fired job %s for %s: run %s (%.0f ms late)",
                entry.name,
                iso(fire_ts),
                ref,
                max(0.0, now - fire_ts) * 1000,
                extra={"run_id": ref, "job_name": entry.name},
            )
        elif outcome == SKIPPED_OVERLAP:
            log.info(
                "skipped job %s for %s: run %s is still queued or running (overlap=skip)",
                entry.name,
                iso(fire_ts),
                ref,
            )
        elif outcome == DUPLICATE:
            log.info("job %s for %s was already fired (%s)", entry.name, iso(fire_ts), ref)

    def _record(self, job: str, fire_ts: float, outcome: str, count: int = 1, pipe: Any = None) -> None:
        own = pipe is None
        pipe = self.client.pipeline(transaction=False) if own else pipe
        pipe.set(self.keys.job_last_fire(job), repr(fire_ts))
        pipe.hincrby(self.keys.job_fire_stats(job), outcome, count)
        if own:
            pipe.execute()

    def catch_up(self, entry: Entry, now: float, term: int | None) -> str | None:
        """Apply ``entry.catch_up`` to its fire times in ``(cursor, now - grace]``; advance the entry.

        Returns the last fire's outcome (``fenced``/``nojob`` stop the caller), or None.
        """
        cutoff = now - MISFIRE_GRACE_S
        start = max(entry.cursor, now - self.catch_up_window_s)
        policy = entry.catch_up
        k = {"none": 1, "latest": 1}.get(policy, MAX_CATCH_UP_FIRES)
        newest = newest_fires(entry.trigger, start, cutoff, k)
        if not newest:
            entry.advance(cutoff)
            return None
        total = count_fires(entry.trigger, start, cutoff, MAX_COUNTED_MISSES)
        to_fire = [] if policy == "none" else newest
        skipped = max(0, total - len(to_fire))
        if skipped:
            self._log_skipped(entry, start, cutoff, to_fire, skipped)
            self._record(entry.name, newest[-1], SKIPPED_MISSED, skipped)
        self.stats.missed(entry.name, policy, total, len(to_fire))
        outcome: str | None = None
        for ts in to_fire:
            outcome = self.fire(entry, ts, term)
            if outcome in (FENCED, NOJOB):
                return outcome
            entry.cursor = max(entry.cursor, ts)
        entry.advance(cutoff)
        return outcome

    def _log_skipped(
        self, entry: Entry, start: float, cutoff: float, fired: list[float], skipped: int
    ) -> None:
        keep = set(fired)
        shown = 0
        for dt in next_fire_times(entry.trigger, _dt(start), LOG_SKIPPED_EACH + len(keep)):
            ts = dt.timestamp()
            if ts > cutoff or shown >= LOG_SKIPPED_EACH:
                break
            if ts in keep:
                continue
            log.warning(
                "missed fire of job %s at %s skipped (catch_up=%s)", entry.name, iso(ts), entry.catch_up
            )
            shown += 1
        if skipped > shown:
            more = f"{skipped - shown}{' or more' if skipped >= MAX_COUNTED_MISSES - len(keep) else ''}"
            log.warning("... and %s more missed fires of job %s skipped", more, entry.name)
