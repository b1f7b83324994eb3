"""``GET /api/cluster``: live workers, queue depths, dead letters and the scheduler leader."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from jobyard.models import iso
from jobyard.queue import queue_depths_pipeline, read_depths
from services.deps import Ctx, Principal, current_ctx, require_viewer
from services.errors import ERRORS

router = APIRouter(tags=["cluster"], responses=ERRORS)


class WorkerOut(BaseModel):
    """One live worker process."""

    id: str
    instance_id: str | None
    host: str | None
    pid: int | None
    slots: int | None
    busy: int | None
    started_at: str | None
    last_seen: str | None


class SchedulerOut(BaseModel):
    """The scheduler leader (null when no replica holds the lease)."""

    leader: str | None
    term: int | None
    since: str | None


class ClusterOut(BaseModel):
    """The whole cluster at a glance."""

    workers: list[WorkerOut]
    queues: dict[str, int]
    dead_letters: int
    scheduler: SchedulerOut


def _text(data: dict[bytes, bytes], name: str) -> str | None:
    value = data.get(name.encode())
    return value.decode(errors="replace") if value is not None else None


def _number(data: dict[bytes, bytes], name: str) -> float | None:
    value = data.get(name.encode())
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def worker_view(worker_id: str, last_seen_ms: float, data: dict[bytes, bytes]) -> dict[str, Any]:
    """A worker as the API shows it, from its zset score and its hash."""
    return {
        "id": worker_id,
        "instance_id": _text(data, "instance_id"),
        "host": _text(data, "host"),
        "pid": _int(_number(data, "pid")),
        "slots": _int(_number(data, "slots")),
        "busy": _int(_number(data, "busy")),
        "started_at": iso(_number(data, "started_at")),
        "last_seen": iso(last_seen_ms / 1000),
    }


def scheduler_view(lease: bytes | None, info: dict[bytes, bytes]) -> dict[str, Any]:
    """The leader from the lease (``"<instance>|<term>"``) and its info hash."""
    if lease is None:
        return {"leader": None, "term": _int(_number(info, "term")), "since": None}
    instance, _, term = lease.decode(errors="replace").partition("|")
    return {
        "leader": _text(info, "instance") or instance,
        "term": _int(_number(info, "term")) or (int(term) if term.isdigit() else None),
        "since": iso(_number(info, "since")),
    }


@router.get("/api/cluster", operation_id="getCluster", response_model=ClusterOut, summary="Cluster state")
async def cluster(
    ctx: Ctx = Depends(current_ctx), who: Principal = Depends(require_viewer)
) -> dict[str, Any]:
    """Workers seen within the heartbeat timeout, queue depths, dead letters, the scheduler leader."""
    k = ctx.keys
    now_ms = time.time() * 1000
    pipe = queue_depths_pipeline(ctx.redis, k)  # four results: high, normal, low, delayed
    pipe.zcard(k.dead_letters)
    pipe.get(k.leader)
    pipe.hgetall(k.leader_info)
    pipe.zrangebyscore(
        k.workers, now_ms - ctx.settings.heartbeat_timeout_seconds * 1000, "+inf", withscores=True
    )
    res = await pipe.execute()
    depths = read_depths(res[:4])
    dead, lease, info, live = res[4:8]
    pipe = ctx.redis.pipeline(transaction=False)
    for member, _score in live:
        pipe.hgetall(k.worker(member.decode()))
    hashes = await pipe.execute() if live else []
    workers = [
        worker_view(member.decode(), score, data) for (member, score), data in zip(live, hashes, strict=True)
    ]
    return {
        "workers": workers,
        "queues": depths,
        "dead_letters": int(dead),
        "scheduler": scheduler_view(lease, info),
    }
