"""A real worker process runs deployed scripts: environment, outcomes, logs, errors, history."""

from __future__ import annotations

from pathlib import Path

from jobyard.keys import Keys
from jobyard.queue import build_message
from tests.helpers import wait_until
from tests.workers.conftest import enqueue, log_lines, wait_status

ENV_SCRIPT = """#!/bin/bash
echo "run=$JOBYARD_RUN_ID attempt=$JOBYARD_ATTEMPT name=$WEBJOBS_NAME type=$JOBYARD_JOB_TYPE"
echo "args=$# first=$1 second=$2 webjobs_args=$WEBJOBS_COMMAND_ARGUMENTS"
echo "redis=${JOBYARD_REDIS_URL:-unset} data=$JOBYARD_DATA_PATH instance=$WEBSITE_INSTANCE_ID"
echo "from-settings=$GREETING"
echo "to stderr" >&2
echo '{"ok": true}' > "$JOBYARD_RESULT_FILE"
"""


def test_a_run_gets_its_environment_but_not_jobyards_secrets(deploy, store, workers) -> None:  # type: ignore[no-untyped-def]
    deploy("envy", {"run.sh": ENV_SCRIPT}, {"env": {"GREETING": "hi"}})
    workers(2, instance="host-a")
    run_id = enqueue(store, "envy", "one", "two words")
    run = wait_status(store, run_id, {"succeeded", "failed"})
    assert run.status.value == "succeeded", run.error
    assert run.exit_code == 0
    assert run.result == {"ok": True}
    assert run.attempt == 1
    assert run.worker == "host-a"
    lines = log_lines(store, run_id)
    text = "\n".join(m for _, m in lines)
    assert f"run={run_id} attempt=1 name=envy type=triggered" in text
    assert "args=2 first=one second=two words webjobs_args=one 'two words'" in text
    assert "redis=unset" in text
    assert "instance=host-a" in text
    assert "from-settings=hi" in text
    assert ("ERR", "to stderr") in lines
    assert lines[0][0] == "SYS" and "attempt 1" in lines[0][1]
    assert lines[-1][0] == "SYS" and "exit code 0" in lines[-1][1]


def test_python_and_node_entries_run(deploy, store, workers) -> None:  # type: ignore[no-untyped-def]
    deploy(
        "py",
        {
            "run.py": "import json, os, sys\nprint('py', sys.argv[1:])\n"
            "json.dump({'n': 2}, open(os.environ['JOBYARD_RESULT_FILE'], 'w'))\n"
        },
    )
    deploy("js", {"run.js": "console.log('js', process.argv.slice(2).join(','))\n"})
    workers(2)
    py = wait_status(store, enqueue(store, "py", "a"), {"succeeded", "failed"})
    js = wait_status(store, enqueue(store, "js", "x", "y"), {"succeeded", "failed"})
    assert py.status.value == "succeeded" and py.result == {"n": 2}, py.error
    assert js.status.value == "succeeded", js.error
    assert ("INFO", "js x,y") in log_lines(store, js.id)
    assert ("INFO", "py ['a']") in log_lines(store, py.id)


def test_a_failing_script_records_exit_code_and_last_error_lines(deploy, store, workers) -> None:  # type: ignore[no-untyped-def]
    deploy("bad", {"run.sh": "echo working\necho 'disk full' >&2\nexit 7\n"})
    workers(1)
    run = wait_status(store, enqueue(store, "bad"), {"succeeded", "failed"})
    assert run.status.value == "failed"
    assert run.exit_code == 7
    assert run.error is not None and "exit code 7" in run.error and "disk full" in run.error


def test_a_missing_interpreter_fails_the_run_and_the_worker_lives_on(deploy, store, workers) -> None:  # type: ignore[no-untyped-def]
    deploy("pwsh", {"run.ps1": "Write-Output 'hi'\n"})
    deploy("ok", {"run.sh": "echo fine\n"})
    worker = workers(1)
    run = wait_status(store, enqueue(store, "pwsh"), {"succeeded", "failed"})
    assert run.status.value == "failed"
    assert run.error is not None and "pwsh" in run.error
    assert wait_status(store, enqueue(store, "ok"), {"succeeded", "failed"}).status.value == "succeeded"
    assert worker.alive()


def test_timeout_kills_the_group_and_marks_timed_out(deploy, store, workers) -> None:  # type: ignore[no-untyped-def]
    deploy("slow", {"run.sh": "trap '' TERM\nsleep 300 &\nwait\n"}, {"stopping_wait_time": 0.5})
    workers(1)
    run_id = enqueue(store, "slow", timeout_s=1.0)
    run = wait_status(store, run_id, {"timed_out", "failed", "succeeded"}, timeout=20)
    assert run.status.value == "timed_out"
    assert run.error is not None and "timed out after 1 s" in run.error


def test_history_keeps_the_newest_runs_with_their_logs(deploy, store, workers, r) -> None:  # type: ignore[no-untyped-def]
    deploy("short", {"run.sh": "echo $JOBYARD_RUN_ID\n"}, {"history_size": 3})
    workers(1)
    ids = []
    for _ in range(5):
        ids.append(enqueue(store, "short"))
        wait_status(store, ids[-1], {"succeeded"})
    kept = [x.id for x in store.list_for_job("short", limit=10)]
    assert kept == list(reversed(ids[-3:]))
    k = Keys()
    for old in ids[:2]:
        assert not r.exists(k.run(old)) and not r.exists(k.run_log(old))


def test_a_redelivered_message_of_a_finished_run_is_dropped(
    deploy, store, workers, r, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "count"
    deploy("once", {"run.sh": f"echo x >> {marker}\n"})
    workers(1)
    run_id = enqueue(store, "once")
    wait_status(store, run_id, {"succeeded"})
    # given: the same message delivered again (at-least-once delivery)
    k = Keys()
    redis_id, message = build_message(run_id, "once", "normal")
    r.hset(k.queue_msgs("normal"), redis_id, message)
    r.rpush(k.queue("normal"), redis_id)
    r.lpush(k.wake, "1")
    # then: it is taken and acknowledged, and the script did not run again
    wait_until(
        lambda: not r.hexists(k.queue_msgs("normal"), redis_id), timeout=10, what="the duplicate to be acked"
    )
    assert marker.read_text().count("x") == 1
    assert store.get(run_id).attempt == 1


def test_history_counts_finished_runs_so_a_run_that_just_ended_stays_readable(deploy, store, workers) -> None:  # type: ignore[no-untyped-def]
    deploy("burst", {"run.sh": "true\n"}, {"history_size": 3})
    worker = workers(1)
    # given: more runs queued at once than the history keeps
    ids = [enqueue(store, "burst") for _ in range(8)]
    # when they all run, each one is still there right after it ended
    for rid in ids[-3:]:
        wait_status(store, rid, {"succeeded"})
    kept = {x.id for x in store.list_for_job("burst", limit=10)}
    assert kept == set(ids[-3:])
    assert "unexpected failure" not in worker.output()
