"""Oversized bodies are refused while they stream in, before they are all in the server's memory.

The body is sent chunked (no Content-Length to refuse it by), 64 times the cap; the API's peak
resident memory (VmHWM) must not grow by anything near the body's size, and no part file may
be left in the upload directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.app import MAX_BODY_BYTES
from tests.helpers import RedisServer
from tests.services.conftest import ADMIN_TOKEN, MAX_PACKAGE_BYTES, Api, start_api_process

CHUNK = b"\0" * (64 * 1024)
BODY_BYTES = 6 * MAX_BODY_BYTES  # against the JSON cap (and far over the tests' 1 MB package cap)
SLACK_MB = 8  # what a request may cost besides its body


@pytest.fixture(scope="module")
def upload_api(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One API for the module (each case only sends a body)."""
    base = tmp_path_factory.mktemp("uploads")
    (base / "data").mkdir()
    api = start_api_process(redis_server.url, base / "data", base / "api.log")
    yield api
    api.role.stop()


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def _chunks(total: int) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield CHUNK
        sent += len(CHUNK)


def _send(api: Api, method: str, path: str, content_type: str, token: str | None) -> httpx.Response | None:
    headers = {"content-type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with httpx.Client(base_url=api.url, timeout=30) as client:
            return client.request(method, path, content=_chunks(BODY_BYTES), headers=headers)
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        return None  # the server answered and closed while we were still sending: refused early


@pytest.mark.parametrize(
    ("method", "path", "content_type", "authenticated", "cap"),
    [
        ("PUT", "/api/jobs/big?filename=run.sh", "application/octet-stream", True, MAX_PACKAGE_BYTES),
        ("POST", "/api/runs/batch", "application/json", True, MAX_BODY_BYTES),
        ("POST", "/api/runs/batch", "application/json", False, MAX_BODY_BYTES),
        ("PUT", "/api/jobs/big/settings", "application/json", True, MAX_BODY_BYTES),
    ],
    ids=["package upload", "json body", "json body without a token", "settings"],
)
def test_an_endless_body_is_refused_while_streaming(
    upload_api: Api,
    method: str,
    path: str,
    content_type: str,
    authenticated: bool,
    cap: int,
) -> None:
    api = upload_api
    before = _peak_rss_kb(api.role.pid)
    answer = _send(api, method, path, content_type, ADMIN_TOKEN if authenticated else None)
    if answer is not None:
        assert answer.status_code in (413, 401), answer.text[:300]
        assert answer.headers["content-type"].startswith("application/json")
    grown_mb = (_peak_rss_kb(api.role.pid) - before) / 1024
    # at most the route's cap was ever held, never the whole body
    assert grown_mb < cap / (1024 * 1024) + SLACK_MB, f"peak memory grew by {grown_mb:.0f} MB"
    assert api.role.alive()
    data_dir = Path(api.role.env["JOBYARD_DATA_DIR"])
    assert list(data_dir.glob("uploads/*")) == []
    # and the server still answers
    assert httpx.get(api.url + "/healthz", timeout=5).status_code == 200
