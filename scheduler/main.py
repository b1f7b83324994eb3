"""``jobyard scheduler``: connect, start the health server, run one replica until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
from types import FrameType

from jobyard.health_server import SCHEDULER_METRICS_PORT, start_role_health_server
from jobyard.redis_conn import connect, wait_for_redis
from jobyard.settings import Settings
from scheduler.service import Scheduler
from scheduler.stats import MetricsHooks, SchedulerHooks

log = logging.getLogger(__name__)


def build(settings: Settings, hooks: list[SchedulerHooks] | None = None) -> Scheduler:
    """A scheduler replica on fresh Redis connections (waits for Redis; raises ``Unavailable``)."""
    # Short socket timeouts: a call must not outlive the lease it was made under by much.
    timeout_s = max(0.5, settings.leader_lease_ttl_seconds / 2)
    client = connect(settings, socket_timeout=timeout_s)
    wait_for_redis(client, settings)
    events_client = connect(settings, socket_timeout=None)
    return Scheduler(settings, client, events_client=events_client, hooks=hooks or [MetricsHooks()])


def serve(settings: Settings) -> int:
    """Run a scheduler replica until SIGTERM or SIGINT; returns the exit code (0 after a clean stop)."""
    scheduler = build(settings)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        """Ask the loop to stop (it releases the lease on the way out)."""
        del frame
        log.info("received %s: releasing the lease and stopping", signal.Signals(signum).name)
        scheduler.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    health = start_role_health_server(settings, SCHEDULER_METRICS_PORT, scheduler.is_ready)
    log.info(
        "scheduler %s started (lease %.1f s, renew every %.1f s)",
        scheduler.election.holder,
        settings.leader_lease_ttl_seconds,
        settings.leader_renew_interval_seconds,
    )
    try:
        return scheduler.run()
    finally:
        if health is not None:
            health.stop()
        scheduler.client.close()
