"""The API's asyncio Redis client packs commands with hiredis: the same bytes redis-py would send."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from jobyard.redis_conn import connect_async
from jobyard.settings import Settings

ARGS = ("EVALSHA", "a" * 40, 2, "k:é", b"raw\x00bytes", 0, -7, 1.5, 1733150000.123456, 1e-7, 2**62, "")
VIEWS = ("HSET", "k", bytearray(b"f"), memoryview(b"v"))


def test_packing_matches_redis_py_and_refuses_what_it_refuses(redis_url: str, data_dir: Path) -> None:
    client = connect_async(Settings(redis_url=redis_url, data_dir=data_dir))  # type: ignore[arg-type]
    ours = client.connection_pool.make_connection()
    plain = aioredis.Redis.from_url(redis_url).connection_pool.make_connection()
    assert type(ours) is not type(plain), "connect_async should swap in the hiredis packer"
    assert b"".join(ours.pack_command(*ARGS)) == b"".join(plain.pack_command(*ARGS))
    assert b"".join(ours.pack_command(*VIEWS)) == b"".join(plain.pack_command(*VIEWS))
    assert b"".join(ours.pack_command("CONFIG GET", "maxmemory")) == b"".join(
        plain.pack_command("CONFIG GET", "maxmemory")
    )
    for bad in (None, True, object()):
        with pytest.raises(redis.DataError):
            ours.pack_command("SET", "k", bad)
        with pytest.raises(redis.DataError):
            plain.pack_command("SET", "k", bad)


def test_commands_and_pipelines_round_trip(redis_url: str, data_dir: Path) -> None:
    async def scenario() -> list[object]:
        client = connect_async(Settings(redis_url=redis_url, data_dir=data_dir))  # type: ignore[arg-type]
        try:
            await client.hset("h", mapping={"f": "é", "n": 1.25})
            pipe = client.pipeline(transaction=False)
            pipe.hget("h", "f")
            pipe.hget("h", "n")
            pipe.eval("return ARGV[1] .. ARGV[2]", 0, "x", 42)
            return list(await pipe.execute())
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == ["é".encode(), b"1.25", b"x42"]


def test_call_many_answers_as_a_pipeline_and_keeps_its_connection_sound(r: redis.Redis) -> None:
    from jobyard.redis_conn import call_many_on

    pool = r.connection_pool

    def call_many(client: redis.Redis, *commands: tuple[object, ...]) -> list[object]:
        conn = pool.get_connection()
        try:
            return call_many_on(conn, *commands)
        finally:
            pool.release(conn)

    sha = r.script_load("return {KEYS[1], ARGV[1]}")
    boom = r.script_load("return redis.error_reply('boom')")
    calls = [
        ("EVALSHA", sha, 1, "k", "é"),
        ("EVALSHA", "0" * 40, 0),  # not loaded: NOSCRIPT, in its place
        ("HSET", "h", "f", "v"),
        ("EVALSHA", boom, 0),  # an error the script answers, in its place
    ]
    pipe = r.pipeline(transaction=False)
    for call in calls:
        pipe.execute_command(*call)
    expected = pipe.execute(raise_on_error=False)
    got = call_many(r, *calls)
    assert [type(x) for x in got] == [type(x) for x in expected]
    assert isinstance(got[1], redis.exceptions.NoScriptError) and isinstance(got[3], redis.ResponseError)
    assert got[0] == expected[0] == [b"k", "é".encode()] and got[2] == 0
    # the connection went back to the pool in step: the next replies are the right ones
    assert call_many(r, ("PING",), ("ECHO", "x")) == [b"PONG", b"x"]
    assert str(got[3]) == "boom"
    assert r.connection_pool._created_connections == 1  # type: ignore[attr-defined]


def test_call_many_on_an_own_connection_reconnects_after_a_broken_one(r: redis.Redis) -> None:
    from jobyard.redis_conn import call_many_on

    conn = r.connection_pool.make_connection()
    assert call_many_on(conn, ("SET", "k", "1"), ("GET", "k")) == [b"OK", b"1"]
    client_id = call_many_on(conn, ("CLIENT", "ID"))[0]
    r.client_kill_filter(_id=client_id)  # the server drops it, as a restart or a failover would
    with pytest.raises(redis.ConnectionError):
        call_many_on(conn, ("GET", "k"))
    assert call_many_on(conn, ("GET", "k")) == [b"1"]  # connected again, nothing half read
    conn.disconnect()
