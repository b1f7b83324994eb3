"""Strict priority across worker processes, and optional aging against starvation."""

from __future__ import annotations

import random
import time

from jobyard.models import Priority
from tests.workers.conftest import enqueue, wait_status

SLOT_FREE_WINDOW_S = 0.05  # a high run enqueued this close to a low run's start may have raced it
# started_at is the worker's clock as it sends the fetch that claims the run, not the moment Redis
# runs it: two workers' fetches can reach Redis in the other order than their stamps (seen: 0.7 ms)
STAMP_SLACK_S = 0.005


def test_no_low_run_starts_while_a_high_one_waits_across_three_workers(deploy, store, workers) -> None:  # type: ignore[no-untyped-def]
    deploy("work", {"run.sh": "sleep 0.05\n"}, {"history_size": 1000})
    for i in range(3):
        workers(1, instance=f"w{i}")
    rng = random.Random(7)
    ids: list[str] = []
    # given: a backlog of low runs, then a mixed stream arriving while they are worked on
    ids += [enqueue(store, "work", priority=Priority.LOW) for _ in range(40)]
    for _ in range(40):
        level = rng.choice([Priority.HIGH, Priority.NORMAL, Priority.LOW])
        ids.append(enqueue(store, "work", priority=level))
    runs = [wait_status(store, rid, {"succeeded"}, timeout=60) for rid in ids]
    highs = [x for x in runs if x.priority is Priority.HIGH]
    normals = [x for x in runs if x.priority is Priority.NORMAL]
    lows = [x for x in runs if x.priority is Priority.LOW]
    assert highs and normals and lows
    # then: no lower run started after a higher one had been waiting
    for lower, higher_ones in ((lows, highs + normals), (normals, highs)):
        for lo in lower:
            for hi in higher_ones:
                waited = hi.enqueued_at + SLOT_FREE_WINDOW_S < lo.started_at  # type: ignore[operator]
                assert not (waited and hi.started_at > lo.started_at + STAMP_SLACK_S), (lo, hi)  # type: ignore[operator]


def test_aging_lets_a_low_run_through_a_steady_high_stream(deploy, store, workers) -> None:  # type: ignore[no-untyped-def]
    deploy("busy", {"run.sh": "sleep 0.05\n"}, {"history_size": 1000})
    workers(1, JOBYARD_PRIORITY_AGING_SECONDS="0.5")
    highs = [enqueue(store, "busy", priority=Priority.HIGH) for _ in range(5)]
    low = enqueue(store, "busy", priority=Priority.LOW)
    # a steady stream: a new high run every 50 ms for 2.5 s, faster than one slot works them off
    for _ in range(50):
        highs.append(enqueue(store, "busy", priority=Priority.HIGH))
        time.sleep(0.05)
    done_low = wait_status(store, low, {"succeeded"}, timeout=60)
    done_highs = [wait_status(store, h, {"succeeded"}, timeout=60) for h in highs]
    # it rose to normal after 0.5 s and to high after 1 s: it started before the high stream ended
    assert done_low.started_at < max(h.started_at for h in done_highs)  # type: ignore[operator,type-var]
    assert done_low.started_at - done_low.enqueued_at >= 0.5  # type: ignore[operator]
