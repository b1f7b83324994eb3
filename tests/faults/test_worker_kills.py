"""Workers killed under load: SIGKILL chaos, a script that kills its own worker, a double SIGTERM.

Each test counts the scripts' real executions in a side-effect file (one line per attempt that
started, another when it reached its end) and checks them against the attempts and worker deaths
recorded on the runs: a run is never lost, and it never runs twice unless a worker died under it.
"""

from __future__ import annotations

import itertools
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from jobyard.keys import Keys
from jobyard.models import TERMINAL, Run
from tests.faults.conftest import (
    FAST_RECOVERY,
    Execution,
    kill_role,
    percentile,
    read_executions,
    side_effect,
    wait_all_terminal,
)
from tests.helpers import wait_until
from tests.workers.conftest import enqueue, log_lines, wait_status

HISTORY_SIZE = 500
KEPT_RUNS = 60  # more than the default history size (50)
BACKLOG_RUNS = 30  # x 0.5 s on one slot
CHAOS_RUNS = 200
CHAOS_WORKERS = 3
CHAOS_SLOTS = 2  # per worker
CHAOS_FLAKY_EVERY = 10  # every 10th run fails its first attempt and is retried
CHAOS_KILL_EVERY_S = (0.5, 2.5)  # uniform: kills land at every point of a run's life
CHAOS_MAX_KILLS = 30
# A run unlucky enough to lose 3 workers would be dead-lettered, and that path trims the job's
# history to the default size (test_dead_lettering_after_worker_deaths_keeps_the_jobs_history):
# the cap is raised here so that the chaos checks every run's executions; the cap itself is
# tested by test_a_script_that_kills_its_worker_is_dead_lettered_after_three_deaths.
CHAOS_ENV = {**FAST_RECOVERY, "JOBYARD_MAX_WORKER_DEATHS": "10"}
CHAOS_SCRIPT_S = 0.3
ENDED = {s.value.encode() for s in TERMINAL}
# Heartbeat timeout 3 s + a heartbeat 0.5 s + a slot freeing, with room for two busy cores.
RECOVERY_BOUND_S = 10.0
# Under load a recovered run also waits for a free slot behind the queue; it must still be bounded.
CHAOS_RECOVERY_BOUND_S = 60.0


def _recoveries(execs: list[Execution], kills: list[tuple[float, str]]) -> list[float]:
    """For each attempt that followed a death: its start minus the kill of the previous attempt's worker."""
    starts: dict[str, list[Execution]] = defaultdict(list)
    for e in execs:
        if e.tag == "start":
            starts[e.run_id].append(e)
    out = []
    for attempts in starts.values():
        attempts.sort(key=lambda e: e.attempt)
        for before, after in itertools.pairwise(attempts):
            killed = [t for t, instance in kills if instance == before.instance and before.t <= t <= after.t]
            if killed:
                out.append(after.t - min(killed))
    return out


