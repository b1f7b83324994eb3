"""The API behind a TLS-ending proxy: forwarded headers only from trusted proxies, redirect, HSTS, cookies."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx

from tests.services.conftest import ADMIN_TOKEN, Api

HSTS = "31536000"
FROM_PROXY = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}


def _login(client: httpx.Client, headers: dict[str, str]) -> httpx.Response:
    """Log in to the dashboard as a browser behind ``headers`` would (cookies passed by hand:
    httpx, like a browser, keeps a Secure cookie from going back over plain http)."""
    page = client.get("/login", headers=headers)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, page.text[:300]
    cookie = page.headers["set-cookie"].split(";")[0]
    client.cookies.clear()
    origin = ("https://" if headers.get("X-Forwarded-Proto") == "https" else "http://") + "127.0.0.1"
    return client.post(
        "/login",
        data={"csrf_token": token.group(1), "next": "/", "token": ADMIN_TOKEN},
        headers={**headers, "Origin": f"{origin}:{client.base_url.port}", "Cookie": cookie},
    )


def test_a_trusted_proxy_makes_https_redirects_hsts_and_secure_cookies(
    start_api: Callable[..., Api], redis_url: str
) -> None:
    api = start_api(
        redis_url,
        JOBYARD_TRUSTED_PROXIES="127.0.0.1",
        JOBYARD_HTTPS_REDIRECT="true",
        JOBYARD_HSTS_SECONDS=HSTS,
    )
    with httpx.Client(base_url=api.url, timeout=10) as client:
        # plain http from the proxy without the header: redirected, same path and query, method kept
        plain = client.post("/api/jobs/x/runs?a=1", json={})
        assert plain.status_code == 308, plain.text
        port = api.url.rsplit(":", 1)[1]
        assert plain.headers["location"] == f"https://127.0.0.1:{port}/api/jobs/x/runs?a=1"
        assert "strict-transport-security" not in plain.headers
        # probes and metrics stay on plain http
        for path in ("/healthz", "/readyz", "/metrics"):
            assert client.get(path).status_code == 200, path
        # https as the proxy says: answered, with HSTS and the safe defaults
        proxied = client.get("/api/jobs", headers={**FROM_PROXY, "Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert proxied.status_code == 200, proxied.text
        assert proxied.headers["strict-transport-security"] == f"max-age={HSTS}"
        assert proxied.headers["x-content-type-options"] == "nosniff"
        # the dashboard's session cookie is Secure when the browser came over https
        logged_in = _login(client, FROM_PROXY)
        assert logged_in.status_code in (302, 303), logged_in.text[:300]
        cookie = logged_in.headers["set-cookie"]
        assert "secure" in cookie.lower() and "httponly" in cookie.lower(), cookie


def test_forwarded_headers_from_anyone_else_are_ignored(
    start_api: Callable[..., Api], redis_url: str
) -> None:
    api = start_api(redis_url, JOBYARD_HTTPS_REDIRECT="true", JOBYARD_HSTS_SECONDS=HSTS)
    with httpx.Client(base_url=api.url, timeout=10) as client:
        spoofed = client.get("/api/jobs", headers={**FROM_PROXY, "Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert spoofed.status_code == 308
        assert "strict-transport-security" not in spoofed.headers


def test_plain_http_without_a_proxy_gets_no_secure_cookie_and_no_hsts(
    start_api: Callable[..., Api], redis_url: str
) -> None:
    api = start_api(redis_url, JOBYARD_HSTS_SECONDS=HSTS)
    with httpx.Client(base_url=api.url, timeout=10) as client:
        answer = client.get("/api/jobs", headers={"Authorization": f"Bearer {ADMIN_TOKEN}", **FROM_PROXY})
        assert answer.status_code == 200
        assert "strict-transport-security" not in answer.headers  # the spoofed header changed nothing
        logged_in = _login(client, {})
        assert logged_in.status_code in (302, 303), logged_in.text[:300]
        assert "secure" not in logged_in.headers["set-cookie"].lower()
