"""Connecting to Redis: a URL or Sentinel, sync or asyncio, with a bounded wait at start-up."""

from __future__ import annotations

import logging
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel
from tenacity import (
    before_sleep_log,
    retry,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from jobyard.errors import Unavailable
from jobyard.settings import Settings

log = logging.getLogger(__name__)

CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError)


def describe(settings: Settings) -> str:
    """Where Redis is, for messages, without the password."""
    if settings.sentinels:
        hosts = ",".join(f"{h}:{p}" for h, p in settings.sentinels)
        return f"sentinel://{hosts}/{settings.redis_master_name}"
    url = settings.redis_url.get_secret_value() or "redis://127.0.0.1:6379/0"
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def _common(settings: Settings) -> dict[str, Any]:
    return {
        # redis-py retries connection errors itself; keep it short so callers see outages.
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "socket_connect_timeout": 5.0,
        "health_check_interval": 15,
    }


def connect(settings: Settings, *, socket_timeout: float | None = 10.0) -> redis.Redis:
    """A synchronous client for the configured Redis (URL or Sentinel master)."""
    common = _common(settings)
    if settings.sentinels:
        sentinel = Sentinel(
            settings.sentinels,
            sentinel_kwargs={"password": settings.redis_sentinel_password.get_secret_value() or None},
            socket_timeout=socket_timeout,
        )
        master: redis.Redis = sentinel.master_for(
            settings.redis_master_name, socket_timeout=socket_timeout, **common
        )
        return master
    url = settings.redis_url.get_secret_value() or "redis://127.0.0.1:6379/0"
    return redis.Redis.from_url(url, socket_timeout=socket_timeout, **common)


def connect_async(settings: Settings, *, socket_timeout: float | None = 10.0) -> aioredis.Redis:
    """An asyncio client for the configured Redis (URL or Sentinel master)."""
    common = _common(settings)
    common["retry"] = aioredis.retry.Retry(ExponentialBackoff(cap=1.0, base=0.05), 3)
    if settings.sentinels:
        sentinel = AsyncSentinel(
            settings.sentinels,
            sentinel_kwargs={"password": settings.redis_sentinel_password.get_secret_value() or None},
            socket_timeout=socket_timeout,
        )
        amaster: aioredis.Redis = sentinel.master_for(
            settings.redis_master_name, socket_timeout=socket_timeout, **common
        )
        return amaster
    url = settings.redis_url.get_secret_value() or "redis://127.0.0.1:6379/0"
    return aioredis.Redis.from_url(url, socket_timeout=socket_timeout, **common)


def wait_for_redis(client: redis.Redis, settings: Settings) -> None:
    """Block until Redis answers PING, retrying for ``redis_connect_timeout_seconds``.

    Raises ``Unavailable`` naming the URL when it never answers.
    """

    @retry(
        retry=retry_if_exception_type(CONNECTION_ERRORS),
        wait=wait_exponential_jitter(initial=0.2, max=3.0),
        stop=stop_after_delay(settings.redis_connect_timeout_seconds),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    )
    def ping() -> None:
        client.ping()

    try:
        ping()
    except CONNECTION_ERRORS as exc:
        raise Unavailable(
            f"Redis at {describe(settings)} did not answer within "
            f"{settings.redis_connect_timeout_seconds:g} s: {exc}",
            "check JOBYARD_REDIS_URL (or JOBYARD_REDIS_SENTINELS) and that Redis is running",
        ) from exc
