"""The dashboard's forms that change something: deploy, run, start/stop, pause/resume, settings,
delete, cancel, retry, and replay or purge a dead letter.

Each handler checks the session's role again (a viewer's forged post is 403 whatever the page
showed it), the request's origin and the form's CSRF token, then does the work through the same
functions as the HTTP API, and answers with a redirect (post/redirect/get) and a message shown on
the next page. A refused change (a bad setting, a run that already ended) is such a message, not
an error page.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from jobyard import deploy
from jobyard.errors import Conflict, Forbidden, InvalidInput, JobyardError
from jobyard.metrics import observe_enqueued
from services.dashboard import csrf
from services.dashboard.session import Session, flash
from services.dashboard.web import (
    DashboardRoute,
    back,
    checked_form,
    field,
    go,
    need,
    page_session,
    read_form,
)
from services.deps import Ctx, get_ctx
from services.routes import deadletters as deadletter_routes
from services.routes import jobs as job_routes
from services.routes import runs as run_routes
from services.routes import schedules as schedule_routes
from services.store import check_job_name, check_run_id, job_not_found

log = logging.getLogger(__name__)
router = APIRouter(route_class=DashboardRoute, include_in_schema=False)
FORM_SLACK_BYTES = 64 * 1024  # multipart framing and the small fields beside the package


async def _attempt(
    request: Request, session: Session, work: Callable[[], Awaitable[Response]], fallback: str
) -> Response:
    """Run ``work``; a refusal becomes a message on the page the form was on."""
    try:
        return await work()
    except Forbidden:
        raise
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'form'}: {e['msg']}" for e in exc.errors())
        await flash(get_ctx(request), session, "error", "Not accepted", problems)
    except JobyardError as exc:
        await flash(get_ctx(request), session, "error", exc.message, exc.detail)
    return back(request, fallback)


def _run_id_of(body: bytes | memoryview) -> str:
    return str(json.loads(bytes(body))["id"])


# -- jobs ----------------------------------------------------------------------------------------
def _upload_dir(ctx: Ctx) -> Path | None:
    path = Path(ctx.settings.data_dir) / "uploads"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # the system temp directory then
    return path


def _save_upload(upload: UploadFile, directory: Path | None) -> Path:
    fd, tmp = tempfile.mkstemp(prefix="dashboard-upload-", suffix=".part", dir=directory)
    with open(fd, "wb") as out:
        upload.file.seek(0)
        shutil.copyfileobj(upload.file, out, 1024 * 1024)
    return Path(tmp)


@router.post("/jobs")
async def deploy_job(request: Request, session: Session = Depends(page_session)) -> Response:
    """Deploy or replace a job from an uploaded zip or script (admin)."""
    ctx = get_ctx(request)
    need(session, "admin")
    csrf.check_origin(request)  # before the upload is read, not after
    form = await read_form(request, ctx.settings.max_package_bytes + FORM_SLACK_BYTES, max_files=1)
    try:
        csrf.check_token(session, form)

        async def work() -> Response:
            upload = form.get("package")
            if not isinstance(upload, UploadFile) or not upload.filename:
                raise InvalidInput("no package chosen", "choose a .zip or a single script to upload")
            filename = Path(upload.filename.replace("\\", "/")).name
            name = field(form, "name") or Path(filename).stem
            job_type = field(form, "type") or None
            path = await run_in_threadpool(_save_upload, upload, _upload_dir(ctx))
            try:
                if path.stat().st_size == 0:
                    raise InvalidInput(f"{filename} is empty", "choose the zip or the script to deploy")
                job, created = await run_in_threadpool(
                    deploy.deploy_job, ctx.sync_redis, ctx.keys, ctx.settings, name, path, filename, job_type
                )
            finally:
                with contextlib.suppress(OSError):
                    path.unlink()
            log.info(
                "job %s %s from the dashboard by %s",
                name,
                "deployed" if created else "replaced",
                session.name,
            )
            what = "Deployed" if created else "Replaced"
            await flash(ctx, session, "ok", f"{what} job {job.name} ({job.type.value}, entry {job.entry})")
            return go(f"/jobs/{job.name}")

        return await _attempt(request, session, work, "/")
    finally:
        await form.close()


@router.post("/jobs/{name}/runs")
async def run_now(request: Request, name: str, session: Session = Depends(page_session)) -> Response:
    """Enqueue a run with the form's arguments and priority (operator)."""
    ctx = get_ctx(request)
    form = await checked_form(request, session, "operator")

    async def work() -> Response:
        body = run_routes.RunRequest.model_validate(
            {
                "arguments": field(form, "arguments") or None,
                "priority": field(form, "priority") or None,
                "idempotency_key": field(form, "idempotency_key") or None,
            }
        )
        job = run_routes.runnable(await ctx.store.get_job(check_job_name(name)))
        created = await ctx.store.create(body.to_spec(name), job)
        if created.outcome == "created" and created.run is not None:
            observe_enqueued(created.run)
            await flash(ctx, session, "ok", f"Run {created.run.id} queued ({created.run.priority.value})")
            return go(f"/runs/{created.run.id}")
        if created.outcome == "exists" and created.run_id:
            await flash(ctx, session, "info", "This form was already sent: here is the run it made")
            return go(f"/runs/{created.run_id}")
        if created.outcome == "nojob":
            raise job_not_found(name)
        raise Conflict(f"the run was not created ({created.outcome})")

    return await _attempt(request, session, work, f"/jobs/{name}")


