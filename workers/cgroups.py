"""Control groups for runs: one cgroup per attempt, so limits hold for the script's whole tree.

A process group can be left (``setsid``), rlimits are per process and a child inherits a fresh
budget; a cgroup is neither: everything the script starts is in it and stays in it, and the
kernel counts memory and processes for all of them together.

Detection, once per worker process:

- **cgroup v2**: the unified hierarchy's directory of the worker's own cgroup. Runs go below it
  in ``jobyard/<run>.<attempt>``; that needs the ``memory`` and ``pids`` controllers enabled in
  the worker cgroup's ``cgroup.subtree_control`` (a delegated cgroup, e.g. systemd
  ``Delegate=yes``). The kernel refuses to enable them in a cgroup that holds processes, so a
  worker sitting in its own leaf cgroup gets "unavailable" with that reason.
- **cgroup v1**: the ``memory``, ``pids`` and ``cpuacct`` hierarchies, each where the worker's
  own cgroup is, when writable.
- otherwise none: the worker falls back to rlimits and says so in each run's log.

Each attempt's cgroup gets ``memory.max`` (v1 ``memory.limit_in_bytes``, swap included where
the kernel accounts it) and ``pids.max``; CPU time is summed from ``cpu.stat`` (v1
``cpuacct.usage``) and enforced by the caller's watcher. Which limit was hit is read from
``memory.events`` / ``memory.oom_control`` (``oom_kill``) and ``pids.events`` (``max``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

GROUP_DIR = "jobyard"
V1_CONTROLLERS = ("memory", "pids", "cpuacct")
V2_NEEDED = ("memory", "pids")
KILL_PASSES = 200
REMOVE_WAIT_S = 3.0
STALE_AGE_S = 60.0  # an empty cgroup this old under jobyard/ was left by a dead worker


@dataclass
class Counters:
    """What the kernel counted for one cgroup so far."""

    oom_kills: int = 0
    pids_refused: int = 0  # forks refused because pids.max was reached
    cpu_s: float | None = None  # CPU time of every process in it, if accounted


@dataclass
class RunCgroup:
    """The cgroup (v2: one directory; v1: one per controller) of one attempt."""

    version: int
    dirs: dict[str, Path]  # controller -> directory ("unified" for v2)
    procs_paths: list[str] = field(default_factory=list)  # cgroup.procs files to join

    def join_in_child(self) -> None:
        """Move the calling process into the cgroup (for a ``preexec_fn``: plain syscalls only)."""
        pid = str(os.getpid()).encode()
        for path in self.procs_paths:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    def counters(self) -> Counters:
        """Read the counters (missing files count as zero)."""
        out = Counters()
        if self.version == 2:
            d = self.dirs["unified"]
            out.oom_kills = _keyed(d / "memory.events").get("oom_kill", 0)
            out.pids_refused = _keyed(d / "pids.events").get("max", 0)
            usage = _keyed(d / "cpu.stat").get("usage_usec")
            out.cpu_s = None if usage is None else usage / 1e6
            return out
        if "memory" in self.dirs:
            out.oom_kills = _keyed(self.dirs["memory"] / "memory.oom_control").get("oom_kill", 0)
        if "pids" in self.dirs:
            out.pids_refused = _keyed(self.dirs["pids"] / "pids.events").get("max", 0)
        if "cpuacct" in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                out.cpu_s = int((self.dirs["cpuacct"] / "cpuacct.usage").read_text()) / 1e9
        return out

    def pids(self) -> set[int]:
        """Every process in the cgroup."""
        found: set[int] = set()
        for d in set(self.dirs.values()):
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return found

    def kill_all(self) -> None:
        """SIGKILL everything in the cgroup, including what left the process group."""
        if self.version == 2:
            kill_file = self.dirs["unified"] / "cgroup.kill"
            if kill_file.exists():
                with contextlib.suppress(OSError):
                    kill_file.write_text("1")
        for _ in range(KILL_PASSES):  # bounded: pids.max keeps a fork loop from outrunning us
            left = self.pids()
            if not left:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)
        log.warning("processes still alive in %s after %d kill passes", self.dirs, KILL_PASSES)

    def remove(self) -> None:
        """Kill what is left and delete the directories (retried while the dead are reaped)."""
        self.kill_all()
        deadline = time.monotonic() + REMOVE_WAIT_S
        for d in set(self.dirs.values()):
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        log.warning("could not remove cgroup %s: %s", d, exc)
                        break
                    self.kill_all()
                    time.sleep(0.02)


def _keyed(path: Path) -> dict[str, int]:
    """A ``key value`` per line file (``memory.events``, ``pids.events``, ``cpu.stat``)."""
    out: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value.strip())
    return out


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Mount:
    """One cgroup mount from /proc/self/mountinfo."""

    root: str
    point: Path
    fstype: str
    options: frozenset[str]


def _mounts(mountinfo: str) -> list[Mount]:
    out = []
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        if not sep:
            continue
        fields, rest = head.split(), tail.split()
        if len(fields) < 5 or len(rest) < 3 or rest[0] not in ("cgroup", "cgroup2"):
            continue
        out.append(Mount(fields[3], Path(fields[4]), rest[0], frozenset(rest[2].split(","))))
    return out


def _own_paths(proc_cgroup: str) -> dict[str, str]:
    """controller (or "" for v2) -> the worker's cgroup path in that hierarchy."""
    out: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            out[controller] = parts[2]
    return out


def _below(mount: Mount, own: str) -> Path:
    rel = own[len(mount.root) :] if own.startswith(mount.root) and mount.root != "/" else own
    return mount.point / rel.lstrip("/")


