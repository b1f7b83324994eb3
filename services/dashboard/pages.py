"""The dashboard's pages: log in and out, the jobs, one job, one run, the cluster.

Each page is rendered whole on the server (it works without scripts); ``static/app.js`` then
keeps the parts that change -- statuses, queue depths, a running log -- up to date.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Depends, Query
from starlette.requests import Request
from starlette.responses import Response

from jobyard.errors import Forbidden
from jobyard.models import Priority
from services.dashboard import csrf, queries
from services.dashboard.session import (
    Session,
    clear_session_cookie,
    create_session,
    end_session,
    load_session,
    set_session_cookie,
    verify_token,
)
from services.dashboard.views import page, render
from services.dashboard.web import DashboardRoute, field, go, local_path, page_session, read_form
from services.deps import get_ctx
from services.routes import cluster as cluster_routes
from services.routes import deadletters as deadletter_routes
from services.routes.schedules import schedule_item
from services.store import check_job_name, check_run_id

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)


def cursor(description: str) -> Any:
    """A run id used as a page cursor (a fresh ``Query`` per parameter: FastAPI must not share one)."""
    return Query(None, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description=description)


MAX_LOGIN_FORM_BYTES = 16 * 1024


def _login_page(request: Request, next_url: str, error: str = "", status: int = 200) -> Response:
    token = csrf.new_login_token()
    response = render(
        request, "login.html", None, status, title="Log in", next=next_url, login_token=token, error=error
    )
    csrf.set_login_cookie(response, request, token)
    return response


@router.get("/login")
async def login_form(request: Request, next: str = Query("/", max_length=2048)) -> Response:
    """The login form (straight on to ``next`` when already logged in)."""
    target = local_path(next, "/")
    if await load_session(request) is not None:
        return go(target)
    return _login_page(request, target)


@router.post("/login")
async def login(request: Request) -> Response:
    """Check a pasted token; on success start a session and go where the user was headed."""
    ctx = get_ctx(request)
    csrf.check_origin(request)
    form = await read_form(request, MAX_LOGIN_FORM_BYTES)
    target = local_path(field(form, "next"), "/")
    try:
        csrf.check_login_token(request, form)
    except Forbidden:
        return _login_page(request, target, "The login form had expired. Paste the token again.", 403)
    # The same failed-attempt limit as the API's Bearer tokens, per client address.
    address = ctx.auth.client_address(request)
    wait_s = ctx.auth.limiter.blocked(address)
    if wait_s > 0:
        message = f"Too many failed attempts from this address. Try again in {int(wait_s) + 1} s."
        return _login_page(request, target, message, 429)
    found = await verify_token(ctx, field(form, "token"))
    if found is None:
        ctx.auth.limiter.record(address)
        message = "That token is not valid: it may be mistyped, revoked or expired."
        return _login_page(request, target, message, 401)
    who, digest = found
    response = go(target)
    set_session_cookie(response, request, await create_session(ctx, who, digest))
    response.delete_cookie(csrf.LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout")
async def logout(request: Request, session: Session = Depends(page_session)) -> Response:
    """End the session (deleted in Redis, so a copied cookie stops working too)."""
    csrf.check_origin(request)
    csrf.check_token(session, await read_form(request, MAX_LOGIN_FORM_BYTES))
    await end_session(get_ctx(request), session)
    response = go("/login")
    clear_session_cookie(response, request)
    return response


@router.get("/")
async def jobs_page(request: Request, session: Session = Depends(page_session)) -> Response:
    """Every job: type, schedule, status, last run; the deploy form for admins."""
    rows = await queries.job_rows(get_ctx(request))
    return await page(request, "jobs.html", session, nav="jobs", title="Jobs", rows=rows)


@router.get("/jobs/{name}")
async def job_page(
    request: Request,
    name: str,
    before: str | None = cursor("the page older than this run"),
    after: str | None = cursor("the page newer than this run"),
    session: Session = Depends(page_session),
) -> Response:
    """One job: settings, schedule, instances, the run form and a page of its history."""
    ctx = get_ctx(request)
    row = await queries.job_row(ctx, check_job_name(name))
    history = await queries.history(ctx, name, before, after)
    schedule = None
    if row.schedule is not None:
        pipe = ctx.redis.pipeline(transaction=False)
        pipe.get(ctx.keys.job_last_fire(name))
        pipe.hgetall(ctx.keys.job_fire_stats(name))
        last_fire, stats = await pipe.execute()
        schedule = schedule_item(row.job, last_fire, stats)
    return await page(
        request,
        "job.html",
        session,
        nav="jobs",
        title=name,
        row=row,
        schedule=schedule,
        history=history,
        before=before or "",
        after=after or "",
        priorities=[p.value for p in Priority],
        # A fresh key per rendered form: a double click or a re-sent post runs the job once.
        run_key="dash-" + secrets.token_urlsafe(16),
    )


@router.get("/runs/{run_id}")
async def run_page(request: Request, run_id: str, session: Session = Depends(page_session)) -> Response:
    """One run: its details, its log (following it live while it runs), cancel and retry."""
    ctx = get_ctx(request)
    run = await ctx.store.get(check_run_id(run_id))
    tail = await queries.log_tail(ctx, run.id)
    return await page(
        request,
        "run.html",
        session,
        nav="jobs",
        title=f"Run {run.id}",
        run=run,
        facts=queries.run_facts(run),
        tail=tail,
    )


@router.get("/cluster")
async def cluster_page(
    request: Request,
    before: str | None = cursor("the page older than this run"),
    session: Session = Depends(page_session),
) -> Response:
    """Workers, queue depths, the scheduler leader and the dead letters."""
    ctx = get_ctx(request)
    state = await cluster_routes.cluster(ctx=ctx, who=session.principal)
    dead = await deadletter_routes.list_dead_letters(
        limit=queries.PAGE_SIZE, before=before, ctx=ctx, who=session.principal
    )
    return await page(
        request,
        "cluster.html",
        session,
        nav="cluster",
        title="Cluster",
        state=state,
        dead=dead,
        before=before or "",
    )
