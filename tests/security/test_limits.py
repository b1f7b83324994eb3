"""Runs that try to exhaust their host end failed, naming the limit; the worker and its other runs go on.

Every hostile script is bounded in itself (a fixed number of allocations, forks, files or
seconds) so that a broken limit fails the test instead of taking the machine down.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobyard.runs import RunStore
from tests.helpers import Role, wait_until
from tests.workers.conftest import enqueue, log_lines, wait_status
from workers.cgroups import CgroupHost

HOST = CgroupHost.detect()
NEEDS_CGROUP = pytest.mark.skipif(
    not HOST.available, reason=f"this host offers no writable cgroup ({HOST.reason})"
)

# Allocates 1 MB strings (written, so the pages are real) up to 2 GB.
HOG = """\
import sys
chunks = []
for i in range(2048):
    chunks.append(b"x" * (1024 * 1024))
    if i % 64 == 0:
        print(f"{i} MB", flush=True)
print("allocated 2 GB: no memory limit", flush=True)
"""

# Forks up to 300 children that sleep (and note their pids in the data path) until killed.
FORKER = """\
import os, sys, time
data = os.environ["JOBYARD_DATA_PATH"]
for i in range(300):
    try:
        pid = os.fork()
    except OSError as exc:
        print(f"fork {i} refused: {exc}", file=sys.stderr, flush=True)
        time.sleep(20)  # the limit's watcher ends the run before this does
        sys.exit(3)
    if pid == 0:
        with open(os.path.join(data, f"kid-{os.getpid()}"), "w"):
            pass
        time.sleep(30)
        os._exit(0)
print("forked 300 children: no process limit", flush=True)
"""

# Opens /dev/null up to 100,000 times without closing.
OPENER = """\
files = []
for i in range(100_000):
    files.append(open("/dev/null"))
print("opened 100000 files: no open file limit", flush=True)
"""

# Burns CPU for up to 20 s of wall time.
SPINNER = """\
import time
end = time.monotonic() + 20
n = 0
while time.monotonic() < end:
    n += 1
print("spun 20 s: no CPU limit", flush=True)
"""

STEADY = "echo start; sleep 1; echo steady done\n"


def _sys_lines(store: RunStore, run_id: str) -> list[str]:
    return [line for stream, line in log_lines(store, run_id) if stream == "SYS"]


def _attack(
    deploy: Callable[..., Any],
    workers: Callable[..., Role],
    store: RunStore,
    script: str,
    limits: dict[str, Any],
    **worker_env: str,
) -> tuple[Role, str, str]:
    """Run ``script`` with ``limits`` next to a steady run on one worker; both end; the worker lives."""
    deploy("hostile", {"run.py": script}, {"timeout": 60, **limits})
    deploy("steady", {"run.sh": STEADY})
    worker = workers(concurrency=2, **worker_env)
    hostile_id = enqueue(store, "hostile")
    steady_id = enqueue(store, "steady")
    steady = wait_status(store, steady_id, {"succeeded", "failed"}, timeout=30)
    assert steady.status.value == "succeeded", (steady.error, log_lines(store, steady_id))
    wait_status(store, hostile_id, {"succeeded", "failed", "timed_out"}, timeout=40)
    assert worker.alive(), worker.output()
    # the worker still takes work after the attack
    after = wait_status(store, enqueue(store, "steady"), {"succeeded", "failed"}, timeout=30)
    assert after.status.value == "succeeded", after.error
    return worker, hostile_id, steady_id


@pytest.mark.parametrize("cgroups", ["auto", "off"])
def test_a_script_that_allocates_without_end_fails_naming_the_memory_limit(
    deploy: Callable[..., Any], workers: Callable[..., Role], store: RunStore, cgroups: str
) -> None:
    _, run_id, _ = _attack(deploy, workers, store, HOG, {"max_memory_mb": 64}, JOBYARD_CGROUPS=cgroups)
    run = store.get(run_id)
    assert run.status.value == "failed", (run.error, log_lines(store, run_id)[-5:])
    assert run.error and run.error.startswith("memory limit of 64 MB exceeded"), run.error
    sys_lines = _sys_lines(store, run_id)
    expected = "cgroup v" if cgroups == "auto" and HOST.has("memory") else "RLIMIT_DATA per process"
    assert any(expected in line for line in sys_lines if line.startswith("limits:")), sys_lines
    assert not any("no memory limit" in line for _, line in log_lines(store, run_id))


@NEEDS_CGROUP
def test_a_script_that_forks_without_end_is_contained_and_cleaned_up(
    deploy: Callable[..., Any], workers: Callable[..., Role], store: RunStore, data_dir: Path
) -> None:
    if not HOST.has("pids"):
        pytest.skip("the cgroup here has no pids controller")
    _, run_id, _ = _attack(deploy, workers, store, FORKER, {"max_processes": 20})
    run = store.get(run_id)
    assert run.status.value == "failed", (run.error, log_lines(store, run_id)[-5:])
    assert run.error and run.error.startswith("process limit of 20 reached"), run.error
    assert any("pids.max" in line for line in _sys_lines(store, run_id))
    # never more than the limit existed, and none of them is left
    kids = [int(p.name.split("-")[1]) for p in (data_dir / "jobs" / "hostile" / "data").glob("kid-*")]
    assert 0 < len(kids) < 20, kids

    def all_gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() and _ours(pid) for pid in kids)

    wait_until(all_gone, timeout=10, what="every forked child to be gone")
    leftover = [d for parent in HOST.parents.values() for d in parent.glob(f"{run_id}.*")]
    assert leftover == [], leftover


def _ours(pid: int) -> bool:
    """Whether ``pid`` is still one of the forker's children (not a recycled pid)."""
    try:
        return "run.py" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:
        return False


