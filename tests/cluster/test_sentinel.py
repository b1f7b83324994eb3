"""Redis high availability for real: the master is SIGKILLed under a stream of runs, Sentinel promotes
the replica, and every role follows it without a restart.

One master, one replica and three sentinels on loopback (``tests/cluster/ha.py``); the API, two
workers and a scheduler reach Redis through Sentinel only (``JOBYARD_REDIS_SENTINELS``) with the
master's password. Replication is asynchronous, so a failover can lose what the master had
accepted and not yet sent to the replica; the tests measure that loss (printed, and kept as the
``lost_runs`` property in the JUnit report):

- a plain kill of a healthy pair, where the window is the replication delay (loopback: none seen);
- a kill while the replica has fallen behind, where every run accepted after it fell behind is lost;
- the same with ``JOBYARD_REDIS_WAIT_REPLICAS=1``, where a run only counts as accepted once the
  replica confirmed it (``WAIT``), and none is lost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from jobyard.errors import Unavailable
from jobyard.keys import Keys
from jobyard.redis_conn import connect, wait_for_replicas
from jobyard.runs import EnqueueSpec, RunStore
from jobyard.settings import Settings
from tests.cluster.common import (
    check_fires_once,
    deploy_script,
    existing,
    read_executions,
    recording_script,
    wait_terminal,
)
from tests.cluster.ha import MASTER_NAME, PASSWORD, SentinelCluster
from tests.cluster.stream import Stream, api_submit
from tests.helpers import Role, role_env, wait_until
from tests.services.conftest import Api, start_api_process

KEYS = Keys()
FAST = {
    "JOBYARD_HEARTBEAT_INTERVAL_SECONDS": "0.5",
    "JOBYARD_HEARTBEAT_TIMEOUT_SECONDS": "3",
    "JOBYARD_RUN_LEASE_TTL_SECONDS": "2",
    "JOBYARD_LEADER_LEASE_TTL_SECONDS": "2",
    "JOBYARD_LEADER_RENEW_INTERVAL_SECONDS": "0.4",
    "JOBYARD_METRICS_PORT": "0",
}
WAIT_ON = {"JOBYARD_REDIS_WAIT_REPLICAS": "1", "JOBYARD_REDIS_WAIT_TIMEOUT_SECONDS": "0.3"}
HISTORY = {"history_size": 10_000}  # nothing trimmed: a missing record means a lost run
DRAIN_S = 20.0  # the surviving runs end within seconds; this is the bound before calling them stuck


@dataclass
class System:
    """The HA Redis, the roles on it, and a test-side client that follows failovers like they do."""

    ha: SentinelCluster
    settings: Settings
    client: redis.Redis
    store: RunStore
    api: Api
    roles: list[Role]
    effects: Path
    pids: list[int] = field(default_factory=list)

    def all_alive(self) -> bool:
        return all(role.alive() for role in self.roles) and [r.pid for r in self.roles] == self.pids

    def logs(self) -> str:
        return "\n".join(f"--- {r.log_path.name}\n{r.output()[-3000:]}" for r in self.roles)


@pytest.fixture
def start_system(tmp_path: Path) -> Iterator[Callable[..., System]]:
    """Start the HA Redis and the roles (API env extra: ``**api_env``); everything stopped by pid."""
    clusters: list[SentinelCluster] = []
    roles: list[Role] = []
    clients: list[redis.Redis] = []

    def start(**api_env: str) -> System:
        ha = SentinelCluster(tmp_path / "redis")
        clusters.append(ha)
        ha.start()
        env = {**ha.role_env(), **FAST}
        data = tmp_path / "data"
        data.mkdir()
        api = start_api_process("", tmp_path / "data", tmp_path / "api.log", **env, **api_env)
        roles.append(api.role)
        for i in range(2):
            wenv = role_env("", data, JOBYARD_INSTANCE_ID=f"worker-host-{i}", **env)
            roles.append(Role(["worker", "--concurrency", "4"], wenv, tmp_path / f"worker{i}.log"))
        roles.append(Role(["scheduler"], role_env("", data, **env), tmp_path / "scheduler.log"))
        settings = Settings(
            redis_sentinels=ha.sentinel_addresses,
            redis_master_name=MASTER_NAME,
            redis_password=PASSWORD,  # type: ignore[arg-type]
            data_dir=data,
            **{k.removeprefix("JOBYARD_").lower(): v for k, v in api_env.items()},  # type: ignore[arg-type]
        )
        client = connect(settings, socket_timeout=5.0)
        clients.append(client)
        system = System(ha, settings, client, RunStore(client, KEYS, settings), api, roles, tmp_path / "fx")
        system.pids = [r.pid for r in roles]
        deploy_script(client, settings, tmp_path, "tick", recording_script(system.effects, "tick"), HISTORY)
        beat = {"schedule": "* * * * * *", "overlap": "allow", **HISTORY}
        deploy_script(client, settings, tmp_path, "beat", recording_script(system.effects, "beat"), beat)
        wait_until(lambda: client.zcard(KEYS.workers) >= 2, timeout=20, what="both workers to register")
        wait_until(lambda: client.get(KEYS.leader), timeout=20, what="a scheduler leader")
        return system

    yield start
    for role in roles:
        role.stop()
    for client in clients:
        client.close()
    for ha in clusters:
        ha.stop()


@dataclass
class Outcome:
    """What one failover did to the accepted runs."""

    accepted: int
    lost: list[str]
    killed_at: float
    promoted_after_s: float
    refused: int


def fail_over(system: System, stream: Stream, *, behind: bool, rejoin: bool) -> Outcome:
    """Kill the master mid-stream (after the replica fell behind, if ``behind``), follow the failover."""
    stream.wait_accepted(150)
    if behind:
        system.ha.fall_behind()
        # a few enqueues while the replica misses them: accepted, or refused when WAIT is on
        start = stream.attempts()
        wait_until(lambda: stream.attempts() >= start + 8, timeout=5, what="enqueues while behind")
    killed = system.ha.kill_master()
    promoted = system.ha.wait_failover()
    if rejoin:  # with WAIT on nothing is accepted until a replica is back
        system.ha.rejoin_old_master()
    stream.wait_accepted(150, since=promoted, timeout=45)
    stream.stop()
    ids = stream.ids()
    kept = existing(system.client, ids)
    return Outcome(
        len(ids), [i for i in ids if i not in kept], killed, promoted - killed, len(stream.refused)
    )


def report(record_property: Callable[[str, object], None], name: str, out: Outcome) -> None:
    """Print the figures and keep them in the JUnit report."""
    record_property("accepted_runs", out.accepted)
    record_property("lost_runs", len(out.lost))
    record_property("failover_s", round(out.promoted_after_s, 2))
    print(
        f"\n[{name}] {len(out.lost)} of {out.accepted} accepted runs lost in the failover; "
        f"promoted {out.promoted_after_s:.2f} s after the kill; {out.refused} enqueues refused meanwhile"
    )


def check_after(system: System, stream: Stream, out: Outcome) -> None:
    """No role was restarted, the schedule kept firing once per fire time, every surviving run ends."""
    assert system.all_alive(), f"a role exited or was restarted:\n{system.logs()}"
    fires = check_fires_once(system.client, "beat")
    assert any(t > out.killed_at + out.promoted_after_s for t in fires), "the scheduler stopped firing"
    lost = set(out.lost)
    survivors = [i for i in stream.ids() if i not in lost]
    runs = wait_terminal(system.store, survivors, timeout=DRAIN_S)
    failed = {rid: run.error for rid, run in runs.items() if run.status.value != "succeeded"}
    assert not failed, f"runs that did not succeed: {failed}"
    ran = {e.run_id for e in read_executions(system.effects) if e.tag == "tick"}
    assert set(survivors) <= ran, "a run recorded as succeeded never executed"


def test_master_killed_the_roles_follow_the_promoted_replica(
    start_system: Callable[..., System], record_property: Callable[[str, object], None]
) -> None:
    # given: a healthy pair, a stream of runs through the API
    system = start_system()
    with system.api.client() as http:
        stream = Stream(api_submit(http, "tick")).start()
        try:
            # when: the master dies
            out = fail_over(system, stream, behind=False, rejoin=False)
        finally:
            stream.stop()
    report(record_property, "healthy replica", out)
    # then: only runs accepted in the last moment before the kill can be missing
    late = [a for a in stream.accepted if a.run_id in set(out.lost) and a.at < out.killed_at - 1.0]
    assert not late, f"runs accepted well before the kill were lost: {late}"
    check_after(system, stream, out)


def test_replica_behind_loses_what_it_had_not_received(
    start_system: Callable[..., System], record_property: Callable[[str, object], None]
) -> None:
    # given: asynchronous replication (no WAIT), and a replica that falls behind
    system = start_system()
    with system.api.client() as http:
        stream = Stream(api_submit(http, "tick")).start()
        try:
            out = fail_over(system, stream, behind=True, rejoin=False)
        finally:
            stream.stop()
    report(record_property, "replica behind, no WAIT", out)
    # then: the runs accepted after it fell behind are gone with the master; nothing else is
    assert out.lost, "expected the runs the replica never received to be lost"
    check_after(system, stream, out)


@pytest.mark.parametrize("producer", ["store", "api"])
def test_with_wait_no_accepted_run_is_lost(
    producer: str, start_system: Callable[..., System], record_property: Callable[[str, object], None]
) -> None:
    # given: WAIT 1 after every enqueue (the API's enqueue routes answer 202 only once the replica
    # confirmed, 503 otherwise), and a replica that falls behind
    system = start_system(**WAIT_ON)

    def store_submit() -> str | None:
        try:
            created = system.store.create(EnqueueSpec(job="tick"))
            wait_for_replicas(system.client, system.settings)
        except (Unavailable, redis.ConnectionError, redis.TimeoutError):
            return None
        return created.run_id

    with system.api.client() as http:
        submit = api_submit(http, "tick") if producer == "api" else store_submit
        stream = Stream(submit).start()
        try:
            out = fail_over(system, stream, behind=True, rejoin=True)
        finally:
            stream.stop()
    report(record_property, f"replica behind, WAIT 1 ({producer})", out)
    # then: what was confirmed survived; what the replica had not confirmed was refused, not lost
    assert not out.lost, f"{len(out.lost)} confirmed runs lost: {out.lost[:5]}"
    assert out.refused > 0, "the replica fell behind, so some enqueues should have been refused"
    check_after(system, stream, out)
