"""The FastAPI application: context, error handlers, and every router found in ``services.routes``."""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from jobyard import __version__
from jobyard.settings import Settings
from services import errors, routes
from services.deps import Ctx

log = logging.getLogger(__name__)

DESCRIPTION = """\
Deploy scripts, run them on demand, continuously or on a schedule, and watch them.

Every `/api` route needs `Authorization: Bearer <token>`. Roles: `viewer` reads; `operator` also
runs, cancels, retries, starts/stops and replays; `admin` also deploys, deletes, changes settings
and manages tokens. Errors are `{"error": ..., "detail": ...}`; 503 means Redis is unreachable.
"""


def discover_routers() -> list[tuple[str, APIRouter]]:
    """``(module name, router)`` for each module of ``services.routes`` that has a ``router``.

    Ordered by the module's ``ROUTER_PRIORITY`` (default 100, lower first), then by name:
    routes are matched in order, so the hot paths (enqueue) go first.
    """
    found: list[tuple[int, str, APIRouter]] = []
    for info in sorted(pkgutil.iter_modules(routes.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{routes.__name__}.{info.name}")
        router = getattr(module, "router", None)
        if isinstance(router, APIRouter):
            found.append((int(getattr(module, "ROUTER_PRIORITY", 100)), info.name, router))
    return [(name, router) for _, name, router in sorted(found, key=lambda item: item[:2])]


def create_app(settings: Settings) -> FastAPI:
    """A new app for ``settings`` with its own Redis clients (they connect on first use)."""
    ctx = Ctx.create(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await ctx.close()

    app = FastAPI(
        title="jobyard",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.ctx = ctx
    errors.install(app)
    for name, router in discover_routers():
        app.include_router(router)
        log.debug("included router services.routes.%s", name)
    _install_request_metrics(app)
    return app


def _install_request_metrics(app: FastAPI) -> None:
    # Outermost, so that it also counts the answers of the error handlers and the catch-all.
    try:
        from services import metrics_middleware
    except ImportError:  # a build without metrics
        return
    metrics_middleware.install(app)
