"""Resource limits of one run: what they are, how each is enforced here, and which one was hit.

A job's ``settings.job`` sets ``max_memory_mb``, ``max_cpu_seconds``, ``max_open_files`` and
``max_processes``; unset fields take the cluster defaults (``JOBYARD_DEFAULT_MAX_*``); unset
there too means no limit. (``max_output_mb``, the log cap, is the run log's business.)

Enforcement, best first:

- **memory**: the attempt's cgroup (whole tree, swap included) where there is one, else
  ``RLIMIT_DATA`` per process (counts heap and private mappings, not address space that runtimes
  merely reserve, so node and the JVM still start).
- **processes**: the cgroup's ``pids.max`` (threads count, as the kernel counts them), else
  ``RLIMIT_NPROC`` when runs have an account of their own (``run_as``): it counts every process
  of that account, and root ignores it, so without either it is not enforced.
- **CPU seconds**: ``RLIMIT_CPU`` per process, plus the cgroup's total across the tree, checked
  by the attempt's watcher.
- **open files**: ``RLIMIT_NOFILE`` per process (there is no cgroup for it).

A limit that is hit fails the run with the limit named in its error. The cgroup counters say so
for certain; without them the script's last error lines and exit status are read ("MemoryError",
"Too many open files", SIGXCPU), which is a good guess rather than proof.
"""

from __future__ import annotations

import math
import re
import resource
import signal
from dataclasses import dataclass
from typing import Any

from jobyard.settings import Settings
from workers.cgroups import CgroupHost, Counters

MB = 1024 * 1024

_SIGNS = {
    "memory": re.compile(
        r"MemoryError|Cannot allocate memory|out of memory|bad_alloc|memory allocation .*failed",
        re.IGNORECASE,
    ),
    "open_files": re.compile(r"Too many open files|EMFILE", re.IGNORECASE),
    "processes": re.compile(
        r"Resource temporarily unavailable|BlockingIOError|Cannot fork|fork: retry|EAGAIN", re.IGNORECASE
    ),
    "cpu": re.compile(r"CPU time limit exceeded", re.IGNORECASE),
}


@dataclass(frozen=True)
class RunLimits:
    """The limits of one run (None: unlimited)."""

    memory_mb: float | None = None
    cpu_seconds: float | None = None
    open_files: int | None = None
    processes: int | None = None

    @classmethod
    def of(cls, job_settings: dict[str, Any], settings: Settings) -> RunLimits:
        """From settings.job, falling back to the cluster defaults."""

        def pick(field: str, default: Any) -> Any:
            value = job_settings.get(field)
            return default if value is None else value

        memory = pick("max_memory_mb", settings.default_max_memory_mb)
        cpu = pick("max_cpu_seconds", settings.default_max_cpu_seconds)
        files = pick("max_open_files", settings.default_max_open_files)
        procs = pick("max_processes", settings.default_max_processes)
        return cls(
            memory_mb=float(memory) if memory else None,
            cpu_seconds=float(cpu) if cpu else None,
            open_files=int(files) if files else None,
            processes=int(procs) if procs else None,
        )

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory_mb is None else int(self.memory_mb * MB)

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.memory_mb, self.cpu_seconds, self.open_files, self.processes))

    def message(self, which: str) -> str:
        """The error text of a run that hit ``which`` (memory, cpu, open_files, processes)."""
        if which == "memory":
            return f"memory limit of {self.memory_mb:g} MB exceeded"
        if which == "cpu":
            return f"CPU time limit of {self.cpu_seconds:g} s exceeded"
        if which == "open_files":
            return f"open file limit of {self.open_files} reached"
        return f"process limit of {self.processes} reached"


