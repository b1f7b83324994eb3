"""Run ids, run hashes and run messages: made by hand for speed, checked against the libraries."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import fields
from enum import StrEnum

from dramatiq import Message
from ulid import ULID

from jobyard.models import Priority, Run, RunStatus, Trigger, new_run_id, new_run_ids
from jobyard.queue import DRAMATIQ_MAX_RETRIES, RUN_ACTOR, build_message, new_message_ids


def test_run_ids_are_ulids_of_now_counting_up_within_a_millisecond() -> None:
    before = time.time()
    ids = new_run_ids(3000)  # enough to carry past the last four digits at least once in a while
    values = [int(ULID.from_str(i)) for i in ids]
    assert [str(ULID.from_str(i)) for i in ids] == ids  # valid, canonical ULID text
    assert values == list(range(values[0], values[0] + 3000))
    assert before - 0.001 <= ULID.from_str(ids[0]).timestamp <= time.time()
    one, two = new_run_id(), new_run_id()
    assert ids[-1] < one < two and len(one) == 26
    assert new_run_ids(0) == []


def test_run_ids_carry_into_the_upper_digits() -> None:
    # the last four digits are worked out per id, the rest once per 2**20 ids: force a carry
    import jobyard.models as models

    ms = time.time_ns() // 1_000_000 + 10_000  # a millisecond no id has used yet
    models._ulid_last = (ms, (1 << 20) - 3)
    original = models.time.time_ns
    models.time.time_ns = lambda: ms * 1_000_000  # type: ignore[assignment]
    try:
        ids = new_run_ids(6)
    finally:
        models.time.time_ns = original  # type: ignore[assignment]
        models._ulid_last = (0, 0)
    assert [int(ULID.from_str(i)) & ((1 << 80) - 1) for i in ids] == list(range((1 << 20) - 2, (1 << 20) + 4))
    assert ids == sorted(ids)


def _to_hash_reference(run: Run) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in fields(run):
        value = getattr(run, f.name)
        if value is None:
            continue
        if f.name in ("args", "env", "result"):
            out[f.name] = json.dumps(value)
        else:
            out[f.name] = str(value.value if isinstance(value, StrEnum) else value)
    return out


def test_run_hash_is_each_field_rendered() -> None:
    runs = [
        Run(id="r1", job="j"),
        Run(
            id="r2",
            job="j",
            status=RunStatus.RUNNING,
            trigger=Trigger.SCHEDULE,
            args=["a", "é", ""],
            priority=Priority.HIGH,
            attempt=2,
            enqueued_at=1.25,
            timeout_s=3.0,
            env={"A": "1"},
            result={"ok": [1, 2]},
            cancel_requested=1,
            exit_code=0,
        ),
        Run(id="r3", job="j", result=0),
        Run(id="r4", job="j", result=""),
        Run(id="r5", job="j", result=[]),
    ]
    for run in runs:
        assert run.to_hash() == _to_hash_reference(run)
        assert Run.from_hash(run.to_hash()) == run


def test_run_message_is_the_text_dramatiq_encodes() -> None:
    for job, level in (("noop", "normal"), ("a-b_c.9", "high"), ('odd "name" é', "low")):
        redis_id, text = build_message("01ARZ3NDEKTSV4RRFFQ69G5FAV", job, level)
        message = Message.decode(text.encode())
        expected = Message(
            queue_name=level,
            actor_name=RUN_ACTOR,
            args=("01ARZ3NDEKTSV4RRFFQ69G5FAV", job),
            kwargs={},
            options={"redis_message_id": redis_id, "max_retries": DRAMATIQ_MAX_RETRIES},
            message_id=message.message_id,
            message_timestamp=message.message_timestamp,
        )
        assert expected.encode().decode() == text
        assert redis_id != message.message_id
        assert abs(message.message_timestamp - time.time() * 1000) < 5000
    _, text = build_message("r", "j", "low", ids=("a", "b"), timestamp_ms=7)
    assert json.loads(text)["options"]["redis_message_id"] == "a"
    assert json.loads(text)["message_id"] == "b" and json.loads(text)["message_timestamp"] == 7


def test_message_ids_are_random_uuid4s() -> None:
    ids = new_message_ids(2000)
    assert len(set(ids)) == 2000
    for text in ids:
        value = uuid.UUID(text)
        assert value.version == 4 and value.variant == uuid.RFC_4122 and str(value) == text


def test_run_as_api_shows_the_fields_and_nothing_else() -> None:
    run = Run(
        id="r1",
        job="j",
        status=RunStatus.SUCCEEDED,
        priority=Priority.LOW,
        args=["a"],
        enqueued_at=1.5,
        started_at=2.0,
        ended_at=4.5,
        env={"B": "secret", "A": "x"},
        result={"deep": [1]},
        cancel_requested=1,
    )
    shown = run.as_api()
    assert list(shown)[: len(fields(Run))] == [f.name for f in fields(Run)]
    assert shown["status"] == "succeeded" and type(shown["status"]) is str
    assert type(shown["priority"]) is str and type(shown["trigger"]) is str
    assert shown["enqueued_at"] == "1970-01-01T00:00:01.500000Z" and shown["scheduled_for"] is None
    assert shown["duration_s"] == 2.5 and shown["cancel_requested"] is True
    assert shown["env"] == ["A", "B"]  # names only
    shown["args"].append("b")
    shown["result"]["deep"].append(2)
    assert run.args == ["a"] and run.result == {"deep": [1]}  # copies, not the record's own
    run.note = "not a field"  # type: ignore[attr-defined]
    assert run.as_api() == {**shown, "args": ["a"], "result": {"deep": [1]}}
