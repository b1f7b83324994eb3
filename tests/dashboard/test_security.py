"""The dashboard's defences, over plain HTTP against real ``jobyard api`` processes (no browser).

Sessions (forgery, logout, revocation), cookies (flags, Secure behind a trusted proxy only), CSRF
and role checks on every form, the login limiter, open redirects, escaping of user data, and the
security headers.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from itsdangerous import URLSafeTimedSerializer

from jobyard.keys import Keys
from jobyard.models import Run, RunStatus, new_run_id
from tests.dashboard.system import ADMIN_TOKEN, System, csrf_of
from tests.helpers import REPO, RedisServer

TEMPLATES = REPO / "services" / "templates"
XSS = "<script>alert(1)</script>"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@pytest.fixture(scope="module")
def api(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """An API (no worker) that trusts no proxy."""
    client = redis_server.client()
    client.flushall()
    client.close()
    started = System(redis_server.url, tmp_path_factory.mktemp("security"), with_worker=False)
    started.deploy("plain", "#!/bin/bash\necho plain\n")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def proxied(
    api: System, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    """A second API on the same Redis that trusts the loopback proxy, with a low login limit."""
    started = System(
        redis_server.url,
        tmp_path_factory.mktemp("proxied"),
        with_worker=False,
        JOBYARD_TRUSTED_PROXIES="127.0.0.1",
        JOBYARD_AUTH_FAILURES_PER_MINUTE="3",
    )
    yield started
    started.stop()


def _login(client: httpx.Client, token: str, next_url: str = "/", **headers: str) -> httpx.Response:
    """Log in through the form; the form's cookie is sent back by hand (it may be Secure)."""
    page = client.get("/login", headers=headers)
    assert page.status_code == 200
    login_cookie = re.search(r"jobyard_login=([^;]+)", page.headers["set-cookie"])
    assert login_cookie, page.headers
    form = {"token": token, "csrf_token": csrf_of(page.text), "next": next_url}
    cookie = {"Cookie": f"jobyard_login={login_cookie.group(1)}"}
    return client.post("/login", data=form, headers={**headers, **cookie})


def test_every_page_needs_a_session(api: System) -> None:
    with httpx.Client(base_url=api.url, timeout=10) as anonymous:
        for path in ("/", "/jobs/plain", "/runs/01ABC", "/cluster", "/runs/01ABC/log.txt"):
            resp = anonymous.get(path)
            assert resp.status_code == 303, path
            assert resp.headers["location"].startswith("/login"), path
        assert (
            anonymous.get("/jobs/plain?before=x").headers["location"]
            == "/login?next=%2Fjobs%2Fplain%3Fbefore%3Dx"
        )
        for path in ("/live/jobs", "/live/cluster", "/live/runs/01ABC", "/live/runs/01ABC/log"):
            resp = anonymous.get(path)
            assert resp.status_code == 401, path
            assert resp.json()["error"] == "not logged in"
        resp = anonymous.post("/jobs/plain/runs", data={"arguments": "x"})
        assert resp.status_code == 303 and resp.headers["location"].startswith("/login")
    assert api.http.get("/api/jobs/plain/runs").json()["runs"] == []


def test_security_headers_on_pages_errors_and_static_files(api: System) -> None:
    client = api.session(ADMIN_TOKEN)
    try:
        for path, status in (("/", 200), ("/cluster", 200), ("/jobs/missing", 404), ("/login", 303)):
            resp = client.get(path)
            assert resp.status_code == status, path
            assert resp.headers["content-security-policy"] == CSP, path
            assert resp.headers["x-frame-options"] == "DENY"
            assert resp.headers["x-content-type-options"] == "nosniff"
            assert resp.headers["cache-control"] == "no-store"
        assert "does not exist" in client.get("/jobs/missing").text
        page = client.get("/").text
        css = re.search(r'href="(/static/app\.css\?v=[0-9a-f]+)"', page)
        assert css, page
        static = client.get(css.group(1))
        assert static.status_code == 200 and static.headers["content-type"].startswith("text/css")
        assert "immutable" in static.headers["cache-control"]
        assert client.get("/static/..%2Fdashboard%2Fsession.py").status_code == 404
        assert client.get("/static/nope.js").status_code == 404
    finally:
        client.close()


