"""One attempt's confinement: its limits, its cgroup, its account, and the watcher that ends it.

Used by ``workers.attempt`` in this order::

    conf = Confinement.for_attempt(settings, job.settings, name)   # may raise InvalidInput
    conf.prepare(paths..., workdir)   # cgroup made, files handed to the account
    runlog.add(SYS, conf.describe())
    ScriptRunner(..., preexec=conf.preexec).start() -> pid; conf.started(pid)
    ... runner.wait() ...
    hit = conf.finish(exit_code, lines)   # the limit that ended the run, or None
    conf.close()                          # always (finally): cgroup removed

The child runs ``preexec`` between fork and exec: it joins the cgroup (while still root), sets
its rlimits, then switches account. The watcher thread polls the cgroup counters every
``WATCH_INTERVAL_S``; the moment a limit is hit it kills everything in the cgroup, so a fork
loop or a runaway allocation ends the run at once instead of at its timeout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import threading
from pathlib import Path
from typing import Any

from jobyard.settings import Settings
from workers import run_as
from workers.cgroups import CgroupHost, RunCgroup
from workers.limits import LimitPlan, RunLimits

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.1

_host: CgroupHost | None = None
_host_lock = threading.Lock()
_root_warned = False


def cgroup_host(mode: str) -> CgroupHost:
    """The cgroups of this host, detected once per process (stale run cgroups swept then)."""
    global _host
    with _host_lock:
        if _host is None:
            _host = CgroupHost.detect(mode)
            log.info("run confinement: %s", _host.describe())
            if _host.available:
                _host.sweep()
        return _host


class Confinement:
    """See the module docstring."""

    def __init__(self, plan: LimitPlan, account: run_as.Account | None, name: str) -> None:
        self.plan = plan
        self.account = account
        self.name = name
        self.cgroup: RunCgroup | None = None
        self.cgroup_error: str | None = None
        self.hit: str | None = None
        self._pid: int | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @classmethod
    def for_attempt(cls, settings: Settings, job_settings: dict[str, Any], name: str) -> Confinement:
        """The plan for one attempt (``name``: ``<run id>.<attempt>``); raises for a bad run_as."""
        wanted = run_as.wanted(job_settings, settings.run_as)
        account = run_as.resolve(wanted) if wanted else None
        if account is not None and account.uid == os.geteuid():
            account = None  # already that account: nothing to switch
        limits = RunLimits.of(job_settings, settings)
        host = cgroup_host(settings.cgroups)
        return cls(LimitPlan(limits, host, own_account=account is not None), account, name)

    # -- before the start --------------------------------------------------------------------
    def prepare(
        self,
        data_dir: Path,
        *,
        workdir: Path | None,
        attempt_dir: Path,
        home: Path,
        tmp: Path,
        data: Path,
        result_file: Path,
    ) -> None:
        """Make the cgroup and hand the attempt's files to the account (raises OSError)."""
        if self.account is not None:
            blocked = run_as.reachable(data_dir, self.account)
            if blocked:
                from jobyard.errors import InvalidInput

                raise InvalidInput(
                    f"run_as account {self.account.name} cannot pass {blocked} to reach the data dir",
                    f"make the directories above JOBYARD_DATA_DIR passable (chmod o+x {blocked})",
                )
            run_as.hand_over(
                self.account,
                data_dir,
                workdir=workdir,
                attempt_dir=attempt_dir,
                home=home,
                tmp=tmp,
                data=data,
                result_file=result_file,
            )
        if self.plan.needs_cgroup:
            lim = self.plan.limits
            try:
                self.cgroup = self.plan.cgroups.create(
                    self.name,
                    memory_bytes=lim.memory_bytes if self.plan.cgroup_memory else None,
                    max_pids=lim.processes if self.plan.cgroup_pids else None,
                )
            except OSError as exc:
                # Never run with a limit silently missing: the run fails to start, saying why.
                raise OSError(exc.errno, f"could not set up the run's cgroup: {exc.strerror or exc}") from exc

    def describe(self) -> str:
        """The SYS lines: limits and how they are enforced, and the account."""
        global _root_warned
        who = f"running as {self.account.label}" if self.account else f"running as uid {os.geteuid()}"
        if self.account is None and os.geteuid() == 0:
            who += (
                " (root: limits hold against mistakes, not against a script that lifts them; "
                "set JOBYARD_RUN_AS)"
            )
            if not _root_warned:
                _root_warned = True
                log.warning("scripts run as root; set JOBYARD_RUN_AS to an unprivileged account")
        return f"{self.plan.describe()}; {who}"

    @property
    def needs_preexec(self) -> bool:
        """Whether the child has anything to do before exec.

        Any ``preexec_fn`` makes CPython fork instead of vfork and run Python in the child, which
        cut spawns from ~1,000/s to ~200/s: unconfined runs skip it. ``RLIMIT_CORE`` 0 is set on
        the worker process itself at start (``workers.main``), so children inherit it anyway.
        """
        extra = [r for r in self.plan.rlimits() if r[0] != resource.RLIMIT_CORE]
        return self.cgroup is not None or self.account is not None or bool(extra)

    def preexec(self) -> None:
        """In the child, before exec: cgroup, rlimits, then the account (plain syscalls only)."""
        if self.cgroup is not None:
            self.cgroup.join_in_child()
        for which, soft, hard in self.plan.rlimits():
            resource.setrlimit(which, (soft, hard))
        if self.account is not None:
            run_as.switch_in_child(self.account)

    # -- while it runs -----------------------------------------------------------------------
    def started(self, pid: int) -> None:
        """The script runs as ``pid`` (its process group): watch its cgroup."""
        self._pid = pid
        if self.cgroup is not None:
            self._watcher = threading.Thread(target=self._watch, name=f"limits-{self.name}", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        cgroup = self.cgroup
        assert cgroup is not None
        while not self._stop.wait(WATCH_INTERVAL_S):
            which = self.plan.hit_by_counters(cgroup.counters())
            if which is not None:
                self.hit = which
                self._kill(cgroup)
                return

    def _kill(self, cgroup: RunCgroup) -> None:
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pid, signal.SIGKILL)
        cgroup.kill_all()

    # -- after it ended ----------------------------------------------------------------------
    def finish(self, exit_code: int | None, lines: list[str]) -> str | None:
        """The error text of the limit that ended the run, or None."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        which = self.hit
        if which is None and self.cgroup is not None:
            which = self.plan.hit_by_counters(self.cgroup.counters(), ended_ok=exit_code == 0)
        if which is None:
            which = self.plan.hit_by_signs(exit_code, lines)
        self.hit = which
        return None if which is None else self.plan.limits.message(which)

    def close(self) -> None:
        """Kill what is left in the cgroup and remove it (idempotent)."""
        self._stop.set()
        cgroup, self.cgroup = self.cgroup, None
        if cgroup is not None:
            cgroup.remove()
