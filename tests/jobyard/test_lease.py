"""The Redis lease: exclusive, fenced by a term, held locally only while it is surely ours."""

from __future__ import annotations

import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from jobyard.lease import Lease
from tests.helpers import free_port, wait_until

KEY = "t:lease"
TERM = "t:lease:term"


def make(r: redis.Redis, holder: str, ttl_s: float = 5.0, **kw: float) -> Lease:
    return Lease(r, KEY, holder, ttl_s, TERM, **kw)


def test_only_one_holder_and_each_acquisition_opens_a_term(r: redis.Redis) -> None:
    a, b = make(r, "a:1"), make(r, "b:2")
    assert a.acquire() and a.held and a.term == 1
    assert not b.acquire() and not b.held and b.term is None
    assert a.current_holder() == "a:1" == b.current_holder()
    # The same holder cannot acquire twice: a second acquisition would need a new term.
    assert not make(r, "a:1").acquire()
    assert a.release()
    assert b.acquire() and b.term == 2
    assert b.current_term() == 2


def test_renew_extends_only_for_the_holder(r: redis.Redis) -> None:
    a, b = make(r, "a:1", ttl_s=2.0), make(r, "b:2", ttl_s=2.0)
    assert a.acquire()
    r.pexpire(KEY, 200)
    assert a.renew()
    assert r.pttl(KEY) > 1500
    assert not b.renew()
    assert r.get(KEY) == b"a:1"


def test_release_is_compare_and_delete(r: redis.Redis) -> None:
    a, b = make(r, "a:1"), make(r, "b:2")
    assert a.acquire()
    assert not b.release()
    assert r.get(KEY) == b"a:1"
    assert a.release() and not a.held
    assert r.get(KEY) is None
    assert not a.release()


def test_holder_stops_acting_before_redis_lets_anyone_else_in(r: redis.Redis) -> None:
    a = make(r, "a:1", ttl_s=0.6, margin_s=0.2)
    b = make(r, "b:2", ttl_s=0.6)
    assert a.acquire()
    wait_until(lambda: not a.held, timeout=2, interval=0.005, what="the lease to end locally")
    # Redis still has the key: nobody else can act yet.
    assert r.pttl(KEY) > 0
    assert not b.acquire()
    wait_until(b.acquire, timeout=2, interval=0.01, what="the key to expire in Redis")
    assert b.term == 2


def test_an_expired_lease_is_not_revived_by_renew(r: redis.Redis) -> None:
    a, b = make(r, "a:1", ttl_s=1.0), make(r, "b:2", ttl_s=1.0)
    assert a.acquire()
    r.delete(KEY)  # as if it expired while the holder was paused
    assert not a.renew() and not a.held
    assert b.acquire() and b.term == 2
    # Waking up, the old holder finds it taken; its term is stale.
    assert not a.renew()
    assert a.term == 1 != b.current_term()


def test_without_a_term_key(r: redis.Redis) -> None:
    lease = Lease(r, KEY, "a:1", 1.0)
    assert lease.acquire() and lease.term is None and lease.current_term() is None


def test_remaining_time_counts_down(r: redis.Redis) -> None:
    lease = make(r, "a:1", ttl_s=5.0, margin_s=1.0)
    assert lease.remaining_s() == 0.0
    assert lease.acquire()
    assert 3.5 < lease.remaining_s() <= 4.0
    lease.abandon()
    assert not lease.held and lease.remaining_s() == 0.0
    assert r.get(KEY) == b"a:1"  # abandon leaves Redis alone


def test_redis_unreachable_raises_and_held_stays_local(r: redis.Redis) -> None:
    lease = make(r, "a:1", ttl_s=5.0)
    assert lease.acquire()
    nowhere = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    lost = Lease(nowhere, KEY, "a:1", 5.0, TERM)
    lost.term, lost.last_renewed = lease.term, time.monotonic()
    with pytest.raises(redis.ConnectionError):
        lost.renew()
    assert lost.held


@pytest.mark.parametrize(("ttl", "margin"), [(0, None), (-1, None), (1.0, 1.0), (1.0, -0.1)])
def test_bad_arguments(r: redis.Redis, ttl: float, margin: float | None) -> None:
    with pytest.raises(ValueError):
        Lease(r, KEY, "a", ttl, margin_s=margin)
