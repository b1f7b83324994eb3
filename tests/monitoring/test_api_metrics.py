"""The API's /metrics and its request metrics: the middleware on a small app, then the real API process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import PlainTextResponse
from starlette.routing import Mount

from services.metrics_middleware import UNMATCHED, MetricsMiddleware
from tests.helpers import RedisServer, free_port, wait_until
from tests.monitoring.api_process import Api
from tests.monitoring.conftest import promtool_check_metrics


def requests_seen(route: str, method: str, status: str) -> float:
    labels = {"route": route, "method": method, "status": status}
    return REGISTRY.get_sample_value("jobyard_api_requests_total", labels) or 0.0


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """``{sorted labels: value}`` of the samples called ``name`` in an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


# --- the middleware, on a small app served by uvicorn over real HTTP -----------------------------
def small_app() -> FastAPI:
    app = FastAPI()

    @app.get("/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("handler failed")

    sub = FastAPI()

    @sub.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        return {"id": item_id}

    async def raw(scope: object, receive: object, send: object) -> None:
        await PlainTextResponse("raw")(scope, receive, send)  # type: ignore[arg-type]

    app.mount("/sub", sub)
    app.router.routes.append(Mount("/raw", app=raw))
    app.add_middleware(MetricsMiddleware)
    return app


@pytest.fixture(scope="module")
def small_server() -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(small_app(), host="127.0.0.1", port=port, log_level="critical", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=10, what="uvicorn to start")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_routes_are_labelled_by_template(small_server: str) -> None:
    before = requests_seen("/things/{thing_id}", "GET", "200")
    for thing in ("a", "b", "c"):
        assert httpx.get(f"{small_server}/things/{thing}").status_code == 200
    assert requests_seen("/things/{thing_id}", "GET", "200") == before + 3
    assert (
        REGISTRY.get_sample_value(
            "jobyard_api_requests_total", {"route": "/things/a", "method": "GET", "status": "200"}
        )
        is None
    )


def test_unmatched_and_wrong_method(small_server: str) -> None:
    before_404 = requests_seen(UNMATCHED, "GET", "404")
    before_405 = requests_seen("/things/{thing_id}", "DELETE", "405")
    assert httpx.get(f"{small_server}/no/such/path/123").status_code == 404
    assert httpx.delete(f"{small_server}/things/x").status_code == 405
    assert requests_seen(UNMATCHED, "GET", "404") == before_404 + 1
    assert requests_seen("/things/{thing_id}", "DELETE", "405") == before_405 + 1


def test_a_failing_handler_counts_as_500(small_server: str) -> None:
    before = requests_seen("/boom", "GET", "500")
    assert httpx.get(f"{small_server}/boom").status_code == 500
    assert requests_seen("/boom", "GET", "500") == before + 1


def test_mounted_apps_keep_their_prefix(small_server: str) -> None:
    before_sub = requests_seen("/sub/items/{item_id}", "GET", "200")
    before_raw = requests_seen("/raw/{path}", "GET", "200")
    assert httpx.get(f"{small_server}/sub/items/42").status_code == 200
    assert httpx.get(f"{small_server}/raw/any/file.css").status_code == 200
    assert requests_seen("/sub/items/{item_id}", "GET", "200") == before_sub + 1
    assert requests_seen("/raw/{path}", "GET", "200") == before_raw + 1


def test_latency_is_observed(small_server: str) -> None:
    labels = {"route": "/things/{thing_id}", "method": "GET"}
    before = REGISTRY.get_sample_value("jobyard_api_request_duration_seconds_count", labels) or 0.0
    httpx.get(f"{small_server}/things/t")
    assert REGISTRY.get_sample_value("jobyard_api_request_duration_seconds_count", labels) == before + 1


# --- the real API process ---------------------------------------------------------------------
@pytest.fixture
def api(redis_url: str, data_dir: Path, tmp_path: Path) -> Iterator[Api]:
    process = Api(redis_url, data_dir, tmp_path / "api.log")
    yield process
    process.stop()


def test_api_metrics_need_no_token_and_pass_promtool(api: Api, promtool: str) -> None:
    # given a deployed job, two runs and a few requests, one with a run id in its path
    api.deploy("metrics-job")
    api.enqueue("metrics-job")
    api.enqueue("metrics-job", priority="high")
    api.http.get("/api/runs/01J00000000000000000000000")
    # when Prometheus scrapes without a token
    resp = api.metrics()
    # then
    assert resp.status_code == 200
    promtool_check_metrics(promtool, resp.content)
    text = resp.text
    assert samples(text, "jobyard_redis_up") == {(): 1.0}
    depth = samples(text, "jobyard_queue_depth")
    assert depth[(("priority", "normal"),)] == 1 and depth[(("priority", "high"),)] == 1
    enqueued = samples(text, "jobyard_runs_enqueued_total")
    assert sum(enqueued.values()) == 2
    assert enqueued[(("job_name", "metrics-job"), ("priority", "high"), ("trigger", "api"))] == 1
    routes = {dict(labels)["route"] for labels in samples(text, "jobyard_api_requests_total")}
    assert {"/api/jobs/{name}", "/api/jobs/{name}/runs", "/api/runs/{run_id}"} <= routes
    assert not [r for r in routes if "01J0000" in r]  # never a raw path with an id
    assert "jobyard_build_info" in text


def test_api_metrics_survive_a_redis_outage(data_dir: Path, tmp_path: Path) -> None:
    # given an API on its own Redis
    own_redis = RedisServer(tmp_path / "redis")
    own_redis.start()
    process = Api(own_redis.url, data_dir, tmp_path / "api.log")
    try:
        assert samples(process.metrics().text, "jobyard_redis_up") == {(): 1.0}
        # when Redis goes away
        own_redis.kill()
        start = time.monotonic()
        resp = process.metrics()
        elapsed = time.monotonic() - start
        # then /metrics still answers, quickly, saying Redis is down, without cluster gauges
        assert resp.status_code == 200, resp.text
        assert samples(resp.text, "jobyard_redis_up") == {(): 0.0}
        assert not samples(resp.text, "jobyard_queue_depth")
        assert "jobyard_api_requests_total" in resp.text
        assert elapsed < 5.0
        # and the gauges come back with Redis
        own_redis.start()
        wait_until(
            lambda: samples(process.metrics().text, "jobyard_redis_up") == {(): 1.0},
            timeout=15,
            interval=0.2,
            what="jobyard_redis_up 1 after Redis restarted",
        )
    finally:
        process.stop()
        own_redis.stop()
