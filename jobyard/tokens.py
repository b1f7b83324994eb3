"""API tokens: how they look, how they are stored, and the roles they carry.

A token is ``jy_`` followed by 43 URL-safe characters (``secrets.token_urlsafe(32)``). Redis never
sees the secret: the hash ``keys.tokens`` maps ``sha256(token)`` (hex) to the token's record as
JSON (``id``, ``name``, ``role``, ``created_at``, ``expires_at``, ``revoked``, ``last_used_at``;
times in epoch seconds). The bootstrap admin token (``JOBYARD_ADMIN_TOKEN``) is not stored at all;
it is compared in constant time by the API.

The functions come in a synchronous form (CLI tools, tests) and an ``a``-prefixed asyncio form (the
API); both build on the same pure helpers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from jobyard.errors import Conflict, InvalidInput, NotFound
from jobyard.keys import Keys
from jobyard.models import iso

TOKEN_PREFIX = "jy_"  # noqa: S105 - a prefix, not a secret
ROLES = ("viewer", "operator", "admin")
# A role may do what every role before it in ROLES may do.
ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}
BOOTSTRAP_ID = "bootstrap-admin"
MAX_NAME_CHARS = 100
MAX_EXPIRES_IN_S = 100 * 365 * 24 * 3600.0  # beyond this an expiry time cannot be shown as a date
# last_used_at is bookkeeping, not an audit log: write it at most this often per token.
LAST_USED_RESOLUTION_S = 60.0
# Read-modify-write of the tokens hash (WATCH) gives up after this many clashes.
MAX_TX_ATTEMPTS = 20


@dataclass
class TokenRecord:
    """What is stored about one token (never the secret)."""

    id: str
    name: str
    role: str
    created_at: float
    expires_at: float | None = None
    revoked: bool = False
    last_used_at: float | None = None

    def to_json(self) -> str:
        """The stored form."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> TokenRecord:
        """Read the stored form (unknown fields are ignored, so records can grow)."""
        data = json.loads(raw)
        return cls(
            id=str(data["id"]),
            name=str(data.get("name", "")),
            role=str(data.get("role", "viewer")),
            created_at=float(data.get("created_at") or 0),
            expires_at=None if data.get("expires_at") is None else float(data["expires_at"]),
            revoked=bool(data.get("revoked", False)),
            last_used_at=None if data.get("last_used_at") is None else float(data["last_used_at"]),
        )

    def usable(self, now: float | None = None) -> bool:
        """Not revoked and not expired."""
        now = time.time() if now is None else now
        return not self.revoked and (self.expires_at is None or now < self.expires_at)

    def as_api(self) -> dict[str, Any]:
        """The record as the HTTP API shows it (ISO times)."""
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "revoked": self.revoked,
            "last_used_at": iso(self.last_used_at),
        }