def test_templates_have_no_inline_scripts_styles_or_handlers() -> None:
    """The CSP forbids them; a template that relied on one would break silently in browsers."""
    for path in sorted(TEMPLATES.glob("*.html")):
        text = path.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert "src=" in tag, f"{path.name}: inline script {tag}"
        assert not re.search(r"\son[a-z]+\s*=", text), f"{path.name}: inline event handler"
        assert not re.search(r"\sstyle\s*=", text), f"{path.name}: inline style attribute"
        assert "<style" not in text, f"{path.name}: inline style element"


def test_a_session_cannot_be_forged_and_ends_at_logout(api: System, redis_server: RedisServer) -> None:
    client = api.session(ADMIN_TOKEN)
    value = client.cookies["jobyard_session"]
    assert client.get("/").status_code == 200

    def with_cookie(cookie: str) -> int:
        with httpx.Client(base_url=api.url, timeout=10, cookies={"jobyard_session": cookie}) as other:
            return other.get("/").status_code

    assert with_cookie(value) == 200  # a copy works while the session lives...
    tampered = value[:-3] + ("AAA" if not value.endswith("AAA") else "BBB")
    assert with_cookie(tampered) == 303
    payload = URLSafeTimedSerializer(b"not the cluster key", salt="jobyard.dashboard.session")
    assert with_cookie(payload.dumps({"sid": "x", "tid": "bootstrap-admin", "th": "0" * 64})) == 303

    r = redis_server.client()
    sessions = [k for k in r.scan_iter(match=f"{Keys().prefix}:dashboard:session:*")]
    assert sessions and all(0 < r.ttl(k) <= 8 * 3600 for k in sessions)  # idle timeout
    r.close()

    resp = client.post("/logout", data={"csrf_token": csrf_of(client.get("/").text)})
    assert resp.status_code == 303 and resp.headers["location"] == "/login"
    assert with_cookie(value) == 303  # ...and not after logout, even though it is still signed
    client.close()


def test_the_cookie_is_secure_only_over_https_from_a_trusted_proxy(api: System, proxied: System) -> None:
    def session_cookie(system: System, **headers: str) -> str:
        with httpx.Client(base_url=system.url, timeout=10) as client:
            resp = _login(client, ADMIN_TOKEN, **headers)
            assert resp.status_code == 303
            return next(c for c in resp.headers.get_list("set-cookie") if c.startswith("jobyard_session="))

    https = {"X-Forwarded-Proto": "https"}
    plain = session_cookie(api)
    assert "HttpOnly" in plain and "SameSite=strict" in plain and "Path=/" in plain and "Secure" not in plain
    assert "Secure" not in session_cookie(api, **https)  # an untrusted peer cannot claim https
    assert "Secure" in session_cookie(proxied, **https)
    assert "Secure" not in session_cookie(proxied)


def test_failed_logins_are_limited_per_client_address(proxied: System) -> None:
    one, other = {"X-Forwarded-For": "203.0.113.7"}, {"X-Forwarded-For": "203.0.113.8"}
    with httpx.Client(base_url=proxied.url, timeout=10) as client:
        for _ in range(3):
            assert _login(client, "jy_wrong-token-000000000000000000", **one).status_code == 401
        blocked = _login(client, ADMIN_TOKEN, **one)
        assert blocked.status_code == 429 and "Too many failed attempts" in blocked.text
        assert _login(client, ADMIN_TOKEN, **other).status_code == 303


def test_login_refuses_stale_forms_and_foreign_redirects(api: System) -> None:
    with httpx.Client(base_url=api.url, timeout=10) as client:
        resp = client.post("/login", data={"token": ADMIN_TOKEN, "csrf_token": "made-up", "next": "/"})
        assert resp.status_code == 403 and "expired" in resp.text
        for target in (
            "//evil.example/x",
            "https://evil.example/x",
            "/\\evil.example",
            "javascript:alert(1)",
        ):
            client.cookies.clear()
            resp = _login(client, ADMIN_TOKEN, target)
            assert resp.status_code == 303
            assert resp.headers["location"] == "/", target
        client.cookies.clear()
        assert _login(client, ADMIN_TOKEN, "/cluster?before=x").headers["location"] == "/cluster?before=x"


