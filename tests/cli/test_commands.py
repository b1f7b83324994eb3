"""The ``jobyard`` client commands as a user runs them: subprocesses against a real API and worker."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.cli.conftest import EXAMPLES, Stack
from tests.helpers import REPO, free_port


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nout: {result.stdout}\nerr: {result.stderr}"
    return result.stdout


def test_deploy_a_folder_a_zip_and_a_single_script(stack: Stack, tmp_path: Path) -> None:
    # given: a zip of the Python example and a lone shell script
    zip_path = tmp_path / "zipped-py.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.write(EXAMPLES / "hello-py" / "run.py", "run.py")
    script = tmp_path / "lone.sh"
    shutil.copy(EXAMPLES / "hello-sh" / "run.sh", script)

    # when: each is deployed, the name defaulting to the folder or file stem
    ok(stack.cli("deploy", str(EXAMPLES / "hello-sh")))
    ok(stack.cli("deploy", str(zip_path)))
    deployed = json.loads(ok(stack.cli("deploy", str(script), "--json")))
    renamed = stack.cli("deploy", str(script), "--name", "lone-renamed")

    # then
    assert deployed["name"] == "lone" and deployed["entry"] == "lone.sh"
    assert "deployed lone-renamed" in renamed.stderr and renamed.stdout == ""
    jobs = {j["name"]: j for j in json.loads(ok(stack.cli("jobs", "--json")))["jobs"]}
    assert jobs["hello-sh"]["entry"] == "run.sh"
    assert jobs["zipped-py"]["entry"] == "run.py"
    assert {"lone", "lone-renamed"} <= set(jobs)
    table = ok(stack.cli("jobs"))
    assert table.splitlines()[0].split()[:3] == ["NAME", "TYPE", "ENTRY"]
    assert any(line.startswith("zipped-py ") for line in table.splitlines())


def test_run_passes_an_argv_list_and_wait_reports_the_outcome(stack: Stack) -> None:
    ok(stack.cli("deploy", str(EXAMPLES / "hello-sh")))

    run_id = ok(stack.cli("run", "hello-sh", "--", "arg1", "arg 2")).strip()
    with stack.client() as client:
        final = client.wait(run_id, timeout_s=30)
        log = client.log(run_id)
    assert final["status"] == "succeeded", stack.logs()
    assert final["args"] == ["arg1", "arg 2"]
    assert "arg 2: arg 2" in log and "ERR  this line goes to stderr" in log

    waited = stack.cli("run", "hello-sh", "--wait", "--", "x")
    assert waited.returncode == 0, waited.stderr
    assert len(waited.stdout.strip()) == 26  # the run id (a ULID), nothing else on stdout
    assert "succeeded" in waited.stderr

    failed = stack.cli("run", "hello-sh", "--wait", "--json", "--", "--exit=3")
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["exit_code"] == 3
    assert "failed (exit 3)" in failed.stderr


def test_logs_follow_streams_until_the_run_ends(stack: Stack) -> None:
    ok(stack.cli("deploy", str(EXAMPLES / "slow")))
    run_id = ok(stack.cli("run", "slow", "--", "1")).strip()

    followed = stack.cli("logs", "-f", run_id, timeout=60)

    out = ok(followed)
    assert "INFO slow: sleeping 1 s" in out
    assert "INFO slow: done" in out
    assert f"run {run_id} succeeded" in followed.stderr
    # the stored log says the same as the stream
    assert "slow: done" in ok(stack.cli("logs", run_id))


def test_runs_json_lists_newest_first_and_show_one(stack: Stack) -> None:
    ok(stack.cli("deploy", str(EXAMPLES / "hello-py")))
    ids = [ok(stack.cli("run", "hello-py", "--wait", "--", str(i))).strip() for i in range(3)]

    page = json.loads(ok(stack.cli("runs", "hello-py", "--json")))
    assert [r["id"] for r in page["runs"]][:3] == ids[::-1]
    assert all(r["status"] == "succeeded" for r in page["runs"])
    first = json.loads(ok(stack.cli("runs", "hello-py", "--json", "--limit", "1")))
    assert len(first["runs"]) == 1 and first["next"]

    shown = json.loads(ok(stack.cli("show", ids[0], "--json")))
    assert shown["result"]["args"] == ["0"] and shown["result"]["run_id"] == ids[0]
    human = ok(stack.cli("show", ids[0]))
    assert "status:" in human and "succeeded" in human


def test_a_viewer_token_reads_but_cannot_run(stack: Stack) -> None:
    ok(stack.cli("deploy", str(EXAMPLES / "hello-sh")))
    created = stack.cli("token", "create", "--role", "viewer", "--name", "readonly")
    viewer = ok(created).strip()
    assert viewer and "created viewer token" in created.stderr

    refused = stack.cli("run", "hello-sh", token=viewer)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: ") and refused.stdout == ""

    ok(stack.cli("runs", "hello-sh", token=viewer))
    tokens = json.loads(ok(stack.cli("token", "list", "--json")))["tokens"]
    [mine] = [t for t in tokens if t.get("name") == "readonly"]
    assert "token" not in mine  # never the secret again
    ok(stack.cli("token", "revoke", mine["id"]))
    assert stack.cli("runs", "hello-sh", token=viewer).returncode == 1


def test_usage_errors_exit_2_and_api_errors_exit_1(stack: Stack) -> None:
    assert stack.cli("run").returncode == 2  # no job name
    assert stack.cli("run", "hello-sh", "--priority", "urgent").returncode == 2
    assert stack.cli("no-such-command").returncode == 2

    missing = stack.cli("run", "no-such-job")
    assert missing.returncode == 1 and missing.stderr.startswith("error: ")

    away = stack.cli("jobs", url=f"http://127.0.0.1:{free_port()}")
    assert away.returncode == 1 and "cannot reach jobyard" in away.stderr


def test_status_and_dead_letters(stack: Stack) -> None:
    status = json.loads(ok(stack.cli("status", "--json")))
    assert status["workers"] and set(status["queues"]) >= {"high", "normal", "low", "delayed"}
    assert "queues:" in ok(stack.cli("status"))

    ok(stack.cli("deploy", str(EXAMPLES / "fail.sh")))
    failed = stack.cli("run", "fail", "--wait")
    assert failed.returncode == 1 and "failed (exit 3)" in failed.stderr
    run_id = failed.stdout.strip()

    letters = json.loads(ok(stack.cli("dlq", "list", "--json")))["deadletters"]
    assert run_id in [d["run_id"] for d in letters]
    replayed = ok(stack.cli("dlq", "replay", run_id)).strip()
    assert replayed and replayed != run_id

    # the replay fails as well and becomes a dead letter of its own; purge that one
    with stack.client() as client:
        assert client.wait(replayed, timeout_s=30)["status"] == "failed"

    def dead() -> list[str]:
        return [d["run_id"] for d in json.loads(ok(stack.cli("dlq", "--json")))["deadletters"]]

    assert run_id not in dead() and replayed in dead()
    ok(stack.cli("dlq", "purge", replayed))
    assert replayed not in dead()
    assert stack.cli("dlq", "purge", replayed).returncode == 1


def test_schedules_list_pause_and_resume(stack: Stack) -> None:
    ok(stack.cli("deploy", str(EXAMPLES / "ticker")))

    [item] = [
        s for s in json.loads(ok(stack.cli("schedules", "--json")))["schedules"] if s["job"] == "ticker"
    ]
    assert item["expr"] == "*/30 * * * * *" and item["next_fire_time"] and not item["paused"]
    assert any(line.startswith("ticker ") for line in ok(stack.cli("schedules")).splitlines())

    ok(stack.cli("schedules", "pause", "ticker"))
    paused = {s["job"]: s["paused"] for s in json.loads(ok(stack.cli("schedules", "--json")))["schedules"]}
    assert paused["ticker"] is True
    ok(stack.cli("schedules", "resume", "ticker"))
    with stack.client() as client:
        assert client.job("ticker")["paused"] is False
    assert stack.cli("schedules", "pause", "no-such-job").returncode == 1


def test_the_console_script_help_lists_the_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "jobyard", "--help"], capture_output=True, text=True, cwd=str(REPO), check=True
    ).stdout
    for name in (
        "up",
        "api",
        "worker",
        "scheduler",
        "deploy",
        "run",
        "runs",
        "logs",
        "token",
        "dlq",
        "status",
    ):
        assert f"  {name} " in out
