"""Each section of the bench: measure, then add rows with the same-run baseline and the ratio."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobyard.settings import Settings
from tests.bench import baseline, enqueue, paired, recovery, runs, scheduler
from tests.bench.cluster import FLAKY_SCRIPT, LONG_SCRIPT, NOOP_SCRIPT, Cluster
from tests.bench.profile import Profiler, format_profile, summarize
from tests.bench.report import Report, Row, percentile, ratio
from tests.helpers import Role

if TYPE_CHECKING:
    from tests.bench.__main__ import Sizes

# The no-op of (c), (d), (e): a file "run" whose shebang is /bin/sh, run directly, so it is the
# very `sh` that bare dramatiq's actor runs in (b); NOOP_BASH is the same script as run.sh,
# which jobyard runs with bash (DESIGN.md: `.sh` is bash), shown beside it as (c').
NOOP, NOOP_BASH, FLAKY, LONG = "noop", "noop-bash", "flaky", "long"
SINGLE_TARGET, BATCH_TARGET = 1500.0, 7500.0
P50_TARGET_MS, P99_TARGET_MS = 5.0, 20.0


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _load_note(load: enqueue.Load) -> str:
    """Latency, CPU use and errors of one load run, for the row's note."""
    parts = [f"request p50 {load.p50_ms or 0:.1f} ms, p99 {load.p99_ms or 0:.1f} ms"]
    share, per_run = load.extra.get("cpu_share", {}), load.extra.get("cpu_ms_per_run", {})
    if "api" in share:
        parts.append(f"API process {share['api']:.0%} of a core, {per_run['api'] * 1000:.0f} us CPU/run")
    if "redis" in per_run:
        parts.append(f"redis {per_run['redis'] * 1000:.0f} us/run")
    if load.errors:
        parts.append(load.errors)
    return "; ".join(parts)


