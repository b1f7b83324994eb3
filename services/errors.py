"""Every error the API returns has the body ``{"error": <message>, "detail": <what to do>}``.

One table maps jobyard's error classes to statuses; handlers reshape FastAPI's own 404/405/422
bodies, turn an unreachable Redis anywhere in a request into 503, and a bug into a logged 500
without the traceback in the body.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobyard import errors

log = logging.getLogger(__name__)

# Most specific first: PayloadTooLarge is an InvalidInput.
STATUS_OF: tuple[tuple[type[errors.JobyardError], int], ...] = (
    (errors.PayloadTooLarge, 413),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.InvalidInput, 422),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.RateLimited, 429),
    (errors.Unavailable, 503),
)

# Redis being away (refused, reset, timed out, still loading its AOF, a read-only replica
# after a failover) is an outage to wait out, not a bug.
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)
REDIS_DOWN_DETAIL = (
    "Redis cannot be reached right now; retry in a few seconds (GET /readyz shows when it is back)"
)


class ErrorBody(BaseModel):
    """Every error answer: what went wrong, and what to do about it (or the details)."""

    error: str
    detail: Any = None


# Documented on every /api router (FastAPI ``responses=``).
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no valid token"},
    403: {"model": ErrorBody, "description": "the token's role may not do this"},
    422: {"model": ErrorBody, "description": "invalid input; detail names the field"},
    429: {"model": ErrorBody, "description": "too many failed authentication attempts"},
    503: {"model": ErrorBody, "description": "Redis is unreachable"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "no such resource"}}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "clashes with the current state"}
}

_HTTP_MESSAGES = {404: "not found", 405: "method not allowed", 400: "bad request", 413: "payload too large"}


def status_of(exc: errors.JobyardError) -> int:
    """The HTTP status of a jobyard error (500 for a class not in the table)."""
    for cls, status in STATUS_OF:
        if isinstance(exc, cls):
            return status
    return 500


def error_body(error: str, detail: Any = None) -> dict[str, Any]:
    """The one error body shape."""
    return {"error": error, "detail": detail}


def error_response(
    status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A JSON error response."""
    return JSONResponse(error_body(error, detail), status_code=status, headers=headers)


def _field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("body", "runs", 3, "priority")`` -> ``runs[3].priority``."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        where = parts.pop(0)
        if not parts:
            return str(where)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


async def _jobyard_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.JobyardError)
    status = status_of(exc)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status == 429 and isinstance(exc.detail, dict) and "retry_after_s" in exc.detail:
        headers["Retry-After"] = str(exc.detail["retry_after_s"])
    if status == 503:
        log.warning("%s %s: %s", request.method, request.url.path, exc.message)
    return error_response(status, exc.message, exc.detail, headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    if request.url.path.startswith("/api/"):
        # FastAPI parses a JSON body before any dependency runs: a caller without a valid token
        # must still get 401 (or 429), not a 422 describing the endpoint.
        try:
            await request.app.state.ctx.auth.authenticate(request, "viewer")
        except (errors.Unauthorized, errors.RateLimited) as auth_error:
            return await _jobyard_error(request, auth_error)
    problems = []
    for item in exc.errors():
        problems.append(
            {
                "field": _field_path(item.get("loc", ())),
                "message": item.get("msg", ""),
                "type": item.get("type"),
            }
        )
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        message = f"invalid {first['field']}: {first['message']}{more}"
    else:
        message = "invalid request"
    return error_response(422, message, problems)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    headers = dict(exc.headers or {})
    detail: str | None
    if status == 400 and exc.detail == "There was an error parsing the body":  # not UTF-8: FastAPI's 400
        return error_response(422, "the request body is not valid JSON", "send UTF-8 JSON")
    if status == 404:
        message, detail = (
            "not found",
            f"no route {request.method} {request.url.path}; the API is listed at /docs",
        )
    elif status == 405:
        allowed = headers.get("Allow") or headers.get("allow") or ""
        message, detail = "method not allowed", f"{request.url.path} allows: {allowed}" if allowed else None
    else:
        message = _HTTP_MESSAGES.get(status) or (exc.detail if isinstance(exc.detail, str) else "error")
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != message else None
    return error_response(status, message, detail, headers)


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: Redis unreachable: %s", request.method, request.url.path, exc)
    return error_response(503, "Redis is unavailable", REDIS_DOWN_DETAIL, {"Retry-After": "2"})


def install(app: FastAPI) -> None:
    """Register the handlers and the catch-all on ``app``."""
    app.add_exception_handler(errors.JobyardError, _jobyard_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for cls in REDIS_DOWN:
        app.add_exception_handler(cls, _redis_down)
    app.add_middleware(CatchAll)


class CatchAll:
    """Last line: an unexpected exception is logged with its traceback and answered with a bare 500.

    A pure ASGI middleware (not ``BaseHTTPMiddleware``, which costs every request a task and
    buffers streaming bodies).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if isinstance(exc, REDIS_DOWN):
                body, status = error_body("Redis is unavailable", REDIS_DOWN_DETAIL), 503
                log.warning("%s %s: Redis unreachable: %s", scope.get("method"), scope.get("path"), exc)
            else:
                body, status = error_body("internal error", "the server logged the cause"), 500
                log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                return  # the response is under way; all we can do is end it
            payload = json.dumps(body).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload})
