"""The dashboard's request plumbing: its route class, session dependencies, forms and headers.

Every dashboard route is a ``DashboardRoute``: errors become HTML pages (or the API's JSON error
body for the ``/live/`` views the pages poll) instead of the API's JSON, a missing session
becomes a redirect to the login page, and every answer gets the security headers, the strict
Content-Security-Policy above all (scripts and styles from our own origin only, no inline code).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import Message

from jobyard.errors import Forbidden, JobyardError, PayloadTooLarge
from services.dashboard import csrf
from services.dashboard.session import Session, load_session
from services.errors import REDIS_DOWN, REDIS_DOWN_DETAIL, error_body, status_of

log = logging.getLogger(__name__)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
MAX_FORM_BYTES = 1024 * 1024  # settings.job is capped at 256 KB, arguments at 128 KB
LIVE_PREFIX = "/live/"


class LoginRequired(Exception):
    """No valid session: pages redirect to the login form, polled views answer 401."""


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith(LIVE_PREFIX)


def login_url(request: Request) -> str:
    """The login page, coming back to this page (GET) or to the referring page (a form post)."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET":
        target = local_path(request.headers.get("referer", ""), "/", absolute=True)
    return "/login" if target in ("/", "/login") else f"/login?next={quote(target, safe='')}"


def local_path(url: str, default: str, absolute: bool = False) -> str:
    """``url``'s path and query when it is a plain path on this site, else ``default``.

    No open redirects: ``//host/x``, ``https://host/x`` and ``/\\host`` all give ``default``.
    ``absolute`` accepts a full URL (a ``Referer``) and keeps only its path, which is ours.
    """
    parts = urlsplit(url)
    if (parts.scheme or parts.netloc) and not absolute:
        return default
    path = parts.path
    if not path.startswith("/") or path.startswith("//") or "\\" in path:
        return default
    return path + (f"?{parts.query}" if parts.query else "")


def _error_response(request: Request, status: int, message: str, detail: Any = None) -> Response:
    if _wants_json(request):
        return JSONResponse(error_body(message, detail), status_code=status)
    from services.dashboard.views import render_error  # views imports this module

    return render_error(request, status, message, detail)


class DashboardRoute(APIRoute):
    """A route whose errors are pages, whose anonymous callers log in, and whose answers are locked down."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                response = await handler(request)
            except LoginRequired:
                if _wants_json(request):
                    response = JSONResponse(error_body("not logged in", "log in again"), status_code=401)
                else:
                    response = RedirectResponse(login_url(request), status_code=303)
            except RequestValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                response = _error_response(request, 422, "invalid request", problems)
            except JobyardError as exc:
                response = _error_response(request, status_of(exc), exc.message, exc.detail)
            except StarletteHTTPException as exc:  # e.g. the app's body cap, raised while reading
                detail = exc.detail if isinstance(exc.detail, str) else None
                response = _error_response(request, exc.status_code, detail or "request refused", None)
            except REDIS_DOWN as exc:
                log.warning("dashboard %s: Redis unreachable: %s", request.url.path, exc)
                response = _error_response(request, 503, "Redis is unavailable", REDIS_DOWN_DETAIL)
            except Exception:
                log.exception("dashboard %s %s failed", request.method, request.url.path)
                response = _error_response(
                    request, 500, "Something went wrong", "the server logged the cause"
                )
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            response.headers.setdefault("Cache-Control", "no-store")
            return response

        return guarded


async def page_session(request: Request) -> Session:
    """The caller's session, or a redirect to the login page."""
    session = await load_session(request)
    if session is None:
        raise LoginRequired
    return session


def need(session: Session, role: str) -> None:
    """``Forbidden`` unless the session's role covers ``role`` (checked again on every POST)."""
    if not session.allows(role):
        raise Forbidden(
            f"a {session.role} token may not do this",
            f"this needs the {role} role; log in with an {role} token",
        )


async def read_form(request: Request, max_bytes: int = MAX_FORM_BYTES, max_files: int = 0) -> FormData:
    """The request's form (urlencoded or multipart), refusing a body over ``max_bytes``.

    Starlette reads an urlencoded body whole and spools uploads without a cap; counting the bytes
    as they arrive stops an oversized post before it fills memory or disk.
    """
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise PayloadTooLarge(f"the form is {int(length)} bytes, over the {max_bytes} byte limit")
    seen = 0
    receive = request.receive

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise PayloadTooLarge(f"the form is over the {max_bytes} byte limit")
        return message

    capped = Request(request.scope, counted)
    return await capped.form(max_files=max_files, max_fields=100, max_part_size=MAX_FORM_BYTES)


async def checked_form(request: Request, session: Session, role: str, **limits: Any) -> FormData:
    """The form of a POST that changes something: role, origin and CSRF token checked."""
    need(session, role)
    csrf.check_origin(request)
    form = await read_form(request, **limits)
    csrf.check_token(session, form)
    return form


def field(form: FormData, name: str, default: str = "") -> str:
    """A text field of ``form`` (``default`` when missing; an upload is not text)."""
    value = form.get(name)
    return value.strip() if isinstance(value, str) else default


def back(request: Request, default: str = "/") -> RedirectResponse:
    """Redirect (303, so the browser GETs) to the page the form was on."""
    return RedirectResponse(local_path(request.headers.get("referer", ""), default, True), status_code=303)


def go(url: str) -> RedirectResponse:
    """Redirect (303) to ``url``, a path on this site."""
    return RedirectResponse(url, status_code=303)