def _check_run(run: Run, starts: dict[int, int], ended: set[int]) -> list[str]:
    """What is wrong with one run after the chaos, given its executions per attempt."""
    rid, problems = run.id, []
    if any(n > 1 for n in starts.values()):
        problems.append(f"{rid}: one attempt executed twice {starts}")
    if any(not 1 <= a <= run.attempt for a in starts):
        problems.append(f"{rid}: executed as attempts {sorted(starts)}, recorded attempt {run.attempt}")
    if sum(starts.values()) > run.attempt:
        problems.append(f"{rid}: {sum(starts.values())} executions > {run.attempt} attempts")
    if run.deaths == 0 and not sum(starts.values()) == run.attempt == run.failures + 1:
        problems.append(
            f"{rid}: no worker died but executions {starts}, attempt {run.attempt}, failures {run.failures}"
        )
    if run.status.value == "succeeded" and run.attempt not in ended:
        problems.append(f"{rid}: succeeded but attempt {run.attempt} never reached its end")
    if run.status.value != "succeeded":
        problems.append(f"{rid}: {run.status.value} (deaths {run.deaths}, error {run.error!r})")
    return problems


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    raises=pytest.PytestUnraisableExceptionWarning,
    reason="seen once: an unclosed client socket in the test process reported as unraisable; "
    "the guarantee itself held",
)
def test_chaos_sigkill_a_worker_every_few_seconds(
    deploy, store, workers, tmp_path: Path, no_script_left
) -> None:  # type: ignore[no-untyped-def]
    execs_path = tmp_path / "executions"
    script = side_effect(execs_path, "start") + f"sleep {CHAOS_SCRIPT_S}\n"
    deploy("chaos", {"run.sh": script + side_effect(execs_path, "end")}, {"history_size": 1000})
    # a share of the runs fail once and are retried, so kills also land around retries
    flaky = script + '[ "$JOBYARD_ATTEMPT" = 1 ] && exit 3\n' + side_effect(execs_path, "end")
    deploy(
        "flaky",
        {"run.sh": flaky},
        {"max_retries": 2, "retry_backoff": {"min": 0.1, "max": 0.3}, "history_size": 1000},
    )
    # given: 300 runs of a 0.3 s script queued for three workers
    roles = [workers(CHAOS_SLOTS, instance=f"chaos{i}", **CHAOS_ENV) for i in range(CHAOS_WORKERS)]
    run_ids = [enqueue(store, "flaky" if i % CHAOS_FLAKY_EVERY == 0 else "chaos") for i in range(CHAOS_RUNS)]
    # when: one worker after the other is SIGKILLed and restarted, until every run has ended
    kills: list[tuple[float, str]] = []
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)

    def all_ended() -> bool:
        pipe = store.r.pipeline(transaction=False)
        for rid in run_ids:
            pipe.hget(Keys().run(rid), "status")
        return all(s in ENDED for s in pipe.execute())

    started = time.monotonic()
    victim = 0
    pace = threading.Event()  # never set: its wait is the chaos' pace, not a synchronisation
    while not pace.wait(rng.uniform(*CHAOS_KILL_EVERY_S)) and len(kills) < CHAOS_MAX_KILLS:
        if all_ended():
            break
        kills.append((kill_role(roles[victim]), f"chaos{victim}"))
        roles[victim] = workers(CHAOS_SLOTS, instance=f"chaos{victim}", **CHAOS_ENV)
        victim = (victim + 1) % CHAOS_WORKERS
    # then: every run ends (once the killing stops, at the latest), none is missing
    runs = wait_all_terminal(store, run_ids, timeout=90)
    took = time.monotonic() - started
    assert store.r.zcard(Keys().job_runs("chaos")) + store.r.zcard(Keys().job_runs("flaky")) == CHAOS_RUNS
    # and no run executed more often than its attempts, nor twice without a worker death
    execs = read_executions(execs_path)
    starts: dict[str, Counter[int]] = defaultdict(Counter)
    ended: dict[str, set[int]] = defaultdict(set)
    for e in execs:
        if e.tag == "start":
            starts[e.run_id][e.attempt] += 1
        else:
            ended[e.run_id].add(e.attempt)
    problems = [p for rid in run_ids for p in _check_run(runs[rid], dict(starts[rid]), ended[rid])]
    assert not problems, "\n".join(problems[:20]) + f"\n({len(problems)} problems, seed {seed})"
    deaths = Counter(runs[rid].deaths for rid in run_ids)
    never_fail = {rid for rid in run_ids if runs[rid].job == "chaos"}  # a retry is no recovery
    recoveries = _recoveries([e for e in execs if e.run_id in never_fail], kills)
    executions = sum(sum(c.values()) for c in starts.values())
    print(
        f"\nchaos (seed {seed}): {CHAOS_RUNS} runs on {CHAOS_WORKERS}x{CHAOS_SLOTS} slots, "
        f"{len(kills)} SIGKILLs, {took:.1f} s; runs by deaths {dict(sorted(deaths.items()))}; "
        f"statuses {dict(Counter(r.status.value for r in runs.values()))}; executions {executions} "
        f"for {sum(r.attempt for r in runs.values())} attempts; recovery after a kill: n={len(recoveries)}"
        + (f" median {percentile(recoveries, 0.5):.2f} s max {max(recoveries):.2f} s" if recoveries else "")
    )
    assert len(kills) >= 3, "the runs ended before the chaos really started: raise CHAOS_RUNS"
    assert any(runs[rid].deaths for rid in run_ids), "no kill hit a running run"
    assert recoveries and max(recoveries) <= CHAOS_RECOVERY_BOUND_S
    # and no script of a killed worker is left running unobserved
    wait_until(lambda: not no_script_left(), timeout=15, what="no orphaned script left")


