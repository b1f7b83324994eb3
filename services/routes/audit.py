"""The audit log (admin only): every admin action, newest first, with who, what and when."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from jobyard import audit
from services.deps import Ctx, Principal, current_ctx, require_admin
from services.errors import ERRORS

router = APIRouter(tags=["audit"], responses=ERRORS)


class Actor(BaseModel):
    """The token that acted."""

    id: str
    name: str
    role: str


class AuditEventOut(BaseModel):
    """One admin action."""

    id: str
    time: str | None
    actor: Actor
    action: str
    target: str
    method: str
    path: str
    status: int
    address: str


class AuditPage(BaseModel):
    """A page of events, newest first; ``next`` is the ``before`` of the following page."""

    events: list[AuditEventOut]
    next: str | None


@router.get(
    "/api/audit",
    operation_id="listAuditEvents",
    response_model=AuditPage,
    summary="The audit log of admin actions, newest first",
)
async def list_audit_events(
    limit: int = Query(100, ge=1, le=audit.MAX_PAGE),
    before: str | None = Query(None, max_length=40, description="the 'next' of the previous page"),
    ctx: Ctx = Depends(current_ctx),
    who: Principal = Depends(require_admin),
) -> dict[str, Any]:
    """Up to ``limit`` events older than ``before``."""
    events = await audit.aread(ctx.redis, ctx.keys, limit, before)
    return {
        "events": [e.as_api() for e in events],
        "next": events[-1].id if len(events) == limit else None,
    }
