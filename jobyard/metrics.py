"""Every Prometheus metric jobyard exposes, defined in one place, and the helpers the roles call.

One registry per process, no multiprocess mode. Each role is a single process (the API is one
uvicorn process, a worker is one process with N slot threads, the scheduler one process), and
Prometheus scrapes each process as its own target, telling them apart by ``instance``; sums
across workers are PromQL's job (``sum(rate(jobyard_runs_finished_total[5m]))``).
prometheus-client's multiprocess mode would only add a directory to set before the import and
wipe at start, and lose gauges' meaning, for no gain. Should a role ever fork several serving
processes, each must get its own metrics port instead.

Naming (Prometheus rules): ``jobyard_`` prefix, base units (seconds), ``_total`` on counters,
never a label named ``job`` or ``instance`` (Prometheus renames them on scrape: ``job_name`` it
is), never a run id or other unbounded value as a label. ``job_name`` is bounded by the deployed
jobs; every other label has a fixed set of values.

Where each metric comes from:

- API: ``jobyard_runs_enqueued_total`` (``observe_enqueued``; the scheduler and the continuous
  supervisor call it too for the runs they create), ``jobyard_api_*`` (``services`` middleware)
  and the cluster-wide gauges read from Redis at scrape time (``RedisStateCollector``, served by
  the API only, so they are not multiplied by the number of workers).
- Worker: runs started / finished / retried / dead-lettered, run duration and queue wait
  (``workers/metrics_hooks.py``), its own slots (``set_worker_slots``), continuous instances.
- Scheduler: leadership, term changes, fires by outcome, fire lag.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client import disable_created_metrics as _disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from jobyard import __version__
from jobyard.keys import PRIORITY_LEVELS, Keys
from jobyard.models import Run, RunStatus
from jobyard.queue import queue_depths_pipeline, read_depths

log = logging.getLogger(__name__)

# ``*_created`` series double every counter and histogram in the text format and nothing here
# reads them; switch them off for the whole process.
_disable_created_metrics()  # type: ignore[no-untyped-call]

# Jobs run from 10 ms to hours; queue wait can be as long when the cluster is saturated.
RUN_SECONDS_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0,
)  # fmt: skip
# A fire is late by milliseconds when all is well, by seconds after a leader change.
FIRE_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
API_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

FIRE_OUTCOMES = ("fired", "skipped", "duplicate", "overlap", "fenced")
# create_run.lua's outcomes for a scheduled fire, in the vocabulary of FIRE_OUTCOMES.
_CREATE_TO_FIRE = {"created": "fired", "exists": "duplicate", "nojob": "skipped"}

# --- runs (API, scheduler, worker) ------------------------------------------------------------
RUNS_ENQUEUED = Counter(
    "jobyard_runs_enqueued_total",
    "Runs created (queued now or delayed), by job, trigger and priority.",
    ["job_name", "trigger", "priority"],
)
RUNS_STARTED = Counter(
    "jobyard_runs_started_total",
    "Attempts claimed by a worker (the run went to running), by job and trigger.",
    ["job_name", "trigger"],
)
RUNS_FINISHED = Counter(
    "jobyard_runs_finished_total",
    "Runs that reached a terminal status, by job, trigger and that status.",
    ["job_name", "trigger", "status"],
)
RUN_DURATION = Histogram(
    "jobyard_run_duration_seconds",
    "Wall time of a run's last attempt, from claim to terminal status.",
    ["job_name", "priority"],
    buckets=RUN_SECONDS_BUCKETS,
)
RUN_QUEUE_WAIT = Histogram(
    "jobyard_run_queue_wait_seconds",
    "Time from enqueue (or the scheduled / run_at time) to the first attempt's start.",
    ["job_name", "priority"],
    buckets=RUN_SECONDS_BUCKETS,
)
RUN_RETRIES = Counter("jobyard_run_retries_total", "Failed attempts that will be tried again.", ["job_name"])
DEAD_LETTERS = Counter(
    "jobyard_dead_letters_total", "Runs that failed for good and were dead-lettered.", ["job_name"]
)
RUNS_REQUEUED = Counter(
    "jobyard_runs_requeued_total",
    "Attempts interrupted by a stopping worker and put back on the queue.",
    ["job_name"],
)
MESSAGES_DROPPED = Counter(
    "jobyard_messages_dropped_total",
    "Delivered queue messages dropped without running (terminal run, running elsewhere, missing).",
    ["reason"],
)

# --- workers (per process) --------------------------------------------------------------------
WORKER_SLOTS = Gauge("jobyard_worker_slots", "Script slots of this worker process.")
WORKER_SLOTS_BUSY = Gauge("jobyard_worker_slots_busy", "Slots of this worker process running a script.")
CONTINUOUS_RUNNING = Gauge(
    "jobyard_continuous_instances_running",
    "Instances of a continuous job running on this worker process.",
    ["job_name"],
)
CONTINUOUS_RESTARTS = Counter(
    "jobyard_continuous_restarts_total",
    "Times a continuous job's process exited and was started again.",
    ["job_name"],
)

# --- scheduler (per process) ------------------------------------------------------------------
SCHEDULER_LEADER = Gauge("jobyard_scheduler_leader", "1 while this scheduler process holds the leader lease.")
SCHEDULER_TERM_CHANGES = Counter(
    "jobyard_scheduler_term_changes_total", "Times this scheduler became leader (a new fencing term)."
)
SCHEDULER_FIRES = Counter(
    "jobyard_scheduler_fires_total",
    "Schedule fires by outcome: fired, skipped, duplicate (already fired), overlap, fenced (stale term).",
    ["job_name", "outcome"],
)
SCHEDULER_FIRE_LAG = Histogram(
    "jobyard_scheduler_fire_lag_seconds",
    "How late a fired run was created after its nominal fire time.",
    buckets=FIRE_LAG_BUCKETS,
)

# --- API --------------------------------------------------------------------------------------
API_REQUESTS = Counter(
    "jobyard_api_requests_total",
    "HTTP requests by route template, method and status code.",
    ["route", "method", "status"],
)
API_REQUEST_DURATION = Histogram(
    "jobyard_api_request_duration_seconds",
    "HTTP request handling time (to the last body byte) by route template and method.",
    ["route", "method"],
    buckets=API_SECONDS_BUCKETS,
)

BUILD_INFO = Info("jobyard_build", "The running jobyard version.")
BUILD_INFO.info({"version": __version__})


# --- helpers the roles call -------------------------------------------------------------------
# Children of RUNS_ENQUEUED by label values: ``labels()`` costs a lock and a tuple of checks per
# call, which the enqueue paths pay per run. As bounded as the metric's own children (job names).
_ENQUEUED_CHILDREN: dict[tuple[str, str, str], Any] = {}


def _enqueued_child(labels: tuple[str, str, str]) -> Any:
    child = _ENQUEUED_CHILDREN.get(labels)
    if child is None:
        child = _ENQUEUED_CHILDREN[labels] = RUNS_ENQUEUED.labels(*labels)
    return child


def observe_enqueued(run: Run) -> None:
    """Count a newly created run (call only when it was created, not for a repeated idempotency key)."""
    _enqueued_child((run.job, run.trigger.value, run.priority.value)).inc()


def observe_enqueued_many(runs: Iterable[Run]) -> None:
    """``observe_enqueued`` for each of ``runs``, one increment per set of labels."""
    counts: dict[tuple[str, str, str], int] = {}
    for run in runs:
        labels = (run.job, run.trigger.value, run.priority.value)
        counts[labels] = counts.get(labels, 0) + 1
    for labels, n in counts.items():
        _enqueued_child(labels).inc(n)


def init_job_series(run: Run) -> None:
    """Create the failure series of a run's job at 0, so ``increase()`` sees their first event."""
    for status in (RunStatus.FAILED, RunStatus.TIMED_OUT):
        RUNS_FINISHED.labels(run.job, run.trigger.value, status.value)
    RUN_RETRIES.labels(run.job)
    DEAD_LETTERS.labels(run.job)


