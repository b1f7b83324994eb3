"""``wait_for_replicas``: off by default, and a write no replica confirms is refused, not answered.

The session's Redis has no replica, which is what a lone master after a failover looks like; the
failover itself, with a replica that confirms, is in ``test_sentinel.py``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from jobyard.errors import Unavailable
from jobyard.redis_conn import connect, wait_for_replicas, wait_for_replicas_async
from jobyard.settings import Settings


def _settings(redis_url: str, data_dir: Path, replicas: int) -> Settings:
    return Settings(
        redis_url=redis_url,  # type: ignore[arg-type]
        data_dir=data_dir,
        redis_wait_replicas=replicas,
        redis_wait_timeout_seconds=0.2,
    )


def test_off_by_default_costs_nothing(redis_url: str, data_dir: Path) -> None:
    settings = Settings(redis_url=redis_url, data_dir=data_dir)  # type: ignore[arg-type]
    assert settings.redis_wait_replicas == 0
    client = connect(settings)
    try:
        before = client.info("stats")["total_commands_processed"]
        assert wait_for_replicas(client, settings) == 0
        # nothing in between but the first INFO itself: no probe, no WAIT
        assert client.info("stats")["total_commands_processed"] - before == 1
    finally:
        client.close()


def test_unconfirmed_write_is_refused_after_the_timeout(redis_url: str, data_dir: Path) -> None:
    settings = _settings(redis_url, data_dir, replicas=1)
    client = connect(settings)
    try:
        client.set("jobyard:test:written", "1")
        started = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            wait_for_replicas(client, settings)
        took = time.monotonic() - started
    finally:
        client.close()
    assert 0.15 <= took < 2.0, took  # it waited for the replicas, then gave up
    assert "0 of 1 Redis replicas" in caught.value.message
    assert "idempotency key" in str(caught.value.detail)


def test_async_variant_refuses_the_same(redis_url: str, data_dir: Path) -> None:
    settings = _settings(redis_url, data_dir, replicas=1)

    async def go() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            with pytest.raises(Unavailable):
                await wait_for_replicas_async(client, settings)
            assert await wait_for_replicas_async(client, _settings(redis_url, data_dir, 0)) == 0
        finally:
            await client.aclose()

    asyncio.run(go())
