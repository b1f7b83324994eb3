"""Who is calling: bearer tokens, a short in-process cache of lookups, and failed-login limiting.

The cache keeps each lookup for ``CACHE_TTL_S`` so that the hot enqueue path does not pay a Redis
round trip per request for its token; a token revoked elsewhere (another API replica, the CLI)
therefore stops working here within that time, one second; one this process revokes, at once.
Failed authentication is counted per client address in this process (each API replica keeps its
own window); once an address passes ``auth_failures_per_minute`` within a minute every request
from it gets 429 until the window has moved on.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import deque
from dataclasses import dataclass

import redis.asyncio as aioredis
from starlette.requests import HTTPConnection

from jobyard import tokens
from jobyard.errors import Forbidden, RateLimited, Unauthorized
from jobyard.keys import Keys
from jobyard.settings import Settings

log = logging.getLogger(__name__)

CACHE_TTL_S = 1.0  # a lookup per token per second and process: nothing next to the requests
CACHE_MAX_ENTRIES = 10_000
FAILURE_WINDOW_S = 60.0
MAX_TRACKED_ADDRESSES = 50_000


@dataclass(frozen=True)
class Principal:
    """The caller of a request: a token's id, name and role."""

    token_id: str
    name: str
    role: str

    def allows(self, needed: str) -> bool:
        """Whether this caller's role covers ``needed``."""
        return tokens.role_allows(self.role, needed)


class FailureLimiter:
    """Failed authentications per client address within a sliding minute."""

    def __init__(self, limit: int, window_s: float = FAILURE_WINDOW_S) -> None:
        self.limit = max(1, limit)
        self.window_s = window_s
        self._seen: dict[str, deque[float]] = {}

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._seen.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._seen[address]
            return None
        return times

    def blocked(self, address: str, now: float | None = None) -> float:
        """Seconds until ``address`` may try again (0 when it may now)."""
        now = time.monotonic() if now is None else now
        times = self._recent(address, now)
        if times is None or len(times) < self.limit:
            return 0.0
        return max(0.0, times[-self.limit] + self.window_s - now)

    def record(self, address: str, now: float | None = None) -> None:
        """Count one failure from ``address``."""
        now = time.monotonic() if now is None else now
        if len(self._seen) >= MAX_TRACKED_ADDRESSES:
            self._prune(now)
        times = self._recent(address, now)
        if times is None:
            times = self._seen[address] = deque(maxlen=self.limit + 1)
        times.append(now)

    def _prune(self, now: float) -> None:
        for address in list(self._seen):
            self._recent(address, now)
        if len(self._seen) >= MAX_TRACKED_ADDRESSES:  # a flood of distinct addresses: forget the oldest
            for address in list(self._seen)[: len(self._seen) // 2]:
                del self._seen[address]


def _parse_networks(value: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets = []
    for item in filter(None, (s.strip() for s in value.split(","))):
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            log.warning("ignoring JOBYARD_TRUSTED_PROXIES entry %r: not an address or network", item)
    return nets


class Authenticator:
    """Turns an ``Authorization`` header into a ``Principal`` (or an error), for one app."""

    def __init__(self, settings: Settings, keys: Keys, client: aioredis.Redis) -> None:
        self.keys = keys
        self.client = client
        self.admin_token = settings.admin_token.get_secret_value()
        self.limiter = FailureLimiter(settings.auth_failures_per_minute)
        self.trusted = _parse_networks(settings.trusted_proxies)
        self._cache: dict[str, tuple[float, tokens.TokenRecord | None]] = {}
        self._touched: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()

    def client_address(self, conn: HTTPConnection) -> str:
        """The caller's address; ``X-Forwarded-For`` counts only when the peer is a trusted proxy."""
        peer = conn.client.host if conn.client else "unknown"
        if not self.trusted or not self._is_trusted(peer):
            return peer
        forwarded = [a.strip() for a in conn.headers.get("x-forwarded-for", "").split(",") if a.strip()]
        # Walk from the nearest hop: the first address not of our own proxies is the client.
        for address in reversed(forwarded):
            if not self._is_trusted(address):
                return address
        return forwarded[0] if forwarded else peer

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    async def authenticate(self, conn: HTTPConnection, needed: str) -> Principal:
        """The caller of ``conn`` if its token is valid and its role covers ``needed``."""
        address = self.client_address(conn)
        wait_s = self.limiter.blocked(address)
        if wait_s > 0:
            raise RateLimited(
                "too many failed authentication attempts from this address",
                {"retry_after_s": int(wait_s) + 1},
            )
        principal = await self._identify(conn.headers.get("authorization", ""))
        if principal is None:
            self.limiter.record(address)
            raise Unauthorized(
                "missing or invalid token",
                "send 'Authorization: Bearer <token>'; create tokens with POST /api/tokens or "
                "'jobyard token create --role viewer|operator|admin'",
            )
        if not principal.allows(needed):
            conn.scope.setdefault("state", {})["principal"] = principal  # the audit log names who was refused
            raise Forbidden(
                f"a {principal.role} token may not do this",
                f"this needs the {needed} role (roles: viewer < operator < admin)",
            )
        return principal

    async def _identify(self, header: str) -> Principal | None:
        scheme, _, secret = header.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            return None
        if tokens.is_bootstrap(secret, self.admin_token):
            return Principal(tokens.BOOTSTRAP_ID, "bootstrap admin", "admin")
        if not tokens.looks_like_token(secret):
            return None
        record = await self._lookup(secret)
        if record is None or not record.usable():
            return None
        self._maybe_touch(secret)
        return Principal(record.id, record.name, record.role)

    async def _lookup(self, secret: str) -> tokens.TokenRecord | None:
        now = time.monotonic()
        digest = tokens.hash_token(secret)
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        record = await tokens.alookup_token(self.client, self.keys, secret)
        if len(self._cache) >= CACHE_MAX_ENTRIES:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= CACHE_MAX_ENTRIES:
                self._cache.clear()
        self._cache[digest] = (now + CACHE_TTL_S, record)
        return record

    def forget(self) -> None:
        """Drop every cached lookup (after this process creates or revokes a token)."""
        self._cache.clear()

    def _maybe_touch(self, secret: str) -> None:
        # Off the request path: a failed bookkeeping write must not fail or slow the request.
        now = time.monotonic()
        digest = tokens.hash_token(secret)
        last = self._touched.get(digest)
        if last is not None and now - last < tokens.LAST_USED_RESOLUTION_S:
            return
        if len(self._touched) >= CACHE_MAX_ENTRIES:
            self._touched.clear()
        self._touched[digest] = now
        task = asyncio.get_running_loop().create_task(self._touch(secret))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _touch(self, secret: str) -> None:
        try:
            await tokens.atouch_token(self.client, self.keys, secret)
        except Exception as exc:  # bookkeeping only
            log.debug("could not record token use: %s", exc)
