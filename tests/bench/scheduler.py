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
    """The figures in ``bench_scheduler``'s printed summary."""
    out: dict[str, Any] = {}
    for m in _MS.finditer(text):
        out[f"{m['what']}_skew_ms"] = {k: float(m[k]) for k in ("p50", "p99", "max")} | {"n": int(m["n"])}
    for m in _HANDOVER.finditer(text):
        key = "handover_to_lease_s" if m["what"] == "the new lease" else "handover_to_first_fire_s"
        out[key] = {"median": float(m["median"]), "max": float(m["max"])}
    if m2 := _CLEAN.search(text):
        out["handover_sigterm_s"] = float(m2["s"])
    return out


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
    for what, label in (
        ("enqueued", "scheduled -> enqueued"),
        ("started", "scheduled -> started (idle worker)"),
    ):
        skew_ms = figures.get(f"{what}_skew_ms")
        if isinstance(skew_ms, dict):
            n = skew_ms.get("n", "?")
            report.add(Row("h", f"fire skew {label} p50 (n={n})", skew_ms.get("p50"), "ms"))
            report.add(Row("h", f"fire skew {label} p99", skew_ms.get("p99"), "ms"))
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
