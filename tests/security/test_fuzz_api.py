"""schemathesis against the API's own OpenAPI document, with a token of each role and none.

Every operation gets generated requests (valid and invalid ones); every answer must not be a
500, must not carry a stack trace, and must match the documented status codes, content types
and schemas. Examples are few per operation so the whole module runs in about a minute.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from jobyard import secrets, tokens
from jobyard.keys import Keys
from tests.helpers import RedisServer
from tests.services.conftest import ADMIN_TOKEN, Api, start_api_process

# Requests per operation and generation mode, by role. Fewer where most answers are decided at
# the door: anonymous requests all end at authentication, a viewer's writes at the role check.
MAX_EXAMPLES = {"anonymous": 6, "viewer": 14, "operator": 20, "admin": 25}
ROLES = tuple(MAX_EXAMPLES)
TRACE = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+")


@pytest.fixture(scope="module")
def fuzz_api(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """An API of its own, on a Redis emptied once for the module (failed-auth limit out of the way)."""
    client = redis_server.client()
    client.flushall()
    client.close()
    base = tmp_path_factory.mktemp("fuzz")
    (base / "data").mkdir()
    api = start_api_process(
        redis_server.url,
        base / "data",
        base / "api.log",
        JOBYARD_AUTH_FAILURES_PER_MINUTE="1000000",
        JOBYARD_SECRET_KEY=secrets.new_key(),
    )
    yield api
    api.role.stop()


@pytest.fixture(scope="module")
def role_headers(fuzz_api: Api, redis_server: RedisServer) -> dict[str, dict[str, str]]:
    """The Authorization header of each role (none for anonymous)."""
    client: redis.Redis = redis_server.client()
    try:
        made = {r: tokens.create_token(client, Keys(), r, f"fuzz {r}")[0] for r in ("viewer", "operator")}
    finally:
        client.close()
    made["admin"] = ADMIN_TOKEN
    out = {role: {"Authorization": f"Bearer {secret}"} for role, secret in made.items()}
    out["anonymous"] = {}
    return out


@pytest.fixture(scope="module")
def api_schema(fuzz_api: Api) -> Any:
    """The OpenAPI document the running API serves."""
    schema = schemathesis.openapi.from_url(fuzz_api.url + "/openapi.json")
    schema.config.update(base_url=fuzz_api.url)
    return schema


@schemathesis.check
def no_stack_trace(ctx: Any, response: Any, case: Case) -> bool | None:
    """No answer shows a traceback or a source location."""
    if TRACE.search(response.text or ""):
        raise AssertionError(f"a stack trace in the body of {case.method} {case.formatted_path}")
    return None


# What every answer must satisfy. Left out: positive_data_acceptance and negative_data_rejection,
# which judge how precisely the document describes the *requests* (e.g. a job name's pattern
# is enforced by the server but not declared), not how the server answers.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    no_stack_trace,
]


def _fuzz_operation(
    operation: Any, mode: GenerationMode, headers: dict[str, str], base_url: str, examples: int
) -> None:
    """Up to ``examples`` generated requests of one mode; raises on the first failed check."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
    )
    def run(case: Case) -> None:
        sent = {**(case.headers or {}), **headers}
        if not headers:
            sent.pop("Authorization", None)
        response = case.call(base_url=base_url, headers=sent, timeout=10)
        case.validate_response(response, checks=CHECKS, headers=sent)

    # Unsatisfiable: no invalid request exists for an operation without parameters or body.
    with contextlib.suppress(Unsatisfiable):
        run()


@pytest.mark.parametrize("role", ROLES)
def test_every_route_answers_hostile_input_cleanly(
    role: str, fuzz_api: Api, role_headers: dict[str, dict[str, str]], api_schema: Any
) -> None:
    """Positive and negative requests to every operation: no 500, no traceback, as documented."""
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 25, [op.label for op in operations]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz_operation(operation, mode, role_headers[role], fuzz_api.url, MAX_EXAMPLES[role])
            except (Exception, BaseExceptionGroup) as exc:  # every operation is tried; all reported
                failures.append(f"--- {operation.label} as {role} ({mode.value}):\n{exc}")
    assert not failures, "\n".join(failures)
