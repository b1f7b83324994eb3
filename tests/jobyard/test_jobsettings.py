"""settings.job: every field accepted when right and named when wrong."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from jobyard.errors import InvalidInput
from jobyard.jobsettings import FIELDS, effective, parse_settings
from jobyard.settings import Settings

FULL: dict[str, Any] = {
    "schedule": "0 */5 * * * *",
    "is_singleton": True,
    "stopping_wait_time": 30,
    "is_in_place": False,
    "type": "triggered",
    "entry": "bin/start.py",
    "timezone": "Europe/Berlin",
    "timeout": 600,
    "max_retries": 3,
    "retry_backoff": {"min": 5, "max": 120},
    "priority": "high",
    "max_concurrency": 2,
    "overlap": "queue",
    "catch_up": "all",
    "env": {"MODE": "prod", "_X1": ""},
    "history_size": 200,
    "max_memory_mb": 512,
    "max_cpu_seconds": 60,
    "max_open_files": 256,
    "max_processes": 32,
    "max_output_mb": 5,
    "run_as": "jobs",
}


def test_every_field_round_trips() -> None:
    parsed = parse_settings(json.dumps(FULL))
    assert parsed == FULL
    assert set(parsed) == set(FIELDS)


def test_only_the_fields_given_come_back_and_null_means_unset() -> None:
    assert parse_settings('{"schedule": "30 2 * * *", "timeout": null}') == {"schedule": "30 2 * * *"}
    assert parse_settings("{}") == {}
    assert parse_settings({"max_retries": 2}) == {"max_retries": 2}


def test_a_utf8_bom_is_accepted() -> None:
    raw = b"\xef\xbb\xbf" + json.dumps({"is_singleton": True}).encode()
    assert parse_settings(raw) == {"is_singleton": True}
    assert parse_settings("\ufeff{}") == {}
    assert parse_settings('{"timezone": "UTC"}'.encode("utf-16")) == {"timezone": "UTC"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"max_retries": 101}', "settings.job: field 'max_retries': must be <= 100"),
        ('{"max_retries": -1}', "field 'max_retries': must be >= 0"),
        ('{"max_retries": "3"}', "field 'max_retries': must be an integer"),
        ('{"max_retries": 2.5}', "field 'max_retries': must be an integer"),
        ('{"retries": 3}', "settings.job: unknown field 'retries' (did you mean 'max_retries'?)"),
        ('{"zzz": 3}', "settings.job: unknown field 'zzz'"),
        ('{"is_singleton": "yes"}', "field 'is_singleton': must be true or false"),
        ('{"stopping_wait_time": -1}', "field 'stopping_wait_time': must be >= 0"),
        ('{"timeout": 0}', "field 'timeout': must be > 0"),
        ('{"timeout": 1e999}', "field 'timeout': must be a finite number"),
        ('{"type": "daily"}', "field 'type': must be one of 'triggered' or 'continuous'"),
        ('{"priority": "urgent"}', "field 'priority': must be one of 'high', 'normal' or 'low'"),
        ('{"overlap": "never"}', "field 'overlap'"),
        ('{"catch_up": "some"}', "field 'catch_up'"),
        ('{"max_concurrency": 0}', "field 'max_concurrency': must be >= 1"),
        ('{"history_size": 0}', "field 'history_size': must be >= 1"),
        ('{"history_size": 10001}', "field 'history_size': must be <= 10000"),
        ('{"timezone": "Mars/Olympus"}', "field 'timezone': timezone 'Mars/Olympus' is not an IANA"),
        ('{"timezone": "../../etc/passwd"}', "field 'timezone'"),
        ('{"schedule": "0 99 * * *"}', "field 'schedule': "),
        ('{"schedule": "every day"}', "field 'schedule': "),
        ('{"schedule": "  "}', "field 'schedule': is empty"),
        ('{"schedule": 5}', "field 'schedule': must be a string"),
        ('{"entry": "../x.sh"}', "field 'entry'"),
        ('{"entry": "/abs.sh"}', "field 'entry'"),
        ('{"retry_backoff": {"min": 10, "max": 1}}', "field 'retry_backoff': min (10) must be <= max (1)"),
        ('{"retry_backoff": {"min": 1}}', "field 'retry_backoff.max': is required"),
        ('{"retry_backoff": {"min": 1, "max": 2, "jitter": 1}}', "unknown field 'retry_backoff.jitter'"),
        ('{"retry_backoff": 5}', "field 'retry_backoff': must be an object"),
        (
            '{"env": {"JOBYARD_REDIS_URL": "x"}}',
            "field 'env': 'JOBYARD_REDIS_URL' starts with a reserved prefix",
        ),
        ('{"env": {"webjobs_name": "x"}}', "reserved prefix"),
        ('{"env": {"1BAD": "x"}}', "field 'env': '1BAD' is not a variable name"),
        ('{"env": {"A-B": "x"}}', "is not a variable name"),
        ('{"env": {"A": 1}}', "field 'env.A': must be a string"),
        ('{"env": ["A"]}', "field 'env': must be an object"),
        ('{"max_memory_mb": 0}', "field 'max_memory_mb': must be > 0"),
        ('{"max_processes": -5}', "field 'max_processes': must be > 0"),
        ('{"max_open_files": 1.5}', "field 'max_open_files': must be an integer"),
    ],
)
def test_bad_values_name_the_field(raw: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        parse_settings(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "settings.job is not valid JSON"),
        ("", "settings.job is not valid JSON"),
        ('{"timeout": NaN}', "settings.job is not valid JSON"),
        (b"\xff\xfe\x00\xd8", "settings.job is not valid utf-16"),
        (b'{"a": "\xc3\x28"}', "settings.job is not valid UTF-8"),
        ("[1, 2]", "settings.job must be a JSON object, not list"),
        ('"text"', "settings.job must be a JSON object, not str"),
        ('{"timeout": 1, "timeout": 2}', "field 'timeout' is given twice"),
        ('{"env": {"A": "\\ud800"}}', "not plain text"),
        ("[" * 100_000, "settings.job is not valid JSON"),
        ("{}" + " " * 300_000, "larger than"),
    ],
)
def test_not_json(raw: str | bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        parse_settings(raw)


def test_several_problems_are_all_named() -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_settings({"max_retries": 500, "retries": 1, "priority": "x"})
    fields = {d["field"] for d in exc.value.detail}  # type: ignore[attr-defined]
    assert fields == {"max_retries", "retries", "priority"}


def test_schedule_is_checked_in_its_time_zone() -> None:
    assert parse_settings({"schedule": "0 30 2 * * *", "timezone": "America/New_York"})["timezone"] == (
        "America/New_York"
    )
    with pytest.raises(InvalidInput, match="field 'timezone'"):
        parse_settings({"schedule": "0 30 2 * * *", "timezone": "Nowhere/Land"})


def test_effective_fills_the_defaults() -> None:
    cluster = Settings(default_history_size=77, max_output_mb=3.0, default_stopping_wait_seconds=5.0)
    js = effective({"schedule": "*/5 * * * *", "max_retries": 2}, cluster)
    assert js.schedule == "*/5 * * * *"
    assert js.max_retries == 2
    assert js.history_size == 77
    assert js.stopping_wait_time == 5.0
    assert js.overlap == "skip"
    assert js.catch_up == "latest"
    assert js.type == "triggered"
    assert js.priority == "normal"
    assert js.timezone == "UTC"
    assert js.is_singleton is False and js.is_in_place is False
    assert js.env == {}
    assert js.max_output_mb == 3.0
    assert js.timeout is None and js.max_concurrency is None and js.max_memory_mb is None
    assert js.retry_backoff.min <= js.retry_backoff.max
    assert effective({"history_size": 5}, cluster).history_size == 5
