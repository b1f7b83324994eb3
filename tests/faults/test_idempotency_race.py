"""50 clients enqueue with one idempotency key at the same instant, through the real API: one run.

Each client has its own connection and waits on a barrier, so the requests reach the API
together; a third send the key as the ``Idempotency-Key`` header, a third in the body and a third
through the batch endpoint. Redis is then checked directly: one run in the job's history, one
message on the queue (no worker runs, so nothing has consumed it).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import httpx
import redis

from jobyard.keys import Keys
from tests.faults.conftest import FAULT_ADMIN_TOKEN

CLIENTS = 50
ROUNDS = 3  # a fresh key each round
SCRIPT = b"#!/bin/bash\necho once\n"


def _post(url: str, mode: str, key: str, barrier: threading.Barrier) -> tuple[str, int, str]:
    """One client: wait for the others, then enqueue; (mode, status, run id)."""
    headers = {"Authorization": f"Bearer {FAULT_ADMIN_TOKEN}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        client.get("/healthz")  # open the connection before the barrier
        barrier.wait(timeout=30)
        if mode == "header":
            resp = client.post("/api/jobs/once/runs", json={}, headers={"Idempotency-Key": key})
        elif mode == "body":
            resp = client.post("/api/jobs/once/runs", json={"idempotency_key": key})
        else:
            resp = client.post("/api/runs/batch", json={"runs": [{"job": "once", "idempotency_key": key}]})
        body: dict[str, Any] = resp.json()
        run_id = body["runs"][0]["id"] if mode == "batch" and resp.status_code < 300 else body.get("id", "")
        return mode, resp.status_code, str(run_id)


def _race(url: str, key: str) -> tuple[list[tuple[str, int, str]], list[BaseException]]:
    """CLIENTS threads post with ``key`` at once (a third each: header, body, batch)."""
    barrier = threading.Barrier(CLIENTS)
    results: list[tuple[str, int, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        try:
            got = _post(url, ("header", "body", "batch")[i % 3], key, barrier)
            with lock:
                results.append(got)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results, errors


def test_fifty_concurrent_posts_with_one_key_make_one_run(start_api, redis_url: str, r: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    api = start_api(redis_url)
    with api.client(token=FAULT_ADMIN_TOKEN) as admin:
        resp = admin.put(
            "/api/jobs/once",
            params={"filename": "run.sh"},
            content=SCRIPT,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert resp.status_code == 201, resp.text
    k = Keys()
    first_ids = []
    for round_no in range(ROUNDS):
        key = f"order-{round_no}"
        results, errors = _race(api.url, key)
        assert not errors, errors
        assert len(results) == CLIENTS
        # then: every client got the same run; at most one single-run POST was told it created it
        ids = {run_id for _, _, run_id in results}
        assert len(ids) == 1 and "" not in ids, Counter(results)
        statuses = Counter((mode, status) for mode, status, _ in results)
        single = {s: n for (mode, s), n in statuses.items() if mode != "batch"}
        assert set(single) <= {200, 202} and single.get(202, 0) <= 1, statuses
        assert statuses.get(("batch", 202), 0) == sum(1 for m, _, _ in results if m == "batch"), statuses
        first_ids.append(ids.pop())
        # and Redis holds one run and one message for the key
        assert r.zcard(k.job_runs("once")) == round_no + 1
        assert r.llen(k.queue("normal")) == round_no + 1
        assert r.hlen(k.queue_msgs("normal")) == round_no + 1
        assert r.get(k.idempotency("once", key)) == first_ids[-1].encode()
        print(f"\nidempotency round {round_no}: {dict(statuses)}")
    assert len(set(first_ids)) == ROUNDS
    assert {m.decode() for m in r.zrange(k.job_runs("once"), 0, -1)} == set(first_ids)
