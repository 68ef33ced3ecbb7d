# SPDX-License-Identifier: Apache-2.0
"""Budget counters across real Redis outages: a ``redis-server`` killed (SIGKILL) and restarted
under multi-threaded load, with AOF, with RDB and without persistence, then exact totals.

Before each kill the test pauses writes (``CLIENT PAUSE WRITE``) and lets the replies already
computed reach their clients, so no operation is applied with its reply lost: that case is
counted twice by design (see ``ledger/resilient.py``) and would make an exact total impossible.
Everything else about the outage is real: clients blocked mid-command, refused connections,
a server that comes back empty or from its AOF / RDB file, probes and replays under load.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_llm_usage import flush, record_usage
from otel_llm_usage._names import METRIC_STORE_DEGRADED_OPS, METRIC_STORE_UP
from otel_llm_usage.budgets.engine import BudgetEngine
from otel_llm_usage.config import Config
from otel_llm_usage.ledger import Amount, FailOpenCounterStore, LeasedCounterStore, Limit, MemoryCounterStore
from otel_llm_usage.ledger.redis import DEFAULT_PREFIX, RedisCounterStore
from otel_llm_usage.runtime.core import build_runtime
from otel_llm_usage.runtime.pipeline import CallIntent
from otel_llm_usage.usage import TokenUsage, UsageRecord
from tests.conftest import require_binary
from tests.ledger.test_ledger import FakeClock
from tests.support.redis_server import RedisServer

KEYS = 8  # budget instances the load spreads over: a replay has several entries, so it takes a while
LIMIT = Limit(tokens=10**15)
RESERVE = Amount(0, 10)


@pytest.fixture(params=["aof", "rdb", "none"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(require_binary("redis-server"), tmp_path, persistence=request.param)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(require_binary("redis-server"), tmp_path, persistence="aof")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _raw(srv: RedisServer, key: str) -> Amount:
    values = redis.Redis.from_url(srv.url).hmget(f"{DEFAULT_PREFIX}c:{key}", "c", "t")
    return Amount(int(values[0] or 0), int(values[1] or 0))


def _kill(srv: RedisServer) -> dict[str, Amount]:
    """SIGKILL with no reply in flight; returns what a server without persistence loses with it."""
    client = redis.Redis.from_url(srv.url)
    client.client_pause(10_000, all=False)  # write commands wait; replies already computed go out
    time.sleep(0.15)
    lost = {f"b{k}": _raw(srv, f"b{k}") for k in range(KEYS)} if srv.persistence == "none" else {}
    if srv.persistence == "rdb":
        client.save()
    srv.stop()
    return lost


class _Load:
    """Threads reserving and settling (three ways, as the budget engine does) on KEYS instances."""

    def __init__(self, store: FailOpenCounterStore, threads: int = 16) -> None:
        self.store = store
        self.stop = threading.Event()
        self.served = [Counter[str]() for _ in range(threads)]
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(t,)) for t in range(threads)]

    def _run(self, tid: int) -> None:
        store, served, i = self.store, self.served[tid], 0
        try:
            while not self.stop.is_set():
                key = f"b{(tid + i) % KEYS}"
                actual = Amount(3, 1 + (tid + i) % 7)
                if i % 3 == 0:
                    store.add(key, actual, 3600)
                else:
                    assert store.try_reserve([key], f"{key}|inflight", RESERVE, LIMIT, 3600)[0]
                    if i % 3 == 1:
                        store.settle(key, f"{key}|inflight", RESERVE, actual, 3600)
                    else:
                        store.settle_and_read(key, f"{key}|inflight", RESERVE, actual, 3600, [key])
                served[f"{key}:c"] += actual.cost_nanos
                served[f"{key}:t"] += actual.tokens
                i += 1
                time.sleep(0.0005)  # 2 shared cores: leave the server and the prober some CPU
        except BaseException as exc:  # surfaced by finish(); a load thread must not die silently
            self.errors.append(exc)

    def __enter__(self) -> _Load:
        for t in self.threads:
            t.start()
        return self

    def finish(self) -> dict[str, Amount]:
        self.stop.set()
        for t in self.threads:
            t.join(10)
        assert not self.errors, self.errors
        total = sum(self.served, Counter[str]())
        return {f"b{k}": Amount(total[f"b{k}:c"], total[f"b{k}:t"]) for k in range(KEYS)}

    def __exit__(self, *exc: object) -> None:
        self.stop.set()


def _outage_under_load(srv: RedisServer, store: FailOpenCounterStore) -> tuple[dict[str, Amount],
                                                                            dict[str, Amount]]:
    """Load through a kill and a restart; returns (served, lost with a non-persistent server)."""
    with _Load(store) as load:
        time.sleep(0.4)
        lost = _kill(srv)
        time.sleep(0.6)  # answered locally meanwhile
        srv.start()
        time.sleep(1.5)  # probes replay under load
        served = load.finish()
    return served, lost


def _expected(served: dict[str, Amount], lost: dict[str, Amount]) -> dict[str, Amount]:
    return {k: v - lost.get(k, Amount()) for k, v in served.items()}


@pytest.mark.slow
def test_replay_under_load_counts_exactly_what_was_served(server: RedisServer) -> None:
    """Issue 21 item 1: usage deferred while a probe replays is replayed too, nothing stays in flight."""
    store = FailOpenCounterStore(RedisCounterStore(server.url, socket_timeout=0.5), probe_interval=0.1)
    try:
        served, lost = _outage_under_load(server, store)
        time.sleep(0.2)
        store.read(["b0"], "b0|inflight")  # a due probe, if the last replay failed (server still loading)
        assert store.outages >= 1 and store.recoveries >= 1 and not store.degraded
        assert store.pending() == {}
        assert {k: _raw(server, k) for k in served} == _expected(served, lost)
        assert {k: _raw(server, f"{k}|inflight") for k in served} == {k: Amount() for k in served}
    finally:
        store.close()


def _leak_then_days(days: int) -> int:
    """A reservation never settled (its process died mid-call), then a call an hour for ``days``."""
    clock = FakeClock(1_700_006_400.0)  # 2023-11-15 00:00 UTC
    cfg = Config.model_validate({"budgets": [
        {"name": "d", "window": "day", "timezone": "UTC", "limit": {"tokens": 1000}, "action": "block"}]})
    engine = BudgetEngine(cfg.budgets, MemoryCounterStore(clock), currency="USD",
                          to_reporting=lambda cost, currency: cost, estimate_cost=lambda r, t: None, clock=clock)

    def call(settle: bool) -> None:
        record = UsageRecord(provider="openai", operation="chat", request_model="gpt-4o-mini",
                             tokens=TokenUsage(10, 10))
        engine.before_call(CallIntent(record, 10, 490))
        if settle:
            engine.process(record)

    call(settle=False)
    for _ in range(24 * days):
        clock.advance(3600)
        call(settle=True)
    (status,) = engine.status()
    return int(status["in_flight"])


def test_a_leaked_reservation_ends_with_its_window() -> None:
    """Issue 21 item 1: in-flight is per window, so a lost reservation stops shrinking headroom."""
    assert _leak_then_days(3) == 0


def test_close_replays_within_the_probe_interval(aof_server: RedisServer) -> None:
    """Issue 21 item 2: a store closed right after recovery hands the outage's usage to Redis."""
    store = FailOpenCounterStore(RedisCounterStore(aof_server.url), probe_interval=60)
    store.add("b0", Amount(5, 5), 3600)
    _kill(aof_server)
    for _ in range(100):
        assert store.try_reserve(["b0"], "b0|inflight", RESERVE, LIMIT, 3600)[0]
        store.settle("b0", "b0|inflight", RESERVE, Amount(3, 7), 3600)
    aof_server.start()
    started = time.monotonic()
    store.close()
    assert time.monotonic() - started < 2.5
    assert _raw(aof_server, "b0") == Amount(5 + 300, 5 + 700)


