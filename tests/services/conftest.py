"""Fixtures for API tests: a real ``jobyard api`` process on the session's Redis, driven over HTTP.

One API process serves the whole package (starting one costs about a second); tests that need
an empty Redis take ``redis_url`` (flushed per test) and make their tokens and jobs afresh.
Tests that need other settings (rate limits, a Redis to kill) start their own with ``start_api``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from jobyard import tokens
from jobyard.keys import Keys
from jobyard.models import Job, JobType
from jobyard.runs import RunStore
from jobyard.settings import Settings
from tests.helpers import RedisServer, Role, free_port, role_env, wait_until

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
MAX_PACKAGE_BYTES = 1024 * 1024
KEYS = Keys()


@dataclass
class Api:
    """A running API process and where it listens."""

    role: Role
    url: str

    def client(self, token: str | None = ADMIN_TOKEN, **kwargs: Any) -> httpx.Client:
        """An httpx client for the API, authenticated with ``token`` (None: no header)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10.0, **kwargs)


def start_api_process(redis_url: str, data_dir: Path, log_path: Path, **env: str) -> Api:
    """Start ``jobyard api`` on a free port and wait until it answers /healthz."""
    port = free_port()
    extra = {"JOBYARD_ADMIN_TOKEN": ADMIN_TOKEN, "JOBYARD_MAX_PACKAGE_BYTES": str(MAX_PACKAGE_BYTES), **env}
    role = Role(["api", "--port", str(port)], env=role_env(redis_url, data_dir, **extra), log_path=log_path)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if not role.alive():
            raise AssertionError(f"the API exited early:\n{role.output()}")
        try:
            return httpx.get(url + "/healthz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, timeout=20, what="the API to answer /healthz")
    except BaseException:
        role.stop()
        raise
    return Api(role, url)


@pytest.fixture(scope="session")
def api(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The shared API process (failed-auth limit raised so 401 tests cannot trip it for others)."""
    base = tmp_path_factory.mktemp("api")
    (base / "data").mkdir()
    server = start_api_process(
        redis_server.url, base / "data", base / "api.log", JOBYARD_AUTH_FAILURES_PER_MINUTE="100000"
    )
    yield server
    server.role.stop()


@pytest.fixture
def start_api(tmp_path: Path) -> Iterator[Callable[..., Api]]:
    """Start a private API process (stopped by pid at the end of the test)."""
    started: list[Api] = []

    def start(redis_url: str, **env: str) -> Api:
        data = tmp_path / f"data{len(started)}"
        data.mkdir()
        server = start_api_process(redis_url, data, tmp_path / f"api{len(started)}.log", **env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.role.stop()


@dataclass
class Tokens:
    """One stored token of each role, plus the bootstrap admin."""

    viewer: str
    operator: str
    admin: str
    bootstrap: str = ADMIN_TOKEN

    def of(self, role: str) -> str:
        return str(getattr(self, role))


@pytest.fixture
def role_tokens(r: redis.Redis) -> Tokens:
    """Fresh viewer/operator/admin tokens in the (flushed) Redis."""
    made = {role: tokens.create_token(r, KEYS, role, f"test {role}")[0] for role in tokens.ROLES}
    return Tokens(**made)


@pytest.fixture
def admin(api: Api, redis_url: str) -> Iterator[httpx.Client]:
    """A bootstrap-admin client on the shared API, on an emptied Redis."""
    with api.client() as client:
        yield client


@pytest.fixture
def store(r: redis.Redis, redis_url: str, data_dir: Path) -> RunStore:
    """The synchronous run store on the test's Redis (plays the worker's part)."""
    return RunStore(r, KEYS, Settings(redis_url=redis_url, data_dir=data_dir))  # type: ignore[arg-type]


def put_job(
    r: redis.Redis,
    name: str,
    *,
    job_type: JobType = JobType.TRIGGERED,
    settings: dict[str, Any] | None = None,
) -> Job:
    """Write a job record straight into Redis (no package: enough for everything but a real run)."""
    now = time.time()
    job = Job(
        name=name,
        type=job_type,
        package="0" * 64,
        entry="run.sh",
        settings=settings or {},
        filename="run.sh",
        size=1,
        created_at=now,
        updated_at=now,
    )
    r.hset(KEYS.job(name), mapping=job.to_hash())
    r.sadd(KEYS.jobs, name)
    return job


def error_shape(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert ``response`` is an error of ``status`` with the one error body shape; the body."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["error"], str) and body["error"], body
    assert "Traceback" not in json.dumps(body)
    return dict(body)
