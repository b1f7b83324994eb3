"""How much Redis memory a queued run and a kept run take (the figures of the README's sizing).

    .venv/bin/python -m tests.cluster.measure_memory [--queued 10000] [--kept 1000] [--lines 10]

Not a test: it starts a private redis-server (a free loopback port, AOF on, as deployed) and a
real worker, and reads ``INFO memory`` (``used_memory``) around each step:

- queued: ``--queued`` runs enqueued through the same script the API uses (record, history
  entry, active-set entry, queue message), no worker running;
- kept: after a flush, ``--kept`` runs of a script printing ``--lines`` lines of 60 characters,
  run to the end by one worker, then measured as kept (record, history entry, log stream), with
  the worker stopped so its own keys do not count.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import redis

from jobyard.deploy import deploy_job, update_settings
from jobyard.keys import Keys
from jobyard.runs import EnqueueSpec, RunStore
from jobyard.settings import Settings
from tests.helpers import RedisServer, Role, role_env, wait_until

KEYS = Keys()


def used(r: redis.Redis) -> int:
    """Bytes Redis has allocated for data (``used_memory``)."""
    return int(r.info("memory")["used_memory"])


def deploy(r: redis.Redis, settings: Settings, work: Path, name: str, lines: int, history: int) -> None:
    script = work / f"{name}.sh"
    body = "".join(
        f"echo 'line {i:02d} of the run log, sixty characters long ........'\n" for i in range(lines)
    )
    script.write_text("#!/bin/bash\n" + body)
    deploy_job(r, KEYS, settings, name, script, "run.sh")
    update_settings(r, KEYS, settings, name, {"history_size": history})


def enqueue(store: RunStore, job: str, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        created = store.create(EnqueueSpec(job=job))
        assert created.run_id
        ids.append(created.run_id)
    return ids


def all_ended(store: RunStore, ids: list[str]) -> bool:
    pipe = store.r.pipeline(transaction=False)
    for rid in ids:
        pipe.hget(KEYS.run(rid), "status")
    return all(s in (b"succeeded", b"failed") for s in pipe.execute())


def measure_queued(r: redis.Redis, store: RunStore, settings: Settings, work: Path, n: int) -> float:
    """Bytes per queued run."""
    deploy(r, settings, work, "queued", 1, 10_000)
    before = used(r)
    enqueue(store, "queued", n)
    return (used(r) - before) / n


def measure_kept(
    r: redis.Redis, store: RunStore, settings: Settings, work: Path, url: str, n: int, lines: int
) -> tuple[float, float]:
    """Bytes per kept run, and the log stream's share of it (``MEMORY USAGE`` of one log)."""
    deploy(r, settings, work, "kept", lines, max(n, 1))
    before = used(r)
    ids = enqueue(store, "kept", n)
    data = work / "worker-data"
    data.mkdir()
    worker = Role(
        ["worker", "--concurrency", "4"], role_env(url, data, JOBYARD_METRICS_PORT="0"), work / "w.log"
    )
    try:
        wait_until(lambda: all_ended(store, ids), timeout=600, interval=0.5, what="the runs to end")
    finally:
        worker.stop()
    for key in r.scan_iter(match=f"{KEYS.prefix}:worker*"):
        r.delete(key)
    r.delete(KEYS.workers, KEYS.heartbeats)
    log_bytes = r.memory_usage(KEYS.run_log(ids[0])) or 0
    return (used(r) - before) / n, float(log_bytes)


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--kept", type=int, default=1_000)
    parser.add_argument("--lines", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jobyard-mem-") as tmp:
        work = Path(tmp)
        server = RedisServer(work / "redis")
        server.start()
        try:
            r = server.client()
            settings = Settings(redis_url=server.url, data_dir=work)  # type: ignore[arg-type]
            store = RunStore(r, KEYS, settings)
            t = time.monotonic()
            per_queued = measure_queued(r, store, settings, work, args.queued)
            took = time.monotonic() - t
            print(f"queued run: {per_queued:,.0f} bytes each ({args.queued:,} runs, {took:.1f} s)")
            r.flushall()
            per_kept, log = measure_kept(r, store, settings, work, server.url, args.kept, args.lines)
            print(
                f"kept run with a {args.lines}-line log: {per_kept:,.0f} bytes each "
                f"({args.kept:,} runs; the log stream alone {log:,.0f} bytes)"
            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