def observe_run_started(run: Run, now: float | None = None) -> None:
    """Count an attempt's start; on attempt 1 observe its queue wait."""
    RUNS_STARTED.labels(run.job, run.trigger.value).inc()
    if run.attempt <= 1:
        started = run.started_at if run.started_at is not None else (time.time() if now is None else now)
        since = run.scheduled_for if run.scheduled_for is not None else run.enqueued_at
        if since is not None:
            RUN_QUEUE_WAIT.labels(run.job, run.priority.value).observe(max(0.0, started - since))


def observe_run_finished(run: Run) -> None:
    """Count a terminal run by status and observe its duration (when it ever started)."""
    RUNS_FINISHED.labels(run.job, run.trigger.value, run.status.value).inc()
    duration = run.duration_s
    if duration is not None:
        RUN_DURATION.labels(run.job, run.priority.value).observe(duration)


def observe_retry(run: Run) -> None:
    """Count a failed attempt that will be retried."""
    RUN_RETRIES.labels(run.job).inc()


def observe_dead_letter(run: Run) -> None:
    """Count a run that was dead-lettered."""
    DEAD_LETTERS.labels(run.job).inc()


def observe_requeue(run: Run) -> None:
    """Count an attempt given back to the queue by a stopping worker."""
    RUNS_REQUEUED.labels(run.job).inc()


