"""Request count and latency for every HTTP request, by route template (a pure ASGI middleware).

The route label is the matched route's template (``/api/runs/{run_id}``), never the raw path:
raw paths carry run ids and would make a series per run. The router records the match in the
scope it is handed (``scope["route"]``), which is the dict this middleware passed down, so it is
read after the call; a request that matched nothing is ``<unmatched>``. Mounted apps contribute
their mount prefix (``/static/{path}``).

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``: no extra task per request, and
streaming responses (log streams) pass through untouched. The duration runs to the end of the
response body, so a live log stream counts as long as it stays open; dashboards leave out
``route=~".*/stream"`` from latency panels.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobyard.metrics import observe_api_request

UNMATCHED = "<unmatched>"


def route_template(scope: Scope, root_before: str) -> str:
    """The template of the route the router matched for ``scope``, or ``<unmatched>``."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    # Mounts move their matched prefix into root_path; put it back in front of the inner route.
    prefix = str(scope.get("root_path", ""))[len(root_before) :]
    if not isinstance(template, str):
        # FastAPI does not record a matched Mount (static files, plain ASGI apps) in the scope;
        # its prefix in root_path still tells which one answered.
        return prefix + "/{path}" if prefix else UNMATCHED
    if isinstance(route, Mount):
        prefix = prefix.removesuffix(route.path)
    return (prefix + template) or "/"


class MetricsMiddleware:
    """Counts requests (``jobyard_api_requests_total``) and times them (``..._duration_seconds``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        root_before = str(scope.get("root_path", ""))
        status: dict[str, Any] = {"code": 500}  # what an exception before any response becomes

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            observe_api_request(
                route_template(scope, root_before),
                str(scope.get("method", "GET")),
                status["code"],
                time.perf_counter() - start,
            )


def install(app: Any) -> None:
    """Add the middleware to a Starlette/FastAPI app."""
    app.add_middleware(MetricsMiddleware)
