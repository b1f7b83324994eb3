"""Prometheus metrics of a worker, fed by the run lifecycle hooks.

The worker registers it with ``hooks.add(MetricsHooks())`` and keeps its slot gauges up to date
with ``set_worker_slots(busy, total)``; the metric definitions are in ``jobyard/metrics.py``.

What each hook counts:

- ``after_claim``: an attempt started (the run went to running, ``started_at`` set by the claim),
  and on attempt 1 the queue wait: ``started_at - (scheduled_for or enqueued_at)``. Counted at
  the claim rather than at the script's start, so a run whose interpreter is missing still has a
  start, a queue wait and a finish.
- ``after_finish``: the terminal status and the last attempt's duration.
- ``after_retry`` / ``after_dead_letter`` / ``after_requeue`` / ``after_drop``: the counters of
  the same names.
"""

from __future__ import annotations

from jobyard import metrics
from jobyard.hooks import RunHooks
from jobyard.metrics import set_continuous_running, set_worker_slots
from jobyard.models import Job, Run

__all__ = ["MetricsHooks", "set_continuous_running", "set_worker_slots"]


class MetricsHooks(RunHooks):
    """Counts and times runs on this worker process (one instance per worker)."""

    def after_claim(self, run: Run, job: Job) -> None:
        """Count the attempt's start; observe queue wait on the first attempt."""
        metrics.init_job_series(run)
        metrics.observe_run_started(run)

    def after_finish(self, run: Run, job: Job) -> None:
        """Count the terminal status and observe the duration."""
        metrics.observe_run_finished(run)

    def after_retry(self, run: Run, job: Job, delay_s: float) -> None:
        """Count a retry."""
        metrics.observe_retry(run)

    def after_dead_letter(self, run: Run, job: Job) -> None:
        """Count a dead letter."""
        metrics.observe_dead_letter(run)

    def after_requeue(self, run: Run, job: Job) -> None:
        """Count an attempt given back by a stopping worker."""
        metrics.observe_requeue(run)

    def after_drop(self, reason: str, run_id: str) -> None:
        """Count a dropped message by reason (never by run id: unbounded)."""
        metrics.observe_drop(reason)
