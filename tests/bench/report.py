"""The bench's results: rows with a figure, its same-run baseline and ratio, printed as one table.

Machines here are noisy, so every figure that has a target is shown next to a baseline measured
in the same run (the spawn ceiling, bare dramatiq, the client against /healthz), and the verdict
is given on the ratio where the target is a ratio.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One figure of one section."""

    section: str
    name: str
    value: float | None
    unit: str = ""
    baseline: str = ""  # what the ratio is taken against, e.g. "(b) 612/s"
    ratio: float | None = None
    target: str = ""  # e.g. ">= 1.0 x (b)", "<= 5 ms"
    ok: bool | None = None  # None: no target
    note: str = ""


@dataclass
class Report:
    """Every row of a run, plus the raw figures of each section for the JSON file."""

    rows: list[Row] = field(default_factory=list)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)

    def add(self, row: Row) -> Row:
        """Keep ``row`` and return it."""
        self.rows.append(row)
        return row

    def figures(self, section: str, **values: Any) -> None:
        """Record raw figures of ``section`` for the JSON file (merged with earlier ones)."""
        self.sections.setdefault(section, {}).update(values)

    def has_section(self, section: str) -> bool:
        """Whether any row of ``section`` was recorded."""
        return any(r.section == section for r in self.rows)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` by the nearest-rank method; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def ratio(value: float | None, base: float | None) -> float | None:
    """``value / base`` when both are known and the base is not zero."""
    if value is None or not base:
        return None
    return value / base


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("ms", "s"):
        return f"{value:.1f} {unit}" if value >= 100 or unit == "s" else f"{value:.2f} {unit}"
    if not unit and float(value).is_integer():
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}".strip()
    return f"{value:.2f} {unit}".strip()


def format_table(rows: list[Row]) -> str:
    """The rows as one fixed-width table (verdict: ok / MISS / blank when there is no target)."""
    header = ("sec", "figure", "value", "baseline", "ratio", "target", "")
    lines = [
        (
            r.section,
            r.name,
            _fmt(r.value, r.unit),
            r.baseline,
            "-" if r.ratio is None else f"{r.ratio:.2f}",
            r.target,
            "" if r.ok is None else ("ok" if r.ok else "MISS"),
        )
        for r in rows
    ]
    widths = [
        max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)
    ]
    widths[1] = min(widths[1], 52)

    def fmt(cells: tuple[str, ...]) -> str:
        parts = [cells[0].ljust(widths[0]), cells[1][: widths[1]].ljust(widths[1])]
        parts += [cells[2].rjust(widths[2]), cells[3].ljust(widths[3]), cells[4].rjust(widths[4])]
        parts += [cells[5].ljust(widths[5]), cells[6]]
        return "  ".join(parts).rstrip()

    out = [fmt(header), "  ".join("-" * w for w in widths)]
    previous = None
    for row, cells in zip(rows, lines, strict=True):
        if previous is not None and row.section != previous:
            out.append("")
        previous = row.section
        out.append(fmt(cells))
        if row.note:
            out.append(" " * (widths[0] + 2) + "  " + row.note)
    return "\n".join(out)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import os

    try:
        redis_version = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        redis_version = ""
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "redis": redis_version,
        "loadavg_at_start": load,
    }


def write_json(report: Report, path: Path, args: dict[str, Any]) -> None:
    """Write every figure to ``path`` (the parent directory is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "started_at": report.started_at,
        "took_s": round(time.time() - report.started_at, 2),
        "command": "make bench BENCH_ARGS='" + " ".join(sys.argv[1:]) + "'",
        "args": args,
        "machine": machine(),
        "rows": [asdict(r) for r in report.rows],
        "sections": report.sections,
        "notes": report.notes,
    }
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
