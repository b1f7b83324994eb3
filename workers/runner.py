"""Running one attempt of a script: a process group, its output, its deadline and its stop.

The script runs in a session of its own (``start_new_session``), so its pid is its process
group and everything it forks can be signalled together. The runner never blocks in ``wait()``:
it waits on the pipes with a timeout (``selectors``), so deadlines, cancel and shutdown requests
are noticed within ``POLL_S`` however the script behaves. Stopping writes the shutdown file,
sends SIGTERM to the group a moment later (``term_delay_s``: half the stopping wait, at most
2 s, so a WebJobs-style script that polls the shutdown file can end on its own first), and
sends SIGKILL to the group when ``stopping_wait_s`` has passed. When
the script exits, whatever it left running in its group is killed, and its pipes are drained.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import stat
import subprocess
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from jobyard.runs import LOG_ERR, LOG_INFO, LOG_SYS
from workers.output import LineSplitter, RunLog

POLL_S = 0.05
READ_BYTES = 64 * 1024


class StopReason(StrEnum):
    """Why a running script is being stopped."""

    TIMEOUT = "timeout"
    CANCEL = "cancel"
    SHUTDOWN = "shutdown"
    LEASE_LOST = "lease_lost"
    STOP = "stop"  # a continuous job was stopped or redeployed


@dataclass
class AttemptOutcome:
    """How the script ended."""

    exit_code: int | None
    stop_reason: StopReason | None
    duration_s: float
    result: Any = None
    result_error: str | None = None
    killed: bool = False  # needed SIGKILL after the grace period


@dataclass
class StopControl:
    """Lets other threads ask a running attempt to stop (first reason wins)."""

    reason: StopReason | None = None
    hard: bool = False  # skip the grace period (second SIGTERM to the worker)
    event: threading.Event = field(default_factory=threading.Event)

    def request(self, reason: StopReason, *, hard: bool = False) -> None:
        """Ask for a stop; later reasons do not replace the first, ``hard`` always sticks."""
        if self.reason is None:
            self.reason = reason
        self.hard = self.hard or hard
        self.event.set()


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> bool:
    """Signal a whole process group; False when it no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is left."""
    return kill_group(pgid, 0)


class ScriptRunner:
    """Runs one command to its end; see the module docstring."""

    def __init__(
        self,
        argv: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        log: RunLog,
        shutdown_file: Path,
        result_file: Path,
        timeout_s: float | None,
        stopping_wait_s: float,
        max_line_bytes: int,
        max_result_bytes: int,
        control: StopControl,
        preexec: Any = None,
    ) -> None:
        self.argv = argv
        self.cwd = cwd
        self.env = env
        self.log = log
        self.shutdown_file = shutdown_file
        self.result_file = result_file
        self.timeout_s = timeout_s
        self.stopping_wait_s = stopping_wait_s
        self.max_line_bytes = max_line_bytes
        self.max_result_bytes = max_result_bytes
        self.control = control
        self.preexec = preexec
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        """Start the process; returns its pid (= its process group id)."""
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
            preexec_fn=self.preexec,
        )
        return self.proc.pid

    def wait(self) -> AttemptOutcome:
        """Follow the process to its end (call after ``start``)."""
        proc = self.proc
        assert proc is not None and proc.stdout is not None and proc.stderr is not None
        started = time.monotonic()
        deadline = started + self.timeout_s if self.timeout_s else None
        sel = selectors.DefaultSelector()
        splitters = {
            proc.stdout.fileno(): (LineSplitter(self.max_line_bytes), LOG_INFO),
            proc.stderr.fileno(): (LineSplitter(self.max_line_bytes), LOG_ERR),
        }
        for pipe in (proc.stdout, proc.stderr):
            os.set_blocking(pipe.fileno(), False)
            sel.register(pipe.fileno(), selectors.EVENT_READ)
        stop_sent_at: float | None = None
        term_sent = False
        term_delay_s = min(2.0, self.stopping_wait_s / 2)
        killed = False
        exited_at: float | None = None
        try:
            while sel.get_map():
                for key, _ in sel.select(POLL_S):
                    fd = int(key.fd)
                    try:
                        chunk = os.read(fd, READ_BYTES)
                    except BlockingIOError:
                        continue
                    splitter, stream = splitters[fd]
                    if not chunk:
                        sel.unregister(fd)
                        for line in splitter.close():
                            self.log.add(stream, line)
                        continue
                    for line in splitter.feed(chunk):
                        self.log.add(stream, line)
                if self.log.due():
                    self.log.flush()
                now = time.monotonic()
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                    # Whatever the script left in its group dies with it; that also closes
                    # pipes a forked child inherited, so draining ends.
                    kill_group(proc.pid)
                if exited_at is not None:
                    if now - exited_at > 2.0:
                        break  # a grandchild that left the group still holds a pipe: stop reading
                    continue
                if deadline is not None and now >= deadline:
                    self.control.request(StopReason.TIMEOUT)
                if self.control.reason is not None:
                    if stop_sent_at is None:
                        stop_sent_at = now
                        self._write_shutdown_file()
                    if not term_sent and (self.control.hard or now - stop_sent_at >= term_delay_s):
                        term_sent = True
                        kill_group(proc.pid, signal.SIGTERM)
                    overdue = self.control.hard or now - stop_sent_at >= self.stopping_wait_s
                    if overdue and not killed:
                        killed = kill_group(proc.pid)
                        self.log.add(LOG_SYS, "killed the process group after the stopping wait")
        finally:
            sel.close()
            proc.stdout.close()
            proc.stderr.close()
        exit_code = proc.wait()
        result, result_error = self._read_result()
        return AttemptOutcome(
            exit_code=exit_code,
            stop_reason=self.control.reason,
            duration_s=time.monotonic() - started,
            result=result,
            result_error=result_error,
            killed=killed,
        )

    def _write_shutdown_file(self) -> None:
        with contextlib.suppress(OSError):
            self.shutdown_file.touch()
        reason = self.control.reason.value if self.control.reason else "stop"
        wait = 0 if self.control.hard else self.stopping_wait_s
        self.log.add(
            LOG_SYS,
            f"stopping ({reason}): shutdown file written; SIGTERM to the process group in "
            f"{0 if self.control.hard else min(2.0, wait / 2):g} s, SIGKILL in {wait:g} s",
        )

    def _read_result(self) -> tuple[Any, str | None]:
        # The script may have made the file a link (to what only the worker may read) or a FIFO
        # (to block the worker): open neither, and read at most the cap.
        try:
            fd = os.open(self.result_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, f"result file ignored: {exc.strerror} (it must be a regular file)"
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None, "result file ignored: not a regular file"
            size = st.st_size
            if size > self.max_result_bytes:
                return None, f"result file ignored: {size} bytes is over the {self.max_result_bytes} byte cap"
            data = f.read(self.max_result_bytes + 1)
        try:
            return json.loads(data or b"null"), None
        except (ValueError, UnicodeDecodeError) as exc:
            return None, f"result file ignored: not JSON ({exc})"
