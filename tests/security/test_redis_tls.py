"""Every role reaches Redis over TLS with a client certificate, as an ACL user limited to its keys.

The CA, the server and the client certificates are made for the test (``tests/security/tls.py``);
the redis-server has no plain-text port and refuses clients without a certificate of that CA.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobyard.errors import Unavailable
from jobyard.redis_conn import connect, connect_async, wait_for_redis
from jobyard.settings import Settings
from tests.helpers import Role, role_env, wait_until
from tests.security.tls import Pki, TlsRedis, make_pki
from tests.services.conftest import Api

PASSWORD = "jy-acl-pass-0123456789"
# The account the roles use: its own keys and channels only, no dangerous commands. "~" (the empty
# key name) because the enqueue script takes "" for its optional keys (idempotency, fire, term).
ACL = f"on >{PASSWORD} ~jobyard:* ~ &jobyard:* +@all -@dangerous +info"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    base = tmp_path_factory.mktemp("tls")
    server = TlsRedis(base / "redis", make_pki(base / "pki"), {"jobyard": ACL})
    server.start()
    yield server
    server.stop()


def _tls_env(server: TlsRedis, pki: Pki | None = None, **extra: str) -> dict[str, str]:
    pki = pki or server.pki
    return {
        "JOBYARD_REDIS_SSL_CA_CERTS": str(pki.ca),
        "JOBYARD_REDIS_SSL_CERTFILE": str(pki.client_cert),
        "JOBYARD_REDIS_SSL_KEYFILE": str(pki.client_key),
        **extra,
    }


def _settings(url: str, **fields: Any) -> Settings:
    return Settings(redis_url=url, redis_connect_timeout_seconds=1, **fields)  # type: ignore[arg-type]


def _url(server: TlsRedis, credentials: str = f"jobyard:{PASSWORD}@") -> str:
    return f"rediss://{credentials}localhost:{server.port}/0"


def test_every_role_works_over_tls_as_an_acl_user(
    tls_redis: TlsRedis, start_api: Callable[..., Api], tmp_path: Path
) -> None:
    url = _url(tls_redis)
    env = _tls_env(tls_redis)
    data = tmp_path / "data"
    data.mkdir()
    api = start_api(url, **env)
    role_environment = role_env(url, data, JOBYARD_METRICS_PORT="0", **env)
    roles = [
        Role(["worker", "--concurrency", "1"], role_environment, tmp_path / "w.log"),
        Role(["scheduler"], role_environment, tmp_path / "s.log"),
    ]
    try:
        with api.client() as admin:
            deployed = admin.put(
                "/api/jobs/hello",
                content=b"echo hello over tls\n",
                params={"filename": "run.sh"},
                headers={"content-type": "application/octet-stream"},
            )
            assert deployed.status_code == 201, deployed.text
            enqueued = admin.post("/api/jobs/hello/runs", json={})
            assert enqueued.status_code == 202, (enqueued.text, api.role.output()[-3000:])
            run = enqueued.json()

            def finished() -> dict[str, Any] | None:
                got: dict[str, Any] = admin.get(f"/api/runs/{run['id']}").json()
                return got if got["status"] in ("succeeded", "failed") else None

            done = wait_until(finished, timeout=30, what="the run over TLS")
            assert done["status"] == "succeeded", done
            assert "hello over tls" in admin.get(f"/api/runs/{run['id']}/log").text

            def leader() -> Any:
                return admin.get("/api/cluster").json()["scheduler"]["leader"]

            wait_until(leader, timeout=20, what="the scheduler to lead over TLS")
            workers = admin.get("/api/cluster").json()["workers"]
            assert len(workers) == 1, workers
        for role in roles:
            assert role.alive(), role.output()
    finally:
        for role in roles:
            role.stop(timeout=15)


def test_the_username_and_password_may_come_from_their_own_settings(tls_redis: TlsRedis) -> None:
    s = _settings(
        _url(tls_redis, credentials=""),
        redis_username="jobyard",
        redis_password=PASSWORD,
        redis_ssl_ca_certs=str(tls_redis.pki.ca),
        redis_ssl_certfile=str(tls_redis.pki.client_cert),
        redis_ssl_keyfile=str(tls_redis.pki.client_key),
    )
    client = connect(s)
    try:
        assert client.ping()
        assert client.acl_whoami() == "jobyard"
        # the ACL holds: keys outside the prefix and dangerous commands are refused
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set("other-app:key", "x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.flushall()
    finally:
        client.close()


async def _async_ping(s: Settings) -> bool:
    client = connect_async(s)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()


def test_the_asyncio_client_uses_the_same_tls_settings(tls_redis: TlsRedis) -> None:
    import asyncio

    s = _settings(
        _url(tls_redis),
        redis_ssl_ca_certs=str(tls_redis.pki.ca),
        redis_ssl_certfile=str(tls_redis.pki.client_cert),
        redis_ssl_keyfile=str(tls_redis.pki.client_key),
    )
    assert asyncio.run(_async_ping(s))


@pytest.mark.parametrize("case", ["no client certificate", "another CA", "plain text", "wrong password"])
def test_connections_that_do_not_prove_themselves_are_refused(
    tls_redis: TlsRedis, tmp_path: Path, case: str
) -> None:
    pki = tls_redis.pki
    fields: dict[str, Any] = {"redis_ssl_ca_certs": str(pki.ca)}
    url = _url(tls_redis)
    if case != "no client certificate":
        fields.update(redis_ssl_certfile=str(pki.client_cert), redis_ssl_keyfile=str(pki.client_key))
    if case == "another CA":
        fields["redis_ssl_ca_certs"] = str(make_pki(tmp_path / "other", "another CA").ca)
    if case == "plain text":
        url = url.replace("rediss://", "redis://")
    if case == "wrong password":
        url = _url(tls_redis, credentials="jobyard:guess@")
    client = connect(_settings(url, **fields))
    try:
        with pytest.raises((Unavailable, redis.RedisError, ssl.SSLError, OSError)):
            wait_for_redis(client, _settings(url, **fields))
            client.ping()
    finally:
        client.close()


def test_a_worker_without_the_client_certificate_does_not_start(tls_redis: TlsRedis, tmp_path: Path) -> None:
    env = role_env(
        _url(tls_redis),
        tmp_path,
        JOBYARD_METRICS_PORT="0",
        JOBYARD_REDIS_SSL_CA_CERTS=str(tls_redis.pki.ca),
        JOBYARD_REDIS_CONNECT_TIMEOUT_SECONDS="1",
    )
    role = Role(["worker"], env, tmp_path / "w.log")
    try:
        wait_until(lambda: not role.alive(), timeout=30, what="the worker to give up")
        assert role.proc.returncode != 0
        assert "did not answer" in role.output() or "Redis" in role.output(), role.output()
        assert PASSWORD not in role.output()  # the message names the server, never the password
    finally:
        role.stop()


def test_describe_hides_the_password() -> None:
    from jobyard.redis_conn import describe

    text = describe(_settings(f"rediss://jobyard:{PASSWORD}@localhost:6380/0"))
    assert PASSWORD not in text and text.startswith("rediss://***@localhost")
