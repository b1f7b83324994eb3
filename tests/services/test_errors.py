"""Every error answer has the body {"error", "detail"}: FastAPI's own ones, ours, and outages."""

from __future__ import annotations

from typing import Any

import httpx
import redis

from jobyard.models import JobType
from tests.helpers import RedisServer, wait_until
from tests.services.conftest import KEYS, MAX_PACKAGE_BYTES, error_shape, put_job


def test_unknown_route_and_wrong_method(admin: httpx.Client) -> None:
    body = error_shape(admin.get("/api/nothing-here"), 404)
    assert "/docs" in body["detail"]
    error_shape(admin.get("/no/such/page"), 404)
    response = admin.patch("/api/jobs")
    body = error_shape(response, 405)
    assert "GET" in response.headers["allow"] and "GET" in body["detail"]


def test_validation_errors_name_the_field(admin: httpx.Client, r: redis.Redis) -> None:
    put_job(r, "hello")
    body = error_shape(admin.post("/api/jobs/hello/runs", json={"priority": "urgent"}), 422)
    assert body["error"].startswith("invalid priority") and body["detail"][0]["field"] == "priority"
    body = error_shape(admin.post("/api/jobs/hello/runs", json={"timeout_s": -1}), 422)
    assert "timeout_s" in body["error"]
    body = error_shape(admin.post("/api/jobs/hello/runs", json={"arguments": "unbalanced 'quote"}), 422)
    assert "arguments" in body["error"] and "quote" in body["error"]
    body = error_shape(admin.post("/api/jobs/hello/runs", json={"callback_url": "file:///etc/passwd"}), 422)
    assert "callback_url" in body["error"]
    body = error_shape(admin.post("/api/jobs/hello/runs", json={"run_at": "tomorrow"}), 422)
    assert "run_at" in body["error"]
    body = error_shape(
        admin.post("/api/jobs/hello/runs", json={"run_at": "2030-01-01T00:00:00Z", "delay_s": 5}), 422
    )
    assert "not both" in body["error"]
    body = error_shape(admin.post("/api/jobs/hello/runs", json={"env": {"1BAD": "x"}}), 422)
    assert "env" in body["error"]
    body = error_shape(admin.post("/api/jobs/hello/runs", json={"retries": 3}), 422)
    assert "retries" in body["error"]
    body = error_shape(admin.get("/api/jobs/hello/runs", params={"limit": 0}), 422)
    assert body["error"].startswith("invalid limit")
    error_shape(
        admin.post(
            "/api/jobs/hello/runs", content=b"{not json", headers={"content-type": "application/json"}
        ),
        422,
    )
    # a job name that breaks the rule is refused with the rule, never reaches a Redis key
    body = error_shape(admin.get("/api/jobs/bad:name"), 422)
    assert "letters, digits" in body["detail"]
    error_shape(admin.get("/api/runs/x:log"), 404)


def test_conflicts(admin: httpx.Client, r: redis.Redis) -> None:
    put_job(r, "daemon", job_type=JobType.CONTINUOUS)
    body = error_shape(admin.post("/api/jobs/daemon/runs", json={}), 409)
    assert "continuous" in body["error"] and "/start" in body["detail"]
    put_job(r, "hello")
    run = admin.post("/api/jobs/hello/runs", json={}).json()
    assert admin.post(f"/api/runs/{run['id']}/cancel").status_code == 200
    body = error_shape(admin.post(f"/api/runs/{run['id']}/cancel"), 409)
    assert "ended" in body["error"]
    error_shape(admin.post("/api/jobs/hello/start"), 409)


