"""Section (f): how long a run waits after its worker is SIGKILLed until another worker restarts it.

Two workers; a long run starts on one of them, that worker is killed with SIGKILL (its script
processes are killed by the bench right after, as a host reboot would), and the figure is the
next attempt's ``started_at`` (written by the surviving worker's claim) minus the kill time.
"""

from __future__ import annotations

import time
from typing import Any

from jobyard.models import Run, RunStatus
from jobyard.settings import Settings
from tests.bench.cluster import Cluster
from tests.bench.runs import wait_terminal
from tests.helpers import Role


def estimated_bound_s(heartbeat_timeout_s: float, lease_s: float, settings: Settings | None = None) -> float:
    """The recovery bound the settings imply (see the module docstring of ``jobyard.queue``).

    The survivor's heartbeat (every ``heartbeat_interval``) re-queues a dead worker's messages once
    its heartbeat is ``heartbeat_timeout`` old; the survivor then fetches it within its idle wait;
    the claim succeeds once the run's lease has expired.
    """
    s = settings or Settings()
    return max(heartbeat_timeout_s, lease_s) + s.heartbeat_interval_seconds + s.idle_wait_seconds


def _wait_run(cluster: Cluster, run_id: str, ok: Any, timeout_s: float, what: str) -> Run:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = cluster.run(run_id)
        if run is not None and ok(run):
            return run
        time.sleep(0.01)
    raise RuntimeError(f"run {run_id}: {what} did not happen within {timeout_s:.0f} s")


def recovery(
    cluster: Cluster,
    job: str,
    trials: int,
    *,
    heartbeat_timeout_s: float | None,
    lease_s: float | None,
) -> dict[str, Any]:
    """Kill the worker of a running run ``trials`` times; seconds from each kill to the next start.

    ``None`` for a setting: the default (the worker's environment leaves it unset).
    """
    defaults = Settings()
    hb = heartbeat_timeout_s if heartbeat_timeout_s is not None else defaults.heartbeat_timeout_seconds
    lease = lease_s if lease_s is not None else defaults.run_lease_ttl_seconds
    env: dict[str, str] = {}
    if heartbeat_timeout_s is not None:
        env["JOBYARD_HEARTBEAT_TIMEOUT_SECONDS"] = str(heartbeat_timeout_s)
    if lease_s is not None:
        env["JOBYARD_RUN_LEASE_TTL_SECONDS"] = str(lease_s)
    bound = estimated_bound_s(hb, lease, defaults)
    workers: list[Role] = [cluster.start_worker(**env) for _ in range(2)]
    times: list[float] = []
    try:
        for trial in range(trials):
            run_id = cluster.enqueue(job)
            first = _wait_run(
                cluster, run_id, lambda r: r.status == RunStatus.RUNNING and r.worker_pid, 30, "start"
            )
            victim = next((w for w in workers if w.pid == first.worker_pid), None)
            if victim is None:
                raise RuntimeError(f"run {run_id} runs on pid {first.worker_pid}, not on a bench worker")
            killed_at = time.time()
            orphans = cluster.kill_worker(victim)
            workers.remove(victim)
            cluster.reap(orphans)
            again = _wait_run(
                cluster,
                run_id,
                lambda r, a=first.attempt: r.attempt > a and r.status == RunStatus.RUNNING and r.started_at,
                bound + 30,
                "the next attempt",
            )
            assert again.started_at is not None
            times.append(again.started_at - killed_at)
            res = cluster.http.post(f"/api/runs/{run_id}/cancel")
            if res.status_code not in (200, 202):
                raise RuntimeError(f"cancel of {run_id} failed: {res.status_code} {res.text}")
            wait_terminal(cluster, run_id, timeout_s=30)
            if trial < trials - 1:
                workers.append(cluster.start_worker(**env))
    finally:
        for w in workers:
            cluster.stop_worker(w)
    return {
        "heartbeat_timeout_s": hb,
        "lease_s": lease,
        "estimated_bound_s": bound,
        "recovery_s": times,
    }