def test_a_script_that_opens_files_without_end_fails_naming_the_open_file_limit(
    deploy: Callable[..., Any], workers: Callable[..., Role], store: RunStore
) -> None:
    _, run_id, _ = _attack(deploy, workers, store, OPENER, {"max_open_files": 64})
    run = store.get(run_id)
    assert run.status.value == "failed", (run.error, log_lines(store, run_id)[-5:])
    assert run.error and run.error.startswith("open file limit of 64 reached"), run.error
    assert any("RLIMIT_NOFILE" in line for line in _sys_lines(store, run_id))


def test_a_script_that_spins_fails_naming_the_cpu_limit(
    deploy: Callable[..., Any], workers: Callable[..., Role], store: RunStore
) -> None:
    _, run_id, _ = _attack(deploy, workers, store, SPINNER, {"max_cpu_seconds": 1})
    run = store.get(run_id)
    assert run.status.value == "failed", (run.error, log_lines(store, run_id)[-5:])
    assert run.error and run.error.startswith("CPU time limit of 1 s exceeded"), run.error
    assert run.ended_at and run.started_at and run.ended_at - run.started_at < 10


def test_cluster_defaults_apply_and_the_log_says_what_is_not_enforced(
    deploy: Callable[..., Any], workers: Callable[..., Role], store: RunStore
) -> None:
    deploy("plain", {"run.sh": "echo hi\n"})
    workers(
        concurrency=1,
        JOBYARD_CGROUPS="off",
        JOBYARD_DEFAULT_MAX_OPEN_FILES="128",
        JOBYARD_DEFAULT_MAX_PROCESSES="50",
    )
    run_id = enqueue(store, "plain")
    assert wait_status(store, run_id, {"succeeded", "failed"}).status.value == "succeeded"
    limits = next(line for line in _sys_lines(store, run_id) if line.startswith("limits:"))
    assert "open files 128 (RLIMIT_NOFILE per process)" in limits, limits
    if os.geteuid() == 0:
        # root ignores RLIMIT_NPROC and there is no cgroup: the log must not pretend otherwise
        assert "processes 50 (NOT ENFORCED" in limits, limits
        assert "root: limits hold against mistakes" in limits, limits
