"""Jobs: deploy or replace a package, list and read jobs, change settings, delete, start and stop.

Package work (checking the zip, choosing the entry, storing it) is blocking and lives in
``jobyard.deploy``; it runs in a thread on the synchronous client. The upload itself is streamed
to a temporary file under the size cap, never held in memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from jobyard.errors import Conflict, InvalidInput, JobyardError, PayloadTooLarge
from jobyard.models import Job, JobType, Run, iso
from jobyard.packages import spool_upload
from services.deps import Ctx, Principal, current_ctx, require_admin, require_operator, require_viewer
from services.errors import CONFLICT, ERRORS, NOT_FOUND, ErrorBody
from services.store import check_job_name, decoded, job_not_found

log = logging.getLogger(__name__)
router = APIRouter(tags=["jobs"], responses=ERRORS)

ZIP_TYPES = {"application/zip", "application/x-zip-compressed", "application/x-zip"}
SCRIPT_TYPES = {"application/octet-stream", "text/plain", "text/x-shellscript", "text/x-python"}
MAX_SETTINGS_BYTES = 256 * 1024


class JobOut(BaseModel):
    """A job as the API shows it."""

    model_config = ConfigDict(extra="allow")
    name: str
    type: str
    entry: str
    settings: dict[str, Any]
    package: dict[str, Any]
    created_at: str | None
    updated_at: str | None
    version: int
    stopped: bool
    paused: bool
    latest_run: dict[str, Any] | None = None
    schedule: dict[str, Any] | None = None
    instances: list[dict[str, Any]] | None = None


class JobList(BaseModel):
    """Every job, by name."""

    jobs: list[JobOut]


def instances_key(ctx: Ctx, name: str) -> str:
    """Where the supervisor keeps a continuous job's live instances (hash instance -> JSON)."""
    return ctx.keys.job_instances(name)


def schedule_view(job: Job, now: datetime | None = None) -> dict[str, Any] | None:
    """``{"expr", "timezone", "next_fire_time", "paused"}`` for a job with a schedule, else None."""
    expr = job.settings.get("schedule")
    if not expr:
        return None
    timezone = str(job.settings.get("timezone") or "UTC")
    view: dict[str, Any] = {
        "expr": expr,
        "timezone": timezone,
        "next_fire_time": None,
        "paused": bool(job.paused),
    }
    try:
        from jobyard.cron import next_fire_time, parse_schedule
    except ImportError:  # pragma: no cover - a build without schedules
        return view
    try:
        fire = next_fire_time(parse_schedule(str(expr), timezone), now or datetime.now(UTC))
    except JobyardError as exc:
        view["error"] = exc.message
        return view
    view["next_fire_time"] = iso(fire.timestamp()) if fire else None
    return view


def _instances(raw: dict[bytes, bytes]) -> list[dict[str, Any]]:
    out = []
    for key, value in sorted(raw.items()):
        try:
            item = json.loads(value)
        except ValueError:
            item = {"state": value.decode(errors="replace")}
        if not isinstance(item, dict):
            item = {"state": item}
        item.setdefault("instance_id", key.decode(errors="replace"))
        out.append(item)
    return out


async def job_view(ctx: Ctx, job: Job) -> dict[str, Any]:
    """The full view of one job: record, latest run, schedule, continuous instances."""
    pipe = ctx.redis.pipeline(transaction=False)
    pipe.zrevrange(ctx.keys.job_runs(job.name), 0, 0)
    pipe.hgetall(instances_key(ctx, job.name))
    latest_ids, instances = await pipe.execute()
    latest = (await ctx.store.get_many([latest_ids[0].decode()]))[0] if latest_ids else None
    out = job.as_api()
    out["latest_run"] = latest.as_api() if latest else None
    out["schedule"] = schedule_view(job)
    out["instances"] = _instances(instances) if job.type == JobType.CONTINUOUS else []
    return out


def _deploy_module() -> Any:
    from jobyard import deploy

    return deploy


def _upload_dir(ctx: Ctx) -> Path | None:
    path = Path(ctx.settings.data_dir) / "uploads"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # fall back to the system temp directory
    return path


@router.put(
    "/api/jobs/{name}",
    operation_id="deployJob",
    status_code=201,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "replaced an existing job"},
        413: {"model": ErrorBody, "description": "the package is over the size cap"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/zip": {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
    summary="Deploy or replace a job (a zip, or one script with ?filename=)",
)
async def deploy_job(
    name: str,
    request: Request,
    filename: str | None = Query(None, description="the script's file name, for a single-script body"),
    type: JobType | None = Query(None, description="overrides the type in settings.job"),
    ctx: Ctx = Depends(current_ctx),
    who: Principal = Depends(require_admin),
) -> JSONResponse:
    """Store the package, choose its entry script and (re)define the job: 201 new, 200 replaced."""
    check_job_name(name)
    limit = ctx.settings.max_package_bytes
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ZIP_TYPES | SCRIPT_TYPES:
        raise InvalidInput(
            f"unsupported Content-Type {content_type or '(none)'!r}",
            "send a zip as application/zip, or one script as application/octet-stream with ?filename=",
        )
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(
            f"the package is {int(length)} bytes, over the {limit} byte cap",
            "packages are capped by JOBYARD_MAX_PACKAGE_BYTES; keep large data out of the package",
        )
    if content_type in SCRIPT_TYPES - {"application/octet-stream"} and not filename:
        raise InvalidInput("a single script needs ?filename=", f"e.g. PUT /api/jobs/{name}?filename=run.sh")
    fd, tmp = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=_upload_dir(ctx))
    os.close(fd)
    dest = Path(tmp)
    try:
        size = await spool_upload(request.stream(), dest, limit)
        if size == 0:
            raise InvalidInput("the request body is empty", "send the zip or the script as the body")
        job, created = await run_in_threadpool(
            _deploy_module().deploy_job,
            ctx.sync_redis,
            ctx.keys,
            ctx.settings,
            name,
            dest,
            filename or "",
            type.value if type else None,
        )
    finally:
        with contextlib.suppress(OSError):
            dest.unlink()
    log.info("job %s %s by %s (%s)", name, "deployed" if created else "replaced", who.name, job.entry)
    return JSONResponse(
        await job_view(ctx, job),
        status_code=201 if created else 200,
        headers={"Location": f"/api/jobs/{name}"},
    )


