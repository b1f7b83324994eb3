"""Runs: enqueue one or a batch, read them, cancel and retry them.

Enqueue is the hot path: one round trip for the job record, one script call that writes the run
and queues its message atomically (idempotency included), no re-read of what was written.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jobyard.errors import Conflict, InvalidInput, Unavailable
from jobyard.metrics import observe_enqueued, observe_enqueued_many
from jobyard.models import JOB_NAME_RE, JOB_NAME_RULE, Job, JobType, Priority, Run, Trigger, parse_iso
from jobyard.redis_conn import wait_for_replicas_async
from jobyard.runs import Created, EnqueueSpec
from services.deps import Ctx, Principal, current_ctx, get_ctx, require_operator, require_viewer
from services.errors import CONFLICT, ERRORS, NOT_FOUND
from services.fastroute import FastJSONResponse, NotFast, fast_path, json_body
from services.routes.run_checks import (
    MAX_BATCH,
    MAX_DELAY_S,
    MAX_KEY_CHARS,
    MAX_RETRIES,
    MAX_URL_CHARS,
    batch_specs,
    check_arguments,
    check_callback_url,
    check_env,
    check_run_at,
)
from services.store import check_job_name, job_not_found, run_not_found


class RunRequest(BaseModel):
    """What to run: the body of ``POST /api/jobs/{name}/runs`` (all fields optional)."""

    model_config = ConfigDict(extra="forbid")

    arguments: list[str] | str | None = Field(
        None,
        description="argv for the script; a string is split like a shell would (shlex), never run by one",
    )
    priority: Priority | None = Field(None, description="queue level; default the job's settings or normal")
    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_KEY_CHARS,
        description="same key, same job, within the TTL: the first run",
    )
    run_at: str | None = Field(None, description="ISO 8601 time to start at (UTC when no offset)")
    delay_s: float | None = Field(None, ge=0, le=MAX_DELAY_S, description="start after this many seconds")
    timeout_s: float | None = Field(None, gt=0, description="kill the run after this many seconds")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables")
    callback_url: str | None = Field(
        None, max_length=MAX_URL_CHARS, description="http(s) URL POSTed the run when it ends"
    )
    max_retries: int | None = Field(None, ge=0, le=MAX_RETRIES, description="failed attempts to retry")

    @field_validator("arguments")
    @classmethod
    def _arguments(cls, value: list[str] | str | None) -> list[str] | str | None:
        return check_arguments(value)

    @field_validator("run_at")
    @classmethod
    def _run_at(cls, value: str | None) -> str | None:
        return check_run_at(value)

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        return check_env(value)

    @field_validator("callback_url")
    @classmethod
    def _callback_url(cls, value: str | None) -> str | None:
        return check_callback_url(value)

    @model_validator(mode="after")
    def _one_time(self) -> RunRequest:
        if self.run_at is not None and self.delay_s is not None:
            raise ValueError("give run_at or delay_s, not both")
        return self

    def to_spec(self, job: str, header_key: str | None = None, now: float | None = None) -> EnqueueSpec:
        """The enqueue spec for ``job`` (``header_key``: the Idempotency-Key header)."""
        key = self.idempotency_key
        if header_key is not None:
            if key is not None and key != header_key:
                raise InvalidInput(
                    "idempotency_key and the Idempotency-Key header differ",
                    "send the key once, in either place",
                )
            if not 1 <= len(header_key) <= MAX_KEY_CHARS:
                raise InvalidInput(f"the Idempotency-Key header must be 1-{MAX_KEY_CHARS} characters")
            key = header_key
        run_at: float | None = None
        if self.run_at is not None:
            run_at = parse_iso(self.run_at)
        elif self.delay_s:
            run_at = (time.time() if now is None else now) + self.delay_s
        args = self.arguments if isinstance(self.arguments, list) else []
        return EnqueueSpec(
            job=job,
            args=args,
            priority=self.priority,
            idempotency_key=key,
            run_at=run_at,
            timeout_s=self.timeout_s,
            env=dict(self.env),
            callback_url=self.callback_url,
            max_retries=self.max_retries,
            trigger=Trigger.API,
        )


class BatchItem(RunRequest):
    """One run of a batch: a job name and the fields of ``RunRequest``."""

    job: str = Field(..., description="job name")

    @field_validator("job")
    @classmethod
    def _job(cls, value: str) -> str:
        if not JOB_NAME_RE.match(value):
            raise ValueError(JOB_NAME_RULE)
        return value


class BatchRequest(BaseModel):
    """Up to 1,000 runs, validated as a whole before any is enqueued."""

    model_config = ConfigDict(extra="forbid")
    runs: list[BatchItem] = Field(..., min_length=1, max_length=MAX_BATCH)


class RunOut(BaseModel):
    """A run as the API shows it."""

    model_config = ConfigDict(extra="allow")
    id: str
    job: str
    status: str
    trigger: str
    args: list[str]
    priority: str
    attempt: int
    max_retries: int
    worker: str | None = None
    enqueued_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    scheduled_for: str | None = None
    next_attempt_at: str | None = None
    dead_lettered_at: str | None = None
    duration_s: float | None = None
    exit_code: int | None = None
    error: str | None = None
    result: Any = None
    idempotency_key: str | None = None
    timeout_s: float | None = None
    env: list[str] = Field(default_factory=list, description="names only; values are never shown")
    callback_url: str | None = None
    replay_of: str | None = None
    cancel_requested: bool = False


class RunList(BaseModel):
    """A page of runs, newest first; pass ``next`` as ``before`` for the next page."""

    runs: list[RunOut]
    next: str | None


class BatchOut(BaseModel):
    """The runs of a batch, in request order (an existing run for a repeated idempotency key)."""

    runs: list[RunOut]
    created: int


# -- routes --------------------------------------------------------------------------------------
router = APIRouter(tags=["runs"], responses=ERRORS)
ROUTER_PRIORITY = 0  # enqueue is the hot path: matched before every other router's routes


def run_response(run: Run, status_code: int) -> JSONResponse:
    """A run as the answer, with ``Location`` pointing at it."""
    return FastJSONResponse(
        run.as_api(), status_code=status_code, headers={"Location": f"/api/runs/{run.id}"}
    )


def runnable(job: Job) -> Job:
    """``job`` if runs can be enqueued for it (not a continuous job), else ``Conflict``."""
    if job.type == JobType.CONTINUOUS:
        raise Conflict(
            f"job {job.name!r} is continuous: it is kept running, not run on demand",
            f"use POST /api/jobs/{job.name}/start and /stop",
        )
    return job


async def confirm_replicated(ctx: Ctx, what: str, lookup: str) -> None:
    """Wait until ``JOBYARD_REDIS_WAIT_REPLICAS`` replicas hold what was written (at once when 0).

    Called before a run is answered as accepted, so that an accepted run survives a failover.
    When the replicas do not confirm in time the write has happened and is probably kept, but a
    failover now could lose it: 503 saying so, and that retrying with the same idempotency key
    is safe (it returns the run if it was kept, makes it again if it was lost).
    """
    if ctx.settings.redis_wait_replicas <= 0:
        return
    try:
        await wait_for_replicas_async(ctx.redis, ctx.settings)
    except Unavailable as exc:
        raise Unavailable(
            f"{what} written but not confirmed: {exc.message}",
            f"{exc.detail}; without a key, {lookup} shows whether it was kept",
        ) from exc


async def answer_created(ctx: Ctx, created: Created, job: str) -> JSONResponse:
    """202 for a new run, 200 with the first run for a repeated idempotency key.

    Either is an acceptance: with ``JOBYARD_REDIS_WAIT_REPLICAS`` set, only once replicas hold it.
    """
    if created.outcome == "created" and created.run is not None:
        observe_enqueued(created.run)
        await confirm_replicated(ctx, f"run {created.run.id} was", f"GET /api/runs/{created.run.id}")
        return run_response(created.run, 202)
    if created.outcome == "exists" and created.run_id:
        run = await ctx.store.get(created.run_id)
        # The first request for this key may have been refused unconfirmed: confirm it now.
        await confirm_replicated(ctx, f"run {run.id} was", f"GET /api/runs/{run.id}")
        return run_response(run, 200)
    if created.outcome == "nojob":
        raise job_not_found(job)
    raise Conflict(f"the run was not created ({created.outcome})", created.run_id)


async def _enqueue_fast(request: Request) -> JSONResponse | None:
    """``enqueue`` for a well-formed request, without FastAPI's request machinery (services.fastroute)."""
    data = await json_body(request)
    who = await require_operator(request)
    try:
        body = None if data is None else RunRequest.model_validate(data)
    except ValidationError as exc:
        raise NotFast from exc  # FastAPI words the 422
    name = request.path_params["name"]
    return await enqueue(name, body, request.headers.get("idempotency-key"), get_ctx(request), who)


