"""Run logs: the text download, and the live event stream (replay, follow, resume, end)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import redis

from jobyard.models import RunStatus
from jobyard.runs import EnqueueSpec, RunStore
from tests.services.conftest import KEYS, Api, error_shape, put_job


def _write(r: redis.Redis, store: RunStore, run_id: str, lines: list[tuple[str, str]]) -> None:
    pipe = r.pipeline()
    store.append_log(pipe, run_id, [(time.time(), stream, text) for stream, text in lines])
    pipe.execute()


def _events(response: httpx.Response) -> Iterator[dict[str, str]]:
    """Parse a server-sent event stream into {"id", "event", "data"} dicts (comments skipped)."""
    event: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            event[name] = value.removeprefix(" ")


def _run(r: redis.Redis, store: RunStore) -> str:
    put_job(r, "talker")
    created = store.create(EnqueueSpec(job="talker"))
    assert created.run_id is not None
    return created.run_id


def test_log_download_is_text_with_times_and_streams(
    admin: httpx.Client, r: redis.Redis, store: RunStore
) -> None:
    run_id = _run(r, store)
    _write(r, store, run_id, [("INFO", "hello"), ("ERR", "oops: ü"), ("SYS", "attempt 1 ended")])
    response = admin.get(f"/api/runs/{run_id}/log")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["content-disposition"] == f'attachment; filename="talker-{run_id}.log"'
    lines = response.text.splitlines()
    assert len(lines) == 3
    assert lines[0].endswith("INFO hello") and lines[0][:4].isdigit() and "Z " in lines[0]
    assert lines[1].endswith("ERR  oops: ü")
    error_shape(admin.get("/api/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV/log"), 404)


def test_long_logs_are_downloaded_whole(admin: httpx.Client, r: redis.Redis, store: RunStore) -> None:
    run_id = _run(r, store)
    _write(r, store, run_id, [("INFO", f"line {i}") for i in range(2500)])
    lines = admin.get(f"/api/runs/{run_id}/log").text.splitlines()
    assert len(lines) == 2500 and lines[-1].endswith("line 2499")


def test_stream_replays_follows_and_ends_when_the_run_ends(api: Api, r: redis.Redis, store: RunStore) -> None:
    run_id = _run(r, store)
    _write(r, store, run_id, [("INFO", "before 1"), ("ERR", "before 2")])
    r.hset(KEYS.run(run_id), "status", "running")

    def finish_later() -> None:
        # when the client has seen the replay: more lines, then the run ends
        seen_replay.wait(10)
        _write(r, store, run_id, [("INFO", "live 1"), ("INFO", "live 2")])
        store.finish(run_id, "talker", RunStatus.SUCCEEDED, exit_code=0)

    seen_replay = threading.Event()
    worker = threading.Thread(target=finish_later, daemon=True)
    worker.start()
    received: list[dict[str, str]] = []
    started = time.monotonic()
    with api.client() as client, client.stream("GET", f"/api/runs/{run_id}/log/stream") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in _events(response):
            received.append(event)
            if len(received) == 2:
                seen_replay.set()
            if event["event"] == "end":
                break
    worker.join(5)
    assert time.monotonic() - started < 10
    lines = [json.loads(e["data"]) for e in received if e["event"] == "line"]
    assert [x["line"] for x in lines] == ["before 1", "before 2", "live 1", "live 2"]
    assert [x["stream"] for x in lines] == ["INFO", "ERR", "INFO", "INFO"]
    assert all(x["t"].endswith("Z") for x in lines)
    assert received[-1] == {"event": "end", "data": json.dumps({"status": "succeeded"})}
    ids = [e["id"] for e in received if e["event"] == "line"]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))

    # resuming after the second entry gives the rest, then the end at once (the run is over)
    with api.client() as client:
        for resume in ({"headers": {"Last-Event-ID": ids[1]}}, {"params": {"after": ids[1]}}):
            with client.stream("GET", f"/api/runs/{run_id}/log/stream", **resume) as response:  # type: ignore[arg-type]
                events = list(_events(response))
            assert [json.loads(e["data"])["line"] for e in events if e["event"] == "line"] == [
                "live 1",
                "live 2",
            ]
            assert events[-1]["event"] == "end"
        error_shape(client.get(f"/api/runs/{run_id}/log/stream", params={"after": "nonsense"}), 422)
        error_shape(client.get("/api/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV/log/stream"), 404)


def test_stream_of_a_cancelled_queued_run_ends_at_once(
    admin: httpx.Client, r: redis.Redis, store: RunStore
) -> None:
    run_id = _run(r, store)
    assert admin.post(f"/api/runs/{run_id}/cancel").status_code == 200
    with admin.stream("GET", f"/api/runs/{run_id}/log/stream") as response:
        events = list(_events(response))
    assert events == [{"event": "end", "data": json.dumps({"status": "cancelled"})}]
