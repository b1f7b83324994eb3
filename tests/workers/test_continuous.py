"""Continuous jobs: one instance per host or one per cluster, restarts with backoff, stop/start, redeploy."""

from __future__ import annotations

import itertools
import json
import os
import signal

from jobyard.keys import Keys
from jobyard.models import RunStatus
from tests.helpers import wait_until
from workers.continuous import next_backoff

FAST = {
    "JOBYARD_HEARTBEAT_TIMEOUT_SECONDS": "3",
    "JOBYARD_RUN_LEASE_TTL_SECONDS": "2",
    "JOBYARD_HEARTBEAT_INTERVAL_SECONDS": "0.5",
}

LOOP = """#!/bin/bash
echo "up on $JOBYARD_INSTANCE_ID port=$JOBYARD_PORT webjobs_port=$WEBJOBS_PORT v=VERSION"
while [ ! -f "$JOBYARD_SHUTDOWN_FILE" ]; do sleep 0.05; done
echo "shutting down"
"""


def running_runs(store, job: str):  # type: ignore[no-untyped-def]
    return [x for x in store.list_for_job(job, limit=100) if x.status is RunStatus.RUNNING]


def instances(r, job: str) -> dict[str, dict]:  # type: ignore[no-untyped-def,type-arg]
    return {k.decode(): json.loads(v) for k, v in r.hgetall(Keys().job_instances(job)).items()}


def test_backoff_doubles_to_a_minute_and_resets_after_a_stable_run() -> None:
    delays = []
    d = 0.0
    for _ in range(9):
        d = next_backoff(d, uptime_s=0.5)
        delays.append(d)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert next_backoff(60, uptime_s=121) == 1


def test_one_instance_per_host_and_stop_start(deploy, store, workers, r) -> None:  # type: ignore[no-untyped-def]
    deploy(
        "daemon", {"run.sh": LOOP.replace("VERSION", "1")}, {"stopping_wait_time": 2}, job_type="continuous"
    )
    # two processes on host-a share a host lease; host-b runs its own
    workers(1, instance="host-a", **FAST)
    workers(1, instance="host-a", **FAST)
    workers(1, instance="host-b", **FAST)
    wait_until(lambda: len(running_runs(store, "daemon")) == 2, timeout=15, what="two instances")
    hosts = sorted(x.worker for x in running_runs(store, "daemon"))
    assert hosts == ["host-a", "host-b"]
    assert {v["status"] for v in instances(r, "daemon").values()} == {"running"}
    first = running_runs(store, "daemon")[0].id
    wait_until(
        lambda: any(
            "port=" in e["line"] and "webjobs_port=" in e["line"] and "port= " not in e["line"]
            for e in store.read_log(first)
        ),
        timeout=10,
        what="the instance's first line",
    )
    # when: stopped through the job record (what POST /api/jobs/daemon/stop writes)
    k = Keys()
    r.hset(k.job("daemon"), "stopped", 1)
    wait_until(lambda: not running_runs(store, "daemon"), timeout=15, what="instances to stop")
    runs = store.list_for_job("daemon", limit=10)
    assert all(x.status is RunStatus.CANCELLED for x in runs)
    assert all(
        ("INFO", "shutting down") in [(e["stream"], e["line"]) for e in store.read_log(x.id)] for x in runs
    )
    wait_until(lambda: {v["status"] for v in instances(r, "daemon").values()} == {"stopped"}, timeout=10)
    # and started again
    r.hset(k.job("daemon"), "stopped", 0)
    wait_until(lambda: len(running_runs(store, "daemon")) == 2, timeout=15, what="instances to start again")


def test_singleton_moves_when_its_holder_dies(deploy, store, workers, r) -> None:  # type: ignore[no-untyped-def]
    script = {"run.sh": LOOP.replace("VERSION", "1")}
    deploy("single", script, {"is_singleton": True}, job_type="continuous")
    a = workers(1, instance="host-a", **FAST)
    wait_until(lambda: len(running_runs(store, "single")) == 1, timeout=15, what="the singleton to start")
    workers(1, instance="host-b", **FAST)
    wait_until(lambda: instances(r, "single").get("host-b", {}).get("status") == "inactive", timeout=10)
    assert [x.worker for x in running_runs(store, "single")] == ["host-a"]
    # when: the holder is killed
    os.kill(a.pid, signal.SIGKILL)
    # then: host-b takes over within the lease time (2 s) plus a reconcile pass
    wait_until(
        lambda: (
            [x.worker for x in running_runs(store, "single")] == ["host-b"]
            or any(
                x.worker == "host-b" and x.status is RunStatus.RUNNING
                for x in store.list_for_job("single", limit=10)
            )
        ),
        timeout=15,
        what="host-b to take over",
    )


def test_a_crashing_job_restarts_with_growing_delays(deploy, store, workers) -> None:  # type: ignore[no-untyped-def]
    deploy("crash", {"run.sh": "echo crash; exit 3\n"}, job_type="continuous")
    workers(1)

    def ended():  # type: ignore[no-untyped-def]
        return [x for x in store.list_for_job("crash", limit=10) if x.terminal]

    wait_until(lambda: len(ended()) >= 4, timeout=25, what="four ended starts")
    runs = sorted(ended(), key=lambda x: x.started_at)[:4]
    assert all(x.status is RunStatus.FAILED and x.exit_code == 3 for x in runs)
    gaps = [b.started_at - a.ended_at for a, b in itertools.pairwise(runs)]  # type: ignore[operator]
    assert 0.8 < gaps[0] < 1.8 and 1.8 < gaps[1] < 2.8 and 3.8 < gaps[2] < 5.0, gaps


def test_redeploy_replaces_the_process(deploy, store, workers) -> None:  # type: ignore[no-untyped-def]
    deploy("svc", {"run.sh": LOOP.replace("VERSION", "1")}, {"stopping_wait_time": 2}, job_type="continuous")
    workers(1)
    wait_until(lambda: len(running_runs(store, "svc")) == 1, timeout=15)
    old = running_runs(store, "svc")[0]
    deploy("svc", {"run.sh": LOOP.replace("VERSION", "2")}, {"stopping_wait_time": 2}, job_type="continuous")

    def new_one():  # type: ignore[no-untyped-def]
        runs = [x for x in running_runs(store, "svc") if x.id != old.id]
        return runs[0] if runs else None

    new = wait_until(new_one, timeout=15, what="the new version to start")
    assert store.get(old.id).status is RunStatus.CANCELLED
    wait_until(lambda: any("v=2" in e["line"] for e in store.read_log(new.id)), timeout=10)
