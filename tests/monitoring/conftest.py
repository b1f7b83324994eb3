"""Fixtures of the monitoring tests: promtool and the prometheus server (Debian package ``prometheus``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import IN_CI


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        message = f"{name} is not on PATH (Debian package prometheus: apt-get install prometheus)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return exe


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of ``promtool``; fails in CI, skips elsewhere when missing."""
    return _tool("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    """Path of the ``prometheus`` server binary; fails in CI, skips elsewhere when missing."""
    return _tool("prometheus")


def promtool_check_metrics(promtool: str, text: str | bytes) -> None:
    """Fail with promtool's findings unless ``promtool check metrics`` accepts ``text``."""
    data = text.encode() if isinstance(text, str) else text
    proc = subprocess.run([promtool, "check", "metrics"], input=data, capture_output=True, timeout=30)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()


def run_promtool(promtool: str, *args: str | Path, cwd: Path | None = None) -> str:
    """Run ``promtool args...``; fail with its output unless it exits 0; return the output."""
    proc = subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, timeout=60, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr
