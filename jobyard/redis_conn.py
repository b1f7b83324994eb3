"""Connecting to Redis: a URL or Sentinel, sync or asyncio, with a bounded wait at start-up.

Every role connects through here, so TLS and ACL users work everywhere alike: a ``rediss://``
URL (or ``JOBYARD_REDIS_SSL`` for a Sentinel-managed master, ``JOBYARD_REDIS_SENTINEL_SSL`` for
the sentinels) verifies the server against ``JOBYARD_REDIS_SSL_CA_CERTS`` and presents the
client certificate ``JOBYARD_REDIS_SSL_CERTFILE``/``_KEYFILE`` when given; an ACL user comes from
the URL (``rediss://user:password@host:6380/0``) or ``JOBYARD_REDIS_USERNAME``/``_PASSWORD``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

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
from jobyard.keys import Keys
from jobyard.settings import Settings

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # redis-py works without it (slower); redis[hiredis] is a dependency
    _hiredis_pack = None

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


def _tls(settings: Settings) -> dict[str, Any]:
    """redis-py's ssl_* arguments from JOBYARD_REDIS_SSL_* (CA bundle, client certificate)."""
    out: dict[str, Any] = {
        "ssl_cert_reqs": settings.redis_ssl_cert_reqs,
        "ssl_check_hostname": settings.redis_ssl_check_hostname and settings.redis_ssl_cert_reqs != "none",
    }
    for name in ("ca_certs", "certfile", "keyfile"):
        value = getattr(settings, f"redis_ssl_{name}")
        if value:
            out[f"ssl_{name}"] = value
    return out


