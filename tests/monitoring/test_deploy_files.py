"""deploy/prometheus and deploy/grafana: promtool's checks, the alert unit tests, the dashboard's shape.

Every PromQL expression (alert rules and dashboard panels) may only name metrics that
``jobyard/metrics.py`` defines (plus Prometheus's own ``up``), so a renamed metric breaks here
and not silently on a dashboard.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobyard.metrics import sample_names
from tests.helpers import REPO
from tests.monitoring.conftest import run_promtool

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "jobyard.json"
DATASOURCE = GRAFANA_DIR / "provisioning" / "datasources" / "datasource.yaml"
PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yaml"
ALERTS_TEST = Path(__file__).parent / "alerts_test.yml"

PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan",
}  # fmt: skip
PROMETHEUS_OWN = {"up"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, keywords left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings: label values, regexes
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, priority) (rate(jobyard_run_queue_wait_seconds_bucket"
        '{job_name=~"$job_name"}[$__rate_interval]))) > 300 and on() (sum(up{job="x"}) or vector(0))'
    )
    assert metric_names(expr) == {"jobyard_run_queue_wait_seconds_bucket", "up"}


def known(names: set[str]) -> set[str]:
    return names - sample_names() - PROMETHEUS_OWN


# --- Prometheus -------------------------------------------------------------------------------
def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules(promtool: str) -> None:
    out = run_promtool(promtool, "check", "rules", PROMETHEUS_DIR / "alerts.yml")
    assert "SUCCESS" in out


def test_promtool_checks_the_config(promtool: str, tmp_path: Path) -> None:
    # on a copy: the config names its rule file relatively, and promtool checks that one too
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(PROMETHEUS_DIR / name, tmp_path / name)
    out = run_promtool(promtool, "check", "config", tmp_path / "prometheus.yml")
    assert "1 rule files found" in out


def test_promtool_alert_unit_tests(promtool: str) -> None:
    out = run_promtool(promtool, "test", "rules", ALERTS_TEST)
    assert "SUCCESS" in out


def test_scrape_config_covers_the_three_roles() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["jobyard-api"]["static_configs"][0]["targets"] == ["api:8080"]
    assert jobs["jobyard-worker"]["dns_sd_configs"][0]["port"] == 9101
    assert jobs["jobyard-scheduler"]["dns_sd_configs"][0]["port"] == 9102
    assert "kubernetes_sd_configs" in (PROMETHEUS_DIR / "prometheus.yml").read_text()


def test_the_required_alerts_exist_with_summary_and_description() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    for name in (
        "JobyardDeadLettersGrowing",
        "JobyardQueueWaitHigh",
        "JobyardNoSchedulerLeader",
        "JobyardNoWorkers",
        "JobyardContinuousJobRestartLoop",
        "JobyardRedisUnreachable",
    ):
        assert name in rules, name
        assert rules[name]["annotations"]["summary"] and rules[name]["annotations"]["description"]
        assert rules[name]["labels"]["severity"] in ("warning", "critical")
    assert rules["JobyardNoSchedulerLeader"]["for"] == "30s"
    assert rules["JobyardQueueWaitHigh"]["for"] == "10m"


def test_alerts_only_use_defined_metrics() -> None:
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert not known(names), (rule["alert"], known(names))


# --- Grafana ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows keep theirs inside
    return out


def test_provisioning_matches_the_dashboard(dashboard: dict[str, Any]) -> None:
    sources = yaml.safe_load(DATASOURCE.read_text())["datasources"]
    assert [s["type"] for s in sources] == ["prometheus"]
    uid = sources[0]["uid"]
    assert uid == "jobyard-prometheus"
    providers = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert providers[0]["type"] == "file" and providers[0]["options"]["path"]
    # every panel and variable points at the provisioned data source by its fixed uid
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == uid


def test_dashboard_has_a_fixed_uid_and_no_import_placeholders(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "jobyard-overview"
    assert "__inputs" not in dashboard and "__requires" not in dashboard
    assert "${DS_" not in DASHBOARD.read_text()
    assert dashboard.get("id") is None  # ids are Grafana's, per instance


def test_dashboard_uses_current_panel_types(dashboard: dict[str, Any]) -> None:
    types = {panel["type"] for panel in panels(dashboard)}
    assert types <= {"row", "timeseries", "stat", "table"}, types
    assert {"timeseries", "stat", "table"} <= types
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))


def test_dashboard_shows_what_operators_need(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(t["expr"] for p in panels(dashboard) for t in p.get("targets", []))
    for needed in (
        "jobyard_runs_finished_total",  # throughput by status
        "jobyard_queue_depth",  # queue depth by priority
        "jobyard_run_queue_wait_seconds_bucket",  # queue wait percentiles
        "jobyard_run_duration_seconds_bucket",  # duration percentiles
        "jobyard_dead_letters_current",
        "jobyard_workers_alive",
        "jobyard_cluster_worker_slots",
        "jobyard_scheduler_leader",
        "jobyard_scheduler_fire_lag_seconds_bucket",
        "jobyard_api_requests_total",
        "jobyard_api_request_duration_seconds_bucket",
    ):
        assert needed in exprs, needed
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(jobyard_run_queue_wait_seconds_bucket" in exprs


def test_dashboard_only_uses_defined_metrics(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            names = metric_names(target["expr"])
            assert names, (panel["title"], target["expr"])
            assert not known(names), (panel["title"], known(names))
    for variable in dashboard["templating"]["list"]:
        inner = re.search(r"label_values\((\w+)", variable["definition"])
        assert inner and inner.group(1) in sample_names()


def test_panels_fit_the_grid(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
