"""Schedules: every scheduled job with its next fire times, and pausing or resuming one.

Pause and resume set the job hash's ``paused`` field and publish ``paused``/``resumed`` on
``P:events`` in one transaction; the scheduler leader applies it within a second (at once via
the message, or at its next version poll). Resume also stamps ``resumed_at`` so that a leader
elected later does not count the paused time as missed fires.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import redis
from fastapi import APIRouter, Depends
from pydantic import BaseModel

from jobyard.cron import describe, next_fire_times, parse_schedule
from jobyard.errors import Conflict, JobyardError
from jobyard.models import Job, iso
from services.deps import Ctx, Principal, current_ctx, require_operator, require_viewer
from services.errors import CONFLICT, ERRORS, NOT_FOUND
from services.store import check_job_name, job_not_found

router = APIRouter(tags=["schedules"], responses=ERRORS)

NEXT_FIRES = 5
FIRE_STATS = ("fired", "duplicate", "skipped_overlap", "skipped_missed", "fenced")


class ScheduleOut(BaseModel):
    """One job's schedule."""

    job: str
    expr: str
    timezone: str
    description: str
    next_fire_times: list[str]
    next_fire_time: str | None
    last_fire: str | None
    paused: bool
    overlap: str
    catch_up: str
    stats: dict[str, int]
    error: str | None = None


class ScheduleList(BaseModel):
    """Every scheduled job, by name."""

    schedules: list[ScheduleOut]


def schedule_item(
    job: Job, last_fire: bytes | None, stats: dict[bytes, bytes], now: datetime | None = None
) -> dict[str, Any] | None:
    """The API view of a job's schedule (None for a job without one)."""
    expr = job.settings.get("schedule")
    if not expr:
        return None
    timezone = str(job.settings.get("timezone") or "UTC")
    item: dict[str, Any] = {
        "job": job.name,
        "expr": str(expr),
        "timezone": timezone,
        "description": str(expr),
        "next_fire_times": [],
        "next_fire_time": None,
        "last_fire": iso(float(last_fire)) if last_fire else None,
        "paused": bool(job.paused),
        "overlap": str(job.settings.get("overlap") or "skip"),
        "catch_up": str(job.settings.get("catch_up") or "latest"),
        "stats": {name: int(stats.get(name.encode(), 0)) for name in FIRE_STATS},
        "error": None,
    }
    try:
        trigger = parse_schedule(str(expr), timezone)
        item["description"] = describe(str(expr), timezone)
    except JobyardError as exc:
        item["error"] = exc.message
        return item
    if not job.paused:
        fires = next_fire_times(trigger, now or datetime.now(UTC), NEXT_FIRES)
        item["next_fire_times"] = [iso(f.timestamp()) for f in fires]
        item["next_fire_time"] = item["next_fire_times"][0] if fires else None
    return item


async def _load(ctx: Ctx, names: list[str]) -> list[dict[str, Any]]:
    k = ctx.keys
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(k.job(name))
            pipe.get(k.job_last_fire(name))
            pipe.hgetall(k.job_fire_stats(name))
        values = await pipe.execute()
    now = datetime.now(UTC)
    out = []
    for i in range(len(names)):
        data, last, stats = values[3 * i : 3 * i + 3]
        if not data or b"name" not in data:
            continue
        item = schedule_item(Job.from_hash(data), last, stats, now)
        if item is not None:
            out.append(item)
    return out


@router.get("/api/schedules", operation_id="listSchedules", response_model=ScheduleList, summary="Schedules")
async def list_schedules(
    ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_viewer)
) -> dict[str, Any]:
    """Every scheduled job: expression, zone, words, next 5 fire times, last fire, paused, counters."""
    members = await ctx.redis.smembers(ctx.keys.jobs)
    names = sorted(n.decode() if isinstance(n, bytes) else str(n) for n in members)
    return {"schedules": await _load(ctx, names)}


async def _set_paused(ctx: Ctx, name: str, paused: bool) -> dict[str, Any]:
    check_job_name(name)
    key = ctx.keys.job(name)
    event = json.dumps({"event": "paused" if paused else "resumed", "job": name})
    async with ctx.redis.pipeline(transaction=True) as pipe:
        # WATCH: a job deleted meanwhile must not come back as a hash holding only "paused".
        await pipe.watch(key)
        data: dict[bytes, bytes] = await pipe.hgetall(key)  # type: ignore[assignment]
        if not data or b"name" not in data:
            raise job_not_found(name)
        if not Job.from_hash(data).settings.get("schedule"):
            raise Conflict(
                f"job {name!r} has no schedule to {'pause' if paused else 'resume'}",
                f"set 'schedule' in its settings.job (PUT /api/jobs/{name}/settings)",
            )
        pipe.multi()  # type: ignore[no-untyped-call]
        fields: dict[str, str | int] = {"paused": int(paused)}
        if not paused:
            fields["resumed_at"] = repr(time.time())
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.publish(ctx.keys.events, event)
        try:
            await pipe.execute()
        except redis.WatchError as exc:
            raise Conflict(f"job {name!r} changed meanwhile", "try again") from exc
    items = await _load(ctx, [name])
    if not items:
        raise job_not_found(name)
    return items[0]


@router.post(
    "/api/schedules/{job}/pause",
    operation_id="pauseSchedule",
    response_model=ScheduleOut,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Pause a schedule",
)
async def pause_schedule(
    job: str, ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_operator)
) -> dict[str, Any]:
    """Stop firing the job's schedule (runs asked for through the API still run)."""
    return await _set_paused(ctx, job, True)


@router.post(
    "/api/schedules/{job}/resume",
    operation_id="resumeSchedule",
    response_model=ScheduleOut,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Resume a schedule",
)
async def resume_schedule(
    job: str, ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_operator)
) -> dict[str, Any]:
    """Fire the job's schedule again from now on (the paused time is not caught up)."""
    return await _set_paused(ctx, job, False)
