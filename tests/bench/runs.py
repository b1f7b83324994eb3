"""Sections (c), (e) and (g): jobyard end to end, idle enqueue-to-start latency, a failing workload.

Runs go in through the HTTP API (the batch route for throughput, single requests for latency)
and are followed in Redis directly (the job's active set, then the run records), so watching
costs the API nothing.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from jobyard.keys import Keys
from jobyard.models import TERMINAL
from tests.bench.cluster import Cluster, CpuMeter

KEYS = Keys()
TERMINAL_VALUES = {s.value.encode() for s in TERMINAL}
BATCH = 1000


def wait_terminal(cluster: Cluster, run_id: str, timeout_s: float = 30.0, interval_s: float = 0.002) -> None:
    """Wait until the run's status is terminal (polls one hash field)."""
    deadline = time.monotonic() + timeout_s
    key = KEYS.run(run_id)
    while time.monotonic() < deadline:
        if cluster.client.hget(key, "status") in TERMINAL_VALUES:
            return
        time.sleep(interval_s)
    raise RuntimeError(f"run {run_id} did not end within {timeout_s} s")


def command_delta(cluster: Cluster, before: dict[str, tuple[int, int]]) -> dict[str, list[int]]:
    """Redis command -> [calls, server us] since ``before`` (a ``Cluster.command_stats()``)."""
    out: dict[str, list[int]] = {}
    for name, (calls, usec) in cluster.command_stats().items():
        was = before.get(name, (0, 0))
        if calls > was[0]:
            out[name] = [calls - was[0], usec - was[1]]
    return out


def end_to_end(
    cluster: Cluster,
    job: str,
    n: int,
    timeout_s: float,
    item: Callable[[int], dict[str, Any]] | None = None,
    count_redis: bool = False,
) -> dict[str, Any]:
    """Enqueue ``n`` runs of ``job`` in batches of 1,000 and time them until every one is terminal.

    ``count_redis``: also return Redis's command counts from the first enqueue until every run
    ended (before the bench reads the records back), as ``redis_commands``.
    """
    wait_terminal(cluster, cluster.enqueue(job))  # warm: package extracted, entry chosen
    items = [{"job": job, **(item(i) if item else {})} for i in range(n)]
    meter = CpuMeter(cluster.pids()).start()
    stats_before = cluster.command_stats() if count_redis else {}
    t0 = time.time()
    ids: list[str] = []
    for start in range(0, n, BATCH):
        ids += cluster.enqueue_batch(items[start : start + BATCH])
    enqueued = time.time()
    complete = cluster.wait_idle(job, timeout_s)
    cpu = meter.stop()
    redis_calls = command_delta(cluster, stats_before) if count_redis else {}
    records = cluster.runs(ids)
    statuses = Counter(r.status.value if r else "missing" for r in records)
    ends = [r.ended_at for r in records if r is not None and r.ended_at is not None and r.terminal]
    end = max(ends) if ends else time.time()
    done = len(ends)
    logged = sum(1 for length in cluster.log_lengths(ids) if length > 0)
    attempts = sum(r.attempt for r in records if r is not None)
    elapsed = end - t0
    return {
        "n": n,
        "done": done,
        "complete": complete,
        "statuses": dict(statuses),
        "with_log": logged,
        "attempts": attempts,
        "enqueue_s": enqueued - t0,
        "elapsed_s": elapsed,
        "rate": done / elapsed if done else 0.0,
        "attempt_rate": attempts / elapsed if attempts else 0.0,
        "cpu_s": cpu,
        "cpu_ms_per_run": {name: 1000 * s / max(1, done) for name, s in cpu.items()},
        "redis_commands": redis_calls,
    }


def idle_latency(
    cluster: Cluster, job: str, samples: int, *, long_gap_every: int = 0, timeout_s: float = 10.0
) -> dict[str, Any]:
    """Enqueue one run at a time on an idle worker: ``started_at - enqueued_at`` from each record.

    Between runs the bench waits 5-50 ms (the worker is back in its blocking wait by then); every
    ``long_gap_every``-th run waits 1.5 s instead, long enough for a polling consumer to back off.
    """
    latencies: list[float] = []
    long_gap: list[float] = []
    request_s: list[float] = []
    for i in range(samples):
        is_long = bool(long_gap_every) and i % long_gap_every == long_gap_every - 1
        time.sleep(1.5 if is_long else random.uniform(0.005, 0.05))
        t = time.perf_counter()
        run_id = cluster.enqueue(job)
        request_s.append(time.perf_counter() - t)
        wait_terminal(cluster, run_id, timeout_s)
        run = cluster.run(run_id)
        if run is None or run.started_at is None or run.enqueued_at is None:
            raise RuntimeError(f"run {run_id} has no start time: {run}")
        delay = run.started_at - run.enqueued_at
        latencies.append(delay)
        if is_long:
            long_gap.append(delay)
    return {"latency_s": latencies, "after_long_idle_s": long_gap, "request_s": request_s}


def failing_workload(cluster: Cluster, job: str, n: int, timeout_s: float) -> dict[str, Any]:
    """(g): every 10th run fails (twice: max_retries 1), the others succeed; same shape as (c)."""
    result = end_to_end(
        cluster, job, n, timeout_s, item=lambda i: {"arguments": ["fail"]} if i % 10 == 9 else {}
    )
    result["expected_failed"] = n // 10
    return result
