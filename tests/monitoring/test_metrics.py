"""The metric definitions: naming rules, the helpers the roles call, and promtool's verdict."""

from __future__ import annotations

import time

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from jobyard import __version__, metrics
from jobyard.models import Priority, Run, RunStatus, Trigger
from tests.monitoring.conftest import promtool_check_metrics

JOBYARD_COLLECTORS = [
    value
    for name, value in vars(metrics).items()
    if name.isupper() and hasattr(value, "describe") and hasattr(value, "_name")
]


def value(name: str, **labels: str) -> float:
    """A sample's current value in the process registry (0 when the series does not exist yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def run(**kw: object) -> Run:
    base: dict[str, object] = {"id": "01TEST", "job": "m-job", "enqueued_at": 1000.0}
    base.update(kw)
    return Run(**base)  # type: ignore[arg-type]


def test_every_metric_follows_the_naming_rules() -> None:
    assert len(JOBYARD_COLLECTORS) >= 20
    for collector in JOBYARD_COLLECTORS:
        for family in collector.describe():
            assert family.name.startswith("jobyard_"), family.name
            # Prometheus overwrites these on scrape (or renames ours to exported_*)
            labels = set(collector._labelnames)
            assert not labels & {"job", "instance", "run_id", "id"}, (family.name, labels)
            if family.type == "histogram":
                assert family.name.endswith("_seconds"), family.name


def test_run_histograms_reach_from_10ms_to_hours() -> None:
    assert metrics.RUN_SECONDS_BUCKETS[0] == 0.01
    assert metrics.RUN_SECONDS_BUCKETS[-1] >= 4 * 3600
    assert list(metrics.RUN_SECONDS_BUCKETS) == sorted(metrics.RUN_SECONDS_BUCKETS)


def test_build_info_names_the_version() -> None:
    assert value("jobyard_build_info", version=__version__) == 1.0


def test_run_helpers_count_by_job_trigger_priority_and_status() -> None:
    # given a scheduled run that waited 7 s past its nominal time and ran 3 s
    r = run(
        job="m-helpers",
        trigger=Trigger.SCHEDULE,
        priority=Priority.HIGH,
        scheduled_for=2000.0,
        started_at=2007.0,
        ended_at=2010.0,
        attempt=1,
        status=RunStatus.SUCCEEDED,
    )
    # when the roles report its life
    metrics.observe_enqueued(r)
    metrics.init_job_series(r)
    metrics.observe_run_started(r)
    metrics.observe_run_finished(r)
    # then
    assert (
        value("jobyard_runs_enqueued_total", job_name="m-helpers", trigger="schedule", priority="high") == 1
    )
    assert value("jobyard_runs_started_total", job_name="m-helpers", trigger="schedule") == 1
    finished = {"job_name": "m-helpers", "trigger": "schedule"}
    assert value("jobyard_runs_finished_total", **finished, status="succeeded") == 1
    # failure series exist from the first claim, at 0, so increase() sees the first failure
    assert REGISTRY.get_sample_value("jobyard_runs_finished_total", {**finished, "status": "failed"}) == 0
    assert REGISTRY.get_sample_value("jobyard_dead_letters_total", {"job_name": "m-helpers"}) == 0
    wait = {"job_name": "m-helpers", "priority": "high"}
    assert value("jobyard_run_queue_wait_seconds_sum", **wait) == 7.0
    assert value("jobyard_run_queue_wait_seconds_bucket", **wait, le="5.0") == 0
    assert value("jobyard_run_queue_wait_seconds_bucket", **wait, le="10.0") == 1
    assert value("jobyard_run_duration_seconds_sum", **wait) == 3.0


def test_queue_wait_is_observed_on_the_first_attempt_only() -> None:
    labels = {"job_name": "m-attempts", "priority": "normal"}
    metrics.observe_run_started(run(job="m-attempts", attempt=1, started_at=1002.0))
    metrics.observe_run_started(run(job="m-attempts", attempt=2, started_at=1500.0))
    assert value("jobyard_run_queue_wait_seconds_count", **labels) == 1
    assert value("jobyard_run_queue_wait_seconds_sum", **labels) == 2.0
    assert value("jobyard_runs_started_total", job_name="m-attempts", trigger="api") == 2


def test_a_run_that_never_started_has_no_duration() -> None:
    metrics.observe_run_finished(run(job="m-cancelled", status=RunStatus.CANCELLED, ended_at=1001.0))
    assert (
        value("jobyard_runs_finished_total", job_name="m-cancelled", trigger="api", status="cancelled") == 1
    )
    assert value("jobyard_run_duration_seconds_count", job_name="m-cancelled", priority="normal") == 0


def test_scheduler_helpers() -> None:
    before_lag = value("jobyard_scheduler_fire_lag_seconds_count")
    before_terms = value("jobyard_scheduler_term_changes_total")
    metrics.set_scheduler_leader(True)
    metrics.observe_term_change()
    now = time.time()
    metrics.observe_fire("m-cron", "created", fire_ts=now - 0.2, now=now)  # create_run's vocabulary
    metrics.observe_fire("m-cron", "fired", fire_ts=now - 0.02, now=now)
    metrics.observe_fire("m-cron", "exists")
    metrics.observe_fire("m-cron", "overlap")
    metrics.observe_fire("m-cron", "no-such-outcome")  # logged, not counted, never raised
    assert value("jobyard_scheduler_leader") == 1
    assert value("jobyard_scheduler_term_changes_total") == before_terms + 1
    assert value("jobyard_scheduler_fires_total", job_name="m-cron", outcome="fired") == 2
    assert value("jobyard_scheduler_fires_total", job_name="m-cron", outcome="duplicate") == 1
    assert value("jobyard_scheduler_fires_total", job_name="m-cron", outcome="overlap") == 1
    assert value("jobyard_scheduler_fire_lag_seconds_count") == before_lag + 2
    metrics.set_scheduler_leader(False)
    assert value("jobyard_scheduler_leader") == 0


def test_worker_and_continuous_helpers() -> None:
    metrics.set_worker_slots(busy=3, total=8)
    metrics.set_continuous_running("m-daemon", 1)
    metrics.observe_continuous_restart("m-daemon")
    assert value("jobyard_worker_slots") == 8
    assert value("jobyard_worker_slots_busy") == 3
    assert value("jobyard_continuous_instances_running", job_name="m-daemon") == 1
    assert value("jobyard_continuous_restarts_total", job_name="m-daemon") == 1


def test_api_helper_folds_unknown_methods() -> None:
    metrics.observe_api_request("/api/m", "BREW", 405, 0.001)
    assert value("jobyard_api_requests_total", route="/api/m", method="other", status="405") == 1


def test_sample_names_cover_the_exposition() -> None:
    # given every kind of series exists in this process
    metrics.observe_api_request("/api/names", "GET", 200, 0.01)
    body, _ = metrics.exposition(None)
    exposed = {s.name for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    jobyard_exposed = {n for n in exposed if n.startswith("jobyard_")}
    # then sample_names() knows each of them (and adds the API's Redis gauges)
    assert jobyard_exposed <= metrics.sample_names()
    assert {
        "jobyard_queue_depth",
        "jobyard_redis_up",
        "jobyard_runs_enqueued_total",
    } <= metrics.sample_names()


def test_promtool_accepts_the_registry(promtool: str) -> None:
    metrics.observe_enqueued(run(job="m-promtool"))
    metrics.observe_run_finished(
        run(job="m-promtool", status=RunStatus.FAILED, started_at=1001.0, ended_at=1002.0)
    )
    body, content_type = metrics.exposition(None)
    assert content_type.startswith("text/plain")
    promtool_check_metrics(promtool, body)


def test_openmetrics_is_served_when_asked() -> None:
    body, content_type = metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
