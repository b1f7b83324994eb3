"""Scheduler benchmark (not a test): fire precision and leader handover time.

    .venv/bin/python -m tests.bench_scheduler [--jobs 20] [--seconds 15] [--handovers 10]

1. Fire skew: ``--jobs`` jobs scheduled every second (all due on the same second), one scheduler
   replica, for ``--seconds``: ``enqueued_at - scheduled_for`` (the scheduler's part); then one
   job every second with an idle worker: also ``started_at - scheduled_for`` (up to the
   script's start). p50/p99/max.
2. Handover: two replicas with the default lease (5 s, renewed every 1 s); the leader is
   SIGKILLed ``--handovers`` times; handover = kill until the standby holds the lease (and until
   its first fire); median and max. Also once with SIGTERM (clean release).

Everything runs on a private redis-server on a free port, in a temporary directory.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis

from jobyard.keys import Keys
from tests.helpers import RedisServer, Role, role_env, wait_until
from tests.scheduler.conftest import deploy, runs_of

KEYS = Keys()


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def ms(values: list[float]) -> str:
    if not values:
        return "no samples"
    return (
        f"p50 {pct(values, 0.5) * 1000:7.1f} ms   p99 {pct(values, 0.99) * 1000:7.1f} ms   "
        f"max {max(values) * 1000:7.1f} ms   (n={len(values)})"
    )


def holder_pid(r: redis.Redis) -> int | None:
    value = r.get(KEYS.leader)
    return int(value.decode().rsplit(":", 1)[1]) if value else None


def skew(r: redis.Redis, names: list[str], after: float) -> tuple[list[float], list[float]]:
    """(enqueued - scheduled, started - scheduled) of the runs scheduled after ``after``."""
    enq, started = [], []
    for name in names:
        for run in runs_of(r, name):
            if run.scheduled_for is None or run.scheduled_for < after:
                continue
            if run.enqueued_at is not None:
                enq.append(run.enqueued_at - run.scheduled_for)
            if run.started_at is not None:
                started.append(run.started_at - run.scheduled_for)
    return enq, started


def run_for(
    server: RedisServer, base: Path, tag: str, jobs: int, seconds: float, worker: bool
) -> tuple[list[float], list[float]]:
    """Schedule ``jobs`` jobs every second for ``seconds``; the skews (see ``skew``)."""
    r = server.client()
    r.flushall()
    data = base / f"{tag}-data"
    data.mkdir()
    names = [f"tick{i:02d}" for i in range(jobs)]
    for name in names:
        deploy(r, data, name, {"schedule": "* * * * * *", "overlap": "allow"})
    env = role_env(server.url, data, JOBYARD_METRICS_PORT="0")
    roles = [Role(["scheduler"], env, base / f"{tag}-scheduler.log")]
    if worker:
        roles.append(Role(["worker", "--concurrency", "4"], env, base / f"{tag}-worker.log"))
    try:
        start = time.time()
        wait_until(lambda: time.time() > start + seconds + 2, timeout=seconds + 10)
    finally:
        for role in roles:
            role.stop()
    # the first two seconds include start-up
    enq, started = skew(r, names, start + 2)
    r.close()
    return enq, started


def bench_skew(server: RedisServer, base: Path, jobs: int, seconds: float) -> None:
    enq, _ = run_for(server, base, "many", jobs, seconds, worker=False)
    print(f"fire skew, {jobs} jobs every second (all on the same second) for {seconds:.0f} s, 1 scheduler:")
    print(f"  scheduled -> enqueued  {ms(enq)}")
    enq, started = run_for(server, base, "idle", 1, seconds * 2, worker=True)
    print(f"fire skew, 1 job every second for {seconds * 2:.0f} s, 1 scheduler, 1 idle worker:")
    print(f"  scheduled -> enqueued  {ms(enq)}")
    print(f"  scheduled -> started   {ms(started)}")


def bench_handover(server: RedisServer, base: Path, rounds: int) -> None:
    r = server.client()
    r.flushall()
    data = base / "handover-data"
    data.mkdir()
    deploy(r, data, "tick", {"schedule": "* * * * * *", "overlap": "allow"})
    env = role_env(server.url, data, JOBYARD_METRICS_PORT="0")
    roles = [Role(["scheduler"], env, base / f"handover{i}.log") for i in range(2)]
    to_lease, to_fire = [], []
    clean: float | None = None
    try:
        for i in range(rounds + 1):
            pid = wait_until(lambda: holder_pid(r), timeout=20, what="a leader")
            leader = next(role for role in roles if role.pid == pid)
            term = int(r.get(KEYS.leader_term) or 0)
            # let the leader settle into its renewal rhythm
            wait_until(lambda t=term: int(r.hget(KEYS.leader_info, "term") or 0) == t, timeout=5)
            fired_before = r.zcard(KEYS.job_runs("tick"))
            wait_until(lambda n=fired_before: r.zcard(KEYS.job_runs("tick")) > n, timeout=5)
            last = i == rounds
            t0 = time.monotonic()
            leader.signal(signal.SIGTERM if last else signal.SIGKILL)
            wait_until(lambda t=term: int(r.get(KEYS.leader_term) or 0) > t, timeout=20, interval=0.005)
            took = time.monotonic() - t0
            count = r.zcard(KEYS.job_runs("tick"))
            wait_until(lambda c=count: r.zcard(KEYS.job_runs("tick")) > c, timeout=5, interval=0.005)
            if last:
                clean = took
            else:
                to_lease.append(took)
                to_fire.append(time.monotonic() - t0)
            leader.stop()
            roles.remove(leader)
            roles.append(Role(["scheduler"], env, base / f"handover{len(roles) + i + 1}.log"))
    finally:
        for role in roles:
            role.stop()
    print(f"handover after SIGKILL of the leader (lease 5 s, renew 1 s), {len(to_lease)} rounds:")
    for label, values in (("to the new lease", to_lease), ("to its first fire", to_fire)):
        print(f"  {label:<22} median {statistics.median(values):5.2f} s   max {max(values):5.2f} s")
    if clean is not None:
        print(f"handover after SIGTERM (lease released): {clean:5.2f} s")
    r.close()


def main(argv: list[str] | None = None) -> int:
    """Run both benchmarks and print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--handovers", type=int, default=10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="jobyard-bench-sched-") as tmp:
        base = Path(tmp)
        server = RedisServer(base / "redis")
        server.start()
        try:
            bench_skew(server, base, args.jobs, args.seconds)
            bench_handover(server, base, args.handovers)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
