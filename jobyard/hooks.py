"""Lifecycle hooks of a run on a worker: claim -> start -> finish -> retry or dead-letter.

Features that hang off those moments (metrics, callbacks, concurrency leases) subclass
``RunHooks`` and override what they need. Hooks run in order; a hook that raises is logged and
the run goes on (dramatiq's ``Middleware`` and ``Broker.emit_after`` are the model).
"""

from __future__ import annotations

import logging
from typing import Any

from jobyard.models import Job, Run

log = logging.getLogger(__name__)


class RunHooks:
    """No-op base: every hook is optional."""

    def after_claim(self, run: Run, job: Job) -> None:
        """The run was claimed for attempt ``run.attempt`` (its script has not started yet)."""

    def after_start(self, run: Run, job: Job, pid: int) -> None:
        """The script process started."""

    def after_finish(self, run: Run, job: Job) -> None:
        """The run reached a terminal status (``run`` holds the final record)."""

    def after_retry(self, run: Run, job: Job, delay_s: float) -> None:
        """The attempt failed and the run will be tried again after ``delay_s``."""

    def after_dead_letter(self, run: Run, job: Job) -> None:
        """The run failed for good and was dead-lettered."""

    def after_requeue(self, run: Run, job: Job) -> None:
        """The attempt was interrupted (worker stopping) and the run went back on the queue."""

    def after_drop(self, reason: str, run_id: str) -> None:
        """A delivered message was dropped without running (``reason``: terminal, busy, missing...)."""


class HookChain:
    """Calls one hook on every registered ``RunHooks``, in order, logging failures."""

    def __init__(self, hooks: list[RunHooks] | None = None) -> None:
        self.hooks: list[RunHooks] = list(hooks or [])

    def add(self, hook: RunHooks) -> None:
        """Register ``hook`` after the existing ones."""
        self.hooks.append(hook)

    def emit(self, name: str, *args: Any) -> None:
        """Call ``name`` on each hook; an exception is logged, never raised."""
        for hook in self.hooks:
            try:
                getattr(hook, name)(*args)
            except Exception:
                log.exception("run hook %s.%s failed", type(hook).__name__, name)
