"""A real ``jobyard api`` and ``jobyard worker`` for the client and CLI tests, shared by a module."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from jobyard.client import Client
from tests.helpers import REPO, RedisServer, Role, free_port, role_env, wait_until

EXAMPLES = REPO / "examples" / "jobs"


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Stack:
    """The API and one worker on the session's redis-server, with an admin token."""

    url: str
    token: str
    api: Role
    worker: Role

    def client(self, token: str | None = None) -> Client:
        return Client(self.url, self.token if token is None else token)

    def env(self, token: str | None = None, url: str | None = None) -> dict[str, str]:
        """Environment for a CLI process: only JOBYARD_URL and JOBYARD_TOKEN of ours."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBYARD_")}
        env["JOBYARD_URL"] = url or self.url
        env["JOBYARD_TOKEN"] = self.token if token is None else token
        return env

    def cli(
        self, *args: str, token: str | None = None, url: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """``python -m jobyard ARGS`` as a subprocess; its exit code, stdout and stderr."""
        return subprocess.run(
            [sys.executable, "-m", "jobyard", *args],
            env=self.env(token, url),
            cwd=str(REPO),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def logs(self) -> str:
        return f"--- api ---\n{self.api.output()[-3000:]}\n--- worker ---\n{self.worker.output()[-3000:]}"


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Start the API and a worker (2 slots) once per module, on an emptied Redis; stop them by pid."""
    flush = redis_server.client()
    flush.flushall()
    flush.close()
    tmp = tmp_path_factory.mktemp("cli-stack")
    token = secrets.token_urlsafe(24)
    port = free_port()
    env = role_env(redis_server.url, tmp / "data", JOBYARD_ADMIN_TOKEN=token, JOBYARD_METRICS_PORT="0")
    api = Role(["api", "--port", str(port)], env, tmp / "api.log")
    worker = Role(["worker", "--concurrency", "2"], env, tmp / "worker.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(url) or not api.alive(), timeout=30, what="the API's /readyz")
        assert api.alive(), api.output()
        result = Stack(url, token, api, worker)
        with result.client() as client:
            wait_until(lambda: client.cluster()["workers"] or not worker.alive(), timeout=30, what="a worker")
        assert worker.alive(), worker.output()
        yield result
    finally:
        worker.stop()
        api.stop()
