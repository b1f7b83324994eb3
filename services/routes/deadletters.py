"""Dead letters: runs that used up their retries (or their worker deaths); list, replay, purge.

A dead letter is a run id in ``keys.dead_letters`` (scored by when it was dead-lettered); the run
record keeps the details. A replay is a new run (trigger ``replay``, ``replay_of`` the old one)
and takes the run off the list; a purge takes it off without a new run, along with the copy of
its message dramatiq keeps in the level's dead-letter queue.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from jobyard.errors import NotFound
from jobyard.models import Run, Trigger, iso
from services.deps import Ctx, Principal, current_ctx, require_operator, require_viewer
from services.errors import CONFLICT, ERRORS, NOT_FOUND
from services.routes.runs import RunOut, answer_created, respec, runnable
from services.store import check_run_id

log = logging.getLogger(__name__)
router = APIRouter(tags=["deadletters"], responses=ERRORS)

SCAN_COUNT = 500


class DeadLetterOut(BaseModel):
    """One dead-lettered run."""

    run_id: str
    job: str | None
    attempts: int | None
    error: str | None
    dead_lettered_at: str | None


class DeadLetterList(BaseModel):
    """A page of dead letters, newest first; pass ``next`` as ``before`` for the next page."""

    deadletters: list[DeadLetterOut]
    next: str | None
    total: int


def dead_letter_view(run_id: str, score_ms: float | None, run: Run | None) -> dict[str, Any]:
    """A dead letter as the API shows it."""
    when = run.dead_lettered_at if run and run.dead_lettered_at else (score_ms / 1000 if score_ms else None)
    return {
        "run_id": run_id,
        "job": run.job if run else None,
        "attempts": run.attempt if run else None,
        "error": run.error if run else "the run record is gone",
        "dead_lettered_at": iso(when),
    }


def not_dead_lettered(run_id: str) -> NotFound:
    """The error for a run that is not on the dead-letter list."""
    return NotFound(f"run {run_id!r} is not a dead letter", "GET /api/deadletters lists them")


@router.get(
    "/api/deadletters", operation_id="listDeadLetters", response_model=DeadLetterList, summary="Dead letters"
)
async def list_dead_letters(
    limit: int = Query(50, ge=1, le=500),
    before: str | None = Query(None, description="the 'next' of the previous page"),
    ctx: Ctx = Depends(current_ctx),
    who: Principal = Depends(require_viewer),
) -> dict[str, Any]:
    """Dead-lettered runs, newest first."""
    ids = await ctx.store.page_ids(ctx.keys.dead_letters, limit, before)
    pipe = ctx.redis.pipeline(transaction=False)
    pipe.zcard(ctx.keys.dead_letters)
    for rid in ids:
        pipe.zscore(ctx.keys.dead_letters, rid)
    total, *scores = await pipe.execute()
    runs = await ctx.store.get_many(ids)
    items = [dead_letter_view(rid, s, run) for rid, s, run in zip(ids, scores, runs, strict=True)]
    return {"deadletters": items, "next": ids[-1] if len(ids) == limit else None, "total": int(total)}


@router.post(
    "/api/deadletters/{run_id}/replay",
    operation_id="replayDeadLetter",
    status_code=202,
    response_model=RunOut,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Run a dead letter again, as a new run",
)
async def replay(
    run_id: str, ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_operator)
) -> JSONResponse:
    """A new run like the dead one (trigger ``replay``); the dead letter is taken off the list."""
    check_run_id(run_id)
    score = await ctx.redis.zscore(ctx.keys.dead_letters, run_id)
    if score is None:
        raise not_dead_lettered(run_id)
    run = await ctx.store.get(run_id)
    job = runnable(await ctx.store.get_job(run.job))
    # Whoever removes it replays it: two concurrent replays make one new run, not two.
    if not await ctx.redis.zrem(ctx.keys.dead_letters, run_id):
        raise not_dead_lettered(run_id)
    try:
        answer = await answer_created(ctx, await ctx.store.create(respec(run, Trigger.REPLAY), job), run.job)
    except BaseException:
        await ctx.redis.zadd(ctx.keys.dead_letters, {run_id: score})
        raise
    log.info("dead letter %s of job %s replayed by %s", run_id, run.job, who.name)
    return answer


async def drop_dramatiq_copy(ctx: Ctx, run: Run) -> int:
    """Remove the run's messages from dramatiq's dead-letter queue of its level; how many."""
    level = run.priority.value
    xq, msgs = ctx.keys.queue_xq(level), ctx.keys.queue_xq(level) + ".msgs"
    needle = run.id.encode()
    found: list[bytes] = []
    async for message_id, encoded in ctx.redis.hscan_iter(msgs, count=SCAN_COUNT):
        if needle not in encoded:
            continue
        try:
            args = json.loads(encoded).get("args") or []
        except ValueError:
            continue
        if run.id in args:
            found.append(message_id)
    if found:
        pipe = ctx.redis.pipeline(transaction=True)
        pipe.zrem(xq, *found)
        pipe.hdel(msgs, *found)
        await pipe.execute()
    return len(found)


@router.delete(
    "/api/deadletters/{run_id}",
    operation_id="purgeDeadLetter",
    responses=NOT_FOUND,
    summary="Purge a dead letter (no new run)",
)
async def purge(
    run_id: str, ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_operator)
) -> dict[str, Any]:
    """Take the run off the dead-letter list for good (its record may then be trimmed from history)."""
    check_run_id(run_id)
    if not await ctx.redis.zrem(ctx.keys.dead_letters, run_id):
        raise not_dead_lettered(run_id)
    messages = 0
    data: dict[bytes, bytes] = await ctx.redis.hgetall(ctx.keys.run(run_id))  # type: ignore[assignment]
    if data:
        messages = await drop_dramatiq_copy(ctx, Run.from_hash(data))
    log.info("dead letter %s purged by %s", run_id, who.name)
    return {"run_id": run_id, "purged": True, "messages_removed": messages}
