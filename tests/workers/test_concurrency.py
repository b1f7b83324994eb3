"""Cluster-wide concurrency limits: max_concurrency and is_singleton across worker processes."""

from __future__ import annotations

import os
import signal

from jobyard.keys import Keys
from tests.helpers import wait_until
from tests.workers.conftest import enqueue, wait_status

FAST = {
    "JOBYARD_HEARTBEAT_TIMEOUT_SECONDS": "3",
    "JOBYARD_RUN_LEASE_TTL_SECONDS": "2",
    "JOBYARD_HEARTBEAT_INTERVAL_SECONDS": "0.5",
}


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted(
        [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1])
    )
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def test_max_concurrency_holds_across_workers_and_others_pass(deploy, store, workers, r) -> None:  # type: ignore[no-untyped-def]
    deploy("limited", {"run.sh": "sleep 0.3\n"}, {"max_concurrency": 2})
    deploy("free", {"run.sh": "true\n"})
    for i in range(3):
        workers(4, instance=f"host{i}")
    limited = [enqueue(store, "limited") for _ in range(20)]
    free = [enqueue(store, "free") for _ in range(5)]
    # the unlimited job is not held up behind the saturated one
    for rid in free:
        wait_status(store, rid, {"succeeded"}, timeout=20)
    assert sum(1 for rid in limited if store.get(rid).status.value == "succeeded") < 20
    peak = 0
    k = Keys()

    def all_done() -> bool:
        nonlocal peak
        peak = max(peak, int(r.zcard(k.job_slots("limited"))))
        return all(store.get(rid).terminal for rid in limited)

    wait_until(all_done, timeout=60, interval=0.05, what="the limited runs to finish")
    runs = [store.get(rid) for rid in limited]
    assert all(x.status.value == "succeeded" for x in runs)
    assert peak <= 2
    intervals = [(x.started_at, x.ended_at) for x in runs]
    assert max_overlap(intervals) == 2  # the limit was used, never passed  # type: ignore[arg-type]
    assert r.llen(k.job_parked("limited")) == 0


def test_singleton_triggered_job_runs_one_at_a_time(deploy, store, workers) -> None:  # type: ignore[no-untyped-def]
    deploy("single", {"run.sh": "sleep 0.2\n"}, {"is_singleton": True})
    workers(3)
    ids = [enqueue(store, "single") for _ in range(5)]
    runs = [wait_status(store, rid, {"succeeded"}, timeout=30) for rid in ids]
    assert max_overlap([(x.started_at, x.ended_at) for x in runs]) == 1  # type: ignore[misc]


def test_a_dead_workers_slot_is_freed_within_the_lease(deploy, store, workers, r) -> None:  # type: ignore[no-untyped-def]
    deploy(
        "one",
        {"run.sh": '[ "$1" = block ] && [ "$JOBYARD_ATTEMPT" = 1 ] && sleep 300\nexit 0\n'},
        {"max_concurrency": 1},
    )
    doomed = workers(1, instance="doomed", **FAST)
    first = enqueue(store, "one", "block")
    wait_status(store, first, {"running"})
    second = enqueue(store, "one")
    workers(2, instance="other", **FAST)
    k = Keys()
    wait_until(lambda: r.llen(k.job_parked("one")) == 1, timeout=10, what="the second run to be parked")
    # when: the worker holding the only slot dies
    os.kill(doomed.pid, signal.SIGKILL)
    # then: the slot frees after its lease, the parked run and the crashed one both finish
    assert wait_status(store, second, {"succeeded"}, timeout=30).status.value == "succeeded"
    assert wait_status(store, first, {"succeeded"}, timeout=30).attempt == 2
