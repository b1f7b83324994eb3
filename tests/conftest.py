"""Fixtures shared by the whole suite: a real redis-server, isolated per test by flushing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.helpers import RedisServer

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session, on a free port (never 6379), stopped at the end.

    Fails in CI when it cannot start; skips elsewhere (a laptop without redis-server).
    """
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"redis-server could not start: {exc}")
        pytest.skip(f"redis-server could not start: {exc}")
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session server's URL, emptied before each test."""
    client = redis_server.client()
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the emptied session server."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d