def test_a_crashed_run_restarts_within_the_bound_even_behind_a_backlog(
    deploy, store, workers, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    execs_path = tmp_path / "executions"
    deploy(
        "long",
        {"run.sh": side_effect(execs_path, "start") + '[ "$JOBYARD_ATTEMPT" = 1 ] && sleep 60\nexit 0\n'},
    )
    deploy("backlog", {"run.sh": "sleep 0.5\n"}, {"history_size": 1000})
    doomed = workers(1, instance="doomed", **FAST_RECOVERY)
    crashed = enqueue(store, "long")
    wait_until(lambda: read_executions(execs_path), timeout=20, what="the long run to start")
    workers(1, instance="rescuer", **FAST_RECOVERY)
    # given: 15 s of work queued behind it for the one other worker
    backlog = [enqueue(store, "backlog") for _ in range(BACKLOG_RUNS)]
    wait_status(store, backlog[0], {"running", "succeeded"})
    # when its worker is killed
    killed_at = kill_role(doomed)
    # then it runs again within the bound, not after the backlog
    wait_until(lambda: len(read_executions(execs_path)) == 2, timeout=40, what="the crashed run to restart")
    recovery = read_executions(execs_path)[1].t - killed_at
    waiting = sum(1 for rid in backlog if not store.get(rid).terminal)
    print(f"\ncrashed run restarted {recovery:.2f} s after the kill, {waiting} backlog runs still waiting")
    assert recovery <= RECOVERY_BOUND_S, f"restarted after {recovery:.1f} s (bound {RECOVERY_BOUND_S} s)"
    assert wait_status(store, crashed, {"succeeded", "failed"}).status.value == "succeeded"
    wait_all_terminal(store, backlog, timeout=40)


def test_a_script_that_kills_its_worker_is_dead_lettered_after_three_deaths(
    deploy, store, workers, tmp_path: Path, no_script_left
) -> None:  # type: ignore[no-untyped-def]
    pid_file = tmp_path / "worker.pid"
    execs_path = tmp_path / "executions"
    deploy(
        "suicidal",
        {"run.sh": side_effect(execs_path, "start") + f'kill -9 "$(cat {pid_file})"\nsleep 30\n'},
        {"max_retries": 5, "retry_backoff": {"min": 0.1, "max": 0.1}},
    )
    deploy("fine", {"run.sh": "echo fine\n"})
    run_id = enqueue(store, "suicidal")
    # when: a worker picks it up (and dies of it), again and again; each dead one is replaced
    recoveries = []
    died_at: float | None = None
    for _ in range(4):
        attempts_seen = len(read_executions(execs_path))
        role = workers(1, instance="host", **FAST_RECOVERY)
        pid_file.write_text(f"{role.pid}\n")  # before it can fetch: it is still importing
        if died_at is not None:
            wait_until(
                lambda n=attempts_seen: len(read_executions(execs_path)) > n or store.get(run_id).terminal,
                timeout=30,
                what="the next attempt or the end",
            )
            recoveries.append(time.time() - died_at)
        if store.get(run_id).terminal:
            break
        wait_until(lambda role=role: not role.alive(), timeout=30, what="the script to kill its worker")
        died_at = time.time()
    # then: it ran as attempts 1, 2, 3 and was dead-lettered with the reason
    run = wait_status(store, run_id, {"failed", "succeeded", "cancelled"}, timeout=30)
    assert [e.attempt for e in read_executions(execs_path)] == [1, 2, 3]
    assert run.status.value == "failed"
    assert run.deaths == 3 and run.attempt == 3, (run.deaths, run.attempt)
    assert "died 3 times" in (run.error or ""), run.error
    assert store.r.zscore(Keys().dead_letters, run_id) is not None
    assert role.alive(), "the last worker was killed although the run was dead-lettered"
    # and the worker that is left still runs good work, and no `sleep 30` of a dead worker is left
    good = wait_status(store, enqueue(store, "fine"), {"succeeded", "failed"})
    assert good.status.value == "succeeded"
    assert ("INFO", "fine") in log_lines(store, good.id)
    wait_until(lambda: not no_script_left(), timeout=15, what="the dead workers' scripts to be reaped")
    print(f"\nself-killing script: recovery after each worker death {[round(s, 2) for s in recoveries]} s")


def _signal_pending(pid: int, sig: int) -> bool:
    """Whether ``sig`` is sent to ``pid`` but not delivered yet (/proc/<pid>/status ShdPnd)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("ShdPnd:"):
            return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False


# A second signal sent while the first is still pending would merge with it (the kernel does not
# queue a pending signal twice), so the shortest gap is "as soon as the first was delivered".
@pytest.mark.parametrize("gap_s", [0.0, 0.3], ids=["right-after-delivery", "300ms-apart"])
def test_second_sigterm_kills_stubborn_scripts_at_once_and_loses_no_run(
    deploy, store, workers, tmp_path: Path, no_script_left, gap_s: float
) -> None:  # type: ignore[no-untyped-def]
    execs_path = tmp_path / "executions"
    stubborn = (
        "trap '' TERM\n"
        + side_effect(execs_path, "start")
        + '[ "$JOBYARD_ATTEMPT" = 1 ] && while :; do sleep 0.05; done\n'
        + side_effect(execs_path, "end")
    )
    deploy("stubborn", {"run.sh": stubborn}, {"stopping_wait_time": 60})
    deploy("quick", {"run.sh": side_effect(execs_path, "end")})
    first = workers(2, instance="first")
    stubborn_ids = [enqueue(store, "stubborn") for _ in range(2)]
    for rid in stubborn_ids:
        wait_status(store, rid, {"running"})
    wait_until(lambda: len(read_executions(execs_path)) == 2, what="both scripts to start")
    queued = [enqueue(store, "quick") for _ in range(3)]  # waiting: no slot is free
    # when: SIGTERM twice
    first.signal(signal.SIGTERM)
    wait_until(lambda: not _signal_pending(first.pid, signal.SIGTERM), interval=0.001, what="delivery")
    if gap_s:
        time.sleep(gap_s)  # the pace of the fault (Ctrl-C pressed twice), not a synchronisation
    second_at = time.monotonic()
    first.signal(signal.SIGTERM)
    # then: the scripts are killed at once (not after their 60 s stopping wait) and the worker exits
    try:
        wait_until(lambda: not no_script_left(), timeout=10, what="the stubborn scripts to be killed")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nworker log:\n{first.output()}") from None
    killed_after = time.monotonic() - second_at
    wait_until(lambda: not first.alive(), timeout=10, what="the worker to exit")
    exited_after = time.monotonic() - second_at
    for rid in stubborn_ids:
        back = store.get(rid)
        assert back.status.value == "queued" and back.failures == 0 and back.attempt == 1, back
    # and a second worker finishes every run: the stubborn ones as their next attempt
    workers(2, instance="second")
    for rid in stubborn_ids:
        run = wait_status(store, rid, {"succeeded", "failed", "cancelled"})
        assert run.status.value == "succeeded" and run.attempt == 2 and run.worker == "second", run
    for rid in queued:  # (test_a_stopping_worker_takes_no_new_runs checks who ran them)
        run = wait_status(store, rid, {"succeeded", "failed", "cancelled"})
        assert run.status.value == "succeeded", run
    ends = Counter(e.run_id for e in read_executions(execs_path) if e.tag == "end")
    assert ends == Counter(stubborn_ids + queued)  # each reached its end once
    print(
        f"\ndouble SIGTERM ({gap_s} s apart): scripts gone after {killed_after:.2f} s, "
        f"worker exited after {exited_after:.2f} s"
    )


def test_a_stopping_worker_takes_no_new_runs(deploy, store, workers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    execs_path = tmp_path / "executions"
    polite = 'while [ ! -f "$JOBYARD_SHUTDOWN_FILE" ]; do sleep 0.02; done\n'
    deploy("polite", {"run.sh": polite}, {"stopping_wait_time": 5})
    deploy("waiting", {"run.sh": side_effect(execs_path, "start") + "sleep 1\n"})
    first = workers(1, instance="first")
    busy = enqueue(store, "polite")
    wait_status(store, busy, {"running"})
    waiting = [enqueue(store, "waiting") for _ in range(3)]
    # when: the worker is asked to stop, and its script ends by itself at once (freeing the slot)
    first.signal(signal.SIGTERM)
    wait_until(lambda: not first.alive(), timeout=20, what="the worker to stop")
    # then: it started none of the waiting runs; another worker runs each as its first attempt
    assert store.get(busy).status.value == "succeeded"
    started_by_first = [e.run_id for e in read_executions(execs_path) if e.instance == "first"]
    workers(1, instance="second")
    for rid in waiting:
        run = wait_status(store, rid, {"succeeded", "failed", "cancelled"})
        assert run.status.value == "succeeded"
    assert not started_by_first, f"the stopping worker started {started_by_first}"
    assert [store.get(rid).attempt for rid in waiting] == [1, 1, 1]


def test_dead_lettering_after_worker_deaths_keeps_the_jobs_history(
    deploy, store, workers, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    pid_file = tmp_path / "worker.pid"
    script = f'[ "$1" = die ] && {{ kill -9 "$(cat {pid_file})"; sleep 30; }}\necho fine\n'
    deploy("keeper", {"run.sh": script}, {"history_size": HISTORY_SIZE})
    # one death is enough to dead-letter here, to keep the test short
    env = {**FAST_RECOVERY, "JOBYARD_MAX_WORKER_DEATHS": "1"}
    first = workers(2, instance="host", **env)
    pid_file.write_text(f"{first.pid}\n")
    # given: more finished runs than the default history size, all kept by the job's own setting
    kept = [enqueue(store, "keeper") for _ in range(KEPT_RUNS)]
    wait_all_terminal(store, kept, timeout=60)
    # when: a run kills its worker and is dead-lettered for it
    doomed = enqueue(store, "keeper", "die")
    wait_until(lambda: not first.alive(), timeout=20, what="the script to kill its worker")
    workers(1, instance="host", **env)
    run = wait_status(store, doomed, {"failed", "succeeded"}, timeout=30)
    assert run.status.value == "failed" and "died 1 times" in (run.error or ""), run
    # then: the job's earlier runs are all still there
    missing = [rid for rid in kept if not store.r.exists(Keys().run(rid))]
    assert not missing, (
        f"{len(missing)} of {KEPT_RUNS} finished runs were deleted (history_size {HISTORY_SIZE})"
    )
