# SPDX-License-Identifier: Apache-2.0
"""Redis ledger against a real ``redis-server``: records, outages and recovery, the writer, the
``lease`` script. (The CounterStore contract itself runs on Redis in test_ledger.py; ``lease`` op for op
against the shared arithmetic in test_budget_leases.py; Redis Cluster in test_redis_cluster.py.)"""

from __future__ import annotations

import time

import pytest

from otel_llm_usage.ledger import (
    Amount,
    FailOpenCounterStore,
    LedgerWriter,
    Limit,
    RecordQuery,
    open_ledger,
)
from otel_llm_usage.ledger.redis import RedisCounterStore, RedisRecordStore
from tests.ledger.test_ledger import FakeClock, check_record_store, make_record
from tests.support import redis_fixture
from tests.support.redis_fixture import RedisServer

redis_server = redis_fixture.redis_server
redis_url = redis_fixture.redis_url


def test_record_store_contract(redis_url: str) -> None:
    store = RedisRecordStore(redis_url)
    try:
        check_record_store(store)
    finally:
        store.close()


def test_prefix_keeps_deployments_apart(redis_url: str) -> None:
    a, b = RedisCounterStore(redis_url, prefix="a:"), RedisCounterStore(f"{redis_url}?prefix=b:")
    ra, rb = RedisRecordStore(redis_url, prefix="a:"), RedisRecordStore(f"{redis_url}?prefix=b:")
    try:
        a.add("k", Amount(1, 1), None)
        ra.append([make_record()])
        assert b.read(["k"], "i") == (Amount(), Amount())
        assert rb.query(RecordQuery()) == []
        assert sorted(a._redis.keys()) == [b"a:c:k", b"a:records"]
    finally:
        for s in (a, b, ra, rb):
            s.close()


def test_large_amounts_stay_exact(redis_url: str) -> None:
    store = RedisCounterStore(redis_url)
    try:
        big = 2**53 + 1  # beyond a double's exact range: stored and reported exactly
        store.add("k", Amount(big, 3), None)
        assert store.read(["k"], "i") == (Amount(big, 3), Amount())
        assert store.try_reserve(["k"], "i", Amount(1, 1), Limit(), None) == (True, Amount(big, 3), Amount())
    finally:
        store.close()


def test_redis_outage_serves_locally_then_reconciles(redis_server: RedisServer) -> None:
    clock = FakeClock()
    records, opened = open_ledger(redis_server.url)
    records.close()
    assert isinstance(opened, FailOpenCounterStore) and isinstance(opened.primary, RedisCounterStore)
    counters = FailOpenCounterStore(opened.primary, probe_interval=5, clock=clock)  # with a test clock
    limit = Limit(tokens=1000)
    try:
        counters.add("day", Amount(100, 100), 3600)
        ok, _, _ = counters.try_reserve(["day"], "inf", Amount(0, 50), limit, 3600)
        assert ok

        redis_server.stop()
        counters.settle("day", "inf", Amount(0, 50), Amount(40, 40), 3600)  # a primary reservation
        for _ in range(5):
            assert counters.try_reserve(["day"], "inf", Amount(0, 10), limit, 3600)[0]
            counters.settle("day", "inf", Amount(0, 10), Amount(10, 10), 3600)
        # One failed primary attempt, then every operation answered locally until the next probe.
        assert counters.degraded and counters.degraded_ops == 11 and counters.outages == 1

        redis_server.start()  # same port, empty: persistence is off
        clock.advance(1)
        counters.add("day", Amount(1, 1), 3600)
        assert counters.degraded  # probe not due yet
        clock.advance(5)
        used, inflight = counters.read(["day"], "inf")
        # The data set before the outage died with the server; everything counted since was replayed.
        assert (used, inflight) == (Amount(40 + 50 + 1, 40 + 50 + 1), Amount())
        assert not counters.degraded and counters.recoveries == 1
    finally:
        counters.close()