def test_user_data_is_escaped_everywhere(api: System, redis_server: RedisServer) -> None:
    # given: a run whose arguments, error and log lines carry markup (written as a worker would)
    keys = Keys()
    run = Run(id=new_run_id(), job="plain", status=RunStatus.FAILED, args=[XSS], error=XSS, exit_code=1)
    run.enqueued_at = run.started_at = time.time()
    run.ended_at = run.started_at + 1
    r = redis_server.client()
    r.hset(keys.run(run.id), mapping=run.to_hash())
    r.zadd(keys.job_runs("plain"), {run.id: int(run.enqueued_at * 1000)})
    r.xadd(keys.run_log(run.id), {"t": str(time.time()), "s": "ERR", "m": XSS})
    r.close()
    client = api.session(ADMIN_TOKEN)
    try:
        for path in (f"/runs/{run.id}", "/jobs/plain", "/"):
            html = client.get(path).text
            assert "<script>alert" not in html, path
        page = client.get(f"/runs/{run.id}").text
        assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 3  # argument, error, log line
    finally:
        client.close()


def test_roles_are_checked_again_on_every_post(api: System) -> None:
    operator_token, _ = api.token("operator")
    client = api.session(operator_token)
    try:
        page = client.get("/jobs/plain").text
        assert 'id="run-now"' in page and 'name="settings"' not in page and "/delete" not in page
        assert "Deploy a job" not in client.get("/").text
        csrf = csrf_of(page)
        assert (
            client.post("/jobs/plain/settings", data={"csrf_token": csrf, "settings": "{}"}).status_code
            == 403
        )
        assert client.post("/jobs/plain/delete", data={"csrf_token": csrf}).status_code == 403
        upload = {"package": ("x.sh", b"#!/bin/bash\necho x\n", "application/octet-stream")}
        assert client.post("/jobs", data={"csrf_token": csrf}, files=upload).status_code == 403
        resp = client.post("/jobs/plain/runs", data={"csrf_token": csrf, "arguments": "a 'b c'"})
        assert resp.status_code == 303 and resp.headers["location"].startswith("/runs/")
        run = api.http.get(f"/api{resp.headers['location']}").json()
        assert run["args"] == ["a", "b c"] and run["trigger"] == "api"
        assert api.http.get("/api/jobs/plain").json()["name"] == "plain"  # not deleted
    finally:
        client.close()


def test_oversized_and_malformed_forms_are_refused(api: System) -> None:
    client = api.session(ADMIN_TOKEN)
    try:
        csrf = csrf_of(client.get("/jobs/plain").text)
        big = {"csrf_token": csrf, "settings": "x" * (2 * 1024 * 1024)}
        assert client.post("/jobs/plain/settings", data=big).status_code == 413
        # a refused change is a message on the page, not an error page
        resp = client.post("/jobs/plain/settings", data={"csrf_token": csrf, "settings": '{"bogus": 1}'})
        assert resp.status_code == 303
        assert "bogus" in client.get("/jobs/plain").text
        resp = client.post("/jobs/plain/runs", data={"csrf_token": csrf, "arguments": "'unclosed"})
        assert resp.status_code == 303
        assert "quotes" in client.get("/jobs/plain").text
    finally:
        client.close()


def test_deploy_through_the_form_streams_the_upload(api: System, tmp_path: Path) -> None:
    client = api.session(ADMIN_TOKEN)
    try:
        csrf = csrf_of(client.get("/").text)
        upload = {"package": ("hello-world.py", b"print('hello')\n", "text/x-python")}
        resp = client.post("/jobs", data={"csrf_token": csrf}, files=upload)
        assert resp.status_code == 303 and resp.headers["location"] == "/jobs/hello-world"
        job = api.http.get("/api/jobs/hello-world").json()
        assert job["entry"] == "hello-world.py" and job["type"] == "triggered"
        bad = {"package": ("x.zip", b"not a zip", "application/zip")}
        resp = client.post("/jobs", data={"csrf_token": csrf, "name": "broken"}, files=bad)
        assert resp.status_code == 303
        assert "zip" in client.get(resp.headers["location"]).text.lower()
        assert api.http.get("/api/jobs/broken").status_code == 404
    finally:
        client.close()
