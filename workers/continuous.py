"""Continuous jobs: kept running on every worker host, or on exactly one with ``is_singleton``.

One ``Supervisor`` thread per worker process reconciles, once a second, what runs with what
should: for every continuous job that is not stopped it takes the job's lease (per host:
``P:cont:<job>:<instance id>``, so a host running several worker processes runs one instance;
per cluster with ``is_singleton``: ``P:cont:<job>:singleton``) and keeps an instance going.
Leases are renewed each pass; a holder that loses its lease stops its instance at once, and
another host takes a singleton over within the lease time when its holder dies or stops.

Each process start is a run record (trigger ``continuous``) with its own log, exit code and
timestamps. When the process exits it is started again after a backoff that doubles from 1 s
to 60 s and resets once an instance stayed up for 2 minutes: never a tight crash loop, never a
fixed minute of downtime. Stop (``POST /api/jobs/<name>/stop``, stored on the job record so it
survives restarts), a redeploy (a new job version) or the worker's own shutdown stop the
process the graceful way (shutdown file, SIGTERM, ``stopping_wait_time``, SIGKILL); a redeploy
starts it again at once on the new package. What each host does is published in
``P:job:<name>:instances`` for ``GET /api/jobs/<name>``.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jobyard.lease import Lease
from jobyard.models import Job, JobType, Run, RunStatus, Trigger, new_run_id
from jobyard.redis_conn import CONNECTION_ERRORS
from workers.attempt import run_attempt
from workers.runner import StopControl, StopReason

if TYPE_CHECKING:
    from workers.worker import Worker

log = logging.getLogger(__name__)

RECONCILE_INTERVAL_S = 1.0
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 60.0
STABLE_AFTER_S = 120.0


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 free right now (for ``JOBYARD_PORT`` / ``WEBJOBS_PORT``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def next_backoff(previous_s: float, uptime_s: float) -> float:
    """Delay before the next start: doubles from 1 s to 60 s, resets after a stable run."""
    if uptime_s >= STABLE_AFTER_S or previous_s <= 0:
        return BACKOFF_START_S
    return min(BACKOFF_MAX_S, previous_s * 2)


@dataclass
class Instance:
    """This worker's instance of one continuous job: a thread that starts and restarts it."""

    job: Job
    lease: Lease
    stop: threading.Event = field(default_factory=threading.Event)
    control: StopControl | None = None
    thread: threading.Thread | None = None
    restarts: int = 0
    version: int = 0

    def request_stop(self, reason: StopReason, *, hard: bool = False) -> None:
        """Stop the process (gracefully unless ``hard``) and do not start it again."""
        self.stop.set()
        if self.control is not None:
            self.control.request(reason, hard=hard)


