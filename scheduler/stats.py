"""What the scheduler counts, and the hooks other features (metrics) plug into.

``SchedulerHooks`` is a no-op base class: subclass it and pass instances to ``Scheduler(hooks=[...])``.
Hooks are called in order from the scheduler's loop; a hook that raises is logged and skipped, never
fatal (a broken metrics exporter must not stop the firing). Keep them cheap: they run between fires.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

log = logging.getLogger(__name__)

# Outcomes of one nominal fire time, as counted here and in P:job:<name>:fire_stats.
FIRED = "fired"  # a run was created
DUPLICATE = "duplicate"  # the fire key already existed: another leader (or an earlier try) fired it
SKIPPED_OVERLAP = "skipped_overlap"  # overlap=skip and the previous run was still queued or running
SKIPPED_MISSED = "skipped_missed"  # missed while no leader fired, and the catch_up policy dropped it
FENCED = "fenced"  # refused: another leader has a newer term (this one stepped down)
OUTCOMES = (FIRED, DUPLICATE, SKIPPED_OVERLAP, SKIPPED_MISSED, FENCED)

# create_run.lua outcomes -> ours
FROM_CREATE = {"created": FIRED, "duplicate": DUPLICATE, "overlap": SKIPPED_OVERLAP, "fenced": FENCED}


class SchedulerHooks:
    """No-op base: override what you need (metrics, audit logs)."""

    def on_leadership(self, is_leader: bool, term: int | None) -> None:
        """This process became leader for ``term`` (True) or stopped being leader (False)."""

    def on_fire(self, job: str, outcome: str, fire_ts: float, now: float) -> None:
        """One nominal fire time of ``job`` was handled with ``outcome`` (see ``OUTCOMES``)."""

    def on_missed(self, job: str, policy: str, missed: int, fired: int) -> None:
        """A catch-up found ``missed`` fire times of ``job``; ``fired`` of them were fired."""


class MetricsHooks(SchedulerHooks):
    """Feeds ``jobyard.metrics`` (leadership gauge, term changes, fires by outcome, fire lag)."""

    _OUTCOME = {
        FIRED: "created",
        DUPLICATE: "duplicate",
        SKIPPED_OVERLAP: "overlap",
        SKIPPED_MISSED: "skipped",
        FENCED: "fenced",
    }

    def __init__(self) -> None:
        from jobyard import metrics

        self.metrics = metrics

    def on_leadership(self, is_leader: bool, term: int | None) -> None:
        """Set the leader gauge; count a new term."""
        self.metrics.set_scheduler_leader(is_leader)
        if is_leader:
            self.metrics.observe_term_change()

    def on_fire(self, job: str, outcome: str, fire_ts: float, now: float) -> None:
        """Count the fire by outcome and observe the lag of a created run."""
        self.metrics.observe_fire(job, self._OUTCOME.get(outcome, outcome), fire_ts, now)

    def on_missed(self, job: str, policy: str, missed: int, fired: int) -> None:
        """Count the missed fire times the policy dropped as ``skipped``."""
        if missed > fired:
            self.metrics.SCHEDULER_FIRES.labels(job, "skipped").inc(missed - fired)


class SchedulerStats:
    """Counters of this process (all jobs) and the hooks to tell about each event."""

    def __init__(self, hooks: Iterable[SchedulerHooks] = ()) -> None:
        self.hooks = list(hooks)
        self.outcomes: Counter[str] = Counter()
        self.terms = 0
        self.catch_ups = 0

    def _call(self, name: str, *args: object) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, name)(*args)
            except Exception:
                log.exception("scheduler hook %s.%s failed (ignored)", type(hook).__name__, name)

    def leadership(self, is_leader: bool, term: int | None) -> None:
        """Record a change of leadership."""
        if is_leader:
            self.terms += 1
        self._call("on_leadership", is_leader, term)

    def fire(self, job: str, outcome: str, fire_ts: float, now: float) -> None:
        """Record one handled fire time."""
        self.outcomes[outcome] += 1
        self._call("on_fire", job, outcome, fire_ts, now)

    def missed(self, job: str, policy: str, missed: int, fired: int) -> None:
        """Record one catch-up."""
        self.catch_ups += 1
        self.outcomes[SKIPPED_MISSED] += missed - fired
        self._call("on_missed", job, policy, missed, fired)

    def snapshot(self) -> dict[str, int]:
        """The counters as a plain dict (for logs and tests)."""
        return {**{o: self.outcomes[o] for o in OUTCOMES}, "terms": self.terms, "catch_ups": self.catch_ups}
