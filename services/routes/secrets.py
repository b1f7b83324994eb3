"""Job secrets: admins set and delete values; anyone may list the names; no route returns a value.

Values are encrypted under ``JOBYARD_SECRET_KEY`` before they reach Redis (``jobyard.secrets``)
and decrypted only by the workers, into the run's environment.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from jobyard import secrets
from services.deps import Ctx, Principal, current_ctx, require_admin, require_viewer
from services.errors import CONFLICT, ERRORS, NOT_FOUND, ErrorBody

log = logging.getLogger(__name__)
router = APIRouter(tags=["secrets"], responses=ERRORS)

KEY_PATH = Path(..., description="the environment variable name the run sees", max_length=128)


class SecretValue(BaseModel):
    """The value to store (write-only: no answer ever contains it)."""

    model_config = ConfigDict(extra="forbid")
    value: str = Field(..., description=f"the secret value, at most {secrets.MAX_VALUE_BYTES} bytes of UTF-8")


class SecretOut(BaseModel):
    """What is shown about a secret: its name and when and by whom it was set."""

    name: str
    updated_at: str | None
    updated_by: str | None


class SecretList(BaseModel):
    """A job's secret names."""

    secrets: list[SecretOut]


class SecretDeleted(BaseModel):
    """A deleted secret."""

    name: str
    deleted: bool


@router.get(
    "/api/jobs/{name}/secrets",
    operation_id="listJobSecrets",
    response_model=SecretList,
    responses=NOT_FOUND,
    summary="A job's secret names (never their values)",
)
async def list_job_secrets(
    name: str, ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_viewer)
) -> dict[str, Any]:
    """Names and times only."""
    await ctx.store.get_job(name)
    return {"secrets": [s.as_api() for s in await secrets.alist_secrets(ctx.redis, ctx.keys, name)]}


@router.put(
    "/api/jobs/{name}/secrets/{key}",
    operation_id="putJobSecret",
    status_code=201,
    response_model=SecretOut,
    responses={
        200: {"model": SecretOut, "description": "replaced an existing value"},
        **NOT_FOUND,
        **CONFLICT,
        413: {"model": ErrorBody, "description": "the value is over the size cap"},
    },
    summary="Set a secret (stored encrypted; given to the job's runs as an environment variable)",
)
async def put_job_secret(
    name: str,
    body: SecretValue,
    key: str = KEY_PATH,
    ctx: Ctx = Depends(current_ctx),
    who: Principal = Depends(require_admin),
) -> JSONResponse:
    """201 for a new name, 200 for a replaced value."""
    secrets.check_name(key)
    box = secrets.require_box(ctx.settings)
    await ctx.store.get_job(name)
    created = await secrets.aset_secret(ctx.redis, ctx.keys, box, name, key, body.value, who.token_id)
    log.info("secret %s of job %s %s by %s", key, name, "set" if created else "replaced", who.name)
    infos = {s.name: s for s in await secrets.alist_secrets(ctx.redis, ctx.keys, name)}
    info = infos.get(key) or secrets.SecretInfo(key, None, who.token_id)
    return JSONResponse(info.as_api(), status_code=201 if created else 200)


@router.delete(
    "/api/jobs/{name}/secrets/{key}",
    operation_id="deleteJobSecret",
    response_model=SecretDeleted,
    responses=NOT_FOUND,
    summary="Delete a secret",
)
async def delete_job_secret(
    name: str, key: str = KEY_PATH, ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_admin)
) -> dict[str, Any]:
    """Remove the value; later runs no longer get it."""
    await secrets.adelete_secret(ctx.redis, ctx.keys, name, key)
    log.info("secret %s of job %s deleted by %s", key, name, who.name)
    return {"name": key, "deleted": True}
