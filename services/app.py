"""The FastAPI application: context, error handlers, and every router found in ``services.routes``."""

from __future__ import annotations

import importlib
import json
import logging
import pkgutil
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobyard import __version__
from jobyard.errors import PayloadTooLarge
from jobyard.settings import Settings
from services import audit_middleware, errors, fastroute, routes, security_headers
from services.deps import Ctx

log = logging.getLogger(__name__)

# JSON bodies: a full batch of 1,000 runs is far below this; package uploads have their own cap.
MAX_BODY_BYTES = 16 * 1024 * 1024
_UPLOAD_PATH = re.compile(r"^/api/jobs/[^/]+$")


def _is_upload(method: str, path: str) -> bool:
    """Package uploads (API and dashboard form) stream past the JSON cap under their own limit."""
    return (method == "PUT" and bool(_UPLOAD_PATH.match(path))) or (method == "POST" and path == "/jobs")


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


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """Put ``router``'s routes straight into the app's route list, in order.

    ``include_router`` keeps an included router as one lazy entry that is matched, then matched
    again to be handled, router by router: that was a quarter of the CPU of a ``GET /healthz``.
    Our routers carry their tags, responses and route class on the routes themselves and have no
    prefix, dependencies or lifespan handlers to merge, so a flat list serves the same routes
    and the same OpenAPI document. A nested router (the dashboard's) is flattened the same way.
    """
    if router.prefix or router.dependencies or router.on_startup or router.on_shutdown:
        raise ValueError("add_routes takes routers without prefix, dependencies or start-up handlers")
    for route in router.routes:
        nested = getattr(route, "original_router", None)  # FastAPI's entry for an included router
        if isinstance(nested, APIRouter):
            add_routes(app, nested)
        else:
            app.router.routes.append(route)


class BodyCap:
    """Refuse request bodies over ``max_bytes`` (413), except package uploads (``PUT /api/jobs/{name}``).

    FastAPI reads a JSON body before any dependency runs, authentication included, so without a
    cap anyone could make the server buffer an arbitrarily large body. Uploads are streamed to
    disk under their own cap (``JOBYARD_MAX_PACKAGE_BYTES``) after authentication.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_upload(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._refuse(send)
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # An HTTPException: FastAPI turns anything else raised while reading into a 400.
                    error = self._error()
                    raise HTTPException(413, detail=f"{error.message}; {error.detail}")
            return message

        await self.app(scope, counting_receive, send)

    def _error(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the request body is over {self.max_bytes} bytes", "split the request (a batch takes 1,000 runs)"
        )

    async def _refuse(self, send: Send) -> None:
        error = self._error()
        body = json.dumps(errors.error_body(error.message, error.detail)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


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
        # jobyard's metrics are Prometheus (services/metrics_middleware.py); FastAPI's native
        # OpenTelemetry hooks looked for configured providers on every request (~3% of an enqueue).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.ctx = ctx
    fastroute.install(app)  # innermost: inside the catch-all, the body cap, audit and metrics
    errors.install(app)
    app.add_middleware(BodyCap)
    for name, router in discover_routers():
        add_routes(app, router)
        log.debug("included router services.routes.%s", name)
    audit_middleware.install(app)
    security_headers.install(app)  # outside the audit and the routes: it may rewrite the scheme
    _install_request_metrics(app)
    return app


def _install_request_metrics(app: FastAPI) -> None:
    # Outermost, so that it also counts the answers of the error handlers and the catch-all.
    try:
        from services import metrics_middleware
    except ImportError:  # a build without metrics
        return
    metrics_middleware.install(app)