def _credentials(username: str, password: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if username:
        out["username"] = username
    if password:
        out["password"] = password
    return out


def _url_kwargs(settings: Settings, url: str) -> dict[str, Any]:
    """Username, password and TLS arguments the URL does not carry itself (the URL wins)."""
    parsed = urlsplit(url)
    out = _credentials(
        "" if parsed.username else settings.redis_username,
        "" if parsed.password else settings.redis_password.get_secret_value(),
    )
    if parsed.scheme == "rediss":
        out.update(_tls(settings))
    return out


def _sentinel_kwargs(settings: Settings, socket_timeout: float | None) -> dict[str, Any]:
    out = _credentials(settings.redis_sentinel_username, settings.redis_sentinel_password.get_secret_value())
    out["socket_timeout"] = socket_timeout
    if settings.redis_sentinel_ssl:
        out.update(ssl=True, **_tls(settings))
    return out


def _master_kwargs(settings: Settings) -> dict[str, Any]:
    out = _credentials(settings.redis_username, settings.redis_password.get_secret_value())
    if settings.redis_ssl:
        out.update(ssl=True, **_tls(settings))
    return out


def connect(settings: Settings, *, socket_timeout: float | None = 10.0) -> redis.Redis:
    """A synchronous client for the configured Redis (URL or Sentinel master)."""
    common = _common(settings)
    if settings.sentinels:
        sentinel = Sentinel(
            settings.sentinels,
            sentinel_kwargs=_sentinel_kwargs(settings, socket_timeout),
            socket_timeout=socket_timeout,
        )
        master: redis.Redis = sentinel.master_for(
            settings.redis_master_name, socket_timeout=socket_timeout, **_master_kwargs(settings), **common
        )
        return master
    url = settings.redis_url.get_secret_value() or "redis://127.0.0.1:6379/0"
    return redis.Redis.from_url(url, socket_timeout=socket_timeout, **_url_kwargs(settings, url), **common)


def call_many_on(conn: Any, *commands: tuple[Any, ...]) -> list[Any]:
    """Send ``commands`` on ``conn`` in one write and read their raw replies, as a
    non-transactional pipeline's ``execute(raise_on_error=False)`` would: an error reply comes
    back as the exception in its place, a broken connection raises.

    For the worker's per-run round trip (finish_run and the next fetch), on the slot's own
    connection: a ``Pipeline`` spent as much Python time on its own bookkeeping (command stack,
    response callbacks, retry wrapper, reset) as on the two calls, and a pool its get and release.
    Only for commands whose raw reply is what the caller wants (no response callbacks are
    applied: EVALSHA has none). ``conn`` connects when it is not connected, and is disconnected
    on any error that may leave a reply half read, so the next call starts clean."""
    try:
        conn.send_packed_command(conn.pack_commands(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as exc:  # the reply was read in full: the connection is fine
                replies.append(exc)
        return replies
    except BaseException:
        conn.disconnect()  # a reply may be half read: never use this connection on as it is
        raise


class _HiredisPacking:
    """Commands packed by hiredis' C packer, as redis-py's synchronous connections already do.

    redis-py's asyncio connections pack in Python, re-joining the whole buffer for every argument:
    a ``create_run`` call (about 50 arguments) cost ~80 us of the API's CPU that way, ~10 us here,
    byte for byte the same output. Mirrors ``redis.connection.HiredisRespSerializer``.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        assert _hiredis_pack is not None
        name = args[0]
        if " " in name if isinstance(name, str) else b" " in name:  # "CONFIG GET": two words
            args = tuple((name.encode() if isinstance(name, str) else name).split()) + args[1:]
        try:
            return [_hiredis_pack(args)]
        except TypeError:
            pass
        args = tuple(bytes(a) if isinstance(a, bytearray | memoryview) else a for a in args)
        try:
            return [_hiredis_pack(args)]
        except TypeError as exc:  # what redis-py's encoder raises for None, bool and the like
            raise redis.DataError(str(exc)) from exc


_PACKING_CLASSES: dict[type, type] = {}


def _pack_in_c(client: aioredis.Redis) -> aioredis.Redis:
    """Make ``client``'s pool open connections that pack with hiredis (before it opened any)."""
    pool = client.connection_pool
    base = pool.connection_class
    if _hiredis_pack is not None and not issubclass(base, _HiredisPacking):
        if base not in _PACKING_CLASSES:
            _PACKING_CLASSES[base] = type(base.__name__, (_HiredisPacking, base), {"__module__": __name__})
        pool.connection_class = _PACKING_CLASSES[base]
    return client


def connect_async(settings: Settings, *, socket_timeout: float | None = 10.0) -> aioredis.Redis:
    """An asyncio client for the configured Redis (URL or Sentinel master).

    ``socket_timeout=None``: replies are awaited without a timeout each (the caller bounds the
    whole exchange); the sentinels are still asked with the default timeout.
    """
    common = _common(settings)
    common["retry"] = aioredis.retry.Retry(ExponentialBackoff(cap=1.0, base=0.05), 3)
    if settings.sentinels:
        sentinel = AsyncSentinel(
            settings.sentinels,
            sentinel_kwargs=_sentinel_kwargs(settings, 10.0 if socket_timeout is None else socket_timeout),
            socket_timeout=socket_timeout,
        )
        amaster: aioredis.Redis = sentinel.master_for(
            settings.redis_master_name, socket_timeout=socket_timeout, **_master_kwargs(settings), **common
        )
        return _pack_in_c(amaster)
    url = settings.redis_url.get_secret_value() or "redis://127.0.0.1:6379/0"
    return _pack_in_c(
        aioredis.Redis.from_url(url, socket_timeout=socket_timeout, **_url_kwargs(settings, url), **common)
    )


def wait_for_redis(client: redis.Redis, settings: Settings) -> None:
    """Block until Redis answers PING, retrying for ``redis_connect_timeout_seconds``.

    Raises ``Unavailable`` naming the URL when it never answers.
    """

    @retry(
        retry=retry_if_exception_type(CONNECTION_ERRORS),
        wait=wait_exponential_jitter(multiplier=0.2, max=3.0),
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


def _wait_probe(settings: Settings) -> tuple[str, int, int]:
    return (
        Keys(settings.redis_prefix).replication,
        settings.redis_wait_replicas,
        max(1, int(settings.redis_wait_timeout_seconds * 1000)),
    )


def _refused(exc: redis.ResponseError, settings: Settings) -> Unavailable:
    # e.g. an ACL user without +wait: the write happened, its replication cannot be confirmed
    return Unavailable(
        f"Redis refused to confirm the write's replication (WAIT: {exc}); a failover now could lose it",
        "retry with the same idempotency key (it returns the run if it was kept); allow the Redis "
        "user PUBLISH and WAIT, or set JOBYARD_REDIS_WAIT_REPLICAS=0",
    )


def _check_acked(acked: int, settings: Settings) -> int:
    if acked < settings.redis_wait_replicas:
        raise Unavailable(
            f"only {acked} of {settings.redis_wait_replicas} Redis replicas confirmed the write within "
            f"{settings.redis_wait_timeout_seconds:g} s; a failover now could lose it",
            "retry with the same idempotency key (it returns the run if it was kept); "
            "check the replicas, or lower JOBYARD_REDIS_WAIT_REPLICAS",
        )
    return acked


def wait_for_replicas(client: redis.Redis, settings: Settings) -> int:
    """Block until ``JOBYARD_REDIS_WAIT_REPLICAS`` replicas hold every write this process was answered for.

    Returns how many confirmed (0 when the setting is off); raises ``Unavailable`` when fewer
    did within ``JOBYARD_REDIS_WAIT_TIMEOUT_SECONDS``. WAIT only counts the writes of its own
    connection, and a pool may hand it another one: so a replicated no-op (PUBLISH on
    ``P:replication``, which nobody subscribes to) goes first on the same pipelined connection;
    replication is one ordered stream, so replicas that confirm it hold every earlier write.
    """
    channel, n, timeout_ms = _wait_probe(settings)
    if n <= 0:
        return 0
    pipe = client.pipeline(transaction=False)
    pipe.publish(channel, b"")
    pipe.wait(n, timeout_ms)
    try:
        replies = pipe.execute()
    except redis.ReadOnlyError:
        raise  # a demoted master: Redis is away for now, like any outage
    except redis.ResponseError as exc:
        raise _refused(exc, settings) from exc
    return _check_acked(int(replies[-1]), settings)


async def wait_for_replicas_async(client: aioredis.Redis, settings: Settings) -> int:
    """``wait_for_replicas`` on an asyncio client (the API, after an enqueue)."""
    channel, n, timeout_ms = _wait_probe(settings)
    if n <= 0:
        return 0
    pipe = client.pipeline(transaction=False)
    pipe.publish(channel, b"")
    pipe.wait(n, timeout_ms)
    try:
        replies = await pipe.execute()
    except redis.ReadOnlyError:
        raise  # a demoted master: Redis is away for now, like any outage
    except redis.ResponseError as exc:
        raise _refused(exc, settings) from exc
    return _check_acked(int(replies[-1]), settings)