def observe_drop(reason: str) -> None:
    """Count a delivered message dropped without running (``reason`` from a small fixed set)."""
    MESSAGES_DROPPED.labels(reason).inc()


def set_worker_slots(busy: int, total: int) -> None:
    """This worker process's slots: how many run a script, how many exist."""
    WORKER_SLOTS_BUSY.set(busy)
    WORKER_SLOTS.set(total)


def set_continuous_running(job_name: str, count: int) -> None:
    """How many instances of continuous job ``job_name`` run on this worker process now."""
    CONTINUOUS_RUNNING.labels(job_name).set(count)


def observe_continuous_restart(job_name: str) -> None:
    """Count a restart of a continuous job whose process exited."""
    CONTINUOUS_RESTARTS.labels(job_name).inc()


def set_scheduler_leader(is_leader: bool) -> None:
    """Whether this scheduler process holds the leader lease now."""
    SCHEDULER_LEADER.set(1 if is_leader else 0)


def observe_term_change() -> None:
    """Count this scheduler becoming leader for a new term."""
    SCHEDULER_TERM_CHANGES.inc()


def observe_fire(job_name: str, outcome: str, fire_ts: float | None = None, now: float | None = None) -> None:
    """Count one schedule fire; for a fired run with ``fire_ts`` observe its lag.

    ``outcome`` is one of ``FIRE_OUTCOMES`` or a ``create_run`` outcome (created, exists, nojob,
    duplicate, overlap, fenced). An unknown value is logged and not counted: a typo in a caller
    must not stop the scheduler.
    """
    outcome = _CREATE_TO_FIRE.get(outcome, outcome)
    if outcome not in FIRE_OUTCOMES:
        log.warning("observe_fire: unknown outcome %r for job %s (not counted)", outcome, job_name)
        return
    SCHEDULER_FIRES.labels(job_name, outcome).inc()
    if outcome == "fired" and fire_ts is not None:
        SCHEDULER_FIRE_LAG.observe(max(0.0, (time.time() if now is None else now) - fire_ts))


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


