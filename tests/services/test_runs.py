"""Enqueue (single and batch), idempotency, reading, paging, cancel and retry of runs."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import redis

from jobyard.models import JobType, RunStatus, parse_iso
from jobyard.runs import RunStore
from tests.services.conftest import KEYS, Api, error_shape, put_job


def _message_run_ids(r: redis.Redis, level: str) -> list[str]:
    ids = [i.decode() for i in r.lrange(KEYS.queue(level), 0, -1)]
    return [json.loads(r.hget(KEYS.queue_msgs(level), i))["args"][0] for i in ids]


def test_enqueue_writes_a_queued_run_and_its_message_on_the_priority_list(
    admin: httpx.Client, r: redis.Redis
) -> None:
    put_job(r, "hello", settings={"priority": "low"})
    response = admin.post(
        "/api/jobs/hello/runs",
        json={"arguments": "one 'two words'", "priority": "high", "env": {"COLOUR": "red"}, "timeout_s": 30},
    )
    assert response.status_code == 202, response.text
    run = response.json()
    assert response.headers["location"] == f"/api/runs/{run['id']}"
    assert run["status"] == "queued" and run["trigger"] == "api" and run["priority"] == "high"
    assert run["args"] == ["one", "two words"] and run["env"] == ["COLOUR"]  # names only
    assert run["timeout_s"] == 30 and run["enqueued_at"].endswith("Z")

    stored = r.hgetall(KEYS.run(run["id"]))
    assert stored[b"status"] == b"queued" and json.loads(stored[b"env"]) == {"COLOUR": "red"}
    assert _message_run_ids(r, "high") == [run["id"]]
    assert r.llen(KEYS.queue("normal")) == 0 and r.llen(KEYS.queue("low")) == 0
    assert r.zscore(KEYS.job_runs("hello"), run["id"]) is not None
    assert admin.get(f"/api/runs/{run['id']}").json() == run

    # the job's settings give the default priority
    default = admin.post("/api/jobs/hello/runs").json()
    assert default["priority"] == "low" and _message_run_ids(r, "low") == [default["id"]]


def test_delayed_runs_wait_in_the_delayed_set(admin: httpx.Client, r: redis.Redis) -> None:
    put_job(r, "hello")
    later = admin.post("/api/jobs/hello/runs", json={"delay_s": 3600}).json()
    assert r.llen(KEYS.queue("normal")) == 0 and r.zcard(KEYS.delayed) == 1
    assert parse_iso(later["scheduled_for"]) > time.time() + 3500
    at = admin.post("/api/jobs/hello/runs", json={"run_at": "2099-01-01T00:00:00Z"}).json()
    assert at["scheduled_for"] == "2099-01-01T00:00:00Z" and r.zcard(KEYS.delayed) == 2


def test_unknown_job_is_404(admin: httpx.Client) -> None:
    body = error_shape(admin.post("/api/jobs/ghost/runs", json={}), 404)
    assert "ghost" in body["error"] and "PUT /api/jobs/ghost" in body["detail"]


def test_the_next_enqueue_sees_a_redeployed_changed_or_deleted_job(
    admin: httpx.Client, r: redis.Redis
) -> None:
    # The API keeps job records for enqueue; the script checks the stored one is still the same.
    put_job(r, "hello", settings={"priority": "low"})
    assert admin.post("/api/jobs/hello/runs").json()["priority"] == "low"
    put_job(r, "hello", settings={"priority": "high", "max_retries": 2, "timeout": 9})  # redeployed
    run = admin.post("/api/jobs/hello/runs").json()
    assert (run["priority"], run["max_retries"], run["timeout_s"]) == ("high", 2, 9)
    put_job(r, "hello", job_type=JobType.CONTINUOUS)
    assert "continuous" in error_shape(admin.post("/api/jobs/hello/runs"), 409)["error"]
    put_job(r, "hello")
    assert admin.post("/api/jobs/hello/runs").status_code == 202
    r.delete(KEYS.job("hello"))
    assert "hello" in error_shape(admin.post("/api/jobs/hello/runs"), 404)["error"]
    put_job(r, "hello", settings={"priority": "low"})
    assert admin.post("/api/jobs/hello/runs").json()["priority"] == "low"
    # only the runs answered 202 exist, each with its version's settings
    stored = [r.hget(KEYS.run(i.decode()), "priority") for i in r.zrange(KEYS.job_runs("hello"), 0, -1)]
    assert stored == [b"low", b"high", b"normal", b"low"]


def test_idempotency_key_returns_the_first_run(admin: httpx.Client, r: redis.Redis) -> None:
    put_job(r, "hello")
    first = admin.post("/api/jobs/hello/runs", json={"idempotency_key": "order-17"})
    again = admin.post(
        "/api/jobs/hello/runs", json={"arguments": ["x"]}, headers={"Idempotency-Key": "order-17"}
    )
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"] and again.json()["idempotency_key"] == "order-17"
    assert r.zcard(KEYS.job_runs("hello")) == 1 and r.llen(KEYS.queue("normal")) == 1
    body = error_shape(
        admin.post("/api/jobs/hello/runs", json={"idempotency_key": "a"}, headers={"Idempotency-Key": "b"}),
        422,
    )
    assert "differ" in body["error"]


def test_fifty_concurrent_posts_with_one_key_make_one_run(api: Api, r: redis.Redis) -> None:
    put_job(r, "hello")
    with api.client(limits=httpx.Limits(max_connections=50)) as client:

        def post(_: int) -> httpx.Response:
            return client.post("/api/jobs/hello/runs", headers={"Idempotency-Key": "same-instant"})

        with ThreadPoolExecutor(50) as pool:
            responses = list(pool.map(post, range(50)))
    assert sorted(x.status_code for x in responses).count(202) == 1
    assert {x.status_code for x in responses} == {200, 202}
    assert len({x.json()["id"] for x in responses}) == 1
    assert r.zcard(KEYS.job_runs("hello")) == 1 and r.llen(KEYS.queue("normal")) == 1


def test_batch_enqueues_all_in_order(admin: httpx.Client, r: redis.Redis) -> None:
    put_job(r, "a")
    put_job(r, "b")
    items = [{"job": "a", "arguments": [str(i)]} for i in range(300)] + [{"job": "b", "priority": "high"}]
    items.append({"job": "a", "idempotency_key": "k1"})
    items.append({"job": "a", "idempotency_key": "k1"})  # a repeat inside the batch: the same run
    response = admin.post("/api/runs/batch", json={"runs": items})
    assert response.status_code == 202, response.text
    body = response.json()
    runs = body["runs"]
    assert len(runs) == len(items) and body["created"] == len(items) - 1
    assert [x["args"] for x in runs[:300]] == [[str(i)] for i in range(300)]
    assert runs[-1]["id"] == runs[-2]["id"]
    assert r.llen(KEYS.queue("normal")) == 301 and _message_run_ids(r, "high") == [runs[300]["id"]]


def test_enqueue_survives_a_flushed_script_cache(admin: httpx.Client, r: redis.Redis) -> None:
    # a restarted Redis forgets the scripts: the API loads them again, nothing is lost or doubled
    put_job(r, "a")
    assert admin.post("/api/jobs/a/runs").status_code == 202
    r.script_flush()
    response = admin.post("/api/runs/batch", json={"runs": [{"job": "a"}] * 5})
    assert response.status_code == 202, response.text
    r.script_flush()
    assert admin.post("/api/jobs/a/runs").status_code == 202
    assert r.zcard(KEYS.job_runs("a")) == 7 and r.llen(KEYS.queue("normal")) == 7


def test_one_bad_item_fails_the_whole_batch(admin: httpx.Client, r: redis.Redis) -> None:
    put_job(r, "a")
    good = {"job": "a"}
    body = error_shape(
        admin.post("/api/runs/batch", json={"runs": [good, good, {"job": "a", "priority": "x"}]}), 422
    )
    assert "runs[2].priority" in body["error"]
    body = error_shape(admin.post("/api/runs/batch", json={"runs": [good, {"job": "missing"}]}), 422)
    assert "runs[1].job" in body["error"] and "missing" in body["error"]
    body = error_shape(
        admin.post("/api/runs/batch", json={"runs": [good, {"job": "a", "arguments": "'"}]}), 422
    )
    assert "runs[1].arguments" in body["error"]
    error_shape(admin.post("/api/runs/batch", json={"runs": [good] * 1001}), 422)
    error_shape(admin.post("/api/runs/batch", json={"runs": []}), 422)
    # nothing at all was enqueued
    assert r.zcard(KEYS.job_runs("a")) == 0 and r.llen(KEYS.queue("normal")) == 0


def test_history_is_paged_newest_first_even_within_one_millisecond(
    admin: httpx.Client, r: redis.Redis
) -> None:
    put_job(r, "hello")
    made = admin.post("/api/runs/batch", json={"runs": [{"job": "hello"}] * 25}).json()["runs"]
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params: dict[str, str | int] = {"limit": 10, **({"before": cursor} if cursor else {})}
        page = admin.get("/api/jobs/hello/runs", params=params).json()
        seen += [x["id"] for x in page["runs"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(x["id"] for x in made) and len(seen) == 25
    assert seen == sorted(seen, reverse=True)  # ULIDs sort by time: newest first
    error_shape(admin.get("/api/jobs/ghost/runs"), 404)


def test_cancel_a_queued_run_and_ask_a_running_one_to_stop(
    admin: httpx.Client, r: redis.Redis, store: RunStore
) -> None:
    put_job(r, "hello")
    queued = admin.post("/api/jobs/hello/runs").json()
    response = admin.post(f"/api/runs/{queued['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert r.sismember(KEYS.job_active("hello"), queued["id"]) == 0

    running = admin.post("/api/jobs/hello/runs").json()
    r.hset(KEYS.run(running["id"]), mapping={"status": "running", "worker": "w1"})
    with r.pubsub() as sub:
        sub.subscribe(KEYS.cancel_channel)
        sub.get_message(timeout=1)
        response = admin.post(f"/api/runs/{running['id']}/cancel")
        assert response.status_code == 202 and response.json()["cancel_requested"] is True
        message = sub.get_message(timeout=2)
        assert message is not None and message["data"].decode() == running["id"]
    error_shape(admin.post("/api/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV/cancel"), 404)


def test_retry_makes_a_new_linked_run_of_a_finished_one(
    admin: httpx.Client, r: redis.Redis, store: RunStore
) -> None:
    put_job(r, "hello")
    old = admin.post("/api/jobs/hello/runs", json={"arguments": ["a", "b"], "priority": "high"}).json()
    error_shape(admin.post(f"/api/runs/{old['id']}/retry"), 409)  # still queued
    store.finish(old["id"], "hello", RunStatus.FAILED, exit_code=3, error="boom")
    response = admin.post(f"/api/runs/{old['id']}/retry")
    assert response.status_code == 202, response.text
    new = response.json()
    assert new["id"] != old["id"] and new["trigger"] == "retry" and new["replay_of"] == old["id"]
    assert new["args"] == ["a", "b"] and new["priority"] == "high" and new["status"] == "queued"
    assert admin.get(f"/api/runs/{old['id']}").json()["status"] == "failed"
