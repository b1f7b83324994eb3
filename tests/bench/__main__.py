"""``make bench``: jobyard's figures next to baselines measured in the same run (not a test).

    .venv/bin/python -m tests.bench [--quick] [--profile] [--client auto|wrk|python] [--json PATH]

(a) spawn ceiling, (b) bare dramatiq, (c) jobyard end to end, (d) enqueue rate, (e) idle
enqueue-to-start latency, (f) recovery after a worker SIGKILL, (g) a 10 % failing workload with
retries, (h) scheduler figures. Everything runs on a private redis-server and private role
processes on loopback, all stopped by pid. Default ~3 minutes, ``--quick`` ~40 s; ``--tiny``
only proves that every section runs (the smoke test). Figures also go to
bench-results/latest.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.bench import sections
from tests.bench.cluster import Cluster
from tests.bench.report import Report, Row, format_table, write_json
from tests.helpers import REPO

SECTIONS = "abcdefgh"


@dataclass(frozen=True)
class Sizes:
    """How much each section does in one mode."""

    rounds: int
    spawns: int
    dramatiq_runs: int
    dramatiq_idle: int
    e2e_runs: int
    latency: int
    long_gap_every: int
    flaky_runs: int
    load_s: float
    recovery_trials: int
    recovery_defaults: bool
    sched_jobs: int
    sched_seconds: float
    sched_handovers: int


MODES = {
    "full": Sizes(3, 2100, 2100, 20, 2100, 100, 20, 1000, 5.0, 3, True, 10, 6.0, 3),
    "quick": Sizes(2, 400, 400, 3, 500, 40, 0, 300, 2.0, 1, False, 4, 1.5, 0),
    "tiny": Sizes(1, 20, 20, 1, 20, 5, 0, 20, 1.0, 1, False, 2, 1.0, 0),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode", help="~40 s")
    mode.add_argument(
        "--tiny",
        action="store_const",
        const="tiny",
        dest="mode",
        help="a few runs per section: proves the bench runs, figures mean nothing",
    )
    parser.set_defaults(mode="full")
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator for (d): wrk when installed (auto), else asyncio httpx",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the figures, rerun (c) and (d) under py-spy and print the hottest functions",
    )
    parser.add_argument("--only", default=SECTIONS, help="sections to run, e.g. 'abc' (default: all)")
    parser.add_argument(
        "--json",
        type=Path,
        default=REPO / "bench-results" / "latest.json",
        help="where the figures go (default bench-results/latest.json)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (role logs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the sections, print the table, write the JSON; exit 1 if a section failed."""
    args = parse_args(argv)
    sizes = MODES[args.mode]
    report = Report()
    root = Path(tempfile.mkdtemp(prefix="jobyard-bench-"))
    cluster = Cluster(root)
    failed: list[str] = []
    bench = sections.Bench(cluster, report, sizes, root, args.client)

    def section(letter: str, title: str, fn: Callable[[], None]) -> bool:
        if letter != "setup" and not set(letter) & set(args.only):
            return True
        print(f"({letter}) {title} ...", file=sys.stderr, flush=True)
        sec = letter if letter == "setup" else letter[0]
        t0 = time.monotonic()
        try:
            fn()
            return True
        except Exception as exc:
            failed.append(letter)
            report.add(Row(sec, f"{title}: FAILED", None, note=f"{type(exc).__name__}: {exc}"[:600]))
            traceback.print_exc()
            return False
        finally:
            report.figures(sec, took_s=round(time.monotonic() - t0, 2))

    def setup() -> None:
        cluster.start_redis()
        if set(args.only) & set("abcdefg"):
            cluster.start_api()
            bench.deploy_jobs()
        if set(args.only) & set("abceg"):
            bench.start_worker()
        if set(args.only) & set("abce"):
            bench.open_peer()

    try:
        if not section("setup", "private Redis, API, jobs, worker, bare dramatiq", setup):
            args.only = "h" if "h" in args.only else ""
        if set(args.only) & set("abc"):
            section(
                "a-c", "spawn ceiling, bare dramatiq, jobyard end to end (paired rounds)", bench.throughput
            )
        section("e", "enqueue->start latency, idle", bench.latency)
        bench.close_peer()
        section("g", "10 % failing workload with retries", bench.failing)
        if args.profile and "c" in args.only:
            section("c", "profile of (c) under py-spy", bench.profile_end_to_end)
        if args.profile and "g" in args.only:
            section("g", "profile of (g) under py-spy", bench.profile_failing)
        bench.stop_worker()
        section("f", "recovery after worker SIGKILL", bench.recovery)
        section("d", "enqueue rate through the API", bench.enqueue)
        if args.profile and "d" in args.only:
            section("d", "profile of (d) single enqueue under py-spy", bench.profile_enqueue)
        cluster.close()
        section("h", "scheduler (tests/bench_scheduler.py)", bench.scheduler)
    except KeyboardInterrupt:
        failed.append("interrupted")
    finally:
        bench.close_peer()
        cluster.close()
        order = {s: i for i, s in enumerate(["setup", *SECTIONS])}
        report.rows.sort(key=lambda r: order.get(r.section, 99))  # stable: sections in letter order
        print()
        print(
            f"jobyard bench ({args.mode}; {time.time() - report.started_at:.0f} s; "
            f"machine: {os.cpu_count()} cpus)"
        )
        print(format_table(report.rows))
        for note in report.notes:
            print(note)
        write_json(report, args.json, {**vars(args), "json": str(args.json), "sizes": asdict(sizes)})
        print(f"\nfigures: {args.json}")
        if args.keep:
            print(f"role logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if failed:
        print(f"sections that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
