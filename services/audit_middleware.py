"""Writes an audit event (``jobyard.audit``) for every admin action the API answers.

Which requests are admin actions is told by the role check itself: ``services.deps.RoleBearer``
notes the role a route needs, and the caller once known, in the request's scope state
(``note_actor``). After the response, a request that changes something (not GET/HEAD/OPTIONS)
on a route needing ``admin`` is recorded with its status, including the 403s of tokens whose
role may not (401s are not: see ``__call__``). A failed audit write is logged and does not
fail the request, which has already been answered.

A pure ASGI middleware: the log streams pass through untouched and no body is read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobyard import audit
from jobyard.redis_conn import CONNECTION_ERRORS

log = logging.getLogger(__name__)

READ_METHODS = {"GET", "HEAD", "OPTIONS"}
AUDITED_ROLE = "admin"


def note_actor(scope: Scope, role: str, principal: Any = None) -> None:
    """Tell the audit log which role a request needs and (once known) who is asking."""
    state = scope.setdefault("state", {})
    state["required_role"] = role
    if principal is not None:
        state["principal"] = principal


class AuditMiddleware:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, get_ctx: Callable[[], Any]) -> None:
        self.app = app
        self.get_ctx = get_ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method", "GET") in READ_METHODS:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # Not 401/429: a caller without a valid token could flood the capped stream with them
            # and push real events out (the failed-authentication limiter counts those).
            if state.get("required_role") == AUDITED_ROLE and status["code"] not in (401, 429):
                await self._record(scope, state, status["code"])

    async def _record(self, scope: Scope, state: dict[str, Any], status: int) -> None:
        ctx = self.get_ctx()
        who = state.get("principal")
        route = scope.get("route")
        action = getattr(route, "operation_id", None) or getattr(route, "name", None) or "unknown"
        event = audit.AuditEvent(
            action=str(action),
            target=audit.target_of(dict(scope.get("path_params") or {})),
            actor_id=getattr(who, "token_id", ""),
            actor_name=getattr(who, "name", ""),
            actor_role=getattr(who, "role", ""),
            method=str(scope.get("method", "")),
            path=str(scope.get("path", "")),
            status=status,
            address=ctx.auth.client_address(HTTPConnection(scope)),
        )
        try:
            await audit.arecord(ctx.redis, ctx.keys, event, ctx.settings.audit_max_events)
        except CONNECTION_ERRORS as exc:
            log.warning(
                "audit event %s %s not written: Redis unreachable (%s)", event.action, event.target, exc
            )
        except Exception:
            log.exception("audit event %s %s not written", event.action, event.target)


def install(app: Any) -> None:
    """Add the middleware to the app (it finds Redis through ``app.state.ctx``)."""
    app.add_middleware(AuditMiddleware, get_ctx=lambda: app.state.ctx)
