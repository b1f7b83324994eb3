"""Scripts left running by a worker that died: found and killed when a worker starts on the host.

Each running script's process group is recorded in ``<data dir>/pids/<worker pid>.<n>.pgid`` (one
file per slot of a worker process, rewritten in place for each run: creating and deleting a file
per run cost a no-op run ~0.3 ms of CPU) as ``pgid worker-pid time run-id``, blank while the slot
is idle. A SIGKILLed worker cannot kill its scripts (they are in sessions of their own, so
they do not die with it), and its runs are re-run elsewhere; left alone they would go on
unobserved, doing the same work twice. A worker starting on the same host (any worker sharing
the data dir) kills the groups whose worker is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
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
            fields = path.read_text().split()
            if not fields:  # an idle slot's file: gone with its worker
                owner = int(path.name.split(".", 1)[0])
                if owner != os.getpid() and not _worker_alive(owner, time.time()):
                    path.unlink(missing_ok=True)
                continue
            pgid, worker_pid, at = int(fields[0]), int(fields[1]), float(fields[2])
        except (OSError, ValueError, IndexError):
            continue
        if worker_pid == os.getpid() or _worker_alive(worker_pid, at):
            continue
        run_id = fields[3] if len(fields) > 3 else path.stem  # "<run id>.pgid": an older worker's
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


class PidFiles:
    """This worker's record of its scripts' process groups (see the module docstring)."""

    SIZE = 128  # a record is padded to this size, so a rewrite never needs a truncate

    def __init__(self, pid_dir: Path, worker_pid: int) -> None:
        self.pid_dir = pid_dir
        self.worker_pid = worker_pid
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._held: dict[str, int] = {}
        self._all: list[Path] = []
        self._lock = threading.Lock()

    def _new_fd(self) -> int:
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            path = self.pid_dir / f"{self.worker_pid}.{len(self._all)}.pgid"
            self._all.append(path)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)

    def track(self, run_id: str, pgid: int) -> None:
        """Record that ``run_id``'s scripts run in process group ``pgid``."""
        try:
            fd = self._free.get_nowait()
        except queue.Empty:
            fd = self._new_fd()
        record = f"{pgid} {self.worker_pid} {time.time():.3f} {run_id}".encode()
        os.pwrite(fd, record.ljust(self.SIZE)[: self.SIZE], 0)
        with self._lock:
            self._held[run_id] = fd

    def untrack(self, run_id: str) -> None:
        """The run's scripts are gone: blank its record and keep the file for the next run."""
        with self._lock:
            fd = self._held.pop(run_id, None)
        if fd is None:
            return
        os.pwrite(fd, b" " * self.SIZE, 0)
        self._free.put(fd)

    def close(self) -> None:
        """Stopping: remove this worker's files (scripts still tracked keep theirs)."""
        with self._lock:
            held = set(self._held.values())
            paths = list(self._all)
        while True:
            try:
                fd = self._free.get_nowait()
            except queue.Empty:
                break
            os.close(fd)
        for fd in held:
            os.close(fd)
        for path in paths:
            with contextlib.suppress(OSError):
                if not path.read_text().strip():
                    path.unlink()
