"""The reads behind the dashboard's pages: a few round trips each, and never a whole history.

Histories and dead letters are paged through their zsets by rank (``AsyncRunStore.page_ids``:
ZREVRANK then ZREVRANGE of one page), so a job with 10,000 runs costs the same page as one with
ten. Run records of a page are read in one pipeline.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from jobyard.models import Job, JobType, Run
from jobyard.runs import decode_log_entry
from services.deps import Ctx
from services.routes.jobs import instances_key, schedule_view

PAGE_SIZE = 50
LOG_TAIL_LINES = 2000
# What the supervisor publishes per continuous instance (workers/continuous.py).
INSTANCE_FIELDS = ("host", "status", "pid", "run_id", "started_at", "restarts", "next_start_at")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@lru_cache(maxsize=512)
def schedule_words(expr: str, timezone: str) -> str:
    """The schedule in words (cached: cron-descriptor is slow next to a page render)."""
    try:
        from jobyard.cron import describe
    except ImportError:  # pragma: no cover - a build without schedules
        return ""
    return describe(expr, timezone)


@dataclass
class JobRow:
    """A job with what its pages show about it."""

    job: Job
    latest: Run | None
    schedule: dict[str, Any] | None
    words: str
    instances: list[dict[str, Any]] = field(default_factory=list)

    @property
    def continuous(self) -> bool:
        return self.job.type == JobType.CONTINUOUS

    @property
    def status(self) -> str:
        """A status word: the latest run's, or the state of a continuous job's instances."""
        if self.continuous:
            if self.job.stopped:
                return "stopped"
            states = [str(i.get("status") or "") for i in self.instances]
            if "running" in states:
                return "running"
            return states[0] if states else "inactive"
        return self.latest.status.value if self.latest else ""

    @property
    def status_text(self) -> str:
        """The status as shown: ``succeeded``, ``2 running, 1 restarting``, ``never run``."""
        if self.continuous:
            if self.job.stopped:
                return "stopped"
            counts = Counter(str(i.get("status") or "unknown") for i in self.instances)
            return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no instances yet"
        return self.latest.status.value.replace("_", " ") if self.latest else "never run"


def parse_instances(raw: dict[bytes, bytes]) -> list[dict[str, Any]]:
    """A continuous job's instances hash (instance id -> JSON), by instance id."""
    out: list[dict[str, Any]] = []
    for key, value in sorted(raw.items()):
        try:
            item = json.loads(value)
        except ValueError:
            item = {"status": value.decode(errors="replace")}
        if not isinstance(item, dict):
            item = {"status": str(item)}
        item.setdefault("instance_id", key.decode(errors="replace"))
        item.setdefault("status", item.get("state"))
        for name in INSTANCE_FIELDS:  # the templates read every one of them
            item.setdefault(name, None)
        out.append(item)
    return out


def _row(job: Job, latest: Run | None, instances: dict[bytes, bytes]) -> JobRow:
    schedule = schedule_view(job)
    words = ""
    if schedule is not None and "error" not in schedule:
        words = schedule_words(str(schedule["expr"]), str(schedule["timezone"]))
    parsed = parse_instances(instances) if job.type == JobType.CONTINUOUS else []
    return JobRow(job, latest, schedule, words, parsed)


async def job_rows(ctx: Ctx) -> list[JobRow]:
    """Every job by name with its latest run, schedule and instances (two round trips)."""
    names = sorted(_text(m) for m in await ctx.redis.smembers(ctx.keys.jobs))
    pipe = ctx.redis.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(ctx.keys.job(name))
        pipe.zrevrange(ctx.keys.job_runs(name), 0, 0)
        pipe.hgetall(instances_key(ctx, name))
    rows = await pipe.execute() if names else []
    found: list[tuple[Job, str, dict[bytes, bytes]]] = []
    for data, ids, instances in zip(rows[::3], rows[1::3], rows[2::3], strict=True):
        if data:
            found.append((Job.from_hash(data), ids[0].decode() if ids else "", instances))
    runs = await ctx.store.get_many([rid for _, rid, _ in found if rid])
    by_id = {run.id: run for run in runs if run is not None}
    return [_row(job, by_id.get(rid), instances) for job, rid, instances in found]