async def _enqueue_batch_fast(request: Request) -> JSONResponse | None:
    """``enqueue_batch`` for a well-formed request (see ``_enqueue_fast``)."""
    data = await json_body(request)
    await require_operator(request)
    specs = batch_specs(data)  # the common shapes by hand (run_checks): pydantic was a fifth of a batch
    if specs is None:
        try:
            specs = _batch_specs(BatchRequest.model_validate(data))
        except ValidationError as exc:
            raise NotFast from exc
    return await _enqueue_specs(specs, get_ctx(request))


@router.post(
    "/api/jobs/{name}/runs",
    operation_id="enqueueRun",
    status_code=202,
    response_model=RunOut,
    responses={**NOT_FOUND, **CONFLICT, 200: {"model": RunOut, "description": "the run of a repeated key"}},
    summary="Enqueue a run of a job",
)
@fast_path(_enqueue_fast)
async def enqueue(
    name: str,
    body: RunRequest | None = None,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key"),
    ctx: Ctx = Depends(current_ctx),
    who: Principal = Depends(require_operator),
) -> JSONResponse:
    """Queue a run: 202 with the run (and ``Location``), or 200 with the first run for a repeated key."""
    spec = (body or RunRequest.model_validate({})).to_spec(check_job_name(name), idempotency_key)
    return await answer_created(ctx, await ctx.store.create_current(spec, runnable), name)