def test_reconciles_with_totals_kept_by_redis(redis_server: RedisServer) -> None:
    """Redis stays up for other processes while this one cannot reach it: totals add up afterwards."""
    clock = FakeClock()
    primary = RedisCounterStore(redis_server.url)
    other = RedisCounterStore(redis_server.url)
    counters = FailOpenCounterStore(primary, probe_interval=5, clock=clock)
    real_add = primary.add

    def unreachable(*args: object, **kwargs: object) -> None:
        raise ConnectionError("network partition")

    try:
        counters.add("day", Amount(5, 5), 3600)
        primary.add = unreachable  # type: ignore[method-assign]
        counters.add("day", Amount(7, 7), 3600)
        other.add("day", Amount(11, 11), 3600)
        primary.add = real_add  # type: ignore[method-assign]
        clock.advance(5)
        assert counters.read(["day"], "inf")[0] == Amount(23, 23)
        assert other.read(["day"], "inf")[0] == Amount(23, 23)
    finally:
        counters.close()
        other.close()


def test_writer_flushes_everything_on_close(redis_url: str) -> None:
    store = RedisRecordStore(redis_url)
    writer = LedgerWriter(store, batch_size=100, flush_interval=30)
    try:
        for i in range(2345):
            writer.process(make_record(i))
        assert writer.close()
        assert writer.written == 2345 and writer.dropped == 0
        assert len(store.query(RecordQuery())) == 2345
    finally:
        store.close()


def test_writer_buffers_through_a_redis_outage(redis_server: RedisServer) -> None:
    store = RedisRecordStore(redis_server.url, socket_timeout=0.5)
    writer = LedgerWriter(store, batch_size=50, flush_interval=0.05, retry_initial=0.05, retry_max=0.2)
    try:
        redis_server.stop()
        for i in range(300):
            writer.process(make_record(i))
        assert writer.flush(timeout=0.5) is False
        assert writer.failures >= 1
        redis_server.start()
        assert writer.flush(timeout=10)
        assert writer.written == 300 and writer.dropped == 0
        assert len(store.query(RecordQuery())) == 300
    finally:
        writer.close()
        store.close()


@pytest.mark.parametrize("ttl", [0, -1])
def test_mark_once_with_non_positive_ttl_matches_memory(redis_url: str, ttl: int) -> None:
    store = RedisCounterStore(redis_url)
    try:
        assert store.mark_once("m", ttl) and store.mark_once("m", ttl)  # expired as soon as it was set
    finally:
        store.close()


def test_settle_and_read_is_settle_then_read_in_one_round_trip(redis_server: RedisServer) -> None:
    records, counters = open_ledger(redis_server.url)
    records.close()
    assert isinstance(counters, FailOpenCounterStore)
    limit = Limit(tokens=1000)
    try:
        counters.add("b1", Amount(5, 7), 3600)
        assert counters.try_reserve(["b1", "b2"], "inf", Amount(3, 10), limit, 3600)[0]
        used, inflight = counters.settle_and_read("b2", "inf", Amount(3, 10), Amount(2, 9), 3600, ["b1", "b2"])
        assert (used, inflight) == (Amount(7, 16), Amount(0, 0))
        assert counters.read(["b1", "b2"], "inf") == (used, inflight)
        redis_server.stop()  # degraded: still settled (locally) and read back, no exception
        assert counters.try_reserve(["b1", "b2"], "inf", Amount(0, 4), limit, 3600)[0]
        used, _ = counters.settle_and_read("b2", "inf", Amount(0, 4), Amount(1, 4), 3600, ["b1", "b2"])
        assert used == Amount(8, 20)
    finally:
        counters.close()


# --- lease: _counting.lease in one Lua round trip ------------------------------------------------------

TOKENS_1000 = Limit(tokens=1000)


def test_lease_grants_a_share_of_what_remains_never_less_than_the_need(redis_url: str) -> None:
    s = RedisCounterStore(redis_url)
    try:
        s.add("h1", Amount(0, 120), None)
        s.add("h2", Amount(0, 80), None)  # a rolling window: both buckets count
        # (granted, used, in-flight before the grant): half of 1000 - 200 remaining.
        assert s.lease(["h1", "h2"], "inf", Amount(0, 10), Amount(), 0.5, TOKENS_1000, None) == \
            (Amount(0, 400), Amount(0, 200), Amount())
        # A tenth of the 400 left is 40, but the waiting call needs 300: it gets what it needs.
        assert s.lease(["h1", "h2"], "inf", Amount(0, 300), Amount(), 0.1, TOKENS_1000, None) == \
            (Amount(0, 300), Amount(0, 200), Amount(0, 400))
        assert s.read(["h1", "h2"], "inf") == (Amount(0, 200), Amount(0, 700))
        s.add("h2", Amount(0, 99), None)  # 1 token left: floor(0.5) is 0, but below the limit 1 is granted
        assert s.lease(["h1", "h2"], "inf", Amount(), Amount(), 0.5, TOKENS_1000, None)[0] == Amount(0, 1)
    finally:
        s.close()


