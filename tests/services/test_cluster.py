"""Cluster state and dead letters, read from what workers and schedulers write to Redis."""

from __future__ import annotations

import json
import time

import httpx
import redis

from jobyard.models import RunStatus
from jobyard.runs import EnqueueSpec, RunStore
from tests.services.conftest import KEYS, error_shape, put_job


def test_cluster_shows_live_workers_queues_dead_letters_and_the_leader(
    admin: httpx.Client, r: redis.Redis
) -> None:
    now = time.time()
    r.zadd(KEYS.workers, {"w-live": now * 1000, "w-gone": (now - 3600) * 1000})
    r.hset(
        KEYS.worker("w-live"),
        mapping={
            "instance_id": "host-a",
            "host": "host-a.local",
            "pid": 41,
            "slots": 4,
            "busy": 1,
            "started_at": now - 60,
        },
    )
    r.hset(KEYS.worker("w-gone"), mapping={"instance_id": "host-b", "pid": 42})
    put_job(r, "hello")
    admin.post("/api/jobs/hello/runs", json={"priority": "high"})
    admin.post("/api/jobs/hello/runs", json={"delay_s": 600})
    r.zadd(KEYS.dead_letters, {"01ARZ3NDEKTSV4RRFFQ69G5FAV": now * 1000})

    body = admin.get("/api/cluster").json()
    assert [w["id"] for w in body["workers"]] == ["w-live"]
    worker = body["workers"][0]
    assert (
        worker["instance_id"] == "host-a"
        and worker["pid"] == 41
        and worker["slots"] == 4
        and worker["busy"] == 1
    )
    assert worker["last_seen"].endswith("Z") and worker["started_at"].endswith("Z")
    assert body["queues"] == {"high": 1, "normal": 0, "low": 0, "delayed": 1}
    assert body["dead_letters"] == 1
    assert body["scheduler"] == {"leader": None, "term": None, "since": None}

    r.set(KEYS.leader, "sched-1|7", px=5000)
    r.hset(KEYS.leader_info, mapping={"instance": "sched-1", "term": 7, "since": now})
    scheduler = admin.get("/api/cluster").json()["scheduler"]
    assert scheduler["leader"] == "sched-1" and scheduler["term"] == 7 and scheduler["since"].endswith("Z")
    # the lease ran out: no leader, whatever the info hash still says
    r.delete(KEYS.leader)
    assert admin.get("/api/cluster").json()["scheduler"]["leader"] is None


def _dead(r: redis.Redis, store: RunStore, *, args: list[str] | None = None) -> str:
    created = store.create(EnqueueSpec(job="poison", args=args or [], max_retries=2))
    assert created.run_id is not None
    r.hset(KEYS.run(created.run_id), "attempt", 3)
    store.finish(created.run_id, "poison", RunStatus.FAILED, mode="deadletter", exit_code=1, error="exit 1")
    return created.run_id


def test_dead_letters_are_listed_replayed_and_purged(
    admin: httpx.Client, r: redis.Redis, store: RunStore
) -> None:
    put_job(r, "poison")
    first = _dead(r, store, args=["x"])
    second = _dead(r, store)
    page = admin.get("/api/deadletters").json()
    assert [d["run_id"] for d in page["deadletters"]] == [second, first]  # newest first
    assert page["total"] == 2 and page["next"] is None
    item = page["deadletters"][1]
    assert item == {
        "run_id": first,
        "job": "poison",
        "attempts": 3,
        "error": "exit 1",
        "dead_lettered_at": item["dead_lettered_at"],
    }
    paged = admin.get("/api/deadletters", params={"limit": 1}).json()
    assert [d["run_id"] for d in paged["deadletters"]] == [second] and paged["next"] == second
    rest = admin.get("/api/deadletters", params={"limit": 1, "before": second}).json()
    assert [d["run_id"] for d in rest["deadletters"]] == [first]

    # replay: a new linked run with the same arguments; the dead letter is off the list
    response = admin.post(f"/api/deadletters/{first}/replay")
    assert response.status_code == 202, response.text
    replayed = response.json()
    assert replayed["trigger"] == "replay" and replayed["replay_of"] == first and replayed["args"] == ["x"]
    assert replayed["status"] == "queued" and replayed["max_retries"] == 2
    error_shape(admin.post(f"/api/deadletters/{first}/replay"), 404)

    # purge: gone from the list and from dramatiq's dead-letter queue of its level
    xq = KEYS.queue_xq("normal")
    r.zadd(xq, {"msg-1": 1, "msg-2": 2})
    r.hset(
        xq + ".msgs",
        mapping={"msg-1": json.dumps({"args": [second]}), "msg-2": json.dumps({"args": ["other"]})},
    )
    purged = admin.delete(f"/api/deadletters/{second}")
    assert purged.status_code == 200 and purged.json() == {
        "run_id": second,
        "purged": True,
        "messages_removed": 1,
    }
    assert r.zrange(xq, 0, -1) == [b"msg-2"] and r.hkeys(xq + ".msgs") == [b"msg-2"]
    error_shape(admin.delete(f"/api/deadletters/{second}"), 404)
    assert admin.get("/api/deadletters").json() == {"deadletters": [], "next": None, "total": 0}