@router.get("/api/jobs", operation_id="listJobs", response_model=JobList, summary="Every job")
async def list_jobs(
    ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_viewer)
) -> JSONResponse:
    """Every job by name, each with its latest run."""
    names = sorted(decoded(await ctx.redis.smembers(ctx.keys.jobs)))
    pipe = ctx.redis.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(ctx.keys.job(name))
        pipe.zrevrange(ctx.keys.job_runs(name), 0, 0)
    rows = await pipe.execute()
    jobs: list[Job] = []
    latest_ids: list[str] = []
    for data, ids in zip(rows[::2], rows[1::2], strict=True):
        if data:
            jobs.append(Job.from_hash(data))
            latest_ids.append(ids[0].decode() if ids else "")
    runs = await ctx.store.get_many([i for i in latest_ids if i])
    by_id: dict[str, Run] = {r.id: r for r in runs if r is not None}
    out = []
    for job, rid in zip(jobs, latest_ids, strict=True):
        item = job.as_api()
        item["latest_run"] = by_id[rid].as_api() if rid in by_id else None
        item["schedule"] = schedule_view(job)
        out.append(item)
    return JSONResponse({"jobs": out})


@router.get(
    "/api/jobs/{name}", operation_id="getJob", response_model=JobOut, responses=NOT_FOUND, summary="One job"
)
async def get_job(
    name: str, ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_viewer)
) -> JSONResponse:
    """Type, entry, settings, schedule with its next fire time, latest run, continuous instances."""
    return JSONResponse(await job_view(ctx, await ctx.store.get_job(name)))


@router.delete(
    "/api/jobs/{name}", operation_id="deleteJob", responses=NOT_FOUND, summary="Remove a job and its package"
)
async def delete_job(
    name: str, ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_admin)
) -> dict[str, Any]:
    """Remove the job (its history is kept until trimmed; queued runs of it fail at claim)."""
    await ctx.store.get_job(name)
    await run_in_threadpool(_deploy_module().delete_job, ctx.sync_redis, ctx.keys, name)
    log.info("job %s deleted by %s", name, who.name)
    return {"name": name, "deleted": True}


@router.get(
    "/api/jobs/{name}/settings", operation_id="getJobSettings", responses=NOT_FOUND, summary="settings.job"
)
async def get_settings(
    name: str, ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_viewer)
) -> dict[str, Any]:
    """The job's settings.job as JSON."""
    return (await ctx.store.get_job(name)).settings


@router.put(
    "/api/jobs/{name}/settings",
    operation_id="putJobSettings",
    responses=NOT_FOUND,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
    },
    summary="Replace settings.job (validated; names the bad field)",
)
async def put_settings(
    name: str, request: Request, ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_admin)
) -> dict[str, Any]:
    """Validate and store new settings; the answer is the whole job."""
    check_job_name(name)
    body = await request.body()
    if len(body) > MAX_SETTINGS_BYTES:
        raise PayloadTooLarge(f"settings.job is over {MAX_SETTINGS_BYTES} bytes", "keep settings.job small")
    # The raw bytes: jobyard.jobsettings reads them exactly as it reads settings.job in a package
    # (BOM, duplicate keys, non-objects are all refused there, naming the field).
    job = await run_in_threadpool(
        _deploy_module().update_settings, ctx.sync_redis, ctx.keys, ctx.settings, name, body
    )
    log.info("settings of job %s changed by %s", name, who.name)
    return await job_view(ctx, job)


async def _set_stopped(ctx: Ctx, name: str, stopped: bool) -> dict[str, Any]:
    job = await ctx.store.get_job(name)
    if job.type != JobType.CONTINUOUS:
        raise Conflict(
            f"job {name!r} is triggered: only continuous jobs are started and stopped",
            f"run it with POST /api/jobs/{name}/runs",
        )
    event = json.dumps({"event": "stopped" if stopped else "started", "job": name})
    key = ctx.keys.job(name)
    async with ctx.redis.pipeline(transaction=True) as pipe:
        # WATCH: a job deleted meanwhile must not come back as a hash holding only "stopped".
        await pipe.watch(key)
        if not await pipe.exists(key):
            raise job_not_found(name)
        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.hset(key, "stopped", int(stopped))
        pipe.publish(ctx.keys.events, event)
        try:
            await pipe.execute()
        except redis.WatchError as exc:
            raise Conflict(f"job {name!r} changed meanwhile", "try again") from exc
    job.stopped = int(stopped)
    return await job_view(ctx, job)


@router.post(
    "/api/jobs/{name}/start",
    operation_id="startJob",
    response_model=JobOut,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Start a continuous job",
)
async def start_job(
    name: str, ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_operator)
) -> Any:
    """Keep the continuous job running (the supervisors pick it up)."""
    return await _set_stopped(ctx, name, False)


@router.post(
    "/api/jobs/{name}/stop",
    operation_id="stopJob",
    response_model=JobOut,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Stop a continuous job",
)
async def stop_job(
    name: str, ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_operator)
) -> Any:
    """Stop the continuous job's instances and keep them stopped until started."""
    return await _set_stopped(ctx, name, True)
