"""A real Prometheus server scrapes a running API, and PromQL over its HTTP API answers the counts."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import REPO, Role, free_port, role_env, wait_until
from tests.monitoring.api_process import Api
from tests.monitoring.conftest import promtool_check_metrics


class Prometheus:
    """``prometheus`` on a loopback port with a temp config and storage, stopped by its pid."""

    def __init__(self, binary: str, workdir: Path, targets: dict[str, list[str]]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        shutil.copy(REPO / "deploy" / "prometheus" / "alerts.yml", workdir / "alerts.yml")
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": hosts}]} for job, hosts in targets.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._ready, timeout=30, interval=0.1, what="prometheus to be ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log_path.read_text()}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        resp = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5)
        resp.raise_for_status()
        body = resp.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(self, promql: str) -> float | None:
        """The value of a one-element result (None while there is none)."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def wait_for(self, promql: str, expected: float, timeout: float = 30.0) -> None:
        """Poll ``promql`` until it answers ``expected``."""
        wait_until(
            lambda: self.scalar(promql) == expected,
            timeout=timeout,
            interval=0.25,
            what=f"{promql} == {expected}",
        )

    def stop(self) -> None:
        """SIGTERM by pid, then SIGKILL if it does not stop."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.fixture
def api(redis_url: str, data_dir: Path, tmp_path: Path) -> Iterator[Api]:
    process = Api(redis_url, data_dir, tmp_path / "api.log")
    yield process
    process.stop()


@pytest.fixture
def prometheus(prometheus_bin: str, api: Api, tmp_path: Path) -> Iterator[Prometheus]:
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    server = Prometheus(prometheus_bin, workdir, {"jobyard-api": [f"127.0.0.1:{api.port}"]})
    yield server
    server.stop()


def test_prometheus_counts_the_enqueued_runs(api: Api, prometheus: Prometheus) -> None:
    # given the API is scraped and healthy
    prometheus.wait_for('up{job="jobyard-api"}', 1)
    prometheus.wait_for("jobyard_redis_up", 1)
    # when 5 runs are enqueued through the API (no worker: they stay queued)
    api.deploy("scraped")
    for _ in range(5):
        api.enqueue("scraped")
    # then PromQL sees them, counted and queued
    prometheus.wait_for("sum(jobyard_runs_enqueued_total)", 5)
    prometheus.wait_for('jobyard_queue_depth{priority="normal"}', 5)
    assert prometheus.scalar('sum(jobyard_runs_enqueued_total{job_name="scraped", trigger="api"})') == 5
    # request metrics are labelled by template, so an id in a path makes no new series
    prometheus.wait_for('sum(jobyard_api_requests_total{route="/api/jobs/{name}/runs", status="202"})', 5)
    # the alert rules loaded and evaluate against these series (no worker is alive here)
    rules = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
    names = {rule["name"] for group in rules for rule in group["rules"]}
    assert {"JobyardNoWorkers", "JobyardNoSchedulerLeader", "JobyardQueueStalled"} <= names
    wait_until(
        lambda: any(
            a["labels"]["alertname"] == "JobyardNoWorkers"
            for a in httpx.get(f"{prometheus.url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        ),
        timeout=15,
        interval=0.25,
        what="JobyardNoWorkers to be pending",
    )


@pytest.fixture
def worker(redis_url: str, data_dir: Path, tmp_path: Path) -> Iterator[tuple[Role, int]]:
    port = free_port()
    env = role_env(redis_url, data_dir, JOBYARD_METRICS_PORT=str(port))
    role = Role(["worker", "--concurrency", "2"], env, tmp_path / "worker.log")

    def ready() -> bool:
        if not role.alive():
            raise AssertionError(f"the worker exited:\n{role.output()}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, timeout=30, interval=0.1, what="the worker's /readyz")
        yield role, port
    finally:
        role.stop()


def test_worker_metrics_pass_promtool(worker: tuple[Role, int], promtool: str) -> None:
    _, port = worker
    resp = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert resp.status_code == 200
    promtool_check_metrics(promtool, resp.content)
    assert "jobyard_worker_slots" in resp.text
    # cluster gauges are the API's alone: a worker never multiplies them
    assert "jobyard_queue_depth" not in resp.text
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).text == "ok\n"


def test_prometheus_sums_runs_over_api_and_worker(
    api: Api, worker: tuple[Role, int], prometheus_bin: str, tmp_path: Path
) -> None:
    # given Prometheus scraping the API and a worker, as deploy/prometheus/prometheus.yml does
    _, worker_port = worker
    workdir = tmp_path / "prometheus-2"
    workdir.mkdir()
    targets = {"jobyard-api": [f"127.0.0.1:{api.port}"], "jobyard-worker": [f"127.0.0.1:{worker_port}"]}
    prometheus = Prometheus(prometheus_bin, workdir, targets)
    try:
        prometheus.wait_for('sum(up{job=~"jobyard-.*"})', 2)
        # when 3 runs are enqueued and the worker runs them
        api.deploy("finished")
        for _ in range(3):
            api.enqueue("finished")
        # then the worker's counters and the API's gauges agree
        try:
            prometheus.wait_for(
                'sum(jobyard_runs_finished_total{job_name="finished", status="succeeded"})', 3
            )
        except AssertionError:
            print(worker[0].output())  # pytest shows it with the failure
            raise
        prometheus.wait_for('sum(jobyard_run_queue_wait_seconds_count{job_name="finished"})', 3)
        prometheus.wait_for('sum(jobyard_run_duration_seconds_count{job_name="finished"})', 3)
        prometheus.wait_for('sum(jobyard_runs_started_total{job_name="finished"})', 3)
        prometheus.wait_for("sum(jobyard_queue_depth)", 0)
        prometheus.wait_for("jobyard_workers_alive", 1)
        prometheus.wait_for('jobyard_cluster_worker_slots{state="total"}', 2)  # --concurrency 2
    finally:
        prometheus.stop()


def test_scheduler_metrics_and_leader_seen_by_prometheus(
    api: Api, redis_url: str, data_dir: Path, tmp_path: Path, prometheus_bin: str, promtool: str
) -> None:
    # given one scheduler replica with its metrics port
    port = free_port()
    env = role_env(redis_url, data_dir, JOBYARD_METRICS_PORT=str(port))
    scheduler = Role(["scheduler"], env, tmp_path / "scheduler.log")
    workdir = tmp_path / "prometheus-3"
    workdir.mkdir()
    prometheus: Prometheus | None = None
    try:

        def leader() -> bool:
            if not scheduler.alive():
                raise AssertionError(f"the scheduler exited:\n{scheduler.output()}")
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
            except httpx.HTTPError:
                return False
            return "jobyard_scheduler_leader 1.0" in text

        # when it becomes leader
        wait_until(leader, timeout=30, interval=0.1, what="the scheduler to report itself leader")
        # then its /metrics passes promtool and Prometheus sees one leader, also in Redis
        resp = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        promtool_check_metrics(promtool, resp.content)
        assert "jobyard_scheduler_term_changes_total 1.0" in resp.text
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        targets = {"jobyard-api": [f"127.0.0.1:{api.port}"], "jobyard-scheduler": [f"127.0.0.1:{port}"]}
        prometheus = Prometheus(prometheus_bin, workdir, targets)
        prometheus.wait_for("sum(jobyard_scheduler_leader)", 1)
        prometheus.wait_for("jobyard_scheduler_lease_present", 1)
        assert (prometheus.scalar("jobyard_scheduler_term") or 0) >= 1
    finally:
        if prometheus is not None:
            prometheus.stop()
        scheduler.stop()