class CgroupHost:
    """What this host offers; ``create`` makes one attempt's cgroup."""

    def __init__(self, version: int, parents: dict[str, Path], reason: str = "") -> None:
        self.version = version  # 0: none
        self.parents = parents  # controller -> the jobyard/ directory runs go into
        self.reason = reason

    @property
    def available(self) -> bool:
        return self.version > 0

    def has(self, controller: str) -> bool:
        """Whether limits of this controller are enforced by the cgroup."""
        if self.version == 2:
            return controller in V2_NEEDED or controller == "cpuacct"
        return controller in self.parents

    def describe(self) -> str:
        """``cgroup v1 (memory, pids, cpuacct)`` or why there is none."""
        if not self.available:
            return f"no cgroup ({self.reason})"
        if self.version == 2:
            return "cgroup v2"
        return f"cgroup v1 ({', '.join(sorted(self.parents))})"

    def create(self, name: str, *, memory_bytes: int | None, max_pids: int | None) -> RunCgroup:
        """A new cgroup ``jobyard/<name>`` with the limits written; raises OSError when it cannot."""
        if self.version == 2:
            d = self.parents["unified"] / name
            d.mkdir(exist_ok=True)
            group = RunCgroup(2, {"unified": d}, [str(d / "cgroup.procs")])
            try:
                if memory_bytes is not None:
                    _write(d / "memory.max", str(memory_bytes))
                    if (d / "memory.swap.max").exists():
                        _write(d / "memory.swap.max", "0")
                if max_pids is not None:
                    _write(d / "pids.max", str(max_pids))
            except OSError:
                group.remove()
                raise
            return group
        dirs = {c: p / name for c, p in self.parents.items()}
        group = RunCgroup(1, dirs, [str(d / "cgroup.procs") for d in dirs.values()])
        try:
            for d in dirs.values():
                d.mkdir(exist_ok=True)
            if memory_bytes is not None and "memory" in dirs:
                _write(dirs["memory"] / "memory.limit_in_bytes", str(memory_bytes))
                with contextlib.suppress(OSError):  # only where swap is accounted
                    _write(dirs["memory"] / "memory.memsw.limit_in_bytes", str(memory_bytes))
            if max_pids is not None and "pids" in dirs:
                _write(dirs["pids"] / "pids.max", str(max_pids))
        except OSError:
            group.remove()
            raise
        return group

    def sweep(self) -> None:
        """Remove empty run cgroups that dead workers left behind."""
        now = time.time()
        for parent in self.parents.values():
            with contextlib.suppress(OSError):
                for child in parent.iterdir():
                    with contextlib.suppress(OSError):
                        if child.is_dir() and now - child.stat().st_mtime > STALE_AGE_S:
                            child.rmdir()  # refused (EBUSY) while processes are in it

    @classmethod
    def detect(cls, mode: str = "auto") -> CgroupHost:
        """The cgroups this worker may use (``mode`` "off": none)."""
        if mode == "off":
            return cls(0, {}, "JOBYARD_CGROUPS=off")
        try:
            mounts = _mounts(Path("/proc/self/mountinfo").read_text())
            own = _own_paths(Path("/proc/self/cgroup").read_text())
        except OSError as exc:
            return cls(0, {}, f"cannot read /proc: {exc}")
        v2 = _detect_v2(mounts, own)
        if v2.available:
            return v2
        v1 = _detect_v1(mounts, own)
        if v1.available:
            return v1
        return cls(0, {}, f"{v2.reason}; {v1.reason}")


def _detect_v2(mounts: list[Mount], own: dict[str, str]) -> CgroupHost:
    mount = next((m for m in mounts if m.fstype == "cgroup2"), None)
    if mount is None or "" not in own:
        return CgroupHost(0, {}, "no cgroup v2 hierarchy")
    base = _below(mount, own[""])
    try:
        available = set((base / "cgroup.controllers").read_text().split())
        missing = [c for c in V2_NEEDED if c not in available]
        if missing:
            return CgroupHost(0, {}, f"cgroup v2 at {base} lacks the {', '.join(missing)} controller")
        enabled = set((base / "cgroup.subtree_control").read_text().split())
        if not set(V2_NEEDED) <= enabled:
            # The kernel refuses this (EBUSY) in a cgroup that holds processes, i.e. ours.
            _write(base / "cgroup.subtree_control", " ".join(f"+{c}" for c in V2_NEEDED))
        parent = base / GROUP_DIR
        parent.mkdir(exist_ok=True)
        _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in V2_NEEDED))
    except OSError as exc:
        return CgroupHost(
            0, {}, f"cgroup v2 at {base} is not delegated to this worker: {exc.strerror or exc}"
        )
    return CgroupHost(2, {"unified": parent})


def _detect_v1(mounts: list[Mount], own: dict[str, str]) -> CgroupHost:
    parents: dict[str, Path] = {}
    problems: list[str] = []
    for controller in V1_CONTROLLERS:
        mount = next((m for m in mounts if m.fstype == "cgroup" and controller in m.options), None)
        if mount is None or controller not in own:
            continue
        parent = _below(mount, own[controller]) / GROUP_DIR
        try:
            parent.mkdir(exist_ok=True)
            if not os.access(parent, os.W_OK):
                raise PermissionError(errno.EACCES, "not writable")
        except OSError as exc:
            problems.append(f"{controller}: {exc.strerror or exc}")
            continue
        parents[controller] = parent
    if not parents:
        why = "; ".join(problems) or "no writable v1 memory/pids/cpuacct hierarchy"
        return CgroupHost(0, {}, f"cgroup v1: {why}")
    return CgroupHost(1, parents)
