"""``jobyard up`` (what ``make run`` runs): embedded Redis, the three roles, a clean stop, a warm restart."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from jobyard.client import Client
from tests.cli.conftest import EXAMPLES
from tests.helpers import REPO, free_port, wait_until

TOKEN_RE = re.compile(r"admin token: (\S+)")


class Up:
    """One ``jobyard up`` process; its stdout is read by a thread, its stderr goes to a file."""

    def __init__(self, data_dir: Path, port: int, log_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBYARD_")}
        env.update(
            {
                "JOBYARD_DATA_DIR": str(data_dir),
                "JOBYARD_API_PORT": str(port),
                "JOBYARD_REDIS_CONNECT_TIMEOUT_SECONDS": "10",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.err = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobyard", "up", "--examples", str(EXAMPLES)],
            env=env,
            cwd=str(REPO),
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def token(self) -> str:
        """Wait for the banner; the admin token it prints."""

        def found() -> str | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"jobyard up exited with {self.proc.returncode}:\n{self.stderr()}")
            match = TOKEN_RE.search("".join(self.lines))
            return match.group(1) if match else None

        return wait_until(found, timeout=90, interval=0.1, what="the admin token banner")

    def stderr(self) -> str:
        self.err.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def close(self) -> None:
        """Safety net for a failed test: kill whatever is left, by pid."""
        if self.proc.poll() is None:
            leftovers = self.descendants()
            self.proc.kill()
            self.proc.wait(10)
            for p in leftovers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
        self.reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.err.close()


def role_of(proc: psutil.Process) -> str:
    cmd = proc.cmdline()
    if cmd and os.path.basename(cmd[0]).startswith("redis-server"):
        return "redis"
    if "-m" in cmd and "jobyard" in cmd:
        return cmd[cmd.index("jobyard") + 1]
    return "script"


@pytest.mark.timeout(300)
def test_up_runs_a_job_stops_cleanly_and_restarts_with_the_same_state(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    # given: a first start on an empty data directory
    first = Up(data_dir, free_port(), tmp_path / "up1.log")
    try:
        token = first.token()
        assert f"dashboard:   {first.url}/" in "".join(first.lines)
        with Client(first.url, token) as client:
            assert client.ready()
            assert {"hello-sh", "hello-py", "hello-js", "ticker", "heartbeat", "slow"} <= {
                j["name"] for j in client.jobs()
            }
            run = client.run("hello-sh", ["up", "and running"])
            final = client.wait(run["id"], timeout_s=60)
            assert final["status"] == "succeeded", first.stderr()
        assert (data_dir / "admin-token").read_text().strip() == token
        assert (data_dir / "admin-token").stat().st_mode & 0o777 == 0o600
        children = first.descendants()
        roles = {role_of(p) for p in children}
        assert {"redis", "api", "worker", "scheduler"} <= roles, roles

        # when: Ctrl-C
        os.kill(first.proc.pid, signal.SIGINT)
        code = first.proc.wait(120)

        # then: exit 0, every process it started (and every script they started) is gone
        assert code == 0, first.stderr()
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, [(p.pid, p.cmdline()) for p in alive]
        assert "stopping redis-server" in first.stderr()
    finally:
        first.close()

    # given: a second start on the same data directory (another port)
    second = Up(data_dir, free_port(), tmp_path / "up2.log")
    try:
        # then: the same token, the same jobs, the same history
        assert second.token() == token
        with Client(second.url, token) as client:
            assert client.get_run(run["id"])["status"] == "succeeded"
            assert run["id"] in [r["id"] for r in client.runs("hello-sh")]
        children = second.descendants()

        # when: one of its roles dies
        [scheduler] = [p for p in children if role_of(p) == "scheduler"]
        scheduler.kill()
        code = second.proc.wait(120)

        # then: it stops the rest and exits 1 naming the role
        assert code == 1
        assert "scheduler exited" in second.stderr()
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, [(p.pid, p.cmdline()) for p in alive]
    finally:
        second.close()