class Bench:
    """The sections, sharing one cluster and one report (see ``tests.bench.__main__``)."""

    def __init__(self, cluster: Cluster, report: Report, sizes: Sizes, root: Path, client: str) -> None:
        self.c = cluster
        self.report = report
        self.sizes = sizes
        self.root = root
        self.client = ("wrk" if enqueue.have_wrk() else "python") if client == "auto" else client
        self.worker: Role | None = None
        self.peer: baseline.DramatiqPeer | None = None
        self.medians: dict[str, float | None] = {}
        self.dramatiq_idle_s: list[float] = []

    def add(self, *args: Any, **kwargs: Any) -> Row:
        return self.report.add(Row(*args, **kwargs))

    # -- set-up ---------------------------------------------------------------------------------
    def deploy_jobs(self) -> None:
        self.c.deploy(NOOP, NOOP_SCRIPT, filename="run")
        self.c.deploy(NOOP_BASH, NOOP_SCRIPT)
        self.c.deploy(FLAKY, FLAKY_SCRIPT, max_retries=1, retry_backoff={"min": 0.01, "max": 0.05})
        self.c.deploy(LONG, LONG_SCRIPT, stopping_wait_time=1)

    def start_worker(self) -> None:
        self.worker = self.c.start_worker(concurrency=2)

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.c.stop_worker(self.worker)
            self.worker = None

    # -- (a), (b), (c) --------------------------------------------------------------------------
    def open_peer(self) -> None:
        """Start bare dramatiq's CLI worker; it idles (polling) while jobyard is measured."""
        self.peer = baseline.DramatiqPeer(self.c.redis_url, self.root / "dramatiq.log").__enter__()

    def close_peer(self) -> None:
        if self.peer is not None:
            self.peer.__exit__()
            self.peer = None

    def throughput(self) -> None:
        assert self.peer is not None
        s = self.sizes
        res = paired.measure(
            self.c,
            self.peer,
            self.root / "spawn",
            NOOP,
            NOOP_BASH,
            rounds=s.rounds,
            spawns=s.spawns,
            dramatiq_runs=s.dramatiq_runs,
            e2e_runs=s.e2e_runs,
        )
        self.medians = paired.add_rows(self.report, res)

    def _profile(self, section: str, title: str, workload: Any) -> None:
        """Run ``workload()`` (returns its result) under py-spy on the worker and the API and with
        Redis's slow log catching every command; notes the hot spots."""
        prof = Profiler(self.root)
        if not prof.available:
            self.add(section, "profile: py-spy not installed (pip install py-spy)", None)
            return
        pids = self.c.pids()
        prof.start("worker", pids["worker"], idle=True)
        prof.start("worker_cpu", pids["worker"])
        prof.start("api", pids["api"])
        self.c.slowlog_begin()
        result = workload()
        commands = self.c.slowlog_end()
        raw = prof.stop()
        rate, done = result["rate"], max(1, result["done"])
        views = {
            "worker slot threads (share of their wall time)": (raw["worker"], "Worker._slot"),
            "worker dispatcher thread (share of its wall time)": (raw["worker"], "Worker._dispatch_loop"),
            "worker on CPU, all threads (share of its busy samples)": (raw["worker_cpu"], None),
            "api (share of its busy time)": (raw["api"], None),
        }
        self.report.notes.append(f"\nprofile of {title} under py-spy ({rate:.0f} runs/s while sampled):")
        figures: dict[str, Any] = {}
        for name, (text, within) in views.items():
            samples, by_self, by_total = summarize(text, within)
            self.report.notes.append(format_profile(name, samples, by_self, by_total))
            figures[name] = {
                "samples": samples,
                "self": [h.__dict__ for h in by_self],
                "total": [h.__dict__ for h in by_total],
            }
        ranked = sorted(commands.items(), key=lambda kv: kv[1][0], reverse=True)
        scripts = sorted(
            (kv for kv in commands.items() if kv[0].startswith("script ")), key=lambda kv: -kv[1][1]
        )
        self.report.notes.append(
            "  Redis per run (slow log at 0 us; commands a script calls are listed too): "
            + ", ".join(f"{name} {c / done:.2f}x" for name, (c, _) in ranked[:14])
            + "\n  script time per run: "
            + ", ".join(f"{name[7:]} {us / done:.0f}us" for name, (_, us) in scripts)
        )
        figures["redis_slowlog"] = commands
        self.report.figures(section, profile=figures)

    def profile_end_to_end(self) -> None:
        n = max(self.sizes.e2e_runs // self.sizes.rounds, 1)
        self._profile("c", "(c)", lambda: runs.end_to_end(self.c, NOOP, n, timeout_s=max(60.0, n / 20)))

    def profile_failing(self) -> None:
        n = self.sizes.flaky_runs
        self._profile(
            "g", "(g)", lambda: runs.failing_workload(self.c, FLAKY, n, timeout_s=max(60.0, n / 20))
        )

    # -- (d) ------------------------------------------------------------------------------------
    def enqueue(self) -> None:
        d = enqueue.enqueue_rates(self.c, NOOP, self.client, self.sizes.load_s, self.root)
        h, s, b = d["healthz"], d["single"], d["batch"]
        conns = d["connections"]
        self.add(
            "d",
            f"client ceiling: GET /healthz ({self.client}, {conns} conns)",
            h.rate,
            "req/s",
            note=_load_note(h),
        )
        single_rate = s.extra["created"] / s.elapsed_s
        self.add(
            "d",
            f"single POST /api/jobs/{{name}}/runs ({conns} conns)",
            single_rate,
            "runs/s",
            baseline="healthz",
            ratio=ratio(single_rate, h.rate),
            target=f">= {SINGLE_TARGET:,.0f}/s",
            ok=single_rate >= SINGLE_TARGET,
            note=_load_note(s) + "; no worker running",
        )
        batch_rate = b.extra["created"] / b.elapsed_s
        self.add(
            "d",
            "batch POST /api/runs/batch (1,000 per request, 2 conns)",
            batch_rate,
            "runs/s",
            baseline=f"target {BATCH_TARGET:,.0f}",
            ratio=batch_rate / BATCH_TARGET,
            target=f">= {BATCH_TARGET:,.0f}/s",
            ok=batch_rate >= BATCH_TARGET,
            note=_load_note(b),
        )
        for what, load, target in (("single", s, SINGLE_TARGET), ("batch", b, BATCH_TARGET)):
            api_ms = load.extra.get("cpu_ms_per_run", {}).get("api")
            if api_ms:
                self.add(
                    "d",
                    f"  {what}: 1 s / API CPU per run (a core of its own)",
                    1000 / api_ms,
                    "runs/s",
                    baseline=f"{api_ms * 1000:.0f} us/run",
                    ratio=1000 / api_ms / target,
                    target=f">= {target:,.0f}/s",
                    note="the API's ceiling if nothing else used its core",
                )
        self.report.figures("d", client=self.client, healthz=h.__dict__, single=s.__dict__, batch=b.__dict__)

    def profile_enqueue(self) -> None:
        prof = Profiler(self.root)
        if not prof.available:
            self.add("d", "profile: py-spy not installed (pip install py-spy)", None)
            return
        load = enqueue.run_wrk if self.client == "wrk" else enqueue.run_python
        batch = json.dumps({"runs": [{"job": NOOP}] * 1000}, separators=(",", ":")).encode()
        for what, path, body, conns in (
            ("single", f"/api/jobs/{NOOP}/runs", b"{}", 32),
            ("batch", "/api/runs/batch", batch, 2),
        ):
            self._quiesce()
            prof.start("api", self.c.pids()["api"])
            result = load(
                self.c.api_url,
                path,
                method="POST",
                body=body,
                token=self.c.token,
                connections=conns,
                duration_s=self.sizes.load_s,
                tmp=self.root,
            )
            samples, by_self, by_total = summarize(prof.stop()["api"], top=14)
            rate = result.rate * (1000 if what == "batch" else 1)
            self.report.notes.append(
                f"\nprofile of (d) {what} enqueue under py-spy ({rate:.0f} runs/s while sampled):"
            )
            self.report.notes.append(
                format_profile("api (share of its busy time)", samples, by_self, by_total, 14)
            )

    def _quiesce(self, timeout_s: float = 10.0) -> None:
        """Wait until the API has finished what a load generator left in flight (runs stop appearing)."""
        key = runs.KEYS.job_runs(NOOP)
        deadline = time.monotonic() + timeout_s
        last = -1
        while time.monotonic() < deadline:
            now = int(self.c.client.zcard(key))
            if now == last:
                return
            last = now
            time.sleep(0.3)

    # -- (e) ------------------------------------------------------------------------------------
    def latency(self) -> None:
        if self.peer is not None and self.sizes.dramatiq_idle:
            self.dramatiq_idle_s = self.peer.idle_latency(self.sizes.dramatiq_idle, gap_s=1.5)
        e = runs.idle_latency(self.c, NOOP, self.sizes.latency, long_gap_every=self.sizes.long_gap_every)
        lat = e["latency_s"]
        p50, p99 = _ms(percentile(lat, 0.5)), _ms(percentile(lat, 0.99))
        d50, d99 = _ms(percentile(self.dramatiq_idle_s, 0.5)), _ms(percentile(self.dramatiq_idle_s, 0.99))
        base50 = f"dramatiq {d50:.0f} ms" if d50 is not None else ""
        self.add(
            "e",
            f"jobyard enqueue->start p50 (n={len(lat)}, idle worker)",
            p50,
            "ms",
            baseline=base50,
            ratio=ratio(p50, d50),
            target=f"<= {P50_TARGET_MS:g} ms",
            ok=p50 is not None and p50 <= P50_TARGET_MS,
            note=f"started_at - enqueued_at of each record; p90 {_ms(percentile(lat, 0.9)):.2f} ms, "
            f"max {_ms(max(lat)):.2f} ms; the API request itself p50 "
            f"{_ms(percentile(e['request_s'], 0.5)):.2f} ms",
        )
        self.add(
            "e",
            "jobyard enqueue->start p99",
            p99,
            "ms",
            baseline=f"dramatiq {d99:.0f} ms" if d99 is not None else "",
            ratio=ratio(p99, d99),
            target=f"<= {P99_TARGET_MS:g} ms",
            ok=p99 is not None and p99 <= P99_TARGET_MS,
        )
        if e["after_long_idle_s"]:
            slow = e["after_long_idle_s"]
            self.add(
                "e",
                f"  jobyard after 1.5 s idle, median (n={len(slow)})",
                _ms(statistics.median(slow)),
                "ms",
                note=f"max {_ms(max(slow)):.2f} ms",
            )
        if self.dramatiq_idle_s:
            n = len(self.dramatiq_idle_s)
            self.add(
                "e",
                f"bare dramatiq send->start p50 after 1.5 s idle (n={n})",
                d50,
                "ms",
                note=f"p99 {d99:.0f} ms; its consumer polls with backoff up to 1 s",
            )
        self.report.figures("e", **e)

    # -- (f) ------------------------------------------------------------------------------------
    def recovery(self) -> None:
        trials = self.sizes.recovery_trials
        f = recovery.recovery(self.c, LONG, trials, heartbeat_timeout_s=3.0, lease_s=2.0)
        median = statistics.median(f["recovery_s"])
        bound = f["estimated_bound_s"]
        self.add(
            "f",
            f"recovery after SIGKILL, hb timeout 3 s, lease 2 s (median of {trials})",
            median,
            "s",
            baseline=f"bound {bound:.0f} s",
            ratio=median / bound,
            target=f"<= {bound:.0f} s",
            ok=median <= bound,
            note="each: " + ", ".join(f"{t:.2f}" for t in f["recovery_s"]),
        )
        figures: dict[str, Any] = {"short": f}
        s = Settings()
        default_bound = recovery.estimated_bound_s(s.heartbeat_timeout_seconds, s.run_lease_ttl_seconds, s)
        if self.sizes.recovery_defaults:
            g = recovery.recovery(self.c, LONG, 1, heartbeat_timeout_s=None, lease_s=None)
            took = g["recovery_s"][0]
            self.add(
                "f",
                f"recovery with the defaults (hb {s.heartbeat_timeout_seconds:g} s, lease "
                f"{s.run_lease_ttl_seconds:g} s), 1 trial",
                took,
                "s",
                baseline=f"bound {default_bound:.0f} s",
                ratio=took / default_bound,
                target="<= 30 s (issue)",
                ok=took <= 30.0,
            )
            figures["defaults"] = g
        else:
            self.add(
                "f",
                "recovery bound with the defaults (estimate, not measured here)",
                default_bound,
                "s",
                target="<= 30 s (issue)",
                ok=default_bound <= 30.0,
                note="heartbeat timeout + heartbeat interval + idle wait (lease is shorter)",
            )
        self.report.figures("f", **figures)

    # -- (g) ------------------------------------------------------------------------------------
    def failing(self) -> None:
        n = self.sizes.flaky_runs
        g = runs.failing_workload(self.c, FLAKY, n, timeout_s=max(60.0, n / 20))
        r_c = ratio(g["rate"], self.medians.get("e2e"))
        self.add(
            "g",
            f"10 % failing, max_retries 1: {n} runs to terminal",
            g["rate"],
            "runs/s",
            baseline="(c)",
            ratio=r_c,
            target="~0.91 x (c) ideal",
            note="1.1 attempts per run; ideal ratio 1/1.1 if an attempt costs the same",
        )
        self.add(
            "g",
            "  attempts per second",
            g["attempt_rate"],
            "/s",
            baseline="(c) attempts",
            ratio=ratio(g["attempt_rate"], self.medians.get("e2e_attempts")),
            target="~1.0 x (c)",
        )
        failed = g["statuses"].get("failed", 0)
        self.add(
            "g",
            "  runs failed after 2 attempts (dead-lettered)",
            failed,
            "",
            baseline=f"expected {g['expected_failed']}",
            target="exact",
            ok=failed == g["expected_failed"] and g["attempts"] == n + g["expected_failed"],
            note=f"statuses {g['statuses']}; attempts {g['attempts']}",
        )
        self.report.figures("g", **g)

    # -- (h) ------------------------------------------------------------------------------------
    def scheduler(self) -> None:
        s = self.sizes
        scheduler.scheduler_section(
            self.report, self.root / "sched", s.sched_jobs, s.sched_seconds, s.sched_handovers
        )
