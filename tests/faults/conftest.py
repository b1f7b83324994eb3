"""Fixtures for fault-injection tests: the worker fixtures, a private Redis to kill, an API process.

The worker fixtures (``deploy``, ``workers``, ``store``, ``settings``) come from
``tests/workers/conftest.py``; a test module that must kill Redis overrides ``redis_url`` with
``private_redis_url`` so that every one of them talks to a server of its own (AOF
``appendfsync always``), never to the session's.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from jobyard.models import Run
from jobyard.runs import RunStore
from tests.helpers import RedisServer, Role, wait_until
from tests.services.conftest import Api, start_api_process
from tests.workers.conftest import deploy, settings, store, workers  # noqa: F401 - fixtures

# Fast crash recovery: dramatiq re-queues a dead worker's messages after 3 s without a heartbeat,
# and a run's lease (renewed every heartbeat) lapses 2 s after its worker stops renewing it.
FAST_RECOVERY = {
    "JOBYARD_HEARTBEAT_TIMEOUT_SECONDS": "3",
    "JOBYARD_RUN_LEASE_TTL_SECONDS": "2",
    "JOBYARD_HEARTBEAT_INTERVAL_SECONDS": "0.5",
}
FAULT_ADMIN_TOKEN = "faults-admin-token-0123456789abcdef"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone (it may be killed), fsyncing its AOF on every write."""
    server = RedisServer(tmp_path / "redis-private", appendfsync="always")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_redis_url(private_redis: RedisServer) -> str:
    """Override ``redis_url`` with this in a module to point every fixture at ``private_redis``."""
    return private_redis.url


@pytest.fixture
def start_api(tmp_path: Path) -> Iterator[Callable[..., Api]]:
    """Start ``jobyard api`` processes (admin token ``FAULT_ADMIN_TOKEN``), stopped by pid at the end."""
    started: list[Api] = []

    def start(redis_url: str, **env: str) -> Api:
        data = tmp_path / f"api-data{len(started)}"
        data.mkdir()
        api = start_api_process(
            redis_url,
            data,
            tmp_path / f"api{len(started)}.log",
            JOBYARD_ADMIN_TOKEN=FAULT_ADMIN_TOKEN,
            **env,
        )
        started.append(api)
        return api

    yield start
    for api in started:
        api.role.stop()


@pytest.fixture(autouse=True)
def no_script_left(tmp_path: Path) -> Iterator[Callable[[], list[psutil.Process]]]:
    """Scripts of this test still alive (their working directory is under ``tmp_path``).

    After the test any that are left are killed by pid, so one failing test cannot leak
    processes into the next; tests assert on the returned list themselves.
    """
    root = str(tmp_path)

    def left() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cwd", "status", "name"]):
            try:
                cwd = proc.info["cwd"] or ""
                ours = cwd.startswith(root) and proc.pid != os.getpid()
                if ours and proc.info["status"] != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except psutil.Error:
                pass
        return [p for p in found if not _is_role(p)]

    yield left
    for proc in left():
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)


def _is_role(proc: psutil.Process) -> bool:
    """A jobyard role process (the test stops those itself), not a script."""
    try:
        return "jobyard" in proc.cmdline()[1:3]
    except psutil.Error:
        return False


def kill_role(role: Role, sig: int = signal.SIGKILL) -> float:
    """Signal a role process by its pid, wait for it to be gone (reaped); the epoch time of the kill."""
    at = time.time()
    role.signal(sig)
    role.proc.wait(20)
    return at


@dataclass(frozen=True)
class Execution:
    """A line a script appended to its side-effect file: ``<tag> <run id> <attempt> <epoch s> <instance>``."""

    tag: str
    run_id: str
    attempt: int
    t: float
    instance: str


# Appended by a script to record that (and when) it ran; atomic for lines this short (O_APPEND).
def side_effect(path: Path, tag: str) -> str:
    """The bash line that appends this attempt's execution record with tag ``tag`` to ``path``."""
    fields = "$JOBYARD_RUN_ID $JOBYARD_ATTEMPT $EPOCHREALTIME $JOBYARD_INSTANCE_ID"
    return f'echo "{tag} {fields}" >> {shlex.quote(str(path))}\n'


def read_executions(path: Path) -> list[Execution]:
    """Every execution record the scripts appended to ``path``, in file order."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        tag, run_id, attempt, t, instance = line.split()
        out.append(Execution(tag, run_id, int(attempt), float(t), instance))
    return out


def attempt_starts(run_store: RunStore, run_id: str) -> list[float]:
    """Epoch times at which each attempt of a run started (the worker's ``attempt N on`` log line)."""
    return [
        e["t"]
        for e in run_store.read_log(run_id)
        if e["stream"] == "SYS" and e["line"].startswith("attempt ") and " on " in e["line"]
    ]


def wait_all_terminal(run_store: RunStore, run_ids: list[str], timeout: float) -> dict[str, Run]:
    """Wait until every run is terminal; the runs (fails naming how many are not, and their states)."""
    pending = set(run_ids)
    done: dict[str, Run] = {}

    def check() -> bool:
        for rid in list(pending):
            run = run_store.get(rid)
            if run.status.terminal:
                done[rid] = run
                pending.discard(rid)
        return not pending

    try:
        wait_until(check, timeout=timeout, interval=0.2, what="every run to end")
    except AssertionError:
        states = Counter(run_store.get(rid).status.value for rid in pending)
        raise AssertionError(f"{len(pending)} runs never ended: {dict(states)}") from None
    return done


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]
