"""What every route needs: the per-app context and the role-checking dependencies.

A router takes ``ctx: Ctx = Depends(current_ctx)`` (or ``Depends(get_ctx)``, which FastAPI runs in
a thread) for Redis and settings, and one of
``require_viewer`` / ``require_operator`` / ``require_admin`` for the caller, e.g.::

    @router.get("/api/things", operation_id="listThings")
    async def list_things(ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_viewer)): ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from fastapi import Request
from fastapi.security import HTTPBearer
from redis import Redis as SyncRedis

from jobyard.keys import Keys
from jobyard.redis_conn import connect, connect_async
from jobyard.scripts import Scripts
from jobyard.settings import Settings
from services.audit_middleware import note_actor
from services.auth import Authenticator, Principal
from services.store import AsyncRunStore

__all__ = [
    "Ctx",
    "Principal",
    "RoleBearer",
    "current_ctx",
    "get_ctx",
    "require_admin",
    "require_operator",
    "require_viewer",
]


@dataclass
class Ctx:
    """Per-app state: settings, key names, Redis clients, the run store and the authenticator."""

    settings: Settings
    keys: Keys
    redis: aioredis.Redis
    sync_redis: SyncRedis  # for blocking package work in a thread (run_in_threadpool)
    bulk_redis: aioredis.Redis  # no timeout per reply: for pipelines of many replies (batches)
    store: AsyncRunStore
    scripts: Scripts  # the Lua scripts on the asyncio client
    auth: Authenticator
    extra: dict[str, Any] = field(default_factory=dict)  # room for other routers' per-app state
    # Set when the server is asked to stop: long-lived responses (log streams) end on their own
    # instead of holding the graceful shutdown until it times out.
    stopping: bool = False

    @classmethod
    def create(cls, settings: Settings) -> Ctx:
        """Clients for the configured Redis (they connect lazily, on first use)."""
        keys = Keys(settings.redis_prefix)
        client = connect_async(settings)
        bulk = connect_async(settings, socket_timeout=None)
        return cls(
            settings=settings,
            keys=keys,
            redis=client,
            sync_redis=connect(settings),
            bulk_redis=bulk,
            store=AsyncRunStore(client, keys, settings, bulk=bulk),
            scripts=Scripts(client),
            auth=Authenticator(settings, keys, client),
        )

    async def close(self) -> None:
        """Close the clients' connections."""
        await self.redis.aclose()
        await self.bulk_redis.aclose()
        self.sync_redis.close()


def get_ctx(request: Request) -> Ctx:
    """The context of the app serving ``request`` (a plain function: call it anywhere)."""
    ctx: Ctx = request.app.state.ctx
    return ctx


async def current_ctx(request: Request) -> Ctx:
    """``get_ctx`` as an async dependency: FastAPI runs a sync dependency in a worker thread,
    which costs a hot route a thread hop per request; ``Depends(current_ctx)`` does not."""
    return get_ctx(request)


class RoleBearer(HTTPBearer):
    """A dependency that returns the caller's ``Principal`` if its token's role covers ``role``.

    A ``HTTPBearer`` subclass, so that OpenAPI (and /docs' "Authorize") shows the bearer scheme,
    yet a single dependency: no sub-dependency to solve on every request of the hot paths.
    """

    def __init__(self, role: str) -> None:
        super().__init__(
            auto_error=False,  # a missing header is our 401 with our body, not FastAPI's
            scheme_name="bearer",
            description="an API token: 'Authorization: Bearer jy_...'",
        )
        self.role = role

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        note_actor(request.scope, self.role)  # for the audit log (services/audit_middleware.py)
        principal = await get_ctx(request).auth.authenticate(request, self.role)
        note_actor(request.scope, self.role, principal)
        return principal


require_viewer = RoleBearer("viewer")  # read
require_operator = RoleBearer("operator")  # run, cancel, retry, start/stop, replay, purge dead letters
require_admin = RoleBearer("admin")  # deploy, delete, settings, tokens
