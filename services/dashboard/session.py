"""Dashboard sessions: a signed cookie naming a session kept in Redis, tied to one API token.

Logging in with a token creates ``keys.dashboard_session(sid)`` (token id, the token's sha256 --
the digest the token store is keyed by, never the token itself --, role, flash messages) with an
idle TTL, and sets a cookie holding ``{"sid", "tid", "th"}`` signed with the cluster's dashboard
key (itsdangerous, timestamped: a cookie older than ``SESSION_MAX_AGE_S`` is refused however busy
its session). Every request unsigns the cookie first, so forgeries never reach Redis, then reads
the session, extends its idle TTL and reads the token's record in one round trip: a revoked,
expired or deleted token, or a logged-out session, is no session.

The signing key is random, stored once with ``SET NX`` under ``keys.dashboard_secret`` so every
API replica signs alike; each process re-reads it every ``KEY_RECHECK_S``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from jobyard import tokens
from services.auth import Principal
from services.deps import Ctx, get_ctx

COOKIE = "jobyard_session"
SESSION_IDLE_S = 8 * 3600.0  # an untouched session ends after this
SESSION_MAX_AGE_S = 24 * 3600.0  # and any session after this: log in again once a day
KEY_RECHECK_S = 30.0
MAX_FLASHES = 5
_SALT = "jobyard.dashboard.session"
_KEY_CACHE = "dashboard.signing_key"


@dataclass
class Session:
    """A logged-in dashboard user: the token it logged in with, and its role."""

    sid: str
    token_id: str
    name: str
    role: str
    csrf: str
    flashes: list[dict[str, str]] = field(default_factory=list)

    def allows(self, needed: str) -> bool:
        """Whether this session's role covers ``needed``."""
        return tokens.role_allows(self.role, needed)

    @property
    def principal(self) -> Principal:
        """The caller as the API routes know it (for reusing their functions)."""
        return Principal(self.token_id, self.name, self.role)


async def signing_key(ctx: Ctx) -> bytes:
    """The cluster's dashboard signing key (made on first use, cached for ``KEY_RECHECK_S``)."""
    cached: tuple[bytes, float] | None = ctx.extra.get(_KEY_CACHE)
    now = time.monotonic()
    if cached is not None and now - cached[1] < KEY_RECHECK_S:
        return cached[0]
    key = ctx.keys.dashboard_secret
    await ctx.redis.set(key, secrets.token_urlsafe(48), nx=True)
    value = await ctx.redis.get(key)
    if value is None:  # deleted between the two calls: make it again
        value = secrets.token_urlsafe(48).encode()
        await ctx.redis.set(key, value, nx=True)
        value = await ctx.redis.get(key) or value
    key_bytes = value if isinstance(value, bytes) else str(value).encode()
    ctx.extra[_KEY_CACHE] = (key_bytes, now)
    return key_bytes


def _serializer(key: bytes) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(key, salt=_SALT)


def csrf_for(key: bytes, sid: str) -> str:
    """The CSRF token of session ``sid``: derived, so nothing more is stored or sent."""
    return hmac.new(key, b"csrf:" + sid.encode(), hashlib.sha256).hexdigest()


async def verify_token(ctx: Ctx, secret: str) -> tuple[Principal, str] | None:
    """The caller and token digest for a pasted token, or None when it is not a usable token.

    The same checks as the Bearer path (``services.auth``): the bootstrap admin token compared in
    constant time, then the stored record by the token's hash.
    """
    secret = secret.strip()
    admin = ctx.settings.admin_token.get_secret_value()
    if tokens.is_bootstrap(secret, admin):
        return Principal(tokens.BOOTSTRAP_ID, "bootstrap admin", "admin"), tokens.hash_token(secret)
    if not tokens.looks_like_token(secret):
        return None
    record = await tokens.alookup_token(ctx.redis, ctx.keys, secret)
    if record is None or not record.usable():
        return None
    return Principal(record.id, record.name, record.role), tokens.hash_token(secret)


async def create_session(ctx: Ctx, who: Principal, digest: str) -> str:
    """Store a new session for ``who``; the signed cookie value that names it."""
    sid = secrets.token_urlsafe(24)
    key = ctx.keys.dashboard_session(sid)
    pipe = ctx.redis.pipeline(transaction=True)
    pipe.hset(
        key,
        mapping={
            "tid": who.token_id,
            "th": digest,
            "name": who.name,
            "role": who.role,
            "created_at": str(time.time()),
        },
    )
    pipe.expire(key, int(SESSION_IDLE_S))
    await pipe.execute()
    signed = _serializer(await signing_key(ctx)).dumps({"sid": sid, "tid": who.token_id, "th": digest})
    return str(signed)


