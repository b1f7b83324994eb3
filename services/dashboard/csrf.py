"""Cross-site request forgery defences for the dashboard's forms.

Three layers, each enough on its own against a plain cross-site form post:

- the session cookie is ``SameSite=Strict``, so another site's page cannot send it;
- every form that changes something carries the session's CSRF token (``session.csrf_for``) in a
  hidden field, compared in constant time; a missing or wrong token is 403;
- a request whose ``Origin`` (or, without one, ``Referer``) names another host is 403 before its
  body is read.

The login form has no session yet: it uses a double-submit token instead (a random value in a
short-lived cookie and in the form, which another site can neither read nor set).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from jobyard.errors import Forbidden
from services.dashboard.session import Session, is_secure, peer_is_trusted

FIELD = "csrf_token"
LOGIN_COOKIE = "jobyard_login"
LOGIN_COOKIE_MAX_AGE_S = 3600


def _refused(why: str) -> Forbidden:
    return Forbidden(f"request refused: {why}", "reload the page and submit the form again")


def _our_hosts(request: Request) -> set[str]:
    hosts = {request.headers.get("host", "").lower()}
    if peer_is_trusted(request):
        # Behind a proxy that rewrites Host, the browser's host is in X-Forwarded-Host.
        forwarded = request.headers.get("x-forwarded-host", "")
        hosts.update(h.strip().lower() for h in forwarded.split(",") if h.strip())
    hosts.discard("")
    return hosts


def check_origin(request: Request) -> None:
    """``Forbidden`` when the browser says the request comes from another site."""
    origin = request.headers.get("origin")
    source = origin if origin is not None else request.headers.get("referer")
    if source is None:
        return  # old browsers and non-browser clients send neither; the token still decides
    if source == "null":
        raise _refused("the request comes from an opaque origin")
    netloc = urlsplit(source).netloc.lower()
    if netloc not in _our_hosts(request):
        raise _refused(f"the request comes from another site ({netloc or source!r})")


def check_token(session: Session, form: Mapping[str, Any]) -> None:
    """``Forbidden`` unless the form carries this session's CSRF token."""
    sent = form.get(FIELD)
    if not isinstance(sent, str) or not sent:
        raise _refused("the form has no CSRF token")
    if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise _refused("the form's CSRF token does not match this session")


def new_login_token() -> str:
    """A fresh double-submit token for the login form."""
    return secrets.token_urlsafe(24)


def set_login_cookie(response: Response, request: Request, value: str) -> None:
    """The login form's half of the double-submit pair (only ``/login`` ever receives it)."""
    response.set_cookie(
        LOGIN_COOKIE,
        value,
        max_age=LOGIN_COOKIE_MAX_AGE_S,
        path="/login",
        httponly=True,
        samesite="strict",
        secure=is_secure(request),
    )


def check_login_token(request: Request, form: Mapping[str, Any]) -> None:
    """``Forbidden`` unless the login form's token matches its cookie."""
    sent = form.get(FIELD)
    cookie = request.cookies.get(LOGIN_COOKIE)
    if not isinstance(sent, str) or not sent or not cookie:
        raise _refused("the login form has expired")
    if not hmac.compare_digest(sent.encode(), cookie.encode()):
        raise _refused("the login form's token does not match")