# (route template, method, status) -> (counter child, histogram child); bounded like the labels.
_API_CHILDREN: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_api_request(route: str, method: str, status: int, duration_s: float) -> None:
    """Count one HTTP request and observe its latency (unknown methods become ``other``)."""
    children = _API_CHILDREN.get((route, method, status))
    if children is None:
        label = method if method in _METHODS else "other"
        children = (API_REQUESTS.labels(route, label, str(status)), API_REQUEST_DURATION.labels(route, label))
        if len(_API_CHILDREN) < 10_000:  # a flood of odd methods must not grow it: they are "other"
            _API_CHILDREN[(route, method, status)] = children
    children[0].inc()
    children[1].observe(duration_s)


# --- cluster gauges read from Redis at scrape time (API only) ---------------------------------
@dataclass
class ClusterState:
    """What the cluster looks like in Redis right now."""

    depths: dict[str, int]
    dead_letters: int
    workers_alive: int
    slots_busy: int
    slots_total: int
    leader_present: bool
    term: int
    worker_ids: list[str] = field(default_factory=list)


def read_cluster_state(client: redis.Redis, keys: Keys, heartbeat_timeout_s: float) -> ClusterState:
    """Read the cluster-wide numbers in two round trips (the second only when workers are alive)."""
    now_ms = int(time.time() * 1000)
    pipe = queue_depths_pipeline(client, keys)
    pipe.zcard(keys.dead_letters)
    # P:workers scores are last-seen epoch ms; older than the heartbeat timeout means gone.
    pipe.zrangebyscore(keys.workers, now_ms - int(heartbeat_timeout_s * 1000), "+inf")
    pipe.exists(keys.leader)
    pipe.get(keys.leader_term)
    values = pipe.execute()
    depths = read_depths(values[:4])
    dead, alive_raw, leader, term = values[4:8]
    ids = [w.decode() if isinstance(w, bytes) else str(w) for w in alive_raw]
    busy = total = 0
    if ids:
        pipe = client.pipeline(transaction=False)
        for worker_id in ids:
            pipe.hmget(keys.worker(worker_id), ["slots", "busy"])
        for slots, used in pipe.execute():
            total += _int(slots)
            busy += _int(used)
    return ClusterState(depths, int(dead), len(ids), busy, total, bool(leader), _int(term), ids)


def _int(value: Any) -> int:
    try:
        return int(float(value)) if value is not None else 0
    except (TypeError, ValueError):
        return 0


_CLUSTER_GAUGES = {
    "jobyard_redis_up": "1 when the API could read Redis for this scrape, else 0 (and no cluster gauges).",
    "jobyard_queue_depth": 'Runs waiting per priority level, and delayed runs (priority="delayed").',
    "jobyard_dead_letters_current": "Dead-lettered runs stored now (listed, replayable, purgeable).",
    "jobyard_workers_alive": "Worker processes whose heartbeat is within the heartbeat timeout.",
    "jobyard_cluster_worker_slots": "Script slots of all live workers, by state (busy or total).",
    "jobyard_scheduler_lease_present": "1 when a scheduler holds the leader lease in Redis.",
    "jobyard_scheduler_term": "The current leader fencing term (raised on every new leader).",
}


