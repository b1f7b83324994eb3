"""Probes that need no token: liveness (the process answers) and readiness (Redis answers)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from services.deps import Ctx, current_ctx
from services.errors import REDIS_DOWN, REDIS_DOWN_DETAIL, error_response

router = APIRouter(tags=["health"])
READY_TIMEOUT_S = 2.0


@router.get("/healthz", operation_id="healthz", summary="Liveness: the process is serving")
async def healthz() -> dict[str, Any]:
    """Always 200 while the process serves requests."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="readyz",
    summary="Readiness: Redis answers PING",
    responses={503: {"description": "Redis is unreachable"}},
)
async def readyz(ctx: Ctx = Depends(current_ctx)) -> JSONResponse:
    """200 when Redis answers PING, else 503 with the error body."""
    try:
        # A probe must answer quickly even when Redis is a black hole (connect timeouts are longer).
        await asyncio.wait_for(ctx.redis.ping(), READY_TIMEOUT_S)
    except (*REDIS_DOWN, TimeoutError):
        return error_response(503, "Redis is unavailable", REDIS_DOWN_DETAIL)
    return JSONResponse({"status": "ready"})
