"""The worker's metrics hooks, driven through the same hook chain the worker uses."""

from __future__ import annotations

from prometheus_client import REGISTRY

from jobyard.hooks import HookChain
from jobyard.models import Job, JobType, Priority, Run, RunStatus, Trigger
from workers.metrics_hooks import MetricsHooks, set_worker_slots


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def job(name: str) -> Job:
    return Job(name=name, type=JobType.TRIGGERED, package="0" * 64, entry="run.sh", settings={})


def test_a_run_that_retries_then_dead_letters() -> None:
    # given a chain with the metrics hooks, as the worker builds it
    chain = HookChain()
    chain.add(MetricsHooks())
    j = job("h-flaky")
    r = Run(id="01H", job="h-flaky", priority=Priority.LOW, enqueued_at=100.0, max_retries=1)
    # when attempt 1 is claimed 4 s after enqueue, fails and is retried
    r.attempt, r.started_at, r.status = 1, 104.0, RunStatus.RUNNING
    chain.emit("after_claim", r, j)
    chain.emit("after_start", r, j, 4242)
    chain.emit("after_retry", r, j, 2.0)
    # and attempt 2 fails for good
    r.attempt, r.started_at = 2, 110.0
    chain.emit("after_claim", r, j)
    r.status, r.ended_at = RunStatus.FAILED, 111.5
    chain.emit("after_finish", r, j)
    chain.emit("after_dead_letter", r, j)
    # then
    assert value("jobyard_runs_started_total", job_name="h-flaky", trigger="api") == 2
    assert value("jobyard_run_retries_total", job_name="h-flaky") == 1
    assert value("jobyard_dead_letters_total", job_name="h-flaky") == 1
    assert value("jobyard_runs_finished_total", job_name="h-flaky", trigger="api", status="failed") == 1
    low = {"job_name": "h-flaky", "priority": "low"}
    assert value("jobyard_run_queue_wait_seconds_count", **low) == 1  # first attempt only
    assert value("jobyard_run_queue_wait_seconds_sum", **low) == 4.0
    assert value("jobyard_run_duration_seconds_sum", **low) == 1.5  # the last attempt


def test_delayed_runs_wait_from_their_scheduled_time() -> None:
    hooks = MetricsHooks()
    r = Run(
        id="01D",
        job="h-delayed",
        trigger=Trigger.SCHEDULE,
        enqueued_at=0.0,
        scheduled_for=3600.0,
        started_at=3600.25,
        attempt=1,
    )
    hooks.after_claim(r, job("h-delayed"))
    assert value("jobyard_run_queue_wait_seconds_sum", job_name="h-delayed", priority="normal") == 0.25


def test_requeue_drop_and_slots() -> None:
    hooks = MetricsHooks()
    r = Run(id="01R", job="h-requeued")
    hooks.after_requeue(r, job("h-requeued"))
    before = value("jobyard_messages_dropped_total", reason="terminal")
    hooks.after_drop("terminal", "01R")
    set_worker_slots(1, 2)
    assert value("jobyard_runs_requeued_total", job_name="h-requeued") == 1
    assert value("jobyard_messages_dropped_total", reason="terminal") == before + 1
    assert (value("jobyard_worker_slots_busy"), value("jobyard_worker_slots")) == (1, 2)