def hash_token(secret: str) -> str:
    """The storage key of a token: sha256 of its text, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def looks_like_token(secret: str) -> bool:
    """Cheap shape check before any lookup (keeps junk out of Redis and the cache)."""
    return secret.startswith(TOKEN_PREFIX) and 20 <= len(secret) <= 200


def is_bootstrap(secret: str, admin_token: str) -> bool:
    """Whether ``secret`` is the configured bootstrap admin token (constant-time compare)."""
    return bool(admin_token) and hmac.compare_digest(secret.encode(), admin_token.encode())


def validate_role(role: str) -> str:
    """``role`` if it is one of ROLES, else ``InvalidInput`` naming them."""
    if role not in ROLE_RANK:
        raise InvalidInput(f"unknown role {role!r}", f"role must be one of: {', '.join(ROLES)}")
    return role


def role_allows(role: str, needed: str) -> bool:
    """Whether a token of ``role`` may do what needs ``needed``."""
    return ROLE_RANK.get(role, -1) >= ROLE_RANK[needed]


def new_token(
    role: str, name: str = "", expires_in_s: float | None = None, now: float | None = None
) -> tuple[str, TokenRecord]:
    """A fresh secret and its record (not stored yet)."""
    validate_role(role)
    name = name.strip()
    if len(name) > MAX_NAME_CHARS:
        raise InvalidInput(f"token name is {len(name)} characters", f"use at most {MAX_NAME_CHARS}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from JSON: it could never be shown again
        raise InvalidInput("token name is not valid text", str(exc)) from exc
    if expires_in_s is not None and expires_in_s <= 0:
        raise InvalidInput("expires_in_s must be positive", "leave it out for a token that does not expire")
    if expires_in_s is not None and expires_in_s > MAX_EXPIRES_IN_S:
        raise InvalidInput(
            f"expires_in_s is over {MAX_EXPIRES_IN_S:g} (100 years)",
            "leave it out for a token that does not expire",
        )
    now = time.time() if now is None else now
    record = TokenRecord(
        id="tok_" + secrets.token_hex(8),
        name=name or role,
        role=role,
        created_at=now,
        expires_at=None if expires_in_s is None else now + expires_in_s,
    )
    return TOKEN_PREFIX + secrets.token_urlsafe(32), record


def _records(raw: dict[Any, Any]) -> list[tuple[str, TokenRecord]]:
    out = [(k.decode() if isinstance(k, bytes) else k, TokenRecord.from_json(v)) for k, v in raw.items()]
    return sorted(out, key=lambda item: item[1].created_at)


def _find(raw: dict[Any, Any], token_id: str) -> tuple[str, TokenRecord]:
    for digest, record in _records(raw):
        if record.id == token_id:
            return digest, record
    raise NotFound(f"token {token_id!r} does not exist", "GET /api/tokens lists the tokens")


# -- synchronous ---------------------------------------------------------------------------------
def create_token(
    client: redis.Redis, keys: Keys, role: str, name: str = "", expires_in_s: float | None = None
) -> tuple[str, TokenRecord]:
    """Make and store a token; the secret is returned here and never again."""
    secret, record = new_token(role, name, expires_in_s)
    client.hset(keys.tokens, hash_token(secret), record.to_json())
    return secret, record


def list_tokens(client: redis.Redis, keys: Keys) -> list[TokenRecord]:
    """Every stored token, oldest first."""
    return [record for _, record in _records(client.hgetall(keys.tokens))]


def revoke_token(client: redis.Redis, keys: Keys, token_id: str) -> TokenRecord:
    """Mark a token revoked (kept, so the listing shows it); ``NotFound`` for an unknown id."""
    for _ in range(MAX_TX_ATTEMPTS):
        with client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(keys.tokens)  # type: ignore[no-untyped-call]
                digest, record = _find(pipe.hgetall(keys.tokens), token_id)
                record.revoked = True
                pipe.multi()
                pipe.hset(keys.tokens, digest, record.to_json())
                pipe.execute()
                return record
            except redis.WatchError:
                continue  # a token was used or changed meanwhile: read again
    raise Conflict(f"token {token_id!r} kept changing while being revoked", "retry")


def lookup_token(client: redis.Redis, keys: Keys, secret: str) -> TokenRecord | None:
    """The record of a stored token (usable or not), or None."""
    raw = client.hget(keys.tokens, hash_token(secret))
    return None if raw is None else TokenRecord.from_json(raw)


# -- asyncio -------------------------------------------------------------------------------------
async def acreate_token(
    client: aioredis.Redis, keys: Keys, role: str, name: str = "", expires_in_s: float | None = None
) -> tuple[str, TokenRecord]:
    """Asyncio ``create_token``."""
    secret, record = new_token(role, name, expires_in_s)
    await client.hset(keys.tokens, hash_token(secret), record.to_json())
    return secret, record


async def alist_tokens(client: aioredis.Redis, keys: Keys) -> list[TokenRecord]:
    """Asyncio ``list_tokens``."""
    return [record for _, record in _records(await client.hgetall(keys.tokens))]


async def arevoke_token(client: aioredis.Redis, keys: Keys, token_id: str) -> TokenRecord:
    """Asyncio ``revoke_token``."""
    for _ in range(MAX_TX_ATTEMPTS):
        async with client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(keys.tokens)
                digest, record = _find(await pipe.hgetall(keys.tokens), token_id)
                record.revoked = True
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.hset(keys.tokens, digest, record.to_json())
                await pipe.execute()
                return record
            except redis.WatchError:
                continue
    raise Conflict(f"token {token_id!r} kept changing while being revoked", "retry")


async def alookup_token(client: aioredis.Redis, keys: Keys, secret: str) -> TokenRecord | None:
    """Asyncio ``lookup_token``."""
    raw = await client.hget(keys.tokens, hash_token(secret))
    return None if raw is None else TokenRecord.from_json(raw)


async def atouch_token(client: aioredis.Redis, keys: Keys, secret: str, now: float | None = None) -> None:
    """Record that a token was used, unless it was revoked meanwhile (optimistic transaction).

    WATCH makes a revoke that lands between our read and our write abort the write instead of
    being overwritten with ``revoked: false``.
    """
    now = time.time() if now is None else now
    digest = hash_token(secret)
    async with client.pipeline(transaction=True) as pipe:
        try:
            await pipe.watch(keys.tokens)
            raw = await pipe.hget(keys.tokens, digest)
            if raw is None:
                return
            record = TokenRecord.from_json(raw)
            if record.revoked:
                return
            record.last_used_at = now
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.hset(keys.tokens, digest, record.to_json())
            await pipe.execute()
        except redis.WatchError:
            return  # someone changed a token meanwhile; last_used_at can wait for the next use
