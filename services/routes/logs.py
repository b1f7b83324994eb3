"""Run logs: the whole log as a text download, and a live server-sent event stream of it.

The stream replays what is stored after the client's position (``Last-Event-ID`` or ``?after=``),
then follows new lines with a short blocking ``XREAD``; between reads it looks at the run's
status, and once the run is terminal and the log drained it sends ``event: end`` and closes.
Event ids are the log stream's entry ids, so a reconnecting client resumes without gaps or repeats.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import StreamingResponse

from jobyard.errors import InvalidInput
from jobyard.models import TERMINAL, iso
from jobyard.runs import decode_log_entry, format_log_line
from services.deps import Ctx, Principal, current_ctx, require_viewer
from services.errors import ERRORS, NOT_FOUND, REDIS_DOWN, REDIS_DOWN_DETAIL

log = logging.getLogger(__name__)
router = APIRouter(tags=["logs"], responses={**ERRORS, **NOT_FOUND})

ENTRY_ID_RE = re.compile(r"^\d{1,20}-\d{1,20}$")
PAGE = 1000
# How long one XREAD waits for new lines; also how soon the end of a quiet run is noticed.
BLOCK_S = 0.5
KEEPALIVE_S = 15.0
_TERMINAL = {s.value.encode() for s in TERMINAL}
Entries = list[tuple[bytes, dict[bytes, bytes]]]


def _position(after: str | None, last_event_id: str | None) -> str:
    value = after or last_event_id or "0-0"
    if value != "0-0" and not ENTRY_ID_RE.match(value):
        raise InvalidInput(
            f"{value!r} is not a log entry id", "pass the 'id' of the last event seen, e.g. 1700000000000-0"
        )
    return value


@router.get(
    "/api/runs/{run_id}/log",
    operation_id="getRunLog",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/plain": {}}, "description": "'<ISO time> <STREAM> <line>' per line"}},
    summary="A run's log as text (download)",
)
async def get_log(
    run_id: str, ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_viewer)
) -> StreamingResponse:
    """Every stored line, oldest first, as ``<ISO time> <STREAM> <line>``."""
    run = await ctx.store.get(run_id)
    key = ctx.keys.run_log(run.id)

    async def lines() -> AsyncIterator[bytes]:
        last = "0-0"
        while True:
            entries = await _after(ctx, key, last)
            if entries:
                yield "".join(format_log_line(decode_log_entry(i, d)) + "\n" for i, d in entries).encode()
                last = entries[-1][0].decode()
            if len(entries) < PAGE:
                return

    return StreamingResponse(
        lines(),
        media_type="text/plain; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{run.job}-{run.id}.log"'},
    )


def _event(entry_id: bytes, data: dict[bytes, bytes]) -> str:
    entry = decode_log_entry(entry_id, data)
    payload = json.dumps({"t": iso(entry["t"]), "stream": entry["stream"], "line": entry["line"]})
    return f"id: {entry['id']}\nevent: line\ndata: {payload}\n\n"


@router.get(
    "/api/runs/{run_id}/log/stream",
    operation_id="streamRunLog",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "events 'line', then 'end'"}},
    summary="Follow a run's log live (server-sent events)",
)
async def stream_log(
    run_id: str,
    after: str | None = Query(None, description="resume after this entry id (same as Last-Event-ID)"),
    last_event_id: str | None = Header(None, alias="Last-Event-ID"),
    ctx: Ctx = Depends(current_ctx),
    who: Principal = Depends(require_viewer),
) -> StreamingResponse:
    """``event: line`` per log line (id = entry id), then ``event: end`` with the final status."""
    position = _position(after, last_event_id)
    run = await ctx.store.get(run_id)
    return StreamingResponse(
        follow(ctx, run.id, position),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _after(ctx: Ctx, key: str, last: str) -> Entries:
    """Up to PAGE entries after entry id ``last`` ("0-0": from the start)."""
    start = "-" if last == "0-0" else "(" + last
    entries: Entries = await ctx.redis.xrange(key, start, "+", PAGE)  # type: ignore[assignment]
    return entries


async def follow(ctx: Ctx, run_id: str, position: str) -> AsyncIterator[str]:
    """The event stream of one run's log from ``position`` (exclusive) until the run has ended."""
    key = ctx.keys.run_log(run_id)
    last = position
    quiet_since = time.monotonic()
    status: bytes | None = None
    ending = False
    try:
        while True:
            entries = await _after(ctx, key, last)
            if entries:
                yield "".join(_event(i, d) for i, d in entries)
                last = entries[-1][0].decode()
                quiet_since = time.monotonic()
            if len(entries) == PAGE:
                continue  # more is stored: drain it before anything else
            if ending:
                yield _end(status)
                return
            if ctx.stopping:
                # The server is shutting down: end the response; clients resume with Last-Event-ID.
                yield ": server shutting down, reconnect to resume\n\n"
                return
            status = await ctx.redis.hget(ctx.keys.run(run_id), "status")  # type: ignore[assignment]
            if status is None or status in _TERMINAL:
                # Lines are written before the final status: one more drain catches the last ones.
                ending = True
                continue
            got: list[tuple[bytes, Entries]] = await ctx.redis.xread(  # type: ignore[assignment]
                {key: last}, count=PAGE, block=int(BLOCK_S * 1000)
            )
            for _stream, items in got or []:
                if items:
                    yield "".join(_event(i, d) for i, d in items)
                    last = items[-1][0].decode()
                    quiet_since = time.monotonic()
            if not got and time.monotonic() - quiet_since >= KEEPALIVE_S:
                yield ": keep-alive\n\n"  # a comment: keeps proxies from closing a quiet stream
                quiet_since = time.monotonic()
    except REDIS_DOWN as exc:
        log.warning("log stream of run %s: Redis unreachable: %s", run_id, exc)
        body = json.dumps({"error": "Redis is unavailable", "detail": REDIS_DOWN_DETAIL})
        yield f"event: error\ndata: {body}\n\n"


def _end(status: bytes | None) -> str:
    data: dict[str, Any] = {"status": status.decode() if status else None}
    if status is None:
        data["detail"] = "the run no longer exists (trimmed from history)"
    return f"event: end\ndata: {json.dumps(data)}\n\n"
