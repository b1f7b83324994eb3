"""The batch route's store call: ``create_many`` writes each run exactly as ``create_run`` does.

``create_many.lua`` runs the code of ``create_run.lua`` for a hundred runs a call; here the same
specs go once through each script (on two jobs alike but for their names) and what Redis holds
afterwards must match run for run: records, queues, delays, idempotency, history, wake-ups.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from jobyard.keys import PRIORITY_LEVELS
from jobyard.models import Job
from jobyard.runs import Created, EnqueueSpec
from jobyard.settings import Settings
from services.store import CHUNK_RUNS, AsyncRunStore
from tests.services.conftest import KEYS, put_job

SETTINGS = {"priority": "low", "max_retries": 2, "timeout": 30}


def _specs(job: str, now: float) -> list[EnqueueSpec]:
    later = now + 3600
    specs = [EnqueueSpec(job=job, args=[str(i)]) for i in range(2 * CHUNK_RUNS + 50)]
    specs[1] = EnqueueSpec(job=job, priority="high", env={"A": "1"}, callback_url="http://x/y")  # type: ignore[arg-type]
    specs[2] = EnqueueSpec(job=job, run_at=later, timeout_s=5.0, max_retries=0)
    specs[3] = EnqueueSpec(job=job, run_at=now - 10)  # a time passed: queued now
    specs[4] = EnqueueSpec(job=job, idempotency_key="k")
    specs[CHUNK_RUNS + 4] = EnqueueSpec(job=job, idempotency_key="k")  # the same key, next call
    specs[5] = EnqueueSpec(job=job, idempotency_key="before")  # a key used before the batch
    return specs


def _state(r: redis.Redis, job: str, made: list[Created]) -> dict[str, Any]:
    """What the runs of ``job`` left in Redis, with ids replaced by their index in ``made``."""
    index = {c.run_id: i for i, c in enumerate(made) if c.run_id}
    records = []
    for c in made:
        fields = {k.decode(): v.decode() for k, v in r.hgetall(KEYS.run(c.run_id or "-")).items()}
        for name in ("id", "job", "enqueued_at"):
            fields.pop(name, None)
        records.append(fields)
    queues = {}
    for level in PRIORITY_LEVELS:
        ids = [i.decode() for i in r.lrange(KEYS.queue(level), 0, -1)]
        messages = [json.loads(r.hget(KEYS.queue_msgs(level), i) or "{}") for i in ids]
        queues[level] = [index.get(m["args"][0]) for m in messages if m["args"][1] == job]
    delayed = []
    for member in r.zrange(KEYS.delayed, 0, -1):
        level, message_id = member.decode().split("|")
        message = json.loads(r.hget(KEYS.queue_msgs(level), message_id) or "{}")
        if message["args"][1] == job:
            delayed.append((level, index.get(message["args"][0]), message["queue_name"]))
    history = [index.get(i.decode()) for i in r.zrange(KEYS.job_runs(job), 0, -1)]
    active = sorted(index.get(i.decode(), -1) for i in r.smembers(KEYS.job_active(job)))
    keys = {key: index.get((r.get(KEYS.idempotency(job, key)) or b"").decode()) for key in ("k", "before")}
    return {
        "outcomes": [c.outcome for c in made],
        "records": records,
        "queues": queues,
        "delayed": delayed,
        "history": history,
        "active": active,
        "keys": keys,
    }


def _store(redis_url: str, tmp_path: Path) -> AsyncRunStore:
    settings = Settings(redis_url=redis_url, data_dir=tmp_path)  # type: ignore[arg-type]
    return AsyncRunStore(aioredis.Redis.from_url(redis_url), KEYS, settings)


def test_create_many_writes_each_run_as_create_run_does(
    r: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    # given two jobs alike but for their names, each with a run made earlier under key "before"
    jobs = {name: put_job(r, name, settings=SETTINGS) for name in ("single", "batch")}
    store = _store(redis_url, tmp_path)
    now = time.time()

    async def scenario() -> tuple[list[Created], list[Created], list[Created]]:
        try:
            earlier = [
                await store.create(EnqueueSpec(job=n, idempotency_key="before"), j) for n, j in jobs.items()
            ]
            # when the same specs go one create_run call each, and all at once through create_many
            single = [await store.create(spec, jobs["single"]) for spec in _specs("single", now)]
            batch = await store.create_many([(spec, jobs["batch"]) for spec in _specs("batch", now)])
            return earlier, single, batch
        finally:
            await store.r.aclose()

    earlier, single, batch = asyncio.run(scenario())
    # then Redis holds the same for both, run for run
    assert len(batch) > 2 * CHUNK_RUNS  # three calls
    expected = _state(r, "single", earlier[:1] + single)
    assert _state(r, "batch", earlier[1:] + batch) == expected
    assert expected["outcomes"].count("exists") == 2  # the key repeated across calls, the earlier key
    assert batch[CHUNK_RUNS + 4].run_id == batch[4].run_id and batch[5].run_id == earlier[1].run_id
    assert [d[1] for d in expected["delayed"]] == [3]  # index 3 of the runs made: specs[2]
    assert expected["queues"]["high"] == [2]
    assert batch[0].run is not None and batch[0].run.to_hash() == {
        k.decode(): v.decode() for k, v in r.hgetall(KEYS.run(batch[0].run.id)).items()
    }
    assert r.llen(KEYS.wake) > 0


def test_create_many_refuses_runs_of_a_deleted_job_and_makes_the_others(
    r: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    kept, gone = put_job(r, "kept"), put_job(r, "gone")
    r.delete(KEYS.job("gone"))  # deleted between the route's validation and the enqueue
    store = _store(redis_url, tmp_path)
    items: list[tuple[EnqueueSpec, Job]] = [
        (EnqueueSpec(job="kept"), kept),
        (EnqueueSpec(job="gone"), gone),
        (EnqueueSpec(job="kept", idempotency_key="x"), kept),
    ]

    async def scenario() -> list[Created]:
        try:
            return await store.create_many(items)
        finally:
            await store.r.aclose()

    made = asyncio.run(scenario())
    assert [c.outcome for c in made] == ["created", "nojob", "created"]
    assert r.zcard(KEYS.job_runs("kept")) == 2 and not r.exists(KEYS.job_runs("gone"))
    assert r.llen(KEYS.queue("normal")) == 2
