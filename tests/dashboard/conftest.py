"""Fixtures of the dashboard tests: a real API and worker per module, and headless Chromium.

Chromium is Debian's (``/usr/bin/chromium``; ``apt-get install chromium``), driven by the
Playwright Python package; Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.dashboard.system import System
from tests.helpers import REPO, RedisServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """An API and a worker for the whole module, on an emptied Redis (not flushed between tests)."""
    client = redis_server.client()
    client.flushall()
    client.close()
    started = System(redis_server.url, tmp_path_factory.mktemp("dashboard"))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module."""
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if executable is None:
        message = f"{CHROMIUM} is missing (Debian package chromium)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()
    finally:
        playwright.stop()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go (kept by CI as artifacts, ignored by git)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