def _job_action(verb: str, role: str, done: str) -> Callable[..., Awaitable[Response]]:
    """A handler that calls the API's function for ``verb`` on one job and goes back."""
    calls: dict[str, Callable[..., Awaitable[Any]]] = {
        "start": job_routes.start_job,
        "stop": job_routes.stop_job,
        "pause": lambda name, ctx, who: schedule_routes.pause_schedule(job=name, ctx=ctx, who=who),
        "resume": lambda name, ctx, who: schedule_routes.resume_schedule(job=name, ctx=ctx, who=who),
    }
    call = calls[verb]

    async def handler(request: Request, name: str, session: Session = Depends(page_session)) -> Response:
        ctx = get_ctx(request)
        await checked_form(request, session, role)

        async def work() -> Response:
            await call(name=check_job_name(name), ctx=ctx, who=session.principal)
            await flash(ctx, session, "ok", done.format(name=name))
            return back(request, f"/jobs/{name}")

        return await _attempt(request, session, work, f"/jobs/{name}")

    handler.__doc__ = f"{verb.capitalize()} a job ({role})."
    handler.__name__ = f"{verb}_job"
    return handler


for _verb, _done in (
    ("start", "Started {name}"),
    ("stop", "Stopping {name}"),
    ("pause", "Paused the schedule of {name}"),
    ("resume", "Resumed the schedule of {name}"),
):
    router.add_api_route(f"/jobs/{{name}}/{_verb}", _job_action(_verb, "operator", _done), methods=["POST"])


@router.post("/jobs/{name}/settings")
async def save_settings(request: Request, name: str, session: Session = Depends(page_session)) -> Response:
    """Replace the job's settings.job with the form's JSON (admin; validated, naming the bad field)."""
    ctx = get_ctx(request)
    form = await checked_form(request, session, "admin")

    async def work() -> Response:
        raw = field(form, "settings") or "{}"
        await run_in_threadpool(
            deploy.update_settings, ctx.sync_redis, ctx.keys, ctx.settings, check_job_name(name), raw
        )
        await flash(ctx, session, "ok", f"Saved the settings of {name}")
        return go(f"/jobs/{name}")

    return await _attempt(request, session, work, f"/jobs/{name}")


@router.post("/jobs/{name}/delete")
async def delete_job(request: Request, name: str, session: Session = Depends(page_session)) -> Response:
    """Remove the job and its package (admin)."""
    ctx = get_ctx(request)
    await checked_form(request, session, "admin")

    async def work() -> Response:
        await job_routes.delete_job(check_job_name(name), ctx=ctx, who=session.principal)
        await flash(ctx, session, "ok", f"Deleted job {name}")
        return go("/")

    return await _attempt(request, session, work, f"/jobs/{name}")


# -- runs ----------------------------------------------------------------------------------------
@router.post("/runs/{run_id}/cancel")
async def cancel_run(request: Request, run_id: str, session: Session = Depends(page_session)) -> Response:
    """Cancel a queued run, or ask a running one to stop (operator)."""
    ctx = get_ctx(request)
    await checked_form(request, session, "operator")

    async def work() -> Response:
        answer = await run_routes.cancel_run(check_run_id(run_id), ctx=ctx, who=session.principal)
        text = "Cancelled" if answer.status_code == 200 else "Asked to stop:"
        await flash(ctx, session, "ok", f"{text} run {run_id}")
        return go(f"/runs/{run_id}")

    return await _attempt(request, session, work, f"/runs/{run_id}")


@router.post("/runs/{run_id}/retry")
async def retry_run(request: Request, run_id: str, session: Session = Depends(page_session)) -> Response:
    """Run a finished run again as a new run (operator)."""
    ctx = get_ctx(request)
    await checked_form(request, session, "operator")

    async def work() -> Response:
        answer = await run_routes.retry_run(check_run_id(run_id), ctx=ctx, who=session.principal)
        new_id = _run_id_of(answer.body)
        await flash(ctx, session, "ok", f"Run {new_id} queued, a retry of {run_id}")
        return go(f"/runs/{new_id}")

    return await _attempt(request, session, work, f"/runs/{run_id}")


# -- dead letters --------------------------------------------------------------------------------
@router.post("/deadletters/{run_id}/replay")
async def replay(request: Request, run_id: str, session: Session = Depends(page_session)) -> Response:
    """Run a dead letter again as a new run, taking it off the list (operator)."""
    ctx = get_ctx(request)
    await checked_form(request, session, "operator")

    async def work() -> Response:
        answer = await deadletter_routes.replay(check_run_id(run_id), ctx=ctx, who=session.principal)
        new_id = _run_id_of(answer.body)
        await flash(ctx, session, "ok", f"Replayed dead letter {run_id} as run {new_id}")
        return go(f"/runs/{new_id}")

    return await _attempt(request, session, work, "/cluster")


@router.post("/deadletters/{run_id}/purge")
async def purge(request: Request, run_id: str, session: Session = Depends(page_session)) -> Response:
    """Take a dead letter off the list for good, without a new run (operator)."""
    ctx = get_ctx(request)
    await checked_form(request, session, "operator")

    async def work() -> Response:
        await deadletter_routes.purge(check_run_id(run_id), ctx=ctx, who=session.principal)
        await flash(ctx, session, "ok", f"Purged dead letter {run_id}")
        return back(request, "/cluster")

    return await _attempt(request, session, work, "/cluster")
