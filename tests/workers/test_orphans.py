"""Slot pid files and the orphan reaper: a dead worker's scripts are killed, a live one's are not."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psutil

from tests.helpers import wait_until
from workers.orphans import PidFiles, reap_orphans


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _script() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "300"], start_new_session=True)


def test_slot_files_are_rewritten_in_place_and_blank_when_idle(tmp_path: Path) -> None:
    files = PidFiles(tmp_path / "pids", os.getpid())
    files.track("run-a", 4242)
    files.untrack("run-a")
    files.track("run-b", 4343)  # the same slot file, reused
    paths = sorted((tmp_path / "pids").glob("*.pgid"))
    assert [p.name for p in paths] == [f"{os.getpid()}.0.pgid"]
    assert paths[0].read_text().split()[::3] == ["4343", "run-b"]
    files.track("run-c", 4444)  # two at once: a second file
    assert len(list((tmp_path / "pids").glob("*.pgid"))) == 2
    files.untrack("run-b")
    files.untrack("run-c")
    assert all(not p.read_text().strip() for p in (tmp_path / "pids").glob("*.pgid"))
    files.close()
    assert list((tmp_path / "pids").glob("*.pgid")) == []


def test_reaper_kills_a_dead_workers_groups_only(tmp_path: Path) -> None:
    pid_dir = tmp_path / "pids"
    orphan, kept = _script(), _script()
    try:
        dead = PidFiles(pid_dir, _dead_pid())
        dead.track("run-orphan", orphan.pid)
        idle = PidFiles(pid_dir, _dead_pid())
        idle.track("run-done", 1)
        idle.untrack("run-done")  # a blank file of a dead worker: removed, nothing killed
        alive = PidFiles(pid_dir, os.getppid())  # a live process (the test runner's parent)
        alive.track("run-kept", kept.pid)
        assert reap_orphans(pid_dir) == ["run-orphan"]
        assert orphan.wait(10) == -9
        assert psutil.Process(kept.pid).is_running() and kept.poll() is None
        left = {p.read_text().split()[3] for p in pid_dir.glob("*.pgid") if p.read_text().strip()}
        assert left == {"run-kept"}
        assert len(list(pid_dir.glob("*.pgid"))) == 1
    finally:
        for proc in (orphan, kept):
            proc.kill()
            proc.wait(10)


def test_reaper_still_reads_the_older_per_run_files(tmp_path: Path) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    orphan = _script()
    try:
        (pid_dir / "run-old.pgid").write_text(f"{orphan.pid} {_dead_pid()} 1.0\n")
        assert reap_orphans(pid_dir) == ["run-old"]
        wait_until(lambda: orphan.poll() is not None, timeout=10, what="the orphan to die")
    finally:
        orphan.kill()
        orphan.wait(10)