def _text(data: dict[bytes, bytes], name: str) -> str:
    return data.get(name.encode(), b"").decode(errors="replace")


async def load_session(request: Request) -> Session | None:
    """The session of ``request``'s cookie, if it is valid and its token still usable."""
    cached: Session | None = request.scope.get("dashboard.session")
    if cached is not None:
        return cached
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    ctx = get_ctx(request)
    key = await signing_key(ctx)
    try:
        claims = _serializer(key).loads(raw, max_age=int(SESSION_MAX_AGE_S))
    except BadSignature:  # includes SignatureExpired
        return None
    if not isinstance(claims, dict) or not all(isinstance(claims.get(k), str) for k in ("sid", "tid", "th")):
        return None
    sid, tid, digest = claims["sid"], claims["tid"], claims["th"]
    skey = ctx.keys.dashboard_session(sid)
    pipe = ctx.redis.pipeline(transaction=False)
    pipe.hgetall(skey)
    pipe.expire(skey, int(SESSION_IDLE_S))  # sliding idle timeout (a no-op on a missing key)
    pipe.hget(ctx.keys.tokens, digest)
    data, _, token_raw = await pipe.execute()
    if not data or _text(data, "tid") != tid or _text(data, "th") != digest:
        return None
    role = _token_role(ctx, tid, digest, token_raw)
    if role is None:
        await ctx.redis.delete(skey)  # the token is gone: so is every session made with it
        return None
    flashes: list[dict[str, str]] = []
    if b"flash" in data:
        try:
            flashes = [f for f in json.loads(data[b"flash"]) if isinstance(f, dict)]
        except ValueError:
            flashes = []
    session = Session(sid, tid, _text(data, "name"), role, csrf_for(key, sid), flashes)
    request.scope["dashboard.session"] = session
    return session


def _token_role(ctx: Ctx, tid: str, digest: str, token_raw: bytes | None) -> str | None:
    """The current role of the session's token, or None when it may no longer be used."""
    if tid == tokens.BOOTSTRAP_ID:
        admin = ctx.settings.admin_token.get_secret_value()
        # A changed (or removed) bootstrap token ends the sessions opened with the old one.
        if admin and hmac.compare_digest(tokens.hash_token(admin), digest):
            return "admin"
        return None
    if token_raw is None:
        return None
    try:
        record = tokens.TokenRecord.from_json(token_raw)
    except (ValueError, KeyError):
        return None
    if record.id != tid or not record.usable():
        return None
    return record.role


async def end_session(ctx: Ctx, session: Session) -> None:
    """Log out: the session is deleted, so its cookie is worthless even if it was copied."""
    await ctx.redis.delete(ctx.keys.dashboard_session(session.sid))


async def flash(ctx: Ctx, session: Session, kind: str, message: str, detail: Any = None) -> None:
    """Queue a message for the next page this session shows (``kind``: ok | error | info)."""
    text = message if not detail or not isinstance(detail, str) else f"{message}: {detail}"
    items = [*session.flashes, {"kind": kind, "text": text}][-MAX_FLASHES:]
    session.flashes = items
    await ctx.redis.hset(ctx.keys.dashboard_session(session.sid), "flash", json.dumps(items))


async def take_flashes(ctx: Ctx, session: Session) -> list[dict[str, str]]:
    """The queued messages, removed from the session (each is shown once)."""
    items, session.flashes = session.flashes, []
    if items:
        await ctx.redis.hdel(ctx.keys.dashboard_session(session.sid), "flash")
    return items


def is_secure(request: Request) -> bool:
    """Whether the browser reached us over https (directly, or via a trusted proxy that says so)."""
    if request.url.scheme == "https":
        return True
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return proto == "https" and peer_is_trusted(request)


def peer_is_trusted(request: Request) -> bool:
    """Whether the direct peer is one of ``JOBYARD_TRUSTED_PROXIES``."""
    import ipaddress

    peer = request.client.host if request.client else ""
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(ip in net for net in get_ctx(request).auth.trusted)


def set_session_cookie(response: Response, request: Request, value: str) -> None:
    """Send the session cookie: HttpOnly, SameSite=Strict, Secure over https, whole site."""
    response.set_cookie(
        COOKIE,
        value,
        max_age=int(SESSION_MAX_AGE_S),
        path="/",
        httponly=True,
        samesite="strict",
        secure=is_secure(request),
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    """Tell the browser to forget the session cookie."""
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=is_secure(request))
