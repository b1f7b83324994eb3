"""The batch route's by-hand reading of its common shapes agrees with pydantic's, item for item.

``batch_specs`` either makes the very specs ``BatchRequest`` and ``to_spec`` make, or gives the
body up (``None``) so pydantic answers it; it must never accept what pydantic refuses. Each
field is tried with values of every JSON type and at its limits, alone and in combinations.
"""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

import pytest
from pydantic import ValidationError

from services.routes.run_checks import MAX_BATCH, batch_specs
from services.routes.runs import BatchRequest, _batch_specs

NOW = 1_900_000_000.0
VALUES: dict[str, list[Any]] = {
    "job": ["hello", "a-b_9", "", "no good", "x" * 65, "x" * 64, "hello\n", 5, None, ["hello"]],
    "arguments": [None, [], ["a", "b c"], "one 'two words'", "one 'two", ["a\x00"], [1], ["x"] * 1001, "", 3],
    "priority": [None, "high", "normal", "low", "urgent", "HIGH", 1, True],
    "idempotency_key": [None, "k", "", "k" * 256, "k" * 257, 7, ["k"]],
    "run_at": [
        None,
        "2030-01-31T12:00:00Z",
        "2030-01-31T12:00:00",
        "2030-01-31T12:00:00+02:00",
        "tomorrow",
        5,
    ],
    "delay_s": [None, 0, 0.0, 5, 2.5, -1, 366 * 86400, 366 * 86400 + 1, 10**400, "5", True, float("nan")],
    "timeout_s": [None, 1, 0.5, 0, -2, "3", False, float("inf"), 10**400],
    "env": [{}, {"A": "1", "_b2": ""}, {"1A": "x"}, {"A": 1}, {"A": "x" * (32 * 1024 + 1)}, None, [], "A=1"],
    "callback_url": [None, "https://example.com/hook", "http://h/", "ftp://example.com/x", "", "x" * 2049, 1],
    "max_retries": [None, 0, 3, 100, 101, -1, 2.0, "3", True],
}


def _pydantic(data: Any) -> Any:
    try:
        return _batch_specs(BatchRequest.model_validate(data), now=NOW)
    except ValidationError:
        return "refused"


def _agree(data: Any) -> bool:
    """True when the by-hand reading took the body (and made pydantic's specs)."""
    mine = batch_specs(json.loads(json.dumps(data)), now=NOW)  # what json.loads hands the route
    if mine is None:
        return False
    assert mine == _pydantic(data), data
    return True


def test_each_field_value_alone() -> None:
    for name, values in VALUES.items():
        for value in values:
            _agree({"runs": [{"job": "hello", name: value} if name != "job" else {"job": value}]})


def test_the_common_shapes_are_read_by_hand() -> None:
    item = {
        "job": "hello",
        "arguments": ["a", "b c"],
        "priority": "high",
        "idempotency_key": "k",
        "delay_s": 30,
        "timeout_s": 2.5,
        "env": {"A": "1"},
        "callback_url": "https://example.com/hook",
        "max_retries": 3,
    }
    nulls = {name: None for name in VALUES if name not in ("job", "env")}
    for data in (item, {**item, "delay_s": None, "run_at": "2030-01-31T12:00:00Z"}, {"job": "x", **nulls}):
        assert _agree({"runs": [{"job": "hello"}, data]}), data


def test_fields_in_combination() -> None:
    rng = random.Random(7)
    names = list(VALUES)
    for _ in range(3000):
        item = {name: rng.choice(VALUES[name]) for name in rng.sample(names, rng.randint(1, len(names)))}
        if rng.random() < 0.05:
            item["colour"] = "red"
        _agree({"runs": [{"job": "hello"}, item]})


def test_both_times_and_every_pair_of_limits() -> None:
    for run_at, delay in itertools.product(VALUES["run_at"], VALUES["delay_s"]):
        _agree({"runs": [{"job": "hello", "run_at": run_at, "delay_s": delay}]})


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {},
        {"runs": []},
        {"runs": None},
        {"runs": {"job": "hello"}},
        {"runs": [{"job": "hello"}], "extra": 1},
        {"runs": [{"job": "hello"}] * (MAX_BATCH + 1)},
        {"runs": ["hello"]},
        {"runs": [None]},
    ],
)
def test_bodies_of_another_shape_go_to_pydantic(data: Any) -> None:
    assert batch_specs(data, now=NOW) is None
    assert _pydantic(data) == "refused"


def test_a_full_batch_of_the_common_item() -> None:
    data = {"runs": [{"job": "hello"}] * MAX_BATCH}
    assert _agree(data)
