"""API tokens (admin only): create one (its secret is shown once), list them, revoke one."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from jobyard import tokens
from services.deps import Ctx, Principal, current_ctx, require_admin
from services.errors import ERRORS, NOT_FOUND

router = APIRouter(tags=["tokens"], responses=ERRORS)


class TokenRequest(BaseModel):
    """A new token."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["viewer", "operator", "admin"]
    name: str = Field("", max_length=tokens.MAX_NAME_CHARS, description="what the token is for")
    expires_in_s: float | None = Field(
        None, gt=0, le=tokens.MAX_EXPIRES_IN_S, description="lifetime in seconds; none: no expiry"
    )


class TokenOut(BaseModel):
    """A token's record (never its secret)."""

    id: str
    name: str
    role: str
    created_at: str | None
    expires_at: str | None
    revoked: bool
    last_used_at: str | None


class NewTokenOut(TokenOut):
    """A created token: ``token`` is the secret, shown this once."""

    token: str


class TokenList(BaseModel):
    """Every token."""

    tokens: list[TokenOut]


@router.post(
    "/api/tokens",
    operation_id="createToken",
    status_code=201,
    response_model=NewTokenOut,
    summary="Create a token (the secret is in this answer only)",
)
async def create_token(
    body: TokenRequest, ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_admin)
) -> JSONResponse:
    """Create a token of a role; store only its hash."""
    secret, record = await tokens.acreate_token(ctx.redis, ctx.keys, body.role, body.name, body.expires_in_s)
    ctx.auth.forget()
    return JSONResponse({**record.as_api(), "token": secret}, status_code=201)


@router.get("/api/tokens", operation_id="listTokens", response_model=TokenList, summary="List tokens")
async def list_tokens(
    ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_admin)
) -> dict[str, Any]:
    """Every stored token, oldest first, without secrets."""
    return {"tokens": [r.as_api() for r in await tokens.alist_tokens(ctx.redis, ctx.keys)]}


@router.delete(
    "/api/tokens/{token_id}",
    operation_id="revokeToken",
    response_model=TokenOut,
    responses=NOT_FOUND,
    summary="Revoke a token",
)
async def revoke_token(
    token_id: str, ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_admin)
) -> dict[str, Any]:
    """Revoke a token: it stops working within two seconds on every API replica."""
    record = await tokens.arevoke_token(ctx.redis, ctx.keys, token_id)
    ctx.auth.forget()
    return record.as_api()
