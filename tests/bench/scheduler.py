"""Section (h): the scheduler's figures, from ``tests/bench_scheduler.py`` (fire skew, handover).

That module owns the measurement; this adapter runs its functions on a Redis of their own (they
flush it) and turns what they report into rows. They print their figures; the lines are parsed
here (a returned dict of figures is used instead when they return one).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
from pathlib import Path
from typing import Any

from tests.bench.report import Report, Row
from tests.helpers import RedisServer

_MS = re.compile(
    r"scheduled -> (?P<what>enqueued|started)\s+p50\s+(?P<p50>[\d.]+) ms\s+p99\s+(?P<p99>[\d.]+) ms"
    r"\s+max\s+(?P<max>[\d.]+) ms\s+\(n=(?P<n>\d+)\)"
)
_HANDOVER = re.compile(
    r"to (?P<what>the new lease|its first fire)\s+median\s+(?P<median>[\d.]+) s\s+max\s+(?P<max>[\d.]+) s"
)
_CLEAN = re.compile(r"handover after SIGTERM \(lease released\):\s+(?P<s>[\d.]+) s")


def available() -> Any | None:
    """The module, or None when it is not there (yet)."""
    try:
        return importlib.import_module("tests.bench_scheduler")
    except ImportError:
        return None


def parse(text: str) -> dict[str, Any]:
    """The figures in ``bench_scheduler``'s printed summary.

    Skew lines are grouped under the "fire skew, ...:" header above them (one block per set-up:
    many jobs on one second, one job with an idle worker, ...).
    """
    out: dict[str, Any] = {"skew": []}
    header = ""
    for line in text.splitlines():
        if line.startswith("fire skew"):
            header = line.removeprefix("fire skew,").strip().rstrip(":")
        elif m := _MS.search(line):
            out["skew"].append(
                {"setup": header, "what": m["what"], "n": int(m["n"])}
                | {k: float(m[k]) for k in ("p50", "p99", "max")}
            )
    for m in _HANDOVER.finditer(text):
        key = "handover_to_lease_s" if m["what"] == "the new lease" else "handover_to_first_fire_s"
        out[key] = {"median": float(m["median"]), "max": float(m["max"])}
    if m2 := _CLEAN.search(text):
        out["handover_sigterm_s"] = float(m2["s"])
    if not out["skew"]:
        del out["skew"]
    return out


def _short_setup(setup: str) -> str:
    """A set-up's header shortened for the table: "20 jobs", "1 job, idle worker"."""
    m = re.match(r"(\d+) jobs? every second", setup)
    jobs = f"{m.group(1)} job{'s' if m.group(1) != '1' else ''}" if m else setup[:20]
    return jobs + (", idle worker" if "worker" in setup else "")


def scheduler_section(report: Report, base: Path, jobs: int, seconds: float, handovers: int) -> None:
    """Run the scheduler benchmark (or say that it is missing) and add its rows."""
    module = available()
    if module is None:
        report.add(Row("h", "scheduler figures: tests/bench_scheduler.py not present", None, note="skipped"))
        return
    base.mkdir(parents=True, exist_ok=True)
    server = RedisServer(base / "redis")
    server.start()
    text = io.StringIO()
    figures: dict[str, Any] = {}
    try:
        with contextlib.redirect_stdout(text):
            skew = module.bench_skew(server, base, jobs, seconds)
            handover = module.bench_handover(server, base, handovers) if handovers else None
    finally:
        server.stop()
    figures = parse(text.getvalue())
    for result in (skew, handover):
        if isinstance(result, dict):
            figures.update(result)
    report.figures("h", jobs=jobs, seconds=seconds, handovers=handovers, output=text.getvalue(), **figures)
    for skew in figures.get("skew", []):
        label = f"skew {_short_setup(skew['setup'])}: scheduled->{skew['what']}"
        report.add(Row("h", f"{label} p50", skew["p50"], "ms", note=f"n={skew['n']}, {skew['setup']}"))
        report.add(Row("h", f"{label} p99", skew["p99"], "ms", note=f"max {skew['max']} ms"))
    lease = figures.get("handover_to_lease_s")
    if isinstance(lease, dict):
        report.add(
            Row(
                "h",
                f"handover after leader SIGKILL, median of {handovers}",
                lease.get("median"),
                "s",
                target="<= ttl + renew (6 s)",
                ok=lease.get("median", 99) <= 6.0,
                note=f"max {lease.get('max')} s; to its first fire: "
                f"{(figures.get('handover_to_first_fire_s') or {}).get('median')} s",
            )
        )
    if "handover_sigterm_s" in figures:
        report.add(
            Row("h", "handover after leader SIGTERM (lease released)", figures["handover_sigterm_s"], "s")
        )
    if not figures:
        report.add(
            Row(
                "h",
                "scheduler figures: nothing parsed from tests/bench_scheduler.py",
                None,
                note=text.getvalue()[-300:],
            )
        )
