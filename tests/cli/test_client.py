"""``jobyard.client`` in-process against a real API and worker, and its packing of folders."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest

from jobyard.client import ApiError, Client, pack_folder
from tests.cli.conftest import EXAMPLES, Stack


def test_pack_folder_is_reproducible_keeps_exec_bits_and_never_follows_symlinks(tmp_path: Path) -> None:
    # given: a folder with a script, a subfolder, a cache, and symlinks pointing out of it
    job = tmp_path / "job"
    (job / "lib").mkdir(parents=True)
    (job / "run.sh").write_text("echo hi\n")
    (job / "run.sh").chmod(0o755)
    (job / "lib" / "data.txt").write_text("data\n")
    (job / "__pycache__").mkdir()
    (job / "__pycache__" / "x.pyc").write_bytes(b"\0")
    outside = tmp_path / "secret.txt"
    outside.write_text("not for the package\n")
    (job / "leak.txt").symlink_to(outside)
    (job / "leakdir").symlink_to(tmp_path)

    # when
    first, second = io.BytesIO(), io.BytesIO()
    pack_folder(job, first)
    os.utime(job / "run.sh", (1, 1))  # a newer mtime must not change the package
    pack_folder(job, second)

    # then
    assert first.getvalue() == second.getvalue()
    with zipfile.ZipFile(first) as zf:
        assert sorted(zf.namelist()) == ["lib/data.txt", "run.sh"]
        assert (zf.getinfo("run.sh").external_attr >> 16) & 0o111
        assert b"not for the package" not in b"".join(zf.read(n) for n in zf.namelist())


def test_deploy_bytes_run_wait_and_result(stack: Stack) -> None:
    with stack.client() as client:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.write(EXAMPLES / "hello-py" / "run.py", "run.py")
        job = client.deploy(buf.getvalue(), name="bytes-py")
        assert job["entry"] == "run.py"
        script = client.deploy(b"echo one-liner $1\n", name="bytes-sh", filename="one.sh")
        assert script["entry"] == "one.sh"

        run = client.run("bytes-py", "a 'b c'")  # a string is split like a shell would
        final = client.wait(run["id"], timeout_s=30)
        assert final["status"] == "succeeded", stack.logs()
        assert final["result"]["args"] == ["a", "b c"]
        assert final["result"]["attempt"] == 1

        lone = client.wait(client.run("bytes-sh", ["x"])["id"], timeout_s=30)
        assert lone["status"] == "succeeded" and "one-liner x" in client.log(lone["id"])


def test_follow_yields_entries_in_order_and_ends_with_the_status(stack: Stack) -> None:
    with stack.client() as client:
        client.deploy(EXAMPLES / "slow")
        run = client.run("slow", ["1"])
        entries = list(client.follow(run["id"]))
        assert client.last_status == "succeeded"
        lines = [e["line"] for e in entries if e["stream"] == "INFO"]
        assert lines[0].startswith("slow: sleeping 1 s") and lines[-1] == "slow: done"
        assert [e["id"] for e in entries] == sorted(e["id"] for e in entries)
        # following a finished run replays its log and ends at once
        assert [e["line"] for e in client.follow(run["id"])] == [e["line"] for e in entries]


def test_cancel_retry_and_idempotency(stack: Stack) -> None:
    with stack.client() as client:
        client.deploy(EXAMPLES / "slow")
        run = client.run("slow", ["30"])
        client.cancel(run["id"])
        assert client.wait(run["id"], timeout_s=30)["status"] == "cancelled"

        again = client.retry(run["id"])
        assert again["id"] != run["id"]
        client.cancel(again["id"])
        assert client.wait(again["id"], timeout_s=30)["status"] == "cancelled"

        first = client.run("slow", ["0"], idempotency_key="once-only")
        second = client.run("slow", ["0"], idempotency_key="once-only")
        assert first["id"] == second["id"]
        assert client.runs("slow", limit=10)[0]["id"] == first["id"]


def test_errors_carry_the_status_and_the_server_message(stack: Stack) -> None:
    with stack.client() as client:
        with pytest.raises(ApiError) as missing:
            client.run("no-such-job")
        assert missing.value.status == 404 and missing.value.error

        with pytest.raises(ApiError) as bad_name:
            client.deploy(b"echo\n", name="bad name!", filename="x.sh")
        assert bad_name.value.status == 422

    with Client(stack.url, "not-a-token") as anonymous, pytest.raises(ApiError) as refused:
        anonymous.jobs()
    assert refused.value.status == 401

    with stack.client() as client, pytest.raises(ApiError) as nothing:
        client.deploy(Path("/nonexistent/folder"))
    assert nothing.value.status == 0


def test_defaults_come_from_the_environment(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBYARD_URL", stack.url + "/")
    monkeypatch.setenv("JOBYARD_TOKEN", stack.token)
    with Client() as client:
        assert client.url == stack.url
        assert isinstance(client.cluster()["workers"], list)
        assert client.ready()