@router.post(
    "/api/runs/batch",
    operation_id="enqueueBatch",
    status_code=202,
    response_model=BatchOut,
    summary="Enqueue up to 1,000 runs in one request",
)
@fast_path(_enqueue_batch_fast)
async def enqueue_batch(
    body: BatchRequest, ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_operator)
) -> JSONResponse:
    """Validate every item (a bad one fails the whole batch, naming its index), then enqueue all."""
    return await _enqueue_specs(_batch_specs(body), ctx)


def _batch_specs(body: BatchRequest, now: float | None = None) -> list[EnqueueSpec]:
    now = time.time() if now is None else now
    specs: list[EnqueueSpec] = []
    for index, item in enumerate(body.runs):
        try:
            specs.append(item.to_spec(item.job, now=now))
        except InvalidInput as exc:
            raise InvalidInput(f"runs[{index}]: {exc.message}", exc.detail) from exc
    return specs


async def _enqueue_specs(specs: list[EnqueueSpec], ctx: Ctx) -> JSONResponse:
    jobs = await ctx.store.get_jobs(sorted({s.job for s in specs}))
    for index, spec in enumerate(specs):
        job = jobs[spec.job]
        if job is None:
            raise InvalidInput(f"runs[{index}].job: job {spec.job!r} does not exist", "nothing was enqueued")
        if job.type == JobType.CONTINUOUS:
            raise InvalidInput(
                f"runs[{index}].job: job {spec.job!r} is continuous and cannot be run on demand",
                "nothing was enqueued",
            )
    results = await ctx.store.create_many([(spec, jobs[spec.job]) for spec in specs])  # type: ignore[misc]
    created = sum(r.created for r in results)
    if any(r.outcome in ("created", "exists") for r in results):
        await confirm_replicated(ctx, f"the batch's {created} new runs were", "GET /api/jobs/{name}/runs")
    existing = [r.run_id for r in results if r.outcome == "exists" and r.run_id]
    found = {run.id: run for run in await ctx.store.get_many(existing) if run is not None}
    observe_enqueued_many(res.run for res in results if res.run is not None)
    out: list[dict[str, Any]] = []
    for spec, res in zip(specs, results, strict=True):
        if res.run is not None:
            out.append(res.run.as_api())
        elif res.run_id in found:
            out.append(found[res.run_id].as_api())
        else:  # the job was deleted between validation and enqueue
            out.append({"job": spec.job, "error": f"not enqueued ({res.outcome})"})
    return FastJSONResponse({"runs": out, "created": created}, status_code=202)


