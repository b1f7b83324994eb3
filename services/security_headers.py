"""Transport security of the API: the scheme behind a proxy, the HTTPS redirect, HSTS, safe defaults.

- **Behind a reverse proxy** that ends TLS, the request reaches us as plain http. A peer listed
  in ``JOBYARD_TRUSTED_PROXIES`` may say otherwise with ``X-Forwarded-Proto: https``; then the
  scope's scheme becomes ``https`` for everything after (HSTS here, ``Secure`` cookies in the
  dashboard, URLs). Anyone else's ``X-Forwarded-*`` headers are ignored.
- ``JOBYARD_HTTPS_REDIRECT=true``: a plain-http request gets ``308`` to the same URL on https
  (308 keeps the method and body), except the probes and ``/metrics``, which kubelets and
  Prometheus reach over the pod network by plain http.
- ``JOBYARD_HSTS_SECONDS=N`` (N > 0): https answers carry ``Strict-Transport-Security``.
- Every answer gets ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy`` unless it set its
  own (the dashboard sets a stricter set, with its Content-Security-Policy).

A pure ASGI middleware, outermost but for the request metrics.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PLAIN_HTTP_PATHS = {"/healthz", "/readyz", "/metrics"}
DEFAULT_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"))


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return ""


def _trusted(scope: Scope, networks: list[Any]) -> bool:
    client = scope.get("client")
    if not client or not networks:
        return False
    try:
        ip = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    return any(ip in net for net in networks)


def effective_scheme(scope: Scope, networks: list[Any]) -> str:
    """``https`` if the request came over TLS, to us or to a trusted proxy that says so."""
    scheme = str(scope.get("scheme", "http"))
    if scheme == "https" or not _trusted(scope, networks):
        return scheme
    proto = _header(scope, b"x-forwarded-proto").split(",")[0].strip().lower()
    return "https" if proto == "https" else scheme


class SecurityHeaders:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, get_ctx: Callable[[], Any]) -> None:
        self.app = app
        self.get_ctx = get_ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = self.get_ctx()
        settings = ctx.settings
        scheme = effective_scheme(scope, ctx.auth.trusted)
        if scheme != scope.get("scheme"):
            scope["scheme"] = scheme
        if settings.https_redirect and scheme != "https" and scope.get("path") not in PLAIN_HTTP_PATHS:
            await self._redirect(scope, send)
            return
        extra = list(DEFAULT_HEADERS)
        if scheme == "https" and settings.hsts_seconds > 0:
            extra.append((b"strict-transport-security", f"max-age={settings.hsts_seconds}".encode()))

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {bytes(k).lower() for k, _ in headers}
                headers.extend((k, v) for k, v in extra if k not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_wrapper)

    @staticmethod
    async def _redirect(scope: Scope, send: Send) -> None:
        host = _header(scope, b"host")
        if not host or any(c in host for c in "/\\@ \r\n\t"):
            host = str(scope["server"][0]) if scope.get("server") else "localhost"
        path = str(scope.get("raw_path", b"").decode("latin-1") or scope.get("path", "/"))
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        location = f"https://{host}{path}" + (f"?{query}" if query else "")
        body = b'{"error": "https only", "detail": "this server answers on https"}'
        await send(
            {
                "type": "http.response.start",
                "status": 308,
                "headers": [
                    (b"location", location.encode("latin-1")),
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def install(app: Any) -> None:
    """Add the middleware (it reads settings and trusted proxies through ``app.state.ctx``)."""
    app.add_middleware(SecurityHeaders, get_ctx=lambda: app.state.ctx)
