"""The enqueue routes' fast path (``services.fastroute``) answers exactly as FastAPI's own handler.

A body sent with ``Transfer-Encoding: chunked`` (no ``Content-Length``) never takes the fast
path, so each request below goes twice through the same real API process, once each way, and
the answers must match: status, error body, and the run (but for its id and times). The cases
are the shapes a client can get wrong (content types, JSON, fields, headers, tokens, jobs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from starlette.requests import Request

from jobyard.models import JobType
from jobyard.settings import Settings
from services.app import create_app
from services.fastroute import FastPaths, NotFast
from services.routes import runs
from tests.services.conftest import ADMIN_TOKEN, Api, Tokens, put_job

JSON = "application/json"
VARIES = {"id", "enqueued_at", "scheduled_for"}  # differ between two runs made from one request
DEEP = b"[" * 100_000 + b"]" * 100_000  # deeper than json.loads recurses

SINGLE_CASES: list[tuple[str, bytes, str | None, dict[str, str]]] = [
    ("empty body", b"", None, {}),
    ("empty body, json type", b"", JSON, {}),
    ("empty object", b"{}", JSON, {}),
    ("charset", b"{}", "application/json; charset=utf-8", {}),
    ("upper-case type", b"{}", "Application/JSON", {}),
    ("+json type", b"{}", "application/vnd.api+json", {}),
    ("no type", b"{}", None, {}),
    ("text type", b"{}", "text/plain", {}),
    ("null", b"null", JSON, {}),
    ("a list", b"[]", JSON, {}),
    ("a number", b"1", JSON, {}),
    ("not json", b"{nope", JSON, {}),
    ("not utf-8", b"\xff\xfe{", JSON, {}),
    ("nested too deep", DEEP, JSON, {}),
    ("NaN", b'{"delay_s": NaN}', JSON, {}),
    ("arguments", b'{"arguments": ["a", "b c"], "priority": "high", "env": {"A": "1"}}', JSON, {}),
    ("argument string", b'{"arguments": "one \'two words\'"}', JSON, {}),
    ("unbalanced quote", b'{"arguments": "one \'two"}', JSON, {}),
    ("NUL argument", b'{"arguments": ["a\\u0000"]}', JSON, {}),
    ("bad priority", b'{"priority": "urgent"}', JSON, {}),
    ("unknown field", b'{"colour": "red"}', JSON, {}),
    ("bad run_at", b'{"run_at": "tomorrow"}', JSON, {}),
    ("run_at and delay", b'{"run_at": "2099-01-01T00:00:00Z", "delay_s": 5}', JSON, {}),
    ("negative delay", b'{"delay_s": -1}', JSON, {}),
    ("delay", b'{"delay_s": 3600, "timeout_s": 2.5, "max_retries": 3}', JSON, {}),
    ("bad env name", b'{"env": {"1A": "x"}}', JSON, {}),
    ("bad callback", b'{"callback_url": "ftp://example.com/x"}', JSON, {}),
    ("callback", b'{"callback_url": "https://example.com/hook"}', JSON, {}),
    ("too many retries", b'{"max_retries": 101}', JSON, {}),
    ("empty idempotency key", b'{"idempotency_key": ""}', JSON, {}),
    ("keys differ", b'{"idempotency_key": "a"}', JSON, {"Idempotency-Key": "b"}),
    ("header key too long", b"{}", JSON, {"Idempotency-Key": "k" * 257}),
    ("duplicate field", b'{"priority": "low", "priority": "high"}', JSON, {}),
]

BATCH_CASES: list[tuple[str, bytes, str | None]] = [
    ("empty body", b"", JSON),
    ("empty object", b"{}", JSON),
    ("no runs", b'{"runs": []}', JSON),
    ("not json", b'{"runs": [', JSON),
    ("text type", b'{"runs": [{"job": "hello"}]}', "text/plain"),
    (
        "two jobs",
        b'{"runs": [{"job": "hello"}, {"job": "other", "priority": "low"}, {"job": "hello"}]}',
        JSON,
    ),
    ("bad job name", b'{"runs": [{"job": "hello"}, {"job": "no good"}]}', JSON),
    ("missing job", b'{"runs": [{"job": "hello"}, {"job": "ghost"}]}', JSON),
    ("continuous job", b'{"runs": [{"job": "forever"}]}', JSON),
    ("bad item field", b'{"runs": [{"job": "hello", "delay_s": -3}]}', JSON),
    ("item keys", b'{"runs": [{"job": "hello", "arguments": "x \'y"}]}', JSON),
    ("too many", b'{"runs": [' + b",".join([b'{"job": "hello"}'] * 1001) + b"]}", JSON),
    # the shapes the fast handler reads by hand (services.routes.run_checks), and near misses
    (
        "every field",
        b'{"runs": [{"job": "hello", "arguments": ["a", "b c"], "priority": "high", "delay_s": 60,'
        b' "timeout_s": 2.5, "env": {"A": "1"}, "callback_url": "https://example.com/h",'
        b' "max_retries": 3}, {"job": "other", "arguments": "x \'y z\'", "run_at": "2099-01-01T00:00:00Z"}]}',
        JSON,
    ),
    (
        "null fields",
        b'{"runs": [{"job": "hello", "priority": null, "arguments": null, "delay_s": null}]}',
        JSON,
    ),
    ("null env", b'{"runs": [{"job": "hello", "env": null}]}', JSON),
    ("numeric string", b'{"runs": [{"job": "hello", "timeout_s": "5"}]}', JSON),
    ("bool retries", b'{"runs": [{"job": "hello", "max_retries": true}]}', JSON),
    ("huge delay", b'{"runs": [{"job": "hello", "delay_s": 1' + b"0" * 400 + b"}]}", JSON),
    ("both times", b'{"runs": [{"job": "hello", "run_at": "2099-01-01T00:00:00Z", "delay_s": 5}]}', JSON),
    ("extra top field", b'{"runs": [{"job": "hello"}], "dry_run": true}', JSON),
]


def _chunks(body: bytes) -> Iterator[bytes]:
    yield body


def _send(
    client: httpx.Client, path: str, body: bytes, headers: dict[str, str], chunked: bool
) -> httpx.Response:
    if chunked:
        return client.post(path, content=_chunks(body), headers=headers)
    return client.post(path, content=body, headers=headers)


def _comparable(response: httpx.Response) -> tuple[int, Any, str | None]:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    location = response.headers.get("location")

    def strip(item: Any) -> Any:
        if isinstance(item, dict) and "status" in item and "job" in item:
            return {k: v for k, v in item.items() if k not in VARIES}
        return item

    if isinstance(body, dict) and isinstance(body.get("runs"), list):
        body = {**body, "runs": [strip(item) for item in body["runs"]]}
    else:
        body = strip(body)
    return response.status_code, body, None if location is None else location.rsplit("/", 1)[0]


def _both_ways(client: httpx.Client, path: str, body: bytes, headers: dict[str, str]) -> tuple[Any, Any]:
    sized = _send(client, path, body, headers, chunked=False)
    chunked = _send(client, path, body, headers, chunked=True)
    assert sized.headers.get("content-type") == chunked.headers.get("content-type")
    return _comparable(sized), _comparable(chunked)


@pytest.fixture
def jobs(r: redis.Redis, redis_url: str) -> None:
    put_job(r, "hello", settings={"priority": "low", "timeout": 60})
    put_job(r, "other")
    put_job(r, "forever", job_type=JobType.CONTINUOUS)


@pytest.mark.parametrize(
    ("case", "body", "content_type", "extra"), SINGLE_CASES, ids=[c[0] for c in SINGLE_CASES]
)
def test_single_enqueue_answers_the_same_both_ways(
    api: Api, jobs: None, case: str, body: bytes, content_type: str | None, extra: dict[str, str]
) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", **extra}
    if content_type is not None:
        headers["Content-Type"] = content_type
    with httpx.Client(base_url=api.url, timeout=30) as client:
        fast, slow = _both_ways(client, "/api/jobs/hello/runs", body, headers)
    assert fast == slow


@pytest.mark.parametrize(("case", "body", "content_type"), BATCH_CASES, ids=[c[0] for c in BATCH_CASES])
def test_batch_enqueue_answers_the_same_both_ways(
    api: Api, jobs: None, case: str, body: bytes, content_type: str | None
) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    with httpx.Client(base_url=api.url, timeout=30) as client:
        fast, slow = _both_ways(client, "/api/runs/batch", body, headers)
    assert fast == slow


@pytest.mark.parametrize(
    "path", ["/api/jobs/ghost/runs", "/api/jobs/forever/runs", "/api/jobs/no%20good/runs"]
)
def test_job_errors_are_the_same_both_ways(api: Api, jobs: None, path: str) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": JSON}
    with httpx.Client(base_url=api.url, timeout=30) as client:
        fast, slow = _both_ways(client, path, b'{"arguments": ["x"]}', headers)
    assert fast == slow and fast[0] in (404, 409, 422)


@pytest.mark.parametrize("who", ["none", "malformed", "unknown", "viewer", "operator", "admin"])
@pytest.mark.parametrize(
    "body", [b"{}", b"{nope", b'{"priority": "urgent"}'], ids=["ok", "not-json", "invalid"]
)
def test_authentication_answers_are_the_same_both_ways(
    api: Api, jobs: None, role_tokens: Tokens, who: str, body: bytes
) -> None:
    header = {
        "none": None,
        "malformed": "Basic eDp5",
        "unknown": "Bearer jy_" + "x" * 43,
    }.get(who, f"Bearer {role_tokens.of(who)}" if who in ("viewer", "operator", "admin") else None)
    headers = {"Content-Type": JSON}
    if header is not None:
        headers["Authorization"] = header
    with httpx.Client(base_url=api.url, timeout=30) as client:
        for path, payload in (("/api/jobs/hello/runs", body), ("/api/runs/batch", b'{"runs": [%s]}' % body)):
            fast, slow = _both_ways(client, path, payload, headers)
            assert fast == slow, path


def test_a_repeated_idempotency_key_is_the_same_both_ways(api: Api, jobs: None) -> None:
    with httpx.Client(base_url=api.url, timeout=30) as client:
        answers = {}
        for chunked in (False, True):
            headers = {
                "Authorization": f"Bearer {ADMIN_TOKEN}",
                "Content-Type": JSON,
                "Idempotency-Key": f"key-{chunked}",
            }
            first = _send(client, "/api/jobs/hello/runs", b"{}", headers, chunked)
            again = _send(client, "/api/jobs/hello/runs", b'{"priority": "high"}', headers, chunked)
            assert first.status_code == 202 and again.status_code == 200
            assert again.json()["id"] == first.json()["id"]
            assert again.json()["idempotency_key"] == f"key-{chunked}"
            answers[chunked] = [_comparable(first), _comparable(again)]
            for _, run, _ in answers[chunked]:
                del run["idempotency_key"]
    assert answers[False] == answers[True]


def test_the_fast_handlers_do_answer_well_formed_requests(jobs: None, redis_url: str, data_dir: Path) -> None:
    # The comparisons above only mean something if a sized, well-formed request takes the fast path.
    app = create_app(Settings(redis_url=redis_url, data_dir=data_dir, admin_token=ADMIN_TOKEN))  # type: ignore[arg-type]
    ctx = app.state.ctx

    def request(path: str, body: bytes, **params: str) -> Request:
        headers = [
            (b"authorization", f"Bearer {ADMIN_TOKEN}".encode()),
            (b"content-type", JSON.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        scope = {"type": "http", "method": "POST", "path": path, "headers": headers, "app": app}
        scope |= {"path_params": params, "query_string": b"", "client": ("127.0.0.1", 1), "state": {}}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        return Request(scope, receive)

    async def scenario() -> tuple[Any, Any]:
        try:
            single = await runs._enqueue_fast(request("/api/jobs/hello/runs", b"{}", name="hello"))
            batch = await runs._enqueue_batch_fast(
                request("/api/runs/batch", b'{"runs": [{"job": "hello"}]}')
            )
            with pytest.raises(NotFast):
                await runs._enqueue_fast(request("/api/jobs/hello/runs", b'{"priority": 1}', name="hello"))
            return single, batch
        finally:
            await ctx.close()

    single, batch = asyncio.run(scenario())
    assert single is not None and single.status_code == 202
    assert batch is not None and batch.status_code == 202
    # and the middleware serves exactly these two routes that way
    served = FastPaths(app, lambda: app)._fast_routes()
    assert sorted(route.operation_id or "" for route, _ in served) == ["enqueueBatch", "enqueueRun"]