@router.get(
    "/api/jobs/{name}/runs",
    operation_id="listJobRuns",
    response_model=RunList,
    responses=NOT_FOUND,
    summary="A job's run history, newest first",
)
async def list_runs(
    name: str,
    limit: int = Query(50, ge=1, le=500),
    before: str | None = Query(None, description="the 'next' of the previous page"),
    ctx: Ctx = Depends(current_ctx),
    who: Principal = Depends(require_viewer),
) -> JSONResponse:
    """One page of the job's runs; ``next`` is the cursor of the following page, or null."""
    check_job_name(name)
    runs = await ctx.store.list_for_job(name, limit, before)
    if not runs and not before and not await ctx.redis.exists(ctx.keys.job(name)):
        raise job_not_found(name)
    cursor = runs[-1].id if len(runs) == limit else None
    return JSONResponse({"runs": [r.as_api() for r in runs], "next": cursor})


@router.get(
    "/api/runs/{run_id}", operation_id="getRun", response_model=RunOut, responses=NOT_FOUND, summary="One run"
)
async def get_run(
    run_id: str, ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_viewer)
) -> JSONResponse:
    """The run record."""
    return JSONResponse((await ctx.store.get(run_id)).as_api())


@router.post(
    "/api/runs/{run_id}/cancel",
    operation_id="cancelRun",
    response_model=RunOut,
    responses={**NOT_FOUND, **CONFLICT, 202: {"model": RunOut, "description": "running: asked to stop"}},
    summary="Cancel a queued or running run",
)
async def cancel_run(
    run_id: str, ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_operator)
) -> JSONResponse:
    """200 when a waiting run was cancelled; 202 when a running one was told to stop; 409 when it ended."""
    run = await ctx.store.get(run_id)
    outcome, extra = await ctx.store.cancel(run)
    if outcome == "missing":
        raise run_not_found(run_id)
    if outcome == "terminal":
        raise Conflict(
            f"run {run_id} has already ended ({extra})", f"POST /api/runs/{run_id}/retry runs it again"
        )
    return run_response(await ctx.store.get(run_id), 200 if outcome == "cancelled" else 202)


def respec(run: Run, trigger: Trigger) -> EnqueueSpec:
    """A new run like ``run`` (arguments, priority, limits, env, callback), linked to it."""
    return EnqueueSpec(
        job=run.job,
        args=list(run.args),
        priority=run.priority,
        timeout_s=run.timeout_s,
        env=dict(run.env),
        callback_url=run.callback_url,
        max_retries=run.max_retries,
        trigger=trigger,
        replay_of=run.id,
    )


@router.post(
    "/api/runs/{run_id}/retry",
    operation_id="retryRun",
    status_code=202,
    response_model=RunOut,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Run a finished run again, as a new run",
)
async def retry_run(
    run_id: str, ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_operator)
) -> JSONResponse:
    """A new run (trigger ``retry``, ``replay_of`` the old one) with the same arguments and priority."""
    run = await ctx.store.get(run_id)
    if not run.terminal:
        raise Conflict(f"run {run_id} is still {run.status.value}", "cancel it first, or wait for it to end")
    job = runnable(await ctx.store.get_job(run.job))
    return await answer_created(ctx, await ctx.store.create(respec(run, Trigger.RETRY), job), run.job)
