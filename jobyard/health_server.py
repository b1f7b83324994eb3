"""The small HTTP server of workers and schedulers: ``/metrics``, ``/healthz`` and ``/readyz``.

The API serves the same three paths on its own port; the other roles have no web server of their
own, so each starts this one in a daemon thread on ``JOBYARD_METRICS_PORT`` (worker 9101,
scheduler 9102 by default; 0 turns it off) bound to ``JOBYARD_METRICS_HOST`` (127.0.0.1 by
default; deployments set 0.0.0.0 so Prometheus and the kubelet can reach it).

- ``/healthz``: 200 ``ok`` while the process serves at all (liveness).
- ``/readyz``: 200 ``ready`` when the role's ``ready()`` says so, else 503 (readiness: Redis
  reachable, and for a worker consuming, for a scheduler leader or standby with a live lease).
  ``ready()`` runs in the request thread: keep it cheap (read a flag the role keeps up to date).
- ``/metrics``: the process registry in the format the scraper asks for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import ThreadingWSGIServer

from jobyard.errors import Unavailable
from jobyard.metrics import exposition
from jobyard.settings import Settings

log = logging.getLogger(__name__)

WORKER_METRICS_PORT = 9101
SCHEDULER_METRICS_PORT = 9102

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def resolve_metrics_port(settings: Settings, role_default: int) -> int | None:
    """The port this role serves metrics on: ``role_default`` when unset, None when set to 0 (off)."""
    if settings.metrics_port is None:
        return role_default
    return settings.metrics_port or None


class _QuietHandler(WSGIRequestHandler):
    """No access log line per probe and scrape (every few seconds, forever)."""

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing."""


class HealthServer:
    """A running health/metrics server; ``port`` is the bound port, ``stop()`` shuts it down."""

    def __init__(self, httpd: ThreadingWSGIServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host = str(httpd.server_address[0])
        self.port = int(httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL of the server (``http://host:port``)."""
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving, close the socket and wait for the thread."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout_s)


def _app(ready: Callable[[], bool], registry: CollectorRegistry) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return _text(start_response, "405 Method Not Allowed", "use GET\n", [("Allow", "GET, HEAD")])
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok\n")
        if path == "/readyz":
            try:
                is_ready = bool(ready())
            except Exception:
                # a readiness check that fails means not ready, never a crashed probe
                log.exception("readiness check failed")
                is_ready = False
            if is_ready:
                return _text(start_response, "200 OK", "ready\n")
            return _text(start_response, "503 Service Unavailable", "not ready\n")
        if path == "/metrics":
            body, content_type = exposition(environ.get("HTTP_ACCEPT"), registry=registry)
            start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
            return [body]
        return _text(start_response, "404 Not Found", "not found: try /metrics, /healthz or /readyz\n")

    return app


def _text(
    start_response: StartResponse, status: str, text: str, extra: list[tuple[str, str]] | None = None
) -> list[bytes]:
    body = text.encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    start_response(status, headers + (extra or []))
    return [body]


def start_health_server(
    port: int,
    ready: Callable[[], bool],
    registry: CollectorRegistry = REGISTRY,
    host: str = "127.0.0.1",
) -> HealthServer:
    """Serve /metrics, /healthz and /readyz on ``host:port`` in a daemon thread (port 0: any free port)."""
    try:
        httpd = make_server(
            host, port, _app(ready, registry), ThreadingWSGIServer, handler_class=_QuietHandler
        )
    except OSError as exc:
        # Unavailable: the role commands turn it into a one-line message and exit code 1.
        raise Unavailable(
            f"cannot listen on {host}:{port} for /metrics, /healthz and /readyz: {exc.strerror or exc}",
            "set JOBYARD_METRICS_PORT to a free port (0 turns this server off) or JOBYARD_METRICS_HOST",
        ) from exc
    # a short poll interval only bounds how long stop() waits; an idle wake-up costs nothing
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name=f"jobyard-health-{port}", daemon=True
    )
    thread.start()
    server = HealthServer(httpd, thread)
    log.info("serving /metrics, /healthz and /readyz on %s", server.url)
    return server


def start_role_health_server(
    settings: Settings, role_default: int, ready: Callable[[], bool]
) -> HealthServer | None:
    """Start the server as the settings say for a role (None when ``JOBYARD_METRICS_PORT=0``)."""
    port = resolve_metrics_port(settings, role_default)
    if port is None:
        log.info("metrics server disabled (JOBYARD_METRICS_PORT=0)")
        return None
    return start_health_server(port, ready, host=settings.metrics_host)