class RedisStateCollector:
    """Cluster-wide gauges read from Redis at each scrape; a Redis outage gives ``jobyard_redis_up 0``.

    Give it a synchronous client with a short socket timeout and no retries (``scrape_client``):
    ``collect()`` runs inside the scrape and must fail fast rather than hold it.
    """

    def __init__(self, client: redis.Redis, keys: Keys, heartbeat_timeout_s: float) -> None:
        self.client = client
        self.keys = keys
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._lock = threading.Lock()  # one Redis read at a time when scrapes overlap
        self._was_up = True

    def describe(self) -> Iterable[Metric]:
        """The families without reading Redis (so registering costs no call)."""
        return [GaugeMetricFamily(name, doc) for name, doc in _CLUSTER_GAUGES.items()]

    def collect(self) -> Iterator[Metric]:
        """Read Redis and yield the gauges; on an error yield only ``jobyard_redis_up 0``."""
        up = GaugeMetricFamily("jobyard_redis_up", _CLUSTER_GAUGES["jobyard_redis_up"])
        try:
            with self._lock:
                state = read_cluster_state(self.client, self.keys, self.heartbeat_timeout_s)
        except (redis.RedisError, OSError) as exc:
            if self._was_up:
                log.warning("metrics: cannot read cluster state from Redis: %s", exc)
            self._was_up = False
            up.add_metric([], 0)
            yield up
            return
        if not self._was_up:
            log.info("metrics: Redis readable again")
        self._was_up = True
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily(
            "jobyard_queue_depth", _CLUSTER_GAUGES["jobyard_queue_depth"], labels=["priority"]
        )
        for level in (*PRIORITY_LEVELS, "delayed"):
            depth.add_metric([level], state.depths.get(level, 0))
        yield depth
        yield GaugeMetricFamily(
            "jobyard_dead_letters_current",
            _CLUSTER_GAUGES["jobyard_dead_letters_current"],
            value=state.dead_letters,
        )
        yield GaugeMetricFamily(
            "jobyard_workers_alive", _CLUSTER_GAUGES["jobyard_workers_alive"], value=state.workers_alive
        )
        slots = GaugeMetricFamily(
            "jobyard_cluster_worker_slots", _CLUSTER_GAUGES["jobyard_cluster_worker_slots"], labels=["state"]
        )
        slots.add_metric(["busy"], state.slots_busy)
        slots.add_metric(["total"], state.slots_total)
        yield slots
        yield GaugeMetricFamily(
            "jobyard_scheduler_lease_present",
            _CLUSTER_GAUGES["jobyard_scheduler_lease_present"],
            value=1 if state.leader_present else 0,
        )
        yield GaugeMetricFamily(
            "jobyard_scheduler_term", _CLUSTER_GAUGES["jobyard_scheduler_term"], value=state.term
        )


def scrape_client(client: redis.Redis, timeout_s: float = 1.0) -> redis.Redis:
    """Make ``client`` fail fast for scrapes: short timeouts and no retries (returns it)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client.set_retry(Retry(NoBackoff(), 0))
    kwargs = client.connection_pool.connection_kwargs
    kwargs["socket_timeout"] = timeout_s
    kwargs["socket_connect_timeout"] = timeout_s
    return client


class _Union:
    """Several collectors read as one (the registry plus the API's Redis collector)."""

    def __init__(self, collectors: tuple[Any, ...]) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


def exposition(
    accept: str | None, *collectors: Any, registry: CollectorRegistry = REGISTRY
) -> tuple[bytes, str]:
    """``registry`` plus ``collectors`` in the format ``accept`` asks for: (body, content type)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(_Union((registry, *collectors))), content_type


def sample_names() -> set[str]:
    """Every sample name jobyard can expose (for checking dashboards and alert rules)."""
    names: set[str] = set(_CLUSTER_GAUGES)
    for metric in (
        RUNS_ENQUEUED, RUNS_STARTED, RUNS_FINISHED, RUN_DURATION, RUN_QUEUE_WAIT, RUN_RETRIES,
        DEAD_LETTERS, RUNS_REQUEUED, MESSAGES_DROPPED, WORKER_SLOTS, WORKER_SLOTS_BUSY,
        CONTINUOUS_RUNNING, CONTINUOUS_RESTARTS, SCHEDULER_LEADER, SCHEDULER_TERM_CHANGES,
        SCHEDULER_FIRES, SCHEDULER_FIRE_LAG, API_REQUESTS, API_REQUEST_DURATION, BUILD_INFO,
    ):  # fmt: skip
        for family in metric.describe():
            if family.type == "counter":
                names.add(family.name + "_total")
            elif family.type == "histogram":
                names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
            elif family.type == "info":
                names.add(family.name + "_info")
            else:
                names.add(family.name)
    return names
