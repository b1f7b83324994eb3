"""The HTTP API is a contract ("extend it, don't rename it"): no route may disappear or be renamed."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.services.conftest import Api

SNAPSHOT = Path(__file__).parent / "openapi_routes.json"


def test_no_route_disappears_or_changes_its_operation_id(api: Api) -> None:
    spec = httpx.get(api.url + "/openapi.json", timeout=10).json()
    live = {
        (method.upper(), path, op.get("operationId"))
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    }
    expected = {tuple(row) for row in json.loads(SNAPSHOT.read_text())}
    missing = sorted(expected - live)  # type: ignore[operator]
    assert not missing, f"routes removed or renamed (extend the API instead): {missing}"


def test_every_route_has_an_operation_id_and_documents_its_errors(api: Api) -> None:
    spec = httpx.get(api.url + "/openapi.json", timeout=10).json()
    ours = {(m, p) for m, p, _ in json.loads(SNAPSHOT.read_text())}
    ids = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op.get("operationId"), (method, path)
            ids.append(op["operationId"])
            if path.startswith("/api/") and (method.upper(), path) in ours:
                assert {"401", "403", "503"} <= set(op["responses"]), (method, path, sorted(op["responses"]))
                assert op.get("security"), (method, path)
    assert len(ids) == len(set(ids)), "operation ids must be unique"
