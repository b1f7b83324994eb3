"""The workers' and schedulers' /metrics, /healthz and /readyz server, over real HTTP."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from jobyard import metrics
from jobyard.errors import Unavailable
from jobyard.health_server import (
    SCHEDULER_METRICS_PORT,
    WORKER_METRICS_PORT,
    HealthServer,
    resolve_metrics_port,
    start_health_server,
    start_role_health_server,
)
from jobyard.settings import Settings
from tests.helpers import free_port
from tests.monitoring.conftest import promtool_check_metrics


class Flag:
    """A readiness flag the test flips, like a role's own state."""

    def __init__(self) -> None:
        self.value = False

    def __call__(self) -> bool:
        return self.value


@pytest.fixture
def ready() -> Flag:
    return Flag()


@pytest.fixture
def server(ready: Flag) -> Iterator[HealthServer]:
    srv = start_health_server(0, ready)
    yield srv
    srv.stop()


def test_port_semantics() -> None:
    assert resolve_metrics_port(Settings(metrics_port=None), WORKER_METRICS_PORT) == 9101
    assert resolve_metrics_port(Settings(metrics_port=None), SCHEDULER_METRICS_PORT) == 9102
    assert resolve_metrics_port(Settings(metrics_port=0), WORKER_METRICS_PORT) is None
    assert resolve_metrics_port(Settings(metrics_port=9200), WORKER_METRICS_PORT) == 9200


def test_metrics_host_defaults_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBYARD_METRICS_HOST", raising=False)
    assert Settings().metrics_host == "127.0.0.1"
    monkeypatch.setenv("JOBYARD_METRICS_HOST", "0.0.0.0")
    assert Settings().metrics_host == "0.0.0.0"


def test_healthz_is_always_ok(server: HealthServer) -> None:
    resp = httpx.get(f"{server.url}/healthz")
    assert (resp.status_code, resp.text) == (200, "ok\n")
    assert server.host == "127.0.0.1"


def test_readyz_follows_the_role(server: HealthServer, ready: Flag) -> None:
    assert httpx.get(f"{server.url}/readyz").status_code == 503
    ready.value = True
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_a_failing_readiness_check_is_not_ready() -> None:
    def broken() -> bool:
        raise RuntimeError("redis client exploded")

    srv = start_health_server(0, broken)
    try:
        assert httpx.get(f"{srv.url}/readyz").status_code == 503
        assert httpx.get(f"{srv.url}/healthz").status_code == 200
    finally:
        srv.stop()


def test_metrics_are_the_process_registry(server: HealthServer, promtool: str) -> None:
    metrics.set_worker_slots(busy=2, total=4)
    resp = httpx.get(f"{server.url}/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    assert "jobyard_worker_slots 4.0" in resp.text
    assert "jobyard_worker_slots_busy 2.0" in resp.text
    # cluster gauges come from the API only, never from a worker's own server
    assert "jobyard_queue_depth" not in resp.text
    promtool_check_metrics(promtool, resp.content)


def test_metrics_in_openmetrics_when_asked(server: HealthServer) -> None:
    resp = httpx.get(
        f"{server.url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert resp.headers["content-type"].startswith("application/openmetrics-text")
    assert resp.text.endswith("# EOF\n")


def test_other_paths_and_methods(server: HealthServer) -> None:
    assert httpx.get(f"{server.url}/").status_code == 404
    assert httpx.post(f"{server.url}/metrics").status_code == 405


def test_serves_concurrent_scrapes(server: HealthServer) -> None:
    codes: list[int] = []

    def scrape() -> None:
        codes.append(httpx.get(f"{server.url}/metrics", timeout=10).status_code)

    threads = [threading.Thread(target=scrape) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert codes == [200] * 8


def test_stop_frees_the_port(ready: Flag) -> None:
    port = free_port()
    srv = start_health_server(port, ready)
    assert httpx.get(f"{srv.url}/healthz").status_code == 200
    srv.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz")
    # and it can be bound again
    start_health_server(port, ready).stop()


def test_a_busy_port_is_a_clear_error(ready: Flag) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(Unavailable, match=f"cannot listen on 127.0.0.1:{port}") as info:
            start_health_server(port, ready)
    assert "JOBYARD_METRICS_PORT" in str(info.value.detail)


def test_role_server_follows_the_settings(ready: Flag) -> None:
    assert start_role_health_server(Settings(metrics_port=0), WORKER_METRICS_PORT, ready) is None
    port = free_port()
    srv = start_role_health_server(Settings(metrics_port=port), WORKER_METRICS_PORT, ready)
    assert srv is not None
    try:
        assert srv.port == port and srv.host == "127.0.0.1"
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        srv.stop()
