"""Guarantees that a worker keeps when things go wrong: retries, dead letters, cancel, stops, crashes."""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path

import psutil

from jobyard.keys import Keys
from jobyard.models import Priority
from tests.helpers import wait_until
from tests.workers.conftest import enqueue, log_lines, wait_status

FAST_RECOVERY = {
    "JOBYARD_HEARTBEAT_TIMEOUT_SECONDS": "3",
    "JOBYARD_RUN_LEASE_TTL_SECONDS": "2",
    "JOBYARD_HEARTBEAT_INTERVAL_SECONDS": "0.5",
}


def _procs_with(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(p.info["cmdline"] or []):
                out.append(p)
        except psutil.Error:
            pass
    return out


def test_retries_with_backoff_then_dead_letter(deploy, store, workers, r) -> None:  # type: ignore[no-untyped-def]
    deploy(
        "poison",
        {"run.sh": 'echo "attempt $JOBYARD_ATTEMPT" >&2; exit 1\n'},
        {"max_retries": 2, "retry_backoff": {"min": 0.2, "max": 0.4}},
    )
    workers(1)
    run_id = enqueue(store, "poison")
    run = wait_status(store, run_id, {"failed", "succeeded"}, timeout=30)
    assert run.status.value == "failed"
    assert run.attempt == 3 and run.failures == 3
    k = Keys()
    assert r.zscore(k.dead_letters, run_id) is not None
    assert run.dead_lettered_at is not None
    # dramatiq's own dead-letter queue got the message too (nack)
    assert r.zcard(k.queue_xq("normal")) == 1
    lines = log_lines(store, run_id)
    assert [m for s, m in lines if s == "ERR"] == ["attempt 1", "attempt 2", "attempt 3"]
    retry_notes = [m for s, m in lines if s == "SYS" and "retry" in m]
    assert len(retry_notes) == 2
    # the backoff was respected: each attempt started at least min backoff after the previous end
    starts = [
        e["t"]
        for e in store.read_log(run_id)
        if e["stream"] == "SYS" and e["line"].startswith("attempt ") and " on " in e["line"]
    ]
    assert len(starts) == 3
    assert all(b - a >= 0.2 for a, b in itertools.pairwise(starts))


def test_a_run_may_opt_out_of_retries(deploy, store, workers) -> None:  # type: ignore[no-untyped-def]
    deploy("flaky", {"run.sh": "exit 1\n"}, {"max_retries": 5, "retry_backoff": {"min": 0.1, "max": 0.1}})
    workers(1)
    run = wait_status(store, enqueue(store, "flaky", max_retries=0), {"failed"})
    assert run.attempt == 1


def test_cancel_a_queued_a_running_and_a_stubborn_run(deploy, store, workers) -> None:  # type: ignore[no-untyped-def]
    deploy("sleepy", {"run.sh": "sleep 300 # cancel-me-sleepy\n"})
    deploy(
        "stubborn",
        {"run.sh": "trap 'echo no' TERM\nwhile :; do sleep 0.1; done # cancel-me-stubborn\n"},
        {"stopping_wait_time": 1},
    )
    workers(2)
    running = enqueue(store, "sleepy")
    stubborn = enqueue(store, "stubborn")
    queued = enqueue(store, "sleepy")
    wait_status(store, running, {"running"})
    wait_status(store, stubborn, {"running"})
    # when
    for rid in (queued, running, stubborn):
        assert store.cancel(store.get(rid)) in ("cancelled", "signalled")
    # then
    for rid in (queued, running, stubborn):
        assert (
            wait_status(store, rid, {"cancelled", "failed", "succeeded"}, timeout=15).status.value
            == "cancelled"
        )
    assert store.get(queued).attempt == 0  # never started
    wait_until(lambda: not _procs_with("cancel-me-"), timeout=10, what="no script process left")


def test_graceful_stop_lets_a_polite_script_finish_and_requeues_a_stubborn_one(
    deploy, store, workers
) -> None:  # type: ignore[no-untyped-def]
    polite = (
        'for i in $(seq 600); do [ -f "$JOBYARD_SHUTDOWN_FILE" ] && { echo "stopping cleanly"; exit 0; }; '
        "sleep 0.05; done\n"
    )
    deploy("polite", {"run.sh": polite}, {"stopping_wait_time": 5})
    deploy(
        "deaf",
        {
            "run.sh": "trap '' TERM\n[ \"$JOBYARD_ATTEMPT\" = 1 ] && while :; do sleep 0.1; done\n"
            "echo second attempt\n"
        },
        {"stopping_wait_time": 1},
    )
    first = workers(2, instance="first")
    p = enqueue(store, "polite")
    d = enqueue(store, "deaf")
    wait_status(store, p, {"running"})
    wait_status(store, d, {"running"})
    # when: the worker is asked to stop
    first.signal(signal.SIGTERM)
    wait_until(lambda: not first.alive(), timeout=20, what="the worker to stop")
    assert first.proc.returncode == 0
    # then: the polite one ended by itself, the deaf one went back on the queue
    assert store.get(p).status.value == "succeeded"
    assert ("INFO", "stopping cleanly") in log_lines(store, p)
    back = store.get(d)
    assert back.status.value == "queued" and back.failures == 0
    # and another worker finishes it as the next attempt
    workers(1, instance="second")
    done = wait_status(store, d, {"succeeded", "failed"})
    assert done.status.value == "succeeded" and done.attempt == 2 and done.worker == "second"


def test_sigkilled_worker_run_is_recovered_and_its_script_reaped(
    deploy, store, workers, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "executions"
    script = (
        f'echo "$JOBYARD_ATTEMPT" >> {marker}\n'
        '[ "$JOBYARD_ATTEMPT" = 1 ] && sleep 300 # orphan-marker\nexit 0\n'
    )
    deploy("crashy", {"run.sh": script})
    doomed = workers(1, instance="doomed", **FAST_RECOVERY)
    run_id = enqueue(store, "crashy")
    wait_status(store, run_id, {"running"})
    wait_until(lambda: _procs_with("sleep 300"), timeout=10, what="the script to start")
    # when: its worker is killed outright
    os.kill(doomed.pid, signal.SIGKILL)
    workers(1, instance="rescuer", **FAST_RECOVERY)
    # then: another worker runs it again as attempt 2, within the bound
    run = wait_status(store, run_id, {"succeeded", "failed"}, timeout=30)
    assert run.status.value == "succeeded"
    assert run.attempt == 2 and run.deaths == 1 and run.worker == "rescuer"
    assert marker.read_text().split() == ["1", "2"]
    # and the orphaned script of the dead worker was killed by the worker on the same host
    wait_until(lambda: not _procs_with("sleep 300"), timeout=15, what="the orphaned script to be killed")


def test_strict_priority_high_then_normal_then_low(deploy, store, workers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    order = tmp_path / "order"
    deploy("blocker", {"run.sh": 'while [ ! -f "$1" ]; do sleep 0.02; done\n'})
    deploy("mark", {"run.sh": f'echo "$1" >> {order}\n'})
    workers(1)
    gate = tmp_path / "gate"
    blocker = enqueue(store, "blocker", str(gate))
    wait_status(store, blocker, {"running"})
    # given: the only slot is busy and all three levels have waiting runs, low first
    ids = [enqueue(store, "mark", f"low{i}", priority=Priority.LOW) for i in range(30)]
    ids += [enqueue(store, "mark", f"normal{i}", priority=Priority.NORMAL) for i in range(5)]
    ids.append(enqueue(store, "mark", "high", priority=Priority.HIGH))
    # when the slot frees
    gate.touch()
    wait_status(store, ids[-1], {"succeeded"})
    for rid in ids:
        wait_status(store, rid, {"succeeded"})
    got = order.read_text().split()
    assert got == ["high"] + [f"normal{i}" for i in range(5)] + [f"low{i}" for i in range(30)]


def test_dead_letters_are_kept_for_their_ttl_then_purged(deploy, store, workers, r) -> None:  # type: ignore[no-untyped-def]
    deploy("doomed", {"run.sh": "exit 1\n"})
    workers(1, JOBYARD_DEAD_LETTER_TTL_SECONDS="2", JOBYARD_HEARTBEAT_INTERVAL_SECONDS="0.1")
    run_id = enqueue(store, "doomed")
    wait_status(store, run_id, {"failed"})
    k = Keys()
    assert r.zscore(k.dead_letters, run_id) is not None
    # after the TTL (2 s) a sweep (every 30 heartbeats: 3 s) purges the dead letter and its record
    wait_until(lambda: r.zscore(k.dead_letters, run_id) is None, timeout=15, what="the dead letter to expire")
    assert not r.exists(k.run(run_id)) and not r.exists(k.run_log(run_id))
    assert r.zscore(k.job_runs("doomed"), run_id) is None


def _worker_id(r, pid: int) -> str | None:  # type: ignore[no-untyped-def]
    k = Keys()
    for raw in r.zrange(k.workers, 0, -1):
        if r.hget(k.worker(raw.decode()), "pid") == str(pid).encode():
            return str(raw.decode())
    return None


def test_a_message_stranded_in_a_live_workers_ack_set_is_given_back(deploy, store, workers, r) -> None:  # type: ignore[no-untyped-def]
    """What a fetch whose reply was lost (or a failover that kept only the fetch) leaves behind:
    the message in this live worker's ack set, no slot holding it; one as queued, one claimed."""
    k = Keys()
    deploy("stranded", {"run.sh": "echo ran attempt $JOBYARD_ATTEMPT\n"})
    worker = workers(1, JOBYARD_HEARTBEAT_INTERVAL_SECONDS="0.3")
    wait_until(lambda: _worker_id(r, worker.pid), timeout=15, what="the worker to register")
    worker_id = _worker_id(r, worker.pid)
    far = time.time() + 3600
    queued, claimed = enqueue(store, "stranded", run_at=far), enqueue(store, "stranded", run_at=far)
    # strand both messages: out of the delayed set, into the worker's ack set, as fetch.lua does
    for member in r.zrange(k.delayed, 0, -1):
        level, mid = member.decode().split("|")
        r.zrem(k.delayed, member)
        r.sadd(f"{k.queue_namespace}:__acks__.{worker_id}.{level}", mid)
    # the second one as fetch.lua's claim left it: running, attempt 1, the lease held by this worker
    r.hset(k.run(claimed), mapping={"status": "running", "attempt": 1, "worker": "lost-reply"})
    r.set(k.run_lease(claimed), str(worker_id), px=60_000)
    # then: both are put back and run, the claimed one as the attempt it had already been given
    first = wait_status(store, queued, {"succeeded", "failed"}, timeout=20)
    second = wait_status(store, claimed, {"succeeded", "failed"}, timeout=20)
    assert (first.status.value, first.attempt) == ("succeeded", 1)
    assert (second.status.value, second.attempt) == ("succeeded", 1)
    assert ("INFO", "ran attempt 1") in log_lines(store, claimed)
    assert r.scard(f"{k.queue_namespace}:__acks__.{worker_id}.normal") == 0
    assert "re-queueing 2 message(s) left in our normal ack set" in worker.output()


def test_a_flushed_script_cache_is_reloaded_without_losing_a_run(deploy, store, workers, r) -> None:  # type: ignore[no-untyped-def]
    deploy("flushed", {"run.sh": "echo ok\n"})
    worker = workers(2)
    first = [enqueue(store, "flushed") for _ in range(6)]
    for run_id in first:
        assert wait_status(store, run_id, {"succeeded", "failed"}).status.value == "succeeded"
    r.script_flush()  # a Redis restarted without its scripts, or flushed by an operator
    then = [enqueue(store, "flushed") for _ in range(6)]
    for run_id in then:
        run = wait_status(store, run_id, {"succeeded", "failed"})
        assert run.status.value == "succeeded"
        assert ("INFO", "ok") in log_lines(store, run_id)
    assert "Redis unreachable" not in worker.output()


def test_an_outcome_is_fenced_by_the_worker_that_claimed_the_attempt(deploy, store, r, settings) -> None:  # type: ignore[no-untyped-def]
    """After a failover that lost worker A's claim, worker B may claim the run again as the same
    attempt number: A's outcome must then be refused as stale, not recorded over B's attempt."""
    from jobyard.models import TERMINAL_LUA, RunStatus
    from jobyard.runs import parse_finish, prepare_finish

    k = Keys()
    deploy("fenced", {"run.sh": "true\n"})
    run_id = enqueue(store, "fenced")

    def claim(worker: str) -> str:
        keys = [
            k.run(run_id),
            k.run_lease(run_id),
            k.job("fenced"),
            k.job_slots("fenced"),
            k.job_secrets("fenced"),
        ]
        res = store.scripts.claim_run(
            keys=keys, args=[worker, "host", 1, time.time(), 60_000, 3, TERMINAL_LUA]
        )
        return str(res[0].decode())

    def finish(by: str | None) -> tuple[str, str]:
        keys, args = prepare_finish(
            k,
            settings,
            run_id,
            "fenced",
            RunStatus.SUCCEEDED,
            attempt=1,
            claimed_by=by,
            fields={"exit_code": 0},
        )
        return parse_finish(store.scripts.finish_run(keys=keys, args=args))

    assert claim("worker-a") == "claimed"
    # the new master lost A's claim: the run is queued again at attempt 0, and B claims attempt 1
    r.hset(k.run(run_id), mapping={"status": "queued", "attempt": 0})
    r.delete(k.run_lease(run_id))
    assert claim("worker-b") == "claimed"
    assert store.get(run_id).attempt == 1
    assert finish("worker-a") == ("stale", "1")  # same attempt number, another claimant
    assert store.get(run_id).status.value == "running"
    assert finish("worker-b") == ("ok", "succeeded")
    assert store.get(run_id).status.value == "succeeded"
