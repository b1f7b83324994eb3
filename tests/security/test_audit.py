"""Every admin action is in the audit log with who, what and when; only admins read it."""

from __future__ import annotations

from collections.abc import Callable

import redis

from jobyard import secrets
from jobyard.keys import Keys
from tests.services.conftest import ADMIN_TOKEN, Api, error_shape

KEYS = Keys()
SCRIPT = {"content": b"echo hi\n", "params": {"filename": "run.sh"}}
OCTETS = {"content-type": "application/octet-stream"}


def test_admin_actions_are_audited_with_who_what_and_when(
    start_api: Callable[..., Api], redis_url: str, r: redis.Redis
) -> None:
    api = start_api(redis_url, JOBYARD_SECRET_KEY=secrets.new_key())
    with api.client() as boot:
        made = boot.post("/api/tokens", json={"role": "admin", "name": "release-bot"}).json()
        viewer = boot.post("/api/tokens", json={"role": "viewer", "name": "dash"}).json()
    # when: an admin token deploys, configures, sets a secret, revokes, deletes; a viewer tries to
    with api.client(made["token"]) as admin, api.client(viewer["token"]) as lesser:
        assert admin.put("/api/jobs/audited", headers=OCTETS, **SCRIPT).status_code == 201
        assert admin.put("/api/jobs/audited/settings", json={"timeout": 30}).status_code == 200
        put = admin.put("/api/jobs/audited/secrets/API_KEY", json={"value": "v-do-not-log-me"})
        assert put.status_code == 201
        error_shape(lesser.put("/api/jobs/audited", headers=OCTETS, **SCRIPT), 403)
        error_shape(lesser.get("/api/audit"), 403)
        assert admin.post("/api/jobs/audited/runs", json={}).status_code == 202  # operator-level: not audited
        assert admin.delete(f"/api/tokens/{viewer['id']}").status_code == 200
        assert admin.delete("/api/jobs/audited").status_code == 200
        with api.client("jy_" + "x" * 40) as stranger:
            error_shape(stranger.delete("/api/jobs/audited"), 401)  # no identity: not audited

        # then: the log lists them, newest first, with the acting token
        page = admin.get("/api/audit").json()
    events = page["events"]
    got = [(e["action"], e["status"], e["actor"]["name"], e["target"]) for e in events]
    assert got == [
        ("deleteJob", 200, "release-bot", "name=audited"),
        ("revokeToken", 200, "release-bot", f"token_id={viewer['id']}"),
        ("deployJob", 403, "dash", "name=audited"),
        ("putJobSecret", 201, "release-bot", "key=API_KEY name=audited"),
        ("putJobSettings", 200, "release-bot", "name=audited"),
        ("deployJob", 201, "release-bot", "name=audited"),
        ("createToken", 201, "bootstrap admin", ""),
        ("createToken", 201, "bootstrap admin", ""),
    ], got
    first = events[0]
    assert first["actor"] == {"id": made["id"], "name": "release-bot", "role": "admin"}
    assert first["method"] == "DELETE" and first["path"] == "/api/jobs/audited"
    assert first["address"] == "127.0.0.1" and first["time"].endswith("Z")
    # no body reaches the log: neither the secret value nor a token secret
    raw = str(r.xrange(KEYS.audit))
    assert "v-do-not-log-me" not in raw and made["token"] not in raw and ADMIN_TOKEN not in raw

    # and it pages
    with api.client() as boot:
        first_page = boot.get("/api/audit", params={"limit": 3}).json()
        assert len(first_page["events"]) == 3 and first_page["next"]
        rest = boot.get("/api/audit", params={"limit": 10, "before": first_page["next"]}).json()
        assert [e["id"] for e in first_page["events"] + rest["events"]] == [e["id"] for e in events]
        assert rest["next"] is None
        error_shape(boot.get("/api/audit", params={"before": "yesterday"}), 422)


def test_the_audit_stream_is_capped(start_api: Callable[..., Api], redis_url: str, r: redis.Redis) -> None:
    api = start_api(redis_url, JOBYARD_AUDIT_MAX_EVENTS="10")
    with api.client() as boot:
        for i in range(300):
            assert boot.put(f"/api/jobs/j{i % 3}/settings", json={}).status_code == 404
    # approximate trimming keeps it near the cap (whole stream nodes are dropped), never growing
    assert 10 <= r.xlen(KEYS.audit) < 200, r.xlen(KEYS.audit)