def test_flush_with_the_store_still_down_is_bounded_and_says_what_is_left(
        aof_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    store = FailOpenCounterStore(RedisCounterStore(aof_server.url, socket_timeout=0.5), probe_interval=60)
    try:
        _kill(aof_server)
        store.add("b0", Amount(3, 7), 3600)
        store.add("b1", Amount(3, 7), 3600)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, "otel_llm_usage.ledger"):
            assert store.flush() is False
        assert time.monotonic() - started < 2.6
        assert "2 counter updates (14 tokens, 6 cost nano-units) could not be replayed" in caplog.text
    finally:
        aof_server.start()
        store.close()


EXITING_APP = textwrap.dedent("""\
    import sys
    from otel_llm_usage.ledger import Amount, FailOpenCounterStore
    from otel_llm_usage.ledger.redis import RedisCounterStore
    store = FailOpenCounterStore(RedisCounterStore(sys.argv[1]), probe_interval=60)
    for _ in range(50):
        store.add("b0", Amount(3, 7), 3600)   # the server is down: counted locally
    print("counted", flush=True)
    sys.stdin.readline()                      # the test restarts the server meanwhile
    # a normal exit, no close(): the at-exit hook replays
    """)


def test_a_process_exiting_right_after_recovery_replays_at_exit(aof_server: RedisServer) -> None:
    """Issue 21 item 2: exit within the probe interval of recovery (the short-run case of the issue)."""
    _kill(aof_server)
    proc = subprocess.Popen([sys.executable, "-c", EXITING_APP, aof_server.url], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "counted"
        aof_server.start()
        started = time.monotonic()
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() - started < 5
    finally:
        proc.kill()
    assert _raw(aof_server, "b0") == Amount(150, 350)


def _points(reader: InMemoryMetricReader, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    data = reader.get_metrics_data()
    return {tuple(sorted((k, str(v)) for k, v in p.attributes.items())): p.value
            for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics if m.name == name
            for p in m.data.data_points}


def test_degraded_operations_and_store_state_are_metrics(aof_server: RedisServer,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Issue 21 item 5: every operation answered locally is counted by operation; the state is a gauge;
    recovery is logged once at INFO; ``otel_llm_usage.flush()`` replays (item 2)."""
    reader = InMemoryMetricReader()
    cfg = Config.model_validate({"ledger": aof_server.url, "budgets": [
        {"name": "d", "window": "day", "limit": {"tokens": 10**9}, "action": "block"}]})
    runtime = build_runtime(cfg, meter_provider=MeterProvider(metric_readers=[reader]))
    try:
        assert _points(reader, METRIC_STORE_UP) == {(("store", "redis"),): 1}
        _kill(aof_server)
        for _ in range(20):
            record_usage(provider="openai", model="gpt-4o-mini", input_tokens=10, output_tokens=5)
        assert _points(reader, METRIC_STORE_UP) == {(("store", "redis"),): 0}
        assert isinstance(runtime.counters, LeasedCounterStore)  # shared counters admit from leases
        counters = runtime.counters.store
        by_op = _points(reader, METRIC_STORE_DEGRADED_OPS)
        assert by_op == {(("operation", op), ("store", "redis")): n for op, n in counters.degraded_by_op.items()}
        # Leases write settled usage in batches: fewer store operations than calls, each one counted.
        assert sum(by_op.values()) == counters.degraded_ops >= 1
        aof_server.start()
        with caplog.at_level(logging.INFO, "otel_llm_usage.ledger"):
            assert flush(5)
        assert [r.levelno for r in caplog.records if "reachable again" in r.getMessage()] == [logging.INFO]
        assert _points(reader, METRIC_STORE_UP) == {(("store", "redis"),): 1}
        keys = redis.Redis.from_url(aof_server.url).keys(f"{DEFAULT_PREFIX}c:{{d|all}}|day:*")
        used = sum(int(redis.Redis.from_url(aof_server.url).hget(k, "t") or 0) for k in keys
                   if not k.endswith(b"|inflight"))
        assert used == 20 * 15
    finally:
        runtime.shutdown()


def test_a_huge_reported_usage_saturates_sqlite_and_the_store_stays_healthy(tmp_path: Path) -> None:
    """Issue 21 item 4: 10**15 input tokens on gpt-4o is $2.5e9, 2.5e18 nano-units: four overflow
    SQLite's 64-bit INTEGER. The counter saturates (the budget is exhausted) and later calls count."""
    cfg = Config.model_validate({"pricing": {"currency": "USD"}, "ledger": f"sqlite:///{tmp_path / 'l.db'}",
                                 "budgets": [{"name": "d", "window": "day", "limit": {"cost": 1000},
                                              "action": "alert"}]})
    runtime = build_runtime(cfg)
    try:
        for _ in range(4):
            record_usage(provider="openai", model="gpt-4o", input_tokens=10**15)
        record_usage(provider="openai", model="gpt-4o-mini", input_tokens=10)
        assert isinstance(runtime.counters, LeasedCounterStore)  # shared counters admit from leases
        counters = runtime.counters.store
        assert not counters.degraded and counters.degraded_ops == 0 and counters.pending() == {}
        (status,) = runtime.budget_status()
        assert status["used"] == Decimal(2**63 - 1) / 10**9 and status["state"] == "exceeded"
    finally:
        runtime.shutdown()


@pytest.mark.parametrize("first", [2**63 - 1, 10**19, 2**70])
def test_redis_counters_saturate_instead_of_failing(aof_server: RedisServer, first: int) -> None:
    """Issue 21 item 4, Redis: HINCRBY fails past 64 bits ("would overflow"); the scripts saturate."""
    store = RedisCounterStore(aof_server.url)
    try:
        store.add("k", Amount(first, 1), None)
        store.add("k", Amount(10**18, 1), None)
        assert store.try_reserve(["k"], "i", Amount(2**64, 2**64), Limit(), None)[0]
        store.settle("k", "i", Amount(2**64, 2**64), Amount(5, 5), None)
        assert store.read(["k"], "i") == (Amount(2**63 - 1, 7), Amount())
    finally:
        store.close()
