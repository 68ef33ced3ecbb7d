# SPDX-License-Identifier: Apache-2.0
"""Redis ledger against a real ``redis-server``: records, outages and recovery, the writer.
(The CounterStore contract itself runs on Redis in test_ledger.py.)"""

from __future__ import annotations

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

from . import redis_fixture
from .redis_fixture import RedisServer
from .test_ledger import FakeClock, check_record_store, make_record

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