@dataclass(frozen=True)
class LimitPlan:
    """How each limit of one run is enforced on this host, and the rlimits its process gets."""

    limits: RunLimits
    cgroups: CgroupHost
    own_account: bool  # the script runs under an account of its own (run_as)

    @property
    def cgroup_memory(self) -> bool:
        return self.limits.memory_mb is not None and self.cgroups.has("memory")

    @property
    def cgroup_pids(self) -> bool:
        return self.limits.processes is not None and self.cgroups.has("pids")

    @property
    def cgroup_cpu(self) -> bool:
        return self.limits.cpu_seconds is not None and self.cgroups.has("cpuacct")

    @property
    def needs_cgroup(self) -> bool:
        return self.cgroup_memory or self.cgroup_pids or self.cgroup_cpu

    @property
    def nproc_rlimit(self) -> bool:
        return self.limits.processes is not None and not self.cgroup_pids and self.own_account

    def rlimits(self) -> list[tuple[int, int, int]]:
        """``(resource, soft, hard)`` to set in the child before exec."""
        lim = self.limits
        # No core files: a core of a script holds its environment, secrets included.
        out = [(resource.RLIMIT_CORE, 0, 0)]
        if lim.memory_bytes is not None and not self.cgroup_memory:
            out.append((resource.RLIMIT_DATA, lim.memory_bytes, lim.memory_bytes))
        if lim.cpu_seconds is not None:
            soft = max(1, math.ceil(lim.cpu_seconds))
            out.append((resource.RLIMIT_CPU, soft, soft + 1))  # SIGXCPU, then SIGKILL a second later
        if lim.open_files is not None:
            out.append((resource.RLIMIT_NOFILE, lim.open_files, lim.open_files))
        if self.nproc_rlimit and lim.processes is not None:
            out.append((resource.RLIMIT_NPROC, lim.processes, lim.processes))
        return out

    def describe(self) -> str:
        """The SYS log line: every limit and what enforces it."""
        lim = self.limits
        if not lim.any:
            return f"limits: none set ({self.cgroups.describe()} available)"
        parts = []
        cg = f"cgroup v{self.cgroups.version}"
        if lim.memory_mb is not None:
            how = f"{cg}, whole tree" if self.cgroup_memory else "RLIMIT_DATA per process"
            parts.append(f"memory {lim.memory_mb:g} MB ({how})")
        if lim.cpu_seconds is not None:
            how = "RLIMIT_CPU per process" + (f" and {cg} total" if self.cgroup_cpu else "")
            parts.append(f"CPU {lim.cpu_seconds:g} s ({how})")
        if lim.open_files is not None:
            parts.append(f"open files {lim.open_files} (RLIMIT_NOFILE per process)")
        if lim.processes is not None:
            if self.cgroup_pids:
                how = f"{cg} pids.max, whole tree"
            elif self.nproc_rlimit:
                how = "RLIMIT_NPROC, shared by every run of the account"
            else:
                how = "NOT ENFORCED: no cgroup here and no run_as account"
            parts.append(f"processes {lim.processes} ({how})")
        extra = "" if self.cgroups.available else f"; {self.cgroups.describe()}"
        return "limits: " + ", ".join(parts) + extra

    def hit_by_counters(self, counters: Counters, *, ended_ok: bool = False) -> str | None:
        """The limit the cgroup counters prove was hit, if any.

        ``ended_ok``: the script exited 0 before the watcher saw its CPU total pass the limit;
        a budget used up exactly as the script ends is not a failure.
        """
        if self.cgroup_memory and counters.oom_kills > 0:
            return "memory"
        if self.cgroup_pids and counters.pids_refused > 0:
            return "processes"
        lim = self.limits
        cpu_s, budget = counters.cpu_s, lim.cpu_seconds
        if self.cgroup_cpu and not ended_ok and cpu_s is not None and budget is not None and cpu_s >= budget:
            return "cpu"
        return None

    def hit_by_signs(self, exit_code: int | None, lines: list[str]) -> str | None:
        """Without counters: the limit the exit status or last error lines point at, if any."""
        lim = self.limits
        if exit_code in (None, 0):
            return None
        if lim.cpu_seconds is not None and exit_code in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
            return "cpu"
        text = "\n".join(lines)
        checks = (
            ("memory", lim.memory_mb is not None and not self.cgroup_memory),
            ("open_files", lim.open_files is not None),
            ("processes", self.nproc_rlimit),
            ("cpu", lim.cpu_seconds is not None),
        )
        for which, applies in checks:
            if applies and _SIGNS[which].search(text):
                return which
        return None
