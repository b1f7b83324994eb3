"""Scripts left running by a worker that died: found and killed when a worker starts on the host.

Each running script's process group is recorded in ``<data dir>/pids/<run id>.pgid`` with the
worker's pid. A SIGKILLed worker cannot kill its scripts (they are in sessions of their own, so
they do not die with it), and its runs are re-run elsewhere; left alone they would go on
unobserved, doing the same work twice. A worker starting on the same host (any worker sharing
the data dir) kills the groups whose worker is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


def _worker_alive(pid: int, recorded_at: float) -> bool:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return False
    # A reused pid belongs to a process created after the record was written.
    return bool(proc.create_time() <= recorded_at + 1.0)


def reap_orphans(pid_dir: Path) -> list[str]:
    """Kill the process groups of scripts whose worker died; returns their run ids."""
    reaped: list[str] = []
    if not pid_dir.is_dir():
        return reaped
    for path in pid_dir.glob("*.pgid"):
        try:
            pgid_s, worker_s, at_s = path.read_text().split()
            pgid, worker_pid, at = int(pgid_s), int(worker_s), float(at_s)
        except (OSError, ValueError):
            continue
        if worker_pid == os.getpid() or _worker_alive(worker_pid, at):
            continue
        run_id = path.stem
        try:
            os.killpg(pgid, signal.SIGKILL)
            log.warning("killed the orphaned scripts of run %s (process group %d)", run_id, pgid)
            reaped.append(run_id)
        except ProcessLookupError:
            pass
        except PermissionError:
            log.warning("cannot kill orphaned process group %d of run %s: not ours", pgid, run_id)
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return reaped