async def job_row(ctx: Ctx, name: str) -> JobRow:
    """One job as ``job_rows`` shows it, or ``NotFound``."""
    job = await ctx.store.get_job(name)
    pipe = ctx.redis.pipeline(transaction=False)
    pipe.zrevrange(ctx.keys.job_runs(name), 0, 0)
    pipe.hgetall(instances_key(ctx, name))
    ids, instances = await pipe.execute()
    latest = (await ctx.store.get_many([ids[0].decode()]))[0] if ids else None
    return _row(job, latest, instances)


@dataclass
class HistoryPage:
    """One page of a job's runs, newest first, with cursors to the pages around it."""

    runs: list[Run]
    total: int
    older: str | None  # pass as ?before= for the next (older) page
    newer: str | None  # pass as ?after= for the previous (newer) page
    first_rank: int  # position of the page's first run, from the newest (0)

    @property
    def range_text(self) -> str:
        """Where the page is: ``runs 51-100 of 10000`` (with an en dash)."""
        if not self.runs:
            return "no runs yet" if not self.total else f"no runs here, {self.total} in all"
        return f"runs {self.first_rank + 1}\u2013{self.first_rank + len(self.runs)} of {self.total}"


async def history(
    ctx: Ctx, name: str, before: str | None = None, after: str | None = None, limit: int = PAGE_SIZE
) -> HistoryPage:
    """A page of ``name``'s history: older than run ``before``, or newer than run ``after``."""
    zset = ctx.keys.job_runs(name)
    ids: list[str] | None = None
    if after and not before:
        rank = await ctx.redis.zrevrank(zset, after)
        if isinstance(rank, int) and rank > 0:  # trimmed meanwhile, or nothing newer: the newest page
            start = max(0, rank - limit)
            ids = [_text(m) for m in await ctx.redis.zrevrange(zset, start, start + limit)]
    if ids is None:
        ids = await ctx.store.page_ids(zset, limit + 1, before)
    # One more than a page was read: it tells whether an older page exists.
    has_older = len(ids) > limit
    ids = ids[:limit]
    pipe = ctx.redis.pipeline(transaction=False)
    pipe.zcard(zset)
    if ids:
        pipe.zrevrank(zset, ids[0])
    counts = await pipe.execute()
    total = int(counts[0])
    first_rank = int(counts[1] or 0) if ids else 0
    runs = [run for run in await ctx.store.get_many(ids) if run is not None]
    return HistoryPage(
        runs=runs,
        total=total,
        older=ids[-1] if has_older else None,
        newer=ids[0] if ids and first_rank > 0 else None,
        first_rank=first_rank,
    )


@dataclass
class LogTail:
    """The last lines of a run's log, and where following it live should resume."""

    entries: list[dict[str, Any]]
    total: int
    last_id: str

    @property
    def cut(self) -> int:
        """How many earlier lines are not shown (the download has them)."""
        return max(0, self.total - len(self.entries))


async def log_tail(ctx: Ctx, run_id: str, lines: int = LOG_TAIL_LINES) -> LogTail:
    """The newest ``lines`` lines of a run's log, oldest first."""
    key = ctx.keys.run_log(run_id)
    pipe = ctx.redis.pipeline(transaction=False)
    pipe.xrevrange(key, "+", "-", count=lines)
    pipe.xlen(key)
    raw, total = await pipe.execute()
    entries = [decode_log_entry(i, d) for i, d in reversed(raw)]
    return LogTail(entries, int(total), entries[-1]["id"] if entries else "0-0")


def run_facts(run: Run) -> dict[str, Any]:
    """What the run page and its poller show that changes while a run goes on."""
    running_for = None
    if run.started_at is not None and run.ended_at is None:
        running_for = max(0.0, time.time() - run.started_at)
    return {
        "status": run.status.value,
        "terminal": run.terminal,
        "attempt": run.attempt,
        "worker": run.worker or "",
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "duration_s": run.duration_s if run.duration_s is not None else running_for,
        "exit_code": run.exit_code,
        "error": run.error or "",
        "cancel_requested": bool(run.cancel_requested),
    }
