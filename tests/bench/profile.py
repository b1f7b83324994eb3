"""``--profile``: where the worker's and the API's time goes, sampled with py-spy.

py-spy (PyPI ``py-spy``) attaches to a running process by pid and samples its Python stacks;
``record --format raw`` writes collapsed stacks ("frame;frame;frame count"), which this module
folds into the functions with the largest share of samples: *self* (the function itself was on
top) and *total* (it was anywhere on the stack). The worker is sampled with idle threads
included and only its slot threads counted, so its shares are of the wall time a slot spends
per run (waiting on Redis or the child included); the API is sampled while busy only.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::\d+)?\)$")


def py_spy() -> str | None:
    """The py-spy executable (on PATH or beside this interpreter), or None."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


@dataclass
class Hot:
    """One function's share of a profile."""

    function: str
    self_share: float
    total_share: float


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = "/".join(Path(path).parts[-2:])
    return f"{m.group('func')} ({path})"


OWN = ("workers/", "jobyard/", "services/", "scheduler/")


# Framework and library functions worth seeing next to jobyard's own (by function name).
FOCUS = (
    "solve_dependencies",
    "request_body_to_args",
    "serialize_response",
    "Response.__call__",
    "JSONResponse.render",
    "Redis.execute_command",
    "Pipeline.execute",
    "AsyncScript.__call__",
    "Script.__call__",
    "MetricWrapperBase.labels",
    "Popen.__init__",
    "rmtree",
    "copytree",
)


def summarize(raw: str, within: str | None = None, top: int = 12) -> tuple[int, list[Hot], list[Hot]]:
    """(samples, top by self share, top of jobyard's own functions by total share) from raw output.

    ``within``: count only stacks that pass through this function (e.g. ``Worker._slot``: the time
    of the worker's slot threads), so shares are of that thread's time. Total shares list only
    jobyard's own functions: the frames above them (thread bootstrap, the event loop) are on
    every stack and say nothing.
    """
    selfs: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames or (within is not None and not any(f.startswith(within + " ") for f in frames)):
            continue
        samples += count
        selfs[frames[-1]] += count
        for f in set(frames):
            if any(f"({prefix}" in f for prefix in OWN) or f.split(" (", 1)[0] in FOCUS:
                totals[f] += count
    if not samples:
        return 0, [], []
    # frames on (nearly) every stack are the roots (main, the thread's loop): they say nothing
    roots = {f for f, n in totals.items() if n >= 0.995 * samples}
    by_self = [Hot(f, n / samples, totals.get(f, n) / samples) for f, n in selfs.most_common(top)]
    by_total = [
        Hot(f, selfs.get(f, 0) / samples, n / samples)
        for f, n in totals.most_common(top + len(roots))
        if f not in roots
    ][:top]
    return samples, by_self, by_total


class Profiler:
    """py-spy ``record`` on some processes while a section runs."""

    def __init__(self, out_dir: Path, rate_hz: int = 250) -> None:
        self.exe = py_spy()
        self.out_dir = out_dir
        self.rate_hz = rate_hz
        self.procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    @property
    def available(self) -> bool:
        return self.exe is not None

    def start(self, name: str, pid: int, *, idle: bool = False) -> None:
        """Start sampling ``pid`` (``idle``: waiting threads too, so shares are of wall time)."""
        assert self.exe is not None
        out = self.out_dir / f"profile-{name}.txt"
        log = open(self.out_dir / f"profile-{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [
                *(self.exe, "record", "--pid", str(pid), "--rate", str(self.rate_hz)),
                *("--format", "raw", "--output", str(out), "--nonblocking"),
                *(["--idle"] if idle else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs[name] = (proc, out)

    def stop(self) -> dict[str, str]:
        """Stop every recorder (SIGINT makes py-spy write its output); name -> raw collapsed stacks."""
        out: dict[str, str] = {}
        for name, (proc, path) in self.procs.items():
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            out[name] = path.read_text() if path.exists() else ""
        self.procs.clear()
        return out


def format_profile(name: str, samples: int, by_self: list[Hot], by_total: list[Hot], top: int = 10) -> str:
    """A few lines naming the hottest functions of one process."""
    if not samples:
        return f"  {name}: no samples (py-spy could not attach?)"
    lines = [f"  {name}: {samples} samples; left: self time (any code), right: total time (jobyard's code)"]
    for i in range(min(top, max(len(by_self), len(by_total)))):
        a = f"{by_self[i].self_share:6.1%}  {by_self[i].function[:58]}" if i < len(by_self) else ""
        b = f"{by_total[i].total_share:6.1%}  {by_total[i].function[:58]}" if i < len(by_total) else ""
        lines.append(f"    {a:<66}  {b}")
    return "\n".join(lines)
