"""Sections (a) and (b): the spawn ceiling and bare dramatiq, the baselines jobyard is judged against.

(a) is what the machine can do at all: ``sh -c true`` through ``subprocess.run`` from 2 threads.
(b) is the peer: dramatiq's own RedisBroker on the same private Redis and its CLI worker (one
process, 2 threads: a process of its own, like a jobyard worker) running that same subprocess
in an actor, for throughput and for the enqueue-to-start latency of an idle consumer, which
polls with backoff up to 1 s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dramatiq
import psutil
import redis
from dramatiq.brokers.redis import RedisBroker

from tests.bench import dramatiq_app
from tests.helpers import REPO

SPAWN_ARGV = ("sh", "-c", "true")


def spawn_rate(n: int, threads: int = 2, spawn: Callable[[], Any] | None = None) -> dict[str, float]:
    """Spawns per second of ``spawn`` (default ``sh -c true``) from ``threads`` threads, ``n`` in all."""
    call = spawn or (lambda: subprocess.run(SPAWN_ARGV, check=False))
    per = max(1, n // threads)

    def loop() -> None:
        for _ in range(per):
            call()

    call()  # warm the page cache and the interpreter's subprocess machinery
    workers = [threading.Thread(target=loop) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    elapsed = time.perf_counter() - t0
    return {"n": per * threads, "elapsed_s": elapsed, "rate": per * threads / elapsed}


def jobyard_like_spawn(tmp: Path) -> Callable[[], Any]:
    """A raw spawn of what a jobyard worker runs for a ``.sh`` job: bash, a script, pipes, own session."""
    script = tmp / "run.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    bash = shutil.which("bash") or "/bin/bash"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp)}

    def spawn() -> None:
        proc = subprocess.Popen(
            [bash, str(script)],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
        proc.communicate()

    return spawn


class DramatiqPeer:
    """Bare dramatiq on the bench's Redis: the ``dramatiq`` CLI, 1 process with 2 threads."""

    def __init__(self, redis_url: str, log_path: Path, threads: int = 2) -> None:
        logging.getLogger("dramatiq").setLevel(logging.WARNING)
        self.redis_url = redis_url
        self.log_path = log_path
        self.threads = threads
        self.broker = RedisBroker(url=redis_url, namespace=dramatiq_app.NAMESPACE)
        # Only sent from here; the CLI's process runs tests.bench.dramatiq_app.spawn.
        self.actor = dramatiq.actor(
            _never_called, broker=self.broker, actor_name="spawn", queue_name=dramatiq_app.QUEUE
        )
        self.client = redis.Redis.from_url(redis_url)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> DramatiqPeer:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBYARD_", "dramatiq_"))}
        env["BENCH_DRAMATIQ_REDIS_URL"] = self.redis_url
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "dramatiq", "tests.bench.dramatiq_app", "--processes", "1"),
                    *("--threads", str(self.threads), "--queues", dramatiq_app.QUEUE),
                ],
                cwd=str(REPO),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._reset()
            self.actor.send(-1)
            self._wait_done(1, 30.0)  # the CLI is up and its consumer warm
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)  # the master stops its worker gracefully
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # anything of its group left behind
            self.proc = None
        self.broker.close()
        self.client.close()

    def worker_pids(self) -> list[int]:
        """The CLI's worker process (the child of its master) for CPU accounting."""
        if self.proc is None:
            return []
        try:
            return [p.pid for p in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def _reset(self) -> None:
        self.client.delete(dramatiq_app.DONE_LIST)

    def _done(self) -> list[tuple[int, float, float]]:
        out = []
        for raw in self.client.lrange(dramatiq_app.DONE_LIST, 0, -1):
            i, started, ended = raw.decode().split()
            out.append((int(i), float(started), float(ended)))
        return out

    def _wait_done(self, n: int, timeout_s: float, interval_s: float = 0.02) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the dramatiq CLI exited; see {self.log_path}")
            if self.client.llen(dramatiq_app.DONE_LIST) >= n:
                return True
            time.sleep(interval_s)
        return False

    def throughput(self, n: int, timeout_s: float) -> dict[str, Any]:
        """Runs per second from the first send until the last actor call ended.

        A warm-up message goes first: an idle consumer sleeps up to 1 s between polls, and the
        figure is meant to be dramatiq's throughput, not its idle wake-up (that is section (e)).
        """
        self._reset()
        self.actor.send(-1)
        if not self._wait_done(1, 10.0, interval_s=0.002):
            raise RuntimeError("bare dramatiq did not run its warm-up message within 10 s")
        self._reset()
        t0 = time.time()
        for i in range(n):
            self.actor.send(i)
        sent = time.time()
        complete = self._wait_done(n, timeout_s)
        done = self._done()
        end = max((e for _, _, e in done), default=time.time())
        return {
            "n": n,
            "done": len(done),
            "complete": complete,
            "enqueue_s": sent - t0,
            "elapsed_s": end - t0,
            "rate": len(done) / (end - t0) if done else 0.0,
        }

    def idle_latency(self, samples: int, gap_s: float, timeout_s: float = 10.0) -> list[float]:
        """Send-to-start delays in seconds, one message at a time, each after ``gap_s`` of idling."""
        out: list[float] = []
        for i in range(samples):
            self._reset()
            time.sleep(gap_s)
            sent = time.time()
            self.actor.send(i)
            if not self._wait_done(1, timeout_s, interval_s=0.005):
                raise RuntimeError(f"bare dramatiq did not run message {i} within {timeout_s} s")
            out.append(self._done()[0][1] - sent)
        return out


def _never_called(i: int) -> None:
    """The sending side's stand-in for ``tests.bench.dramatiq_app.spawn``."""
    raise RuntimeError("runs in the dramatiq CLI's process")
