"""What the pages poll and follow: small JSON views, the live log stream, the log download, static files.

The JSON views (under ``/live/``) answer with display-ready text, so the page script only puts
strings into place (``textContent``, never HTML). They are polled every 2 s while a page is
visible. The log stream is the API's server-sent event stream (``services.routes.logs.follow``)
behind the session cookie: ``EventSource`` cannot send a Bearer header.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import FileResponse, StreamingResponse
from starlette.requests import Request
from starlette.responses import Response

from jobyard.errors import NotFound
from jobyard.models import Run
from services.dashboard import queries
from services.dashboard.session import Session
from services.dashboard.views import STATIC_FILES, ago, duration, run_result, status_class, when
from services.dashboard.web import DashboardRoute, page_session
from services.deps import get_ctx
from services.routes import cluster as cluster_routes
from services.routes import logs as log_routes
from services.store import check_job_name, check_run_id

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)


def cursor(description: str) -> Any:
    """A run id used as a page cursor (a fresh ``Query`` per parameter: FastAPI must not share one)."""
    return Query(None, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description=description)


STATIC_MAX_AGE_S = 365 * 86400  # URLs carry a content hash: a changed file is a new URL


def run_cells(run: Run) -> dict[str, Any]:
    """A run as one row of a history table."""
    facts = queries.run_facts(run)
    return {
        "id": run.id,
        "url": f"/runs/{run.id}",
        "status": run.status.value,
        "status_class": status_class(run.status),
        "status_text": run.status.value.replace("_", " "),
        "trigger": run.trigger.value,
        "priority": run.priority.value,
        "started": when(run.started_at),
        "started_ago": ago(run.started_at) if run.started_at else "",
        "duration": duration(facts["duration_s"]),
        "attempt": str(run.attempt),
    }


def job_cells(row: queries.JobRow) -> dict[str, Any]:
    """A job as one row of the jobs table."""
    latest = row.latest
    schedule = row.schedule or {}
    return {
        "name": row.job.name,
        "status": row.status,
        "status_class": status_class(row.status),
        "status_text": row.status_text,
        "last_run": when(latest.started_at or latest.enqueued_at) if latest else "—",
        "last_run_ago": ago(latest.started_at or latest.enqueued_at) if latest else "",
        "last_run_url": f"/runs/{latest.id}" if latest else "",
        "last_result": run_result(latest),
        "next_fire": "paused" if schedule.get("paused") else ago(schedule.get("next_fire_time")),
    }


@router.get("/live/jobs")
async def live_jobs(request: Request, session: Session = Depends(page_session)) -> dict[str, Any]:
    """Every job's status cells."""
    return {"jobs": [job_cells(row) for row in await queries.job_rows(get_ctx(request))]}


@router.get("/live/jobs/{name}")
async def live_job(
    request: Request,
    name: str,
    before: str | None = cursor("the page older than this run"),
    after: str | None = cursor("the page newer than this run"),
    session: Session = Depends(page_session),
) -> dict[str, Any]:
    """A job's status and the rows of the history page being shown."""
    ctx = get_ctx(request)
    row = await queries.job_row(ctx, check_job_name(name))
    history = await queries.history(ctx, name, before, after)
    return {
        "job": job_cells(row),
        "instances": [_instance_cells(i) for i in row.instances],
        "runs": [run_cells(run) for run in history.runs],
        "total": history.total,
        "range": history.range_text,
    }


def _instance_cells(item: dict[str, Any]) -> dict[str, Any]:
    status = str(item.get("status") or "unknown")
    return {
        "instance_id": str(item.get("instance_id") or ""),
        "host": str(item.get("host") or ""),
        "status": status,
        "status_class": status_class(status),
        "pid": str(item.get("pid") or "—"),
        "started": when(item.get("started_at")),
        "restarts": str(item.get("restarts") or 0),
        "next_start": ago(item.get("next_start_at")) if item.get("next_start_at") else "",
        "run_id": str(item.get("run_id") or ""),
    }


@router.get("/live/runs/{run_id}")
async def live_run(request: Request, run_id: str, session: Session = Depends(page_session)) -> dict[str, Any]:
    """A run's changing facts, formatted."""
    run = await get_ctx(request).store.get(check_run_id(run_id))
    facts = queries.run_facts(run)
    return {
        **facts,
        "status_class": status_class(run.status),
        "status_text": run.status.value.replace("_", " "),
        "started": when(run.started_at),
        "ended": when(run.ended_at),
        "duration": duration(facts["duration_s"]),
        "exit_code": "—" if run.exit_code is None else str(run.exit_code),
        "attempt": str(run.attempt),
        "worker": run.worker or "—",
        "error": run.error or "",
    }


@router.get("/live/cluster")
async def live_cluster(request: Request, session: Session = Depends(page_session)) -> dict[str, Any]:
    """Workers, queue depths, the leader and the dead-letter count, formatted."""
    state = await cluster_routes.cluster(ctx=get_ctx(request), who=session.principal)
    scheduler = state["scheduler"]
    return {
        "queues": {level: str(n) for level, n in state["queues"].items()},
        "dead_letters": str(state["dead_letters"]),
        "workers": [
            {
                "instance_id": w["instance_id"] or w["id"],
                "host": w["host"] or "—",
                "pid": str(w["pid"] or "—"),
                "busy": int(w["busy"] or 0),
                "slots": int(w["slots"] or 0),
                "last_seen": ago(w["last_seen"]),
                "started": ago(w["started_at"]),
            }
            for w in state["workers"]
        ],
        "leader": scheduler["leader"] or "none",
        "term": str(scheduler["term"] or "—"),
        "since": ago(scheduler["since"]) if scheduler["since"] else "—",
    }


@router.get("/live/runs/{run_id}/log")
async def live_log(
    request: Request,
    run_id: str,
    after: str | None = Query(None, max_length=41),
    last_event_id: str | None = Header(None, alias="Last-Event-ID"),
    session: Session = Depends(page_session),
) -> StreamingResponse:
    """The run's log as server-sent events from ``after`` (or ``Last-Event-ID`` on a reconnect)."""
    return await log_routes.stream_log(
        check_run_id(run_id),
        after=after if last_event_id is None else None,
        last_event_id=last_event_id,
        ctx=get_ctx(request),
        who=session.principal,
    )


@router.get("/runs/{run_id}/log.txt")
async def download_log(request: Request, run_id: str, session: Session = Depends(page_session)) -> Response:
    """The whole log as a text file."""
    return await log_routes.get_log(check_run_id(run_id), ctx=get_ctx(request), who=session.principal)


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    """A file of ``services/static`` (looked up by name in a fixed table: no paths from the URL)."""
    found = STATIC_FILES.get(name)
    if found is None:
        raise NotFound(f"no static file {name!r}")
    return FileResponse(found[0], headers={"Cache-Control": f"public, max-age={STATIC_MAX_AGE_S}, immutable"})