def test_lease_is_refused_at_the_limit_and_then_writes_nothing(redis_url: str) -> None:
    s = RedisCounterStore(redis_url)
    try:
        s.add("day", Amount(0, 990), None)
        assert s.lease(["day"], "inf", Amount(0, 5), Amount(), 0.5, TOKENS_1000, None)[0] == Amount(0, 5)
        s.add("day", Amount(0, 10), None)  # used alone now reaches the limit
        assert s.lease(["day"], "inf", Amount(0, 5), Amount(), 0.5, TOKENS_1000, 60) == \
            (Amount(), Amount(0, 1000), Amount(0, 5))
        assert s.read(["day"], "inf") == (Amount(0, 1000), Amount(0, 5))
        assert s._redis.ttl(s._key("inf")) == -1  # a refusal does not touch the key, TTL included
    finally:
        s.close()


def test_lease_takes_back_the_release_before_sizing_the_grant(redis_url: str) -> None:
    s = RedisCounterStore(redis_url)
    try:
        s.add("day", Amount(0, 200), None)
        s.lease(["day"], "inf", Amount(0, 700), Amount(), 0.0, TOKENS_1000, None)  # holds 700
        # The asker's own 400 unused go back first: 200 used + 300 in flight leaves 500, half is granted.
        assert s.lease(["day"], "inf", Amount(), Amount(0, 400), 0.5, TOKENS_1000, None) == \
            (Amount(0, 250), Amount(0, 200), Amount(0, 300))
        # Releasing more than is held clamps in-flight at zero; share 0 and no need is a pure hand-back.
        assert s.lease(["day"], "inf", Amount(), Amount(3, 10_000), 0.0, TOKENS_1000, None) == \
            (Amount(), Amount(0, 200), Amount())
        assert s.read(["day"], "inf") == (Amount(0, 200), Amount())
    finally:
        s.close()


def test_lease_leaves_unlimited_axes_alone(redis_url: str) -> None:
    s = RedisCounterStore(redis_url)
    try:
        cost_only = Limit(cost_nanos=10_000)
        assert s.lease(["day"], "inf", Amount(100, 50), Amount(), 0.5, cost_only, None)[0] == Amount(5_000, 0)
        assert s.lease(["day"], "inf", Amount(100, 50), Amount(), 0.5, Limit(), None)[0] == Amount()
        assert s.read(["day"], "inf") == (Amount(), Amount(5_000, 0))
        big = 2**53 + 1  # a need beyond a double's exact range is granted exactly
        assert s.lease(["day"], "big", Amount(0, big), Amount(), 0.0, Limit(tokens=2**60), None)[0] == \
            Amount(0, big)
        assert s.read(["day"], "big")[1] == Amount(0, big)
    finally:
        s.close()


def test_lease_restarts_the_in_flight_ttl_only_when_it_writes(redis_url: str) -> None:
    s = RedisCounterStore(redis_url)
    try:
        inflight = s._key("inf")
        s.lease(["day"], "inf", Amount(0, 1), Amount(), 0.5, TOKENS_1000, 100)
        assert 95 <= s._redis.ttl(inflight) <= 100
        s.lease(["day"], "inf", Amount(), Amount(0, 1), 0.0, TOKENS_1000, 5_000)  # a release writes
        assert 4_990 <= s._redis.ttl(inflight) <= 5_000
        s.lease(["day"], "inf", Amount(0, 1), Amount(), 0.5, TOKENS_1000, None)  # None keeps the TTL
        assert s._redis.ttl(inflight) > 4_900
        s.lease(["day"], "inf", Amount(), Amount(), 0.0, TOKENS_1000, 7)  # grants and releases nothing
        assert s._redis.ttl(inflight) > 4_900
        s.lease(["day"], "inf", Amount(0, 1), Amount(), 0.5, TOKENS_1000, 1)
        time.sleep(2.1)  # Redis keeps TTLs in whole seconds: the in-flight key has expired
        assert s.read(["day"], "inf") == (Amount(), Amount())
    finally:
        s.close()
