"""jobyard on separate hosts: Redis, the API, two worker hosts and two scheduler hosts, each a network
namespace on one bridge (``tests/cluster/netns.py``), with links cut and restored under load.

Short timeouts keep it fast: a worker is judged dead 3 s after its last heartbeat, a run's lease
lapses 2 s after its last renewal, the leader lease after 2 s. The test process reaches Redis
through its Unix socket (file system, not network) and the API from a client host of its own;
only addresses inside the namespaces are used. Needs root; skipped where namespaces cannot be
made.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from jobyard.keys import Keys
from jobyard.models import Run
from jobyard.runs import RunStore
from jobyard.settings import Settings
from tests.cluster.common import (
    check_fires_once,
    deploy_script,
    read_executions,
    recording_script,
    runs_of,
    wait_terminal,
)
from tests.cluster.netns import NetnsCaller, Network, netns_unavailable
from tests.helpers import REPO, role_env, wait_until

KEYS = Keys()
PASSWORD = "multihost-redis-password-0123456789"
ADMIN = "multihost-admin-token-0123456789abcdef"
REDIS_PORT = 16379
API_PORT = 8080
SLOTS = 4
HEARTBEAT_TIMEOUT_S = 3.0
HEARTBEAT_INTERVAL_S = 0.5
RUN_LEASE_S = 2.0
IDLE_WAIT_S = 1.0
FAST = {
    "JOBYARD_HEARTBEAT_TIMEOUT_SECONDS": str(HEARTBEAT_TIMEOUT_S),
    "JOBYARD_HEARTBEAT_INTERVAL_SECONDS": str(HEARTBEAT_INTERVAL_S),
    "JOBYARD_RUN_LEASE_TTL_SECONDS": str(RUN_LEASE_S),
    "JOBYARD_IDLE_WAIT_SECONDS": str(IDLE_WAIT_S),
    "JOBYARD_LEADER_LEASE_TTL_SECONDS": "2",
    "JOBYARD_LEADER_RENEW_INTERVAL_SECONDS": "0.5",
    "JOBYARD_METRICS_PORT": "0",
    "JOBYARD_LOG_FORMAT": "json",
}
# A cut-off worker's runs start again elsewhere after: its heartbeat is judged stale, the next
# maintenance pass of a live worker re-queues them, that worker wakes (at most one idle wait)
# and claims them once the lease has lapsed (a lease alive then delays the claim by a lease).
RECOVERY_BOUND_S = HEARTBEAT_TIMEOUT_S + HEARTBEAT_INTERVAL_S + IDLE_WAIT_S + RUN_LEASE_S + 1.0
HISTORY = {"history_size": 10_000}


@dataclass
class Proc:
    """A process inside a host, stopped by its pid."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def messages(self) -> list[str]:
        """The role's JSON log messages, in order."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(str(json.loads(line).get("message", "")))
        return out


@dataclass
class MultiHost:
    """The hosts, the processes on them, and the test's ways in."""

    net: Network
    base: Path
    r: redis.Redis
    store: RunStore
    settings: Settings
    client_host: NetnsCaller
    http: httpx.Client
    effects: Path
    procs: dict[str, Proc] = field(default_factory=dict)

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One request to the API, sent from the client host."""
        return self.client_host.call(lambda: self.http.request(method, path, **kw))

    def enqueue_batch(self, job: str, n: int) -> list[str]:
        response = self.api("POST", "/api/runs/batch", json={"runs": [{"job": job}] * n})
        assert response.status_code == 202, response.text
        return [run["id"] for run in response.json()["runs"]]

    def start(self, name: str, host: str, argv: list[str], env: dict[str, str]) -> Proc:
        log_path = self.base / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                self.net.argv(host, *argv),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(REPO),
                start_new_session=True,
            )
        self.procs[name] = Proc(name, popen, log_path)
        return self.procs[name]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_path.read_text()[-3000:]}" for p in self.procs.values())


def _start_roles(mh: MultiHost, redis_host: str) -> None:
    url = f"redis://:{PASSWORD}@{redis_host}:{REDIS_PORT}/0"
    api = mh.net.hosts["api"].address
    env = {**FAST, "JOBYARD_ADMIN_TOKEN": ADMIN}
    for name, host, args in [
        ("api", "api", ["api", "--host", api, "--port", str(API_PORT)]),
        ("worker-w1", "w1", ["worker", "--concurrency", str(SLOTS)]),
        ("worker-w2", "w2", ["worker", "--concurrency", str(SLOTS)]),
        ("scheduler-s1", "s1", ["scheduler"]),
        ("scheduler-s2", "s2", ["scheduler"]),
    ]:
        data = mh.base / f"data-{host}"  # every host has its own disk
        data.mkdir(exist_ok=True)
        role_environ = role_env(url, data, JOBYARD_INSTANCE_ID=f"host-{host}", **env)
        mh.start(name, host, [sys.executable, "-m", "jobyard", *args], role_environ)

    def api_up() -> bool:
        with contextlib.suppress(httpx.TransportError):
            return mh.api("GET", "/healthz").status_code == 200
        return False

    wait_until(api_up, timeout=30, interval=0.2, what="the API to answer on its host")
    wait_until(lambda: mh.r.zcard(KEYS.workers) >= 2, timeout=30, what="both worker hosts to register")
    wait_until(lambda: mh.r.get(KEYS.leader), timeout=30, what="a scheduler leader")


@pytest.fixture(scope="module")
def mh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiHost]:
    """Seven hosts (redis, api, w1, w2, s1, s2, and the test's client) with jobyard running on them."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not on PATH (Debian package redis-server)")
    base = tmp_path_factory.mktemp("multihost")
    net = Network()
    cluster: MultiHost | None = None
    try:
        net.create()
        for name in ("redis", "api", "w1", "w2", "s1", "s2", "client"):
            net.add_host(name)
        redis_host = net.hosts["redis"].address
        sock = base / "redis.sock"
        (base / "redis").mkdir()
        client_host = NetnsCaller(net.hosts["client"].ns)
        settings = Settings(redis_url=f"unix://{sock}", data_dir=base, redis_password=PASSWORD)  # type: ignore[arg-type]
        r = redis.Redis(unix_socket_path=str(sock), password=PASSWORD, socket_timeout=10)
        http = httpx.Client(
            base_url=f"http://{net.hosts['api'].address}:{API_PORT}",
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=10.0,
        )
        store = RunStore(r, KEYS, settings)
        cluster = MultiHost(net, base, r, store, settings, client_host, http, base / "fx")
        redis_argv = [server, "--bind", redis_host, "--port", str(REDIS_PORT), "--requirepass", PASSWORD]
        redis_argv += ["--unixsocket", str(sock), "--unixsocketperm", "700", "--dir", str(base / "redis")]
        cluster.start("redis", "redis", [*redis_argv, "--appendonly", "yes", "--save", ""], dict(os.environ))
        wait_until(lambda: _pings(r), timeout=10, what="Redis on its host")
        _start_roles(cluster, redis_host)
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            net.restore_all()
        if cluster is not None:
            for proc in reversed(list(cluster.procs.values())):
                proc.stop()
            cluster.http.close()
            cluster.client_host.close()
            cluster.r.close()
        left = net.destroy() + net.leftovers()
        assert not left, f"namespaces left behind: {left}"


def _pings(r: redis.Redis) -> bool:
    with contextlib.suppress(redis.RedisError):
        return bool(r.ping())
    return False


def _running(mh: MultiHost, ids: list[str]) -> dict[str, Run]:
    runs = {rid: mh.store.get(rid) for rid in ids}
    return runs if all(run.status.value == "running" for run in runs.values()) else {}


def test_runs_spread_over_worker_hosts(mh: MultiHost) -> None:
    # given: a job slow enough that one host's slots cannot take a whole batch
    deploy_script(
        mh.r, mh.settings, mh.base, "spread", recording_script(mh.effects, "spread", sleep_s=0.5), HISTORY
    )
    # when: twice as many runs as one host has slots arrive at once
    ids = mh.enqueue_batch("spread", 2 * SLOTS)
    runs = wait_terminal(mh.store, ids, timeout=30)
    # then: both worker hosts ran them, each run once
    assert {run.status.value for run in runs.values()} == {"succeeded"}
    assert {run.worker for run in runs.values()} == {"host-w1", "host-w2"}
    executions = [e for e in read_executions(mh.effects) if e.tag == "spread"]
    assert sorted(e.run_id for e in executions) == sorted(ids)


def test_cut_off_worker_host_runs_recovered_and_its_late_finish_fenced(
    mh: MultiHost, record_property: Any
) -> None:
    script = recording_script(mh.effects, "start", sleep_s=4, done_tag="done")
    deploy_script(mh.r, mh.settings, mh.base, "slow", script, HISTORY)
    # given: one run in every slot of the cluster, so the host that stays has room for the other's
    ids = mh.enqueue_batch("slow", SLOTS)
    running = wait_until(lambda: _running(mh, ids), timeout=20, what="every run to start")
    by_host: dict[str, list[str]] = {"host-w1": [], "host-w2": []}
    for rid, run in running.items():
        by_host[str(run.worker)].append(rid)
    victim = max(by_host, key=lambda h: len(by_host[h]))
    survivor = "host-w2" if victim == "host-w1" else "host-w1"
    cut_off = by_host[victim]
    # when: the host running most of them loses its link
    mh.net.cut(victim.removeprefix("host-"))
    cut_at = time.time()
    try:
        # then: its runs start again on the other host, as attempt 2, within the bound
        def recovered() -> bool:
            return all(mh.store.get(rid).attempt == 2 for rid in cut_off)

        wait_until(recovered, timeout=RECOVERY_BOUND_S + 10, interval=0.1, what="the runs to be recovered")
        wait_until(lambda: len(_recorded(mh, "start", 2, cut_off)) == len(cut_off), timeout=5)
        took = max(_recorded(mh, "start", 2, cut_off).values()) - cut_at
        record_property("worker_recovery_s", round(took, 2))
        print(f"\n[multihost] {len(cut_off)} runs of the cut-off host restarted {took:.2f} s after the cut")
        assert took <= RECOVERY_BOUND_S, f"recovery took {took:.2f} s, bound {RECOVERY_BOUND_S:.1f} s"
        # the cut-off host's scripts go on and finish; their worker cannot report it yet
        wait_until(lambda: len(_recorded(mh, "done", 1, cut_off)) == len(cut_off), timeout=10)
    finally:
        # and: the link comes back while the recovered attempts still run
        mh.net.restore(victim.removeprefix("host-"))
    worker = mh.procs[f"worker-{victim.removeprefix('host-')}"]

    def late_finish_refused() -> bool:
        # Whichever the worker meets first once it is back: its finish, fenced by the attempt
        # number (stale), or its heartbeat, which finds the lease held by the recovered attempt.
        said = [m for m in worker.messages() if "not recorded (stale 2)" in m or "lease lost" in m]
        return all(any(rid in m for m in said) for rid in cut_off)

    wait_until(late_finish_refused, timeout=40, interval=0.2, what="the cut-off worker's late finishes")
    runs = wait_terminal(mh.store, ids, timeout=30)
    for rid, run in runs.items():
        assert run.status.value == "succeeded", run
        if rid in cut_off:  # the record is the recovered attempt's, not the late one's
            assert (run.attempt, run.worker, run.deaths) == (2, survivor, 1), run
        else:
            assert run.attempt == 1, run
    # and: the side effects show exactly those attempts, each where the record says
    seen: dict[str, set[tuple[str, int, str]]] = {rid: set() for rid in ids}
    for e in read_executions(mh.effects):
        if e.run_id in seen:
            seen[e.run_id].add((e.tag, e.attempt, e.instance))
    for rid in ids:
        if rid in cut_off:
            expected = {
                ("start", 1, victim),
                ("done", 1, victim),
                ("start", 2, survivor),
                ("done", 2, survivor),
            }
        else:
            expected = {("start", 1, survivor), ("done", 1, survivor)}
        assert seen[rid] == expected, (rid, seen[rid])


def _recorded(mh: MultiHost, tag: str, attempt: int, ids: list[str]) -> dict[str, float]:
    """When each of ``ids`` recorded ``tag`` in ``attempt`` (those that did)."""
    found = read_executions(mh.effects)
    return {e.run_id: e.t for e in found if e.tag == tag and e.attempt == attempt and e.run_id in ids}


def _leader(mh: MultiHost) -> tuple[str, int]:
    info = {k.decode(): v.decode() for k, v in mh.r.hgetall(KEYS.leader_info).items()}
    return info.get("instance", ""), int(info.get("term", 0))


def test_cut_off_scheduler_leader_replaced_and_fenced(mh: MultiHost, record_property: Any) -> None:
    # given: a job firing every second under one of two scheduler hosts
    job_settings = {"schedule": "* * * * * *", "overlap": "allow", **HISTORY}
    deploy_script(mh.r, mh.settings, mh.base, "tock", recording_script(mh.effects, "tock"), job_settings)
    wait_until(lambda: len(runs_of(mh.r, "tock")) >= 3, timeout=15, what="the schedule to fire")
    old, old_term = _leader(mh)
    assert old in ("host-s1", "host-s2")
    other = "host-s2" if old == "host-s1" else "host-s1"
    # when: the leader's host is cut off
    mh.net.cut(old.removeprefix("host-"))
    cut_at = time.time()
    try:
        # then: the other host takes over with a new term and goes on firing
        wait_until(lambda: _leader(mh)[0] == other, timeout=15, interval=0.05, what="a new leader")
        new, new_term = _leader(mh)
        since = float(mh.r.hget(KEYS.leader_info, "since") or 0)
        took = since - cut_at
        record_property("leader_takeover_s", round(took, 2))
        print(f"\n[multihost] scheduler leader replaced {took:.2f} s after its host was cut off")
        assert new_term > old_term
        wait_until(lambda: _fired_after(mh, since) >= 3, timeout=15, what="fires by the new leader")
    finally:
        mh.net.restore(old.removeprefix("host-"))
    restored_at = time.time()
    # and: with its link back the old leader stays a standby and fires nothing
    wait_until(
        lambda: _fired_after(mh, restored_at + 2) >= 3, timeout=20, what="fires after the link came back"
    )
    assert _leader(mh) == (new, new_term), "leadership changed after the old leader came back"
    said = mh.procs[f"scheduler-{old.removeprefix('host-')}"].messages()
    stepped = [i for i, m in enumerate(said) if "stepping down" in m]
    assert stepped, f"the old leader never stepped down:\n{said[-20:]}"
    late = [m for m in said[stepped[0] :] if m.startswith("fired job")]
    assert not late, f"the old leader fired after it stepped down: {late}"
    # and: every fire time has exactly one run, and each of those runs ends
    fires = check_fires_once(mh.r, "tock")
    stats = {k.decode(): int(v) for k, v in mh.r.hgetall(KEYS.job_fire_stats("tock")).items()}
    record_property("fenced_fires", stats.get("fenced", 0))
    ids = [run.id for run in runs_of(mh.r, "tock")]
    assert len(ids) == len(fires)
    runs = wait_terminal(mh.store, ids, timeout=30)
    assert {run.status.value for run in runs.values()} == {"succeeded"}
    ran = [e.run_id for e in read_executions(mh.effects) if e.tag == "tock"]
    assert sorted(ran) == sorted(ids), "a fire ran twice or not at all"


def _fired_after(mh: MultiHost, t: float) -> int:
    return sum(1 for run in runs_of(mh.r, "tock") if (run.scheduled_for or 0) > t)
