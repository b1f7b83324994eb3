"""``jobyard worker``: start a worker process and stop it gracefully on SIGTERM / SIGINT."""

from __future__ import annotations

import gc
import logging
import os
import resource
import signal
import threading
from types import FrameType

from jobyard.health_server import HealthServer, start_role_health_server
from jobyard.settings import Settings
from workers.metrics_hooks import MetricsHooks
from workers.worker import Worker

log = logging.getLogger(__name__)

WORKER_METRICS_PORT = 9101


def serve(settings: Settings, concurrency: int | None = None) -> int:
    """Run a worker until it is stopped; returns the exit code."""
    if os.geteuid() == 0 and not settings.run_as:
        log.warning(
            "running as root without JOBYARD_RUN_AS: scripts run as root too; "
            "set JOBYARD_RUN_AS to an unprivileged user"
        )
    # No core files from scripts (a core holds the environment, secrets included); inherited by
    # every child, so unconfined runs need no preexec step.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    worker = Worker(settings, concurrency)
    worker.hooks.add(MetricsHooks())
    health = _start_health(settings, worker)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        # the handler runs on the main thread, which is the dispatcher: hand off to a thread
        threading.Thread(target=worker.request_stop, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # What start-up made lives as long as the process: out of the collector's way, so that the
    # collections a run's short-lived objects trigger do not walk every module, class and client.
    gc.collect()
    gc.freeze()
    try:
        return worker.run()
    finally:
        if health is not None:
            health.stop()


def _start_health(settings: Settings, worker: Worker) -> HealthServer | None:
    """/metrics, /healthz and /readyz on the worker's metrics port (JOBYARD_METRICS_PORT=0: none)."""
    return start_role_health_server(settings, WORKER_METRICS_PORT, worker.ready)