class Supervisor:
    """Keeps this worker's share of the continuous jobs running (see the module docstring)."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self.instances: dict[str, Instance] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="continuous", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def shutdown(self, *, hard: bool = False) -> None:
        """Stop every instance (the worker is stopping) and release their leases."""
        self.stopped.set()
        for inst in list(self.instances.values()):
            inst.request_stop(StopReason.SHUTDOWN, hard=hard)

    def join(self, timeout_s: float) -> None:
        """Wait for the instances to end, then give their leases back."""
        deadline = time.monotonic() + timeout_s
        for name, inst in list(self.instances.items()):
            if inst.thread is not None:
                inst.thread.join(max(0.0, deadline - time.monotonic()))
            self._forget(name, "stopped")

    # -- reconcile ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self.stopped.wait(RECONCILE_INTERVAL_S):
            try:
                self.reconcile()
            except CONNECTION_ERRORS as exc:
                log.warning("continuous jobs: Redis unreachable (%s)", exc)
            except Exception:
                log.exception("continuous jobs: reconcile failed")

    def _continuous_jobs(self) -> dict[str, Job]:
        w = self.w
        members: Any = w.client.smembers(w.keys.jobs)
        names = sorted(n.decode() for n in members)
        pipe = w.client.pipeline(transaction=False)
        for name in names:
            pipe.hget(w.keys.job(name), "type")
        types = pipe.execute()
        wanted = [n for n, t in zip(names, types, strict=True) if t == JobType.CONTINUOUS.value.encode()]
        pipe = w.client.pipeline(transaction=False)
        for name in wanted:
            pipe.hgetall(w.keys.job(name))
        return {n: Job.from_hash(d) for n, d in zip(wanted, pipe.execute(), strict=True) if d}

    def reconcile(self) -> None:
        """One pass: start what should run, stop what should not, renew what runs."""
        if self.stopped.is_set():
            return
        jobs = self._continuous_jobs()
        for name in list(self.instances):
            job = jobs.get(name)
            inst = self.instances[name]
            if job is None or job.stopped:
                inst.request_stop(StopReason.STOP)
                self._await_and_forget(name, "stopped")
            elif not inst.lease.renew():
                log.warning("continuous job %s: lease lost; stopping the instance here", name)
                inst.request_stop(StopReason.LEASE_LOST, hard=True)
                self._await_and_forget(name, "inactive")
            elif job.version != inst.version:
                log.info("continuous job %s: redeployed (version %d); restarting", name, job.version)
                inst.job = job
                inst.version = job.version
                if inst.control is not None:
                    inst.control.request(StopReason.STOP)
        for name, job in jobs.items():
            if name in self.instances:
                continue
            if job.stopped:
                self._publish(job.name, {"status": "stopped"})
                continue
            singleton = bool(job.settings.get("is_singleton"))
            holder_key = "singleton" if singleton else self.w.settings.instance_id
            lease = Lease(
                self.w.client,
                self.w.keys.continuous_lease(name, holder_key),
                self.w.worker_id,
                self.w.settings.run_lease_ttl_seconds,
            )
            if not lease.acquire():
                if singleton:
                    self._publish(name, {"status": "inactive"})
                continue
            inst = Instance(job=job, lease=lease, version=job.version)
            inst.thread = threading.Thread(
                target=self._keep_running, args=(inst,), name=f"cont-{name}", daemon=True
            )
            self.instances[name] = inst
            inst.thread.start()

    def _await_and_forget(self, name: str, status: str) -> None:
        inst = self.instances.get(name)
        if inst is None:
            return
        if inst.thread is not None:
            threading.Thread(target=self._join_then_forget, args=(name, inst, status), daemon=True).start()
        else:
            self._forget(name, status)

    def _join_then_forget(self, name: str, inst: Instance, status: str) -> None:
        if inst.thread is not None:
            inst.thread.join()
        if self.instances.get(name) is inst:
            self._forget(name, status)

    def _forget(self, name: str, status: str) -> None:
        inst = self.instances.pop(name, None)
        if inst is None:
            return
        try:
            inst.lease.release()
            self._publish(name, {"status": status, "restarts": inst.restarts})
        except CONNECTION_ERRORS:
            inst.lease.abandon()

    # -- one instance -------------------------------------------------------------------------
    def _keep_running(self, inst: Instance) -> None:
        backoff = 0.0
        while not inst.stop.is_set() and not self.stopped.is_set():
            job = inst.job
            control = StopControl()
            inst.control = control
            started = time.monotonic()
            try:
                status = self._run_once(inst, job, control)
            except CONNECTION_ERRORS as exc:
                log.warning("continuous job %s: Redis unreachable (%s)", job.name, exc)
                status = RunStatus.FAILED
            except Exception:
                log.exception("continuous job %s: instance failed to run", job.name)
                status = RunStatus.FAILED
            inst.control = None
            if inst.stop.is_set() or self.stopped.is_set():
                break
            if control.reason is StopReason.STOP:
                backoff = 0.0  # redeployed: start the new package at once
                continue
            inst.restarts += 1
            backoff = next_backoff(backoff, time.monotonic() - started)
            self._publish(
                job.name,
                {
                    "status": "restarting",
                    "restarts": inst.restarts,
                    "next_start_at": time.time() + backoff,
                    "last_status": status.value,
                },
            )
            log.info(
                "continuous job %s: process ended (%s); restarting in %.0f s", job.name, status.value, backoff
            )
            inst.stop.wait(backoff)

    def _run_once(self, inst: Instance, job: Job, control: StopControl) -> RunStatus:
        w = self.w
        run = Run(
            id=new_run_id(),
            job=job.name,
            status=RunStatus.RUNNING,
            trigger=Trigger.CONTINUOUS,
            attempt=1,
            worker=w.settings.instance_id,
            worker_pid=w.pid,
            enqueued_at=time.time(),
            started_at=time.time(),
            package=job.package,
        )
        w.retrying(
            lambda: w.store.start_direct(run, w.worker_id, w.settings.run_lease_ttl_seconds), "start a run"
        )
        port = free_loopback_port()
        self._publish(
            job.name,
            {
                "status": "running",
                "run_id": run.id,
                "started_at": run.started_at,
                "restarts": inst.restarts,
                "port": port,
            },
        )
        result = run_attempt(
            w, run, job, control=control, extra_env={"JOBYARD_PORT": str(port), "WEBJOBS_PORT": str(port)}
        )
        status = result.status
        error = result.error
        if control.reason is not None and control.reason is not StopReason.TIMEOUT:
            status = RunStatus.CANCELLED
            error = f"stopped ({control.reason.value})"
        elif result.interrupted:
            status = RunStatus.CANCELLED
        fields: dict[str, Any] = {**result.fields(), "error": error}
        w.executor.record(run, job, status, "final", lines=result.lines, **fields)
        return status

    def _publish(self, name: str, state: dict[str, Any]) -> None:
        w = self.w
        entry = {
            "instance_id": w.settings.instance_id,
            "host": w.host,
            "pid": w.pid,
            "seen_at": time.time(),
            **state,
        }
        w.client.hset(w.keys.job_instances(name), w.settings.instance_id, json.dumps(entry))
