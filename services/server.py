"""Serving the API: wait for Redis, then run uvicorn until SIGTERM or Ctrl-C."""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

import uvicorn

from jobyard.redis_conn import connect, describe, wait_for_redis
from jobyard.settings import Settings
from services.app import create_app

log = logging.getLogger(__name__)

# Open connections (log streams above all) get this long to finish after SIGTERM.
GRACEFUL_SHUTDOWN_S = 5.0
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Server(uvicorn.Server):
    """uvicorn's server, except that a SIGTERM ends the process with exit code 0.

    uvicorn re-raises the signal it caught once it has shut down, so the process would die of
    SIGTERM after a clean, complete shutdown; supervisors then report a failure.
    """

    on_exit: Callable[[], None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self.on_exit is not None:
            self.on_exit()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Serve the API on ``host:port`` (default the settings') until stopped.

    Raises ``jobyard.errors.Unavailable`` when Redis does not answer within the connect timeout.
    """
    client = connect(settings)
    try:
        wait_for_redis(client, settings)
    finally:
        client.close()
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host or settings.api_host,
        port=port or settings.api_port,
        loop="uvloop" if _available("uvloop") else "asyncio",
        http="httptools" if _available("httptools") else "h11",
        lifespan="on",
        access_log=False,
        log_config=None,  # keep jobyard's logging set-up (text or JSON)
        server_header=False,
        # X-Forwarded-For is read by services.auth, and only from JOBYARD_TRUSTED_PROXIES.
        proxy_headers=False,
        timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S),
    )
    log.info("API on http://%s:%s (Redis %s)", config.host, config.port, describe(settings))
    server = _Server(config)
    ctx = app.state.ctx

    def stopping() -> None:
        ctx.stopping = True  # a plain flag: safe to set from a signal handler

    server.on_exit = stopping
    # What start-up built (modules, the app and its routes, schemas: most of the process's
    # objects) lives as long as the process: left out of every garbage collection from now on.
    # Full collections walked all of it while a batch's thousands of fresh objects were alive
    # (~20% of a batch's CPU).
    gc.collect()
    gc.freeze()
    server.run()
    log.info("API stopped")
