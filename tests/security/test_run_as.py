"""Scripts under accounts of their own cannot read the worker's secrets or another job's data.

The accounts are made for the test with ``useradd`` (so the test needs root) and removed after.
The data dir lives directly under /tmp: pytest's own temporary directories are private to root,
which no account could pass through.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobyard.runs import RunStore
from tests.helpers import Role, role_env
from tests.workers.conftest import enqueue, log_lines, wait_status

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="needs root and useradd to create the accounts scripts run as",
)

CANARY = "canary-" + secrets.token_hex(8)  # in the worker's environment only

PROBE = """\
#!/bin/sh
worker_pid="$1"; password_file="$2"; other_data="$3"
echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"
cat "/proc/$worker_pid/environ" >/dev/null 2>&1 && echo "LEAK worker environ" || echo "denied worker environ"
cat "$password_file" >/dev/null 2>&1 && echo "LEAK redis password" || echo "denied redis password"
ls "$other_data" >/dev/null 2>&1 && echo "LEAK other data listing" || echo "denied other data listing"
cat "$other_data/secret.txt" >/dev/null 2>&1 && echo "LEAK other data" || echo "denied other data"
jobs="$(dirname "$JOBYARD_DATA_PATH")/.."
ls "$jobs" >/dev/null 2>&1 && echo "LEAK jobs listing" || echo "denied jobs listing"
env | sed "s/^/ENV /"
env | grep -q "^JOBYARD_REDIS" && echo "LEAK redis settings in env" || echo "no redis settings in env"
sudo -n true >/dev/null 2>&1 && echo "LEAK sudo" || echo "no sudo"
rm -f "$JOBYARD_RESULT_FILE" 2>/dev/null && echo "LEAK result file replaced" || echo "result file kept"
echo mine > "$JOBYARD_DATA_PATH/mine.txt" && echo "data path writable"
echo here > ./written && echo "working copy writable"
echo '{"probe": "done"}' > "$JOBYARD_RESULT_FILE"
"""

OWNER = """\
#!/bin/sh
echo "b-secret" > "$JOBYARD_DATA_PATH/secret.txt" && echo "wrote secret"
"""


def _useradd(name: str) -> None:
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def accounts() -> Iterator[tuple[str, str]]:
    """Two fresh unprivileged accounts, deleted at the end."""
    tag = secrets.token_hex(3)
    names = (f"jyt-a-{tag}", f"jyt-b-{tag}")
    made = []
    try:
        for name in names:
            _useradd(name)
            made.append(name)
        yield names
    finally:
        for name in made:
            subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture
def open_data_dir() -> Iterator[Path]:
    """A data dir whose parents an account can pass (/tmp/<random>, 0711)."""
    d = Path(tempfile.mkdtemp(prefix="jobyard-runas-", dir="/tmp"))
    os.chmod(d, 0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def worker_in(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Role]]:
    """Start a worker with its data in a given directory (stopped by pid at the end)."""
    started: list[Role] = []

    def start(data_dir: Path, **extra: str) -> Role:
        env = role_env(redis_url, data_dir, JOBYARD_METRICS_PORT="0", **extra)
        role = Role(["worker", "--concurrency", "2"], env, tmp_path / f"worker-{len(started)}.log")
        started.append(role)
        return role

    yield start
    for role in started:
        role.stop(timeout=15)


def _out(store: RunStore, run_id: str) -> list[str]:
    return [line for stream, line in log_lines(store, run_id) if stream == "INFO"]


def test_a_script_under_run_as_cannot_read_the_worker_its_password_or_another_job(
    deploy: Callable[..., Any],
    worker_in: Callable[..., Role],
    store: RunStore,
    accounts: tuple[str, str],
    open_data_dir: Path,
) -> None:
    user_a, user_b = accounts
    # given: the worker's environment holds a canary, a Redis password file readable by it alone,
    # job "owner" (account B) keeps a secret in its data path, job "probe" runs as account A
    password_file = open_data_dir / "redis.password"
    password_file.write_text("hunter2-redis\n")
    os.chmod(password_file, 0o600)
    deploy("owner", {"run.sh": OWNER}, {"run_as": user_b})
    deploy("probe", {"run.sh": PROBE})
    worker = worker_in(open_data_dir, JOBYARD_RUN_AS=user_a, JOBYARD_SECRET_KEY=CANARY)

    owner_run = wait_status(store, enqueue(store, "owner"), {"succeeded", "failed"}, timeout=30)
    assert owner_run.status.value == "succeeded", (owner_run.error, log_lines(store, owner_run.id))
    other_data = open_data_dir / "jobs" / "owner" / "data"
    assert (other_data / "secret.txt").read_text() == "b-secret\n"

    # when: the probe tries everything
    run_id = enqueue(store, "probe", str(worker.pid), str(password_file), str(other_data))
    run = wait_status(store, run_id, {"succeeded", "failed"}, timeout=30)

    # then: it ran as account A and everything but its own files was refused
    out = _out(store, run_id)
    assert run.status.value == "succeeded", (run.error, log_lines(store, run_id))
    uid_line = out[0]
    assert uid_line.startswith("uid=") and not uid_line.startswith("uid=0 "), uid_line
    assert " 0 " not in f" {uid_line.split('groups=')[1]} ", uid_line  # no root group left
    assert not [line for line in out if line.startswith("LEAK")], out
    for expected in (
        "denied worker environ",
        "denied redis password",
        "denied other data listing",
        "denied other data",
        "denied jobs listing",
        "no sudo",
        "result file kept",
        "data path writable",
        "working copy writable",
    ):
        assert expected in out, (expected, out)
    assert not [line for line in out if CANARY in line], "the worker's environment reached the script"
    assert run.result == {"probe": "done"}
    assert any(f"running as {user_a}" in line for s, line in log_lines(store, run_id) if s == "SYS")
    # the data paths belong to their accounts, 0700
    import pwd

    for job, user in (("probe", user_a), ("owner", user_b)):
        st = (open_data_dir / "jobs" / job / "data").stat()
        assert st.st_uid == pwd.getpwnam(user).pw_uid and st.st_mode & 0o777 == 0o700, (job, oct(st.st_mode))


def test_root_is_never_a_run_as_target(
    deploy: Callable[..., Any],
    worker_in: Callable[..., Role],
    store: RunStore,
    open_data_dir: Path,
    r: redis.Redis,
) -> None:
    from jobyard.errors import InvalidInput
    from jobyard.jobsettings import parse_settings

    with pytest.raises(InvalidInput, match="never run as root"):
        parse_settings(json.dumps({"run_as": "root"}))
    deploy("plain", {"run.sh": "id -u\n"})
    worker_in(open_data_dir, JOBYARD_RUN_AS="root")
    run = wait_status(store, enqueue(store, "plain"), {"succeeded", "failed"}, timeout=30)
    assert run.status.value == "failed"
    assert run.error and "is root" in run.error, run.error
    assert "0" not in _out(store, run.id)  # the script never ran


def test_an_unknown_account_fails_the_run_with_a_clear_error(
    deploy: Callable[..., Any], worker_in: Callable[..., Role], store: RunStore, open_data_dir: Path
) -> None:
    deploy("plain", {"run.sh": "echo hi\n"}, {"run_as": "jyt-nobody-here"})
    worker_in(open_data_dir)
    run = wait_status(store, enqueue(store, "plain"), {"succeeded", "failed"}, timeout=30)
    assert run.status.value == "failed"
    assert run.error and "does not exist on this host" in run.error, run.error


FORK_ONCE_REFUSED = """\
import os, sys, time
for i in range(300):
    try:
        pid = os.fork()
    except OSError as exc:
        print(f"fork {i} refused: {exc}", file=sys.stderr, flush=True)
        sys.exit(3)
    if pid == 0:
        time.sleep(30)
        os._exit(0)
print("forked 300 children: no process limit", flush=True)
"""


def test_without_cgroups_an_account_of_its_own_still_bounds_processes(
    deploy: Callable[..., Any],
    worker_in: Callable[..., Role],
    store: RunStore,
    accounts: tuple[str, str],
    open_data_dir: Path,
) -> None:
    # RLIMIT_NPROC counts the account's processes; root would ignore it, the account cannot
    deploy("forker", {"run.py": FORK_ONCE_REFUSED}, {"max_processes": 20, "run_as": accounts[0]})
    python = shutil.which("python3", path="/usr/bin:/bin") or "python3"
    worker_in(open_data_dir, JOBYARD_CGROUPS="off", JOBYARD_PYTHON=python)
    run = wait_status(store, enqueue(store, "forker"), {"succeeded", "failed"}, timeout=30)
    assert run.status.value == "failed", (run.error, log_lines(store, run.id))
    assert run.error and run.error.startswith("process limit of 20 reached"), run.error
    sys_lines = [line for s, line in log_lines(store, run.id) if s == "SYS"]
    assert any("RLIMIT_NPROC" in line for line in sys_lines), sys_lines