def test_oversized_packages_are_refused_early(admin: httpx.Client) -> None:
    too_big = MAX_PACKAGE_BYTES + 1
    # announced by Content-Length: refused before the body is read
    response = admin.put(
        "/api/jobs/big",
        content=b"\0" * too_big,
        headers={"content-type": "application/zip", "content-length": str(too_big)},
    )
    body = error_shape(response, 413)
    assert "JOBYARD_MAX_PACKAGE_BYTES" in body["detail"]

    # streamed without a length: refused as soon as the cap is passed
    def chunks() -> Any:
        for _ in range(too_big // 65536 + 2):
            yield b"\0" * 65536

    try:
        response = admin.put("/api/jobs/big", content=chunks(), headers={"content-type": "application/zip"})
    except httpx.TransportError:
        pass  # the server may close the connection before the client is done sending
    else:
        error_shape(response, 413)
    error_shape(admin.get("/api/jobs/big"), 404)


def test_a_bug_is_a_bare_500_without_traceback(admin: httpx.Client, r: redis.Redis) -> None:
    # A job key of the wrong type (corrupted data) makes a Redis command fail in an unexpected way.
    r.set(KEYS.job("broken"), "not a hash")
    body = error_shape(admin.get("/api/jobs/broken"), 500)
    assert body["error"] == "internal error"


def test_503_while_redis_is_down_then_recovers(start_api: Any, tmp_path: Any) -> None:
    server = RedisServer(tmp_path / "redis-private")
    server.start()
    try:
        api = start_api(server.url)
        with api.client() as client:
            assert client.get("/api/jobs").status_code == 200
            assert client.get("/readyz").status_code == 200
            # given Redis is gone
            server.kill()
            # then every route that needs it answers 503 with the error body, probes say why
            for method, path in [
                ("GET", "/api/jobs"),
                ("POST", "/api/jobs/hello/runs"),
                ("GET", "/api/cluster"),
                ("GET", "/api/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV"),
            ]:
                body = error_shape(client.request(method, path), 503)
                assert "Redis" in body["error"]
            error_shape(client.get("/readyz"), 503)
            assert client.get("/healthz").status_code == 200
            # when it is back, so is the API, without a restart
            server.start()  # same port, same AOF
            wait_until(lambda: client.get("/readyz").status_code == 200, timeout=15, what="readyz")
            assert client.get("/api/jobs").status_code == 200
    finally:
        server.stop()


def test_json_bodies_are_capped_before_authentication(api: Any) -> None:
    with httpx.Client(base_url=api.url, timeout=30) as client:
        big = b'{"runs": [' + b'{"job": "a"},' * 1_500_000 + b'{"job": "a"}]}'
        body = error_shape(
            client.post("/api/runs/batch", content=big, headers={"content-type": "application/json"}), 413
        )
        assert "split" in body["detail"]

        def chunks() -> Any:
            yield b'{"runs": ['
            for _ in range(200):
                yield b'{"job": "a"},' * 10_000

        try:
            response = client.post(
                "/api/runs/batch", content=chunks(), headers={"content-type": "application/json"}
            )
        except httpx.TransportError:
            return  # the server may close the connection before the client is done sending
        error_shape(response, 413)


def test_an_unconfirmed_enqueue_is_a_clear_503_and_safe_to_retry(
    start_api: Any, redis_url: str, r: redis.Redis
) -> None:
    # given WAIT 1 on a Redis without replicas: every write stays unconfirmed
    api = start_api(redis_url, JOBYARD_REDIS_WAIT_REPLICAS="1", JOBYARD_REDIS_WAIT_TIMEOUT_SECONDS="0.2")
    put_job(r, "hello")
    with api.client() as client:
        # when a run is enqueued, then the answer says it was written, not confirmed, and what to do
        key = {"Idempotency-Key": "order-1"}
        body = error_shape(client.post("/api/jobs/hello/runs", headers=key), 503)
        assert "written but not confirmed" in body["error"] and "0 of 1 Redis replicas" in body["error"]
        assert "same idempotency key" in body["detail"] and "JOBYARD_REDIS_WAIT_REPLICAS" in body["detail"]
        (run_id,) = [i.decode() for i in r.zrange(KEYS.job_runs("hello"), 0, -1)]
        assert run_id in body["error"] and f"GET /api/runs/{run_id}" in body["detail"]
        # a retry with the key finds that run: still unconfirmed, still 503, nothing doubled
        again = error_shape(client.post("/api/jobs/hello/runs", headers=key), 503)
        assert run_id in again["error"] and r.zcard(KEYS.job_runs("hello")) == 1
        # the batch route refuses the same way, once for the request
        batch = error_shape(client.post("/api/runs/batch", json={"runs": [{"job": "hello"}] * 3}), 503)
        assert "batch's 3 new runs were written but not confirmed" in batch["error"]
        # invalid requests write nothing and are answered as usual
        error_shape(client.post("/api/jobs/ghost/runs"), 404)


def test_a_redis_user_that_may_not_wait_gets_503_not_500(
    start_api: Any, redis_url: str, r: redis.Redis
) -> None:
    r.acl_setuser(
        "nowait", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all", "-wait"]
    )
    try:
        url = redis_url.replace("redis://", "redis://nowait:pw@")
        api = start_api(url, JOBYARD_REDIS_WAIT_REPLICAS="1", JOBYARD_REDIS_WAIT_TIMEOUT_SECONDS="0.2")
        put_job(r, "hello")
        with api.client() as client:
            body = error_shape(client.post("/api/jobs/hello/runs"), 503)
        assert "refused to confirm" in body["error"] and "PUBLISH and WAIT" in body["detail"]
        assert r.zcard(KEYS.job_runs("hello")) == 1
    finally:
        r.acl_deluser("nowait")
