"""A poison job among good ones: it is retried with backoff and dead-lettered; the rest flow past it.

The good runs' enqueue-to-end times are measured twice on the same two warm workers: alone, then
with the poison runs interleaved. Retries wait in the delayed set, not in a worker slot, so the
second measure may only grow by the poison attempts' own (short) work.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from jobyard.keys import Keys
from jobyard.models import Run
from tests.faults.conftest import percentile, wait_all_terminal
from tests.workers.conftest import enqueue, log_lines

GOOD_RUNS = 100
GOOD_SCRIPT_S = 0.1
POISON_EVERY = 10  # one poison run before every 10th good run: 10 of them, 40 failing attempts
MAX_RETRIES = 3
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.2, 0.5
# Allowed growth of the good runs' latency: the poison attempts take slot time themselves
# (40 attempts of a script that exits at once) and two cores are shared by everything.
LATENCY_RATIO_MAX = 1.5


def _latencies(runs: dict[str, Run], ids: list[str]) -> list[float]:
    return [float(runs[rid].ended_at or 0) - float(runs[rid].enqueued_at or 0) for rid in ids]


def _attempt_windows(store, run_id: str) -> list[tuple[float, float]]:  # type: ignore[no-untyped-def]
    """(start, end) of each attempt from the worker's SYS log lines."""
    starts, ends = [], []
    for e in store.read_log(run_id):
        if e["stream"] != "SYS":
            continue
        if e["line"].startswith("attempt ") and " on " in e["line"]:
            starts.append(e["t"])
        elif e["line"].startswith("exit code"):
            ends.append(e["t"])
    return list(zip(starts, ends, strict=True))


def test_poison_job_is_dead_lettered_and_does_not_hold_up_good_runs(
    deploy, store, workers, r, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    deploy("good", {"run.sh": f"sleep {GOOD_SCRIPT_S}\n"}, {"history_size": 1000})
    deploy(
        "poison",
        {"run.sh": 'echo "attempt $JOBYARD_ATTEMPT failing" >&2\nexit 1\n'},
        {"max_retries": MAX_RETRIES, "retry_backoff": {"min": BACKOFF_MIN_S, "max": BACKOFF_MAX_S}},
    )
    workers(1, instance="w1")
    workers(1, instance="w2")
    # given: how long the good runs take alone (this also warms both workers' package caches)
    warm = enqueue(store, "good")
    wait_all_terminal(store, [warm], timeout=20)
    alone_ids = [enqueue(store, "good") for _ in range(GOOD_RUNS)]
    alone = wait_all_terminal(store, alone_ids, timeout=60)
    # when: the same load again with poison runs interleaved
    mixed_ids, poison_ids = [], []
    for i in range(GOOD_RUNS):
        if i % POISON_EVERY == 0:
            poison_ids.append(enqueue(store, "poison"))
        mixed_ids.append(enqueue(store, "good"))
    mixed = wait_all_terminal(store, mixed_ids + poison_ids, timeout=90)
    # then: every good run succeeded, and not much later than alone
    assert {mixed[rid].status.value for rid in mixed_ids} == {"succeeded"}
    assert {alone[rid].status.value for rid in alone_ids} == {"succeeded"}
    a, m = _latencies(alone, alone_ids), _latencies(mixed, mixed_ids)
    figures = {
        "median": (percentile(a, 0.5), percentile(m, 0.5)),
        "p95": (percentile(a, 0.95), percentile(m, 0.95)),
        "max": (max(a), max(m)),
    }
    # and every poison run failed exactly max_retries + 1 times, with the backoff between attempts
    k = Keys()
    gaps = []
    for rid in poison_ids:
        run = mixed[rid]
        assert run.status.value == "failed", run
        assert run.attempt == MAX_RETRIES + 1 and run.failures == MAX_RETRIES + 1, run
        assert r.zscore(k.dead_letters, rid) is not None and run.dead_lettered_at is not None
        errs = [m for s, m in log_lines(store, rid) if s == "ERR"]
        assert errs == [f"attempt {n} failing" for n in range(1, MAX_RETRIES + 2)], errs
        windows = _attempt_windows(store, rid)
        assert len(windows) == MAX_RETRIES + 1, windows
        gaps += [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(windows)]
    assert r.zcard(k.queue_xq("normal")) == len(poison_ids)  # dramatiq's dead-letter queue too
    print(
        f"\npoison: {GOOD_RUNS} good runs ({GOOD_SCRIPT_S} s) on 2 slots, {len(poison_ids)} poison runs; "
        + ", ".join(f"{n} latency alone {x:.2f} s mixed {y:.2f} s" for n, (x, y) in figures.items())
        + f"; retry gaps min {min(gaps):.3f} s max {max(gaps):.3f} s"
    )
    assert min(gaps) >= BACKOFF_MIN_S, sorted(gaps)[:5]
    for name, (x, y) in figures.items():
        assert y <= LATENCY_RATIO_MAX * x + 0.5, f"{name} latency {x:.2f} s alone, {y:.2f} s with poison"
