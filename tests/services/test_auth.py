"""Authentication and roles on every /api route, tokens, and the failed-authentication limit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from jobyard import tokens
from tests.helpers import wait_until
from tests.services.conftest import ADMIN_TOKEN, KEYS, Api, Tokens, error_shape

RUN = "01ARZ3NDEKTSV4RRFFQ69G5FAV"  # a well-formed run id that does not exist

# (method, path, role needed, request arguments): every /api route of this package.
ROUTES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("GET", "/api/jobs", "viewer", {}),
    ("GET", "/api/jobs/nojob", "viewer", {}),
    ("GET", "/api/jobs/nojob/settings", "viewer", {}),
    ("GET", "/api/jobs/nojob/runs", "viewer", {}),
    ("GET", f"/api/runs/{RUN}", "viewer", {}),
    ("GET", f"/api/runs/{RUN}/log", "viewer", {}),
    ("GET", f"/api/runs/{RUN}/log/stream", "viewer", {}),
    ("GET", "/api/deadletters", "viewer", {}),
    ("GET", "/api/cluster", "viewer", {}),
    ("POST", "/api/jobs/nojob/runs", "operator", {"json": {}}),
    ("POST", "/api/runs/batch", "operator", {"json": {"runs": [{"job": "nojob"}]}}),
    ("POST", f"/api/runs/{RUN}/cancel", "operator", {}),
    ("POST", f"/api/runs/{RUN}/retry", "operator", {}),
    ("POST", "/api/jobs/nojob/start", "operator", {}),
    ("POST", "/api/jobs/nojob/stop", "operator", {}),
    ("POST", f"/api/deadletters/{RUN}/replay", "operator", {}),
    ("DELETE", f"/api/deadletters/{RUN}", "operator", {}),
    (
        "PUT",
        "/api/jobs/nojob",
        "admin",
        {
            "content": b"echo hi\n",
            "params": {"filename": "run.sh"},
            "headers": {"content-type": "application/octet-stream"},
        },
    ),
    ("DELETE", "/api/jobs/nojob", "admin", {}),
    ("PUT", "/api/jobs/nojob/settings", "admin", {"json": {}}),
    ("GET", "/api/tokens", "admin", {}),
    ("POST", "/api/tokens", "admin", {"json": {"role": "viewer"}}),
    ("DELETE", "/api/tokens/tok_0000000000000000", "admin", {}),
]
BELOW = {"viewer": [], "operator": ["viewer"], "admin": ["viewer", "operator"]}


def _call(
    client: httpx.Client, method: str, path: str, token: str | None, kwargs: dict[str, Any]
) -> httpx.Response:
    headers = dict(kwargs.get("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    rest = {k: v for k, v in kwargs.items() if k != "headers"}
    return client.request(method, path, headers=headers, **rest)


def test_the_table_covers_every_api_route_of_the_snapshot() -> None:
    snapshot = json.loads((Path(__file__).parent / "openapi_routes.json").read_text())
    api_routes = {(m, p) for m, p, _ in snapshot if p.startswith("/api/")}
    tabled = {(m, p.replace("nojob", "{name}").replace(RUN, "{run_id}")) for m, p, _, _ in ROUTES}
    tabled = {(m, p.replace("tok_0000000000000000", "{token_id}")) for m, p in tabled}
    assert api_routes <= tabled, sorted(api_routes - tabled)


@pytest.mark.parametrize(
    ("method", "path", "needed", "kwargs"), ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES]
)
def test_every_route_needs_a_token_and_the_right_role(
    api: Api, role_tokens: Tokens, method: str, path: str, needed: str, kwargs: dict[str, Any]
) -> None:
    with httpx.Client(base_url=api.url, timeout=10) as client:
        # no token, a malformed header, an unknown token: 401 with the error body
        body = error_shape(_call(client, method, path, None, kwargs), 401)
        assert "Bearer" in body["detail"]
        error_shape(client.request(method, path, headers={"Authorization": "Basic eDp5"}), 401)
        error_shape(_call(client, method, path, "jy_" + "x" * 43, kwargs), 401)
        # a role below the one needed: 403 that names the role needed
        for role in BELOW[needed]:
            body = error_shape(_call(client, method, path, role_tokens.of(role), kwargs), 403)
            assert needed in body["detail"]
        # the role needed (and the bootstrap admin) get past authentication
        for token in (role_tokens.of(needed), ADMIN_TOKEN):
            response = _call(client, method, path, token, kwargs)
            assert response.status_code not in (401, 403, 500), (response.status_code, response.text)


def test_a_malformed_body_without_a_token_is_401_not_422(api: Api, role_tokens: Tokens) -> None:
    json_type = {"content-type": "application/json"}
    with httpx.Client(base_url=api.url, timeout=10) as client:
        error_shape(client.post("/api/runs/batch", content=b"{nope", headers=json_type), 401)
        authed = {**json_type, "Authorization": f"Bearer {role_tokens.viewer}"}
        error_shape(client.post("/api/runs/batch", content=b"{nope", headers=authed), 422)


def test_probes_and_docs_need_no_token(api: Api) -> None:
    with httpx.Client(base_url=api.url, timeout=10) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200
        assert client.get("/openapi.json").status_code == 200
        assert "swagger" in client.get("/docs").text.lower()


def test_tokens_are_created_once_listed_without_secrets_and_revoked(api: Api, r: redis.Redis) -> None:
    with api.client() as admin:
        created = admin.post("/api/tokens", json={"role": "operator", "name": "ci"})
        assert created.status_code == 201, created.text
        token = created.json()
        assert token["token"].startswith("jy_") and token["role"] == "operator" and token["name"] == "ci"
        # stored hashed: neither the secret nor anything but its sha256 is in Redis
        stored = r.hgetall(KEYS.tokens)
        assert list(stored) == [tokens.hash_token(token["token"]).encode()]
        assert token["token"].encode() not in b"".join(stored.values())

        listed = admin.get("/api/tokens").json()["tokens"]
        assert [t["id"] for t in listed] == [token["id"]]
        assert "token" not in listed[0]

        with api.client(token["token"]) as operator:
            assert operator.get("/api/jobs").status_code == 200
            error_shape(operator.get("/api/tokens"), 403)
            # use is recorded off the request path, soon after
            wait_until(
                lambda: admin.get("/api/tokens").json()["tokens"][0]["last_used_at"],
                timeout=3,
                what="last_used_at",
            )
            revoked = admin.delete(f"/api/tokens/{token['id']}")
            assert revoked.status_code == 200 and revoked.json()["revoked"] is True
            # revocation reaches every replica's cache within two seconds
            wait_until(lambda: operator.get("/api/jobs").status_code == 401, timeout=3, what="revocation")
        error_shape(admin.delete("/api/tokens/tok_unknown"), 404)
        assert admin.get("/api/tokens").json()["tokens"][0]["last_used_at"] is not None  # kept by the revoke


def test_a_token_revoked_elsewhere_stops_working_within_the_cache_time(api: Api, r: redis.Redis) -> None:
    # given an operator token the API has just looked up and cached
    secret, record = tokens.create_token(r, KEYS, "operator", "elsewhere")
    with api.client(secret) as operator:
        assert operator.get("/api/jobs").status_code == 200
        # when another replica (or the CLI) revokes it: this process is not told
        tokens.revoke_token(r, KEYS, record.id)
        # then it is refused once the cached lookup is a second old (bounded wait, not a timing test)
        wait_until(lambda: operator.get("/api/jobs").status_code == 401, timeout=3, what="revocation")
        error_shape(operator.post("/api/runs/batch", json={"runs": [{"job": "x"}]}), 401)


def test_token_expiry_and_bad_requests(api: Api, redis_url: str) -> None:
    with api.client() as admin:
        token = admin.post("/api/tokens", json={"role": "viewer", "expires_in_s": 1}).json()
        assert token["expires_at"] is not None
        with api.client(token["token"]) as viewer:
            wait_until(lambda: viewer.get("/api/jobs").status_code == 401, timeout=4, what="expiry")
        body = error_shape(admin.post("/api/tokens", json={"role": "root"}), 422)
        assert "role" in body["error"]
        error_shape(admin.post("/api/tokens", json={"role": "viewer", "expires_in_s": -5}), 422)
        error_shape(admin.post("/api/tokens", json={"role": "viewer", "colour": "red"}), 422)


def test_failed_authentication_is_rate_limited_per_address(redis_url: str, start_api: Any) -> None:
    api = start_api(redis_url, JOBYARD_AUTH_FAILURES_PER_MINUTE="5")
    with httpx.Client(base_url=api.url, timeout=10) as client:
        for _ in range(5):
            error_shape(client.get("/api/jobs", headers={"Authorization": "Bearer wrong"}), 401)
        limited = client.get("/api/jobs", headers={"Authorization": "Bearer wrong"})
        body = error_shape(limited, 429)
        assert int(limited.headers["Retry-After"]) > 0 and body["detail"]["retry_after_s"] > 0
        # once limited, the address is refused even with a good token (that is what stops guessing)
        error_shape(client.get("/api/jobs", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}), 429)
        # an untrusted peer cannot dodge the limit with X-Forwarded-For
        spoofed = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Forwarded-For": "10.1.2.3"}
        error_shape(client.get("/api/jobs", headers=spoofed), 429)
        # probes are never limited
        assert client.get("/healthz").status_code == 200


def test_forwarded_for_counts_only_from_trusted_proxies(redis_url: str, start_api: Any) -> None:
    api = start_api(redis_url, JOBYARD_AUTH_FAILURES_PER_MINUTE="3", JOBYARD_TRUSTED_PROXIES="127.0.0.1")
    with httpx.Client(base_url=api.url, timeout=10) as client:

        def get(forwarded: str, token: str = "wrong") -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": forwarded}
            return client.get("/api/jobs", headers=headers)

        for _ in range(3):
            error_shape(get("203.0.113.7"), 401)
        error_shape(get("203.0.113.7", ADMIN_TOKEN), 429)
        # another client behind the same proxy is not affected
        assert get("198.51.100.9", ADMIN_TOKEN).status_code == 200
        # the client is the first address not of a trusted proxy, read from the nearest hop
        error_shape(get("198.51.100.9, 203.0.113.7", ADMIN_TOKEN), 429)
