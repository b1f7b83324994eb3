"""The script runner against real processes: output, groups, deadlines and stops."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import psutil

from tests.helpers import wait_until
from workers.output import RunLog
from workers.runner import ScriptRunner, StopControl, StopReason, group_alive


def make_runner(
    tmp_path: Path,
    script: str,
    *,
    timeout_s: float | None = None,
    wait_s: float = 2.0,
    max_output: int = 10**8,
) -> tuple[ScriptRunner, list[tuple[float, str, str]], StopControl]:
    lines: list[tuple[float, str, str]] = []
    log = RunLog(lines.extend, max_output)
    control = StopControl()
    runner = ScriptRunner(
        ["bash", "-c", script],
        cwd=tmp_path,
        env={
            "PATH": os.environ["PATH"],
            "SHUTDOWN": str(tmp_path / "shutdown"),
            "RESULT": str(tmp_path / "r.json"),
        },
        log=log,
        shutdown_file=tmp_path / "shutdown",
        result_file=tmp_path / "r.json",
        timeout_s=timeout_s,
        stopping_wait_s=wait_s,
        max_line_bytes=64 * 1024,
        max_result_bytes=1024,
        control=control,
    )
    runner._test_log = log  # type: ignore[attr-defined]
    return runner, lines, control


def finish(runner: ScriptRunner, lines: list[tuple[float, str, str]]):  # type: ignore[no-untyped-def]
    outcome = runner.wait()
    runner._test_log.flush()  # type: ignore[attr-defined]
    return outcome


def test_stdout_and_stderr_are_told_apart(tmp_path: Path) -> None:
    runner, lines, _ = make_runner(
        tmp_path, 'echo out; echo err >&2; echo "{\\"n\\": 1}" > "$RESULT"; exit 3'
    )
    runner.start()
    outcome = finish(runner, lines)
    assert outcome.exit_code == 3
    assert ("INFO", "out") in [(s, m) for _, s, m in lines]
    assert ("ERR", "err") in [(s, m) for _, s, m in lines]
    assert outcome.result == {"n": 1}
    assert all(isinstance(t, float) for t, _, _ in lines)


def test_binary_garbage_and_a_huge_line_stay_valid_and_capped(tmp_path: Path) -> None:
    script = (
        f"{sys.executable} -c \"import sys; w=sys.stdout.buffer.write; w(bytes(range(256))*4+b'\\n');"
        " w(b'x'*(50*1024*1024)); w(b'\\n')\""
    )
    runner, lines, _ = make_runner(tmp_path, script, max_output=1024 * 1024)
    runner.start()
    outcome = finish(runner, lines)
    assert outcome.exit_code == 0
    for _, _, m in lines:
        m.encode("utf-8")  # valid text
        assert len(m.encode()) <= 4 * 64 * 1024
    assert any("truncated" in m for _, s, m in lines if s == "SYS")
    assert sum(len(m) for _, _, m in lines) < 2 * 1024 * 1024


def test_children_left_behind_are_killed_with_the_group(tmp_path: Path) -> None:
    runner, lines, _ = make_runner(tmp_path, "sleep 300 & sleep 300 & echo started; exit 0")
    pid = runner.start()
    outcome = finish(runner, lines)
    assert outcome.exit_code == 0
    wait_until(lambda: not group_alive(pid), timeout=5, what="the script's group to be gone")
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] == ["sleep", "300"] and os.getpgid(p.pid) == pid
    ]


def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    runner, lines, _ = make_runner(tmp_path, "trap '' TERM; sleep 300 & wait", timeout_s=0.5, wait_s=0.3)
    pid = runner.start()
    started = time.monotonic()
    outcome = finish(runner, lines)
    assert outcome.stop_reason is StopReason.TIMEOUT
    assert outcome.killed
    assert time.monotonic() - started < 10
    wait_until(lambda: not group_alive(pid), timeout=5, what="the group to be reaped")


def test_stop_writes_the_shutdown_file_and_a_polite_script_ends(tmp_path: Path) -> None:
    script = 'for i in $(seq 200); do [ -f "$SHUTDOWN" ] && { echo bye; exit 0; }; sleep 0.05; done; exit 9'
    runner, lines, control = make_runner(tmp_path, script, wait_s=5)
    runner.start()
    threading.Timer(0.3, control.request, args=(StopReason.SHUTDOWN,)).start()
    outcome = finish(runner, lines)
    assert outcome.stop_reason is StopReason.SHUTDOWN
    assert (tmp_path / "shutdown").exists()
    assert outcome.exit_code == 0
    assert not outcome.killed


def test_stop_kills_a_script_that_ignores_sigterm_after_the_wait(tmp_path: Path) -> None:
    runner, lines, control = make_runner(
        tmp_path, "trap 'echo ignored' TERM; while :; do sleep 0.05; done", wait_s=0.5
    )
    pid = runner.start()
    threading.Timer(0.3, control.request, args=(StopReason.CANCEL,)).start()
    started = time.monotonic()
    outcome = finish(runner, lines)
    assert outcome.killed
    assert outcome.exit_code is not None and outcome.exit_code < 0
    assert 0.4 < time.monotonic() - started < 10
    wait_until(lambda: not group_alive(pid), timeout=5, what="the group to be reaped")
