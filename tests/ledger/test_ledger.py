# SPDX-License-Identifier: Apache-2.0
"""Ledger backends: the CounterStore contract on every backend, SQLite durability and sharing,
fail-open degradation, and the background writer."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from otel_llm_usage.errors import ConfigError
from otel_llm_usage.ledger import (
    Amount,
    CounterStore,
    FailOpenCounterStore,
    LedgerWriter,
    Limit,
    MemoryCounterStore,
    MemoryRecordStore,
    RecordQuery,
    RecordStore,
    SqliteCounterStore,
    SqliteRecordStore,
    default_sqlite_path,
    open_ledger,
    purge_older_than,
)
from otel_llm_usage.ledger.base import no_pause
from otel_llm_usage.usage import TokenUsage, UsageRecord
from tests.support import redis_fixture

# Fixtures from the shared Redis helper (conftest.py is owned elsewhere).
redis_server = redis_fixture.redis_server
redis_url = redis_fixture.redis_url

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_record(i: int = 0, *, ts: float | None = None, user: str | None = None, model: str = "qwen-plus",
                cost: Decimal | None = Decimal("0.0012")) -> UsageRecord:
    return UsageRecord(
        provider="dashscope", operation="chat", request_model=model, response_model=model + "-2024",
        tokens=TokenUsage(100 + i, 20, cached_input_tokens=10, reasoning_tokens=5,
                          details={"image_tokens": 3}),
        duration_s=0.25, ttft_s=0.05, function="summarize", user=user if user is not None else f"u{i % 3}",
        session="s1", anchor="a1", streamed=True, server_address="127.0.0.1",
        timestamp=1_700_000_000.0 + i if ts is None else ts,
        cost=cost, currency="CNY" if cost is not None else None, price_source="bundled:dashscope-cn",
        priced=True,
        request_params={"enable_thinking": True, "_internal": "x", "thinking": {"type": "on", "_y": 1}},
    )


# --- the CounterStore contract, on every backend ------------------------------------------------------


@dataclass
class CounterEnv:
    store: CounterStore
    advance: Callable[[float], None]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def counters(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CounterEnv]:
    clock = FakeClock()
    store: CounterStore
    advance: Callable[[float], None]
    if request.param == "memory":
        store, advance = MemoryCounterStore(clock=clock), clock.advance
    elif request.param == "sqlite":
        store, advance = SqliteCounterStore(tmp_path / "c.db", clock=clock), clock.advance
    else:
        from otel_llm_usage.ledger.redis import RedisCounterStore

        store, advance = RedisCounterStore(request.getfixturevalue("redis_url")), time.sleep  # real TTLs
    yield CounterEnv(store, advance)
    store.close()


def test_try_reserve_admits_iff_used_plus_inflight_below_limit_on_tokens(counters: CounterEnv) -> None:
    s, limit = counters.store, Limit(tokens=100)
    s.add("day", Amount(0, 94), None)
    assert s.try_reserve(["day"], "inf", Amount(0, 5), limit, None) == (True, Amount(0, 94), Amount())
    # 94 + 5 = 99 < 100: still admitted, although this reservation takes it past the limit.
    assert s.try_reserve(["day"], "inf", Amount(0, 5), limit, None) == (True, Amount(0, 94), Amount(0, 5))
    assert s.try_reserve(["day"], "inf", Amount(0, 1), limit, None) == (False, Amount(0, 94), Amount(0, 10))
    assert s.read(["day"], "inf") == (Amount(0, 94), Amount(0, 10))
    s.settle("day", "inf", Amount(0, 10), Amount(0, 5), None)
    assert s.read(["day"], "inf") == (Amount(0, 99), Amount())
    assert s.try_reserve(["day"], "inf", Amount(0, 1), limit, None)[0] is True  # 99 < 100
    s.settle("day", "inf", Amount(0, 1), Amount(0, 1), None)
    assert s.try_reserve(["day"], "inf", Amount(0, 1), limit, None)[0] is False  # exactly at the limit


def test_try_reserve_checks_each_axis_and_sums_every_used_key(counters: CounterEnv) -> None:
    s = counters.store
    s.add("h1", Amount(400, 10), None)
    s.add("h2", Amount(500, 10), None)
    used, inflight = s.read(["h1", "h2", "h3"], "inf")
    assert (used, inflight) == (Amount(900, 20), Amount())
    assert s.try_reserve(["h1", "h2"], "inf", Amount(50, 1), Limit(cost_nanos=1000), 60)[0] is True
    assert s.try_reserve(["h1", "h2"], "inf", Amount(50, 1), Limit(cost_nanos=1000), 60)[0] is True
    assert s.try_reserve(["h1", "h2"], "inf", Amount(1, 1), Limit(cost_nanos=1000), 60)[0] is False
    # Tokens are far from their limit, but cost alone refuses; an unlimited axis never refuses.
    both = Limit(cost_nanos=1000, tokens=10**9)
    assert s.try_reserve(["h1", "h2"], "inf", Amount(1, 1), both, 60)[0] is False
    assert s.try_reserve(["h1", "h2"], "inf", Amount(1, 1), Limit(), 60)[0] is True
    assert s.try_reserve(["h1"], "other", Amount(1, 1), Limit(cost_nanos=401), 60)[0] is True


def test_settle_never_leaves_negative_inflight(counters: CounterEnv) -> None:
    s = counters.store
    s.try_reserve(["b"], "inf", Amount(10, 10), Limit(), None)
    s.settle("b", "inf", Amount(30, 30), Amount(7, 8), None)
    assert s.read(["b"], "inf") == (Amount(7, 8), Amount())
    s.settle("b", "never-reserved", Amount(5, 5), Amount(1, 1), None)
    assert s.read(["b"], "never-reserved") == (Amount(8, 9), Amount())


def test_settle_and_read_returns_the_totals_right_after_its_own_settlement(counters: CounterEnv) -> None:
    s = counters.store
    s.add("h1", Amount(400, 10), 60)
    s.try_reserve(["h1", "h2"], "inf", Amount(50, 5), Limit(), 60)
    s.try_reserve(["h1", "h2"], "inf", Amount(20, 2), Limit(), 60)
    # Settles into h2 and releases the first reservation; the totals include what it just added.
    totals = s.settle_and_read("h2", "inf", Amount(50, 5), Amount(30, 3), 60, ["h1", "h2"])
    assert totals == (Amount(430, 13), Amount(20, 2))
    assert s.read(["h1", "h2"], "inf") == totals


def test_counters_expire_after_ttl_and_no_ttl_keeps_the_expiry(counters: CounterEnv) -> None:
    s = counters.store
    s.add("short", Amount(5, 5), 1)
    s.add("short", Amount(1, 1), None)  # keeps the 1 s expiry, as MemoryCounterStore does
    s.add("forever", Amount(2, 2), None)
    s.try_reserve(["short"], "inf", Amount(3, 3), Limit(), 1)
    assert s.read(["short", "forever"], "inf") == (Amount(8, 8), Amount(3, 3))
    counters.advance(1.3)
    assert s.read(["short", "forever"], "inf") == (Amount(2, 2), Amount())
    s.add("short", Amount(1, 1), None)  # an expired counter starts again from zero, without expiry
    counters.advance(1.3)
    assert s.read(["short"], "inf") == (Amount(1, 1), Amount())


def test_mark_once(counters: CounterEnv) -> None:
    s = counters.store
    assert s.mark_once("warn:80", 1) is True
    assert s.mark_once("warn:80", 1) is False
    assert s.mark_once("warn:90", None) is True
    counters.advance(1.3)
    assert s.mark_once("warn:80", 1) is True
    assert s.mark_once("warn:90", None) is False


def test_32_threads_lose_no_update_and_never_over_admit(counters: CounterEnv) -> None:
    s, threads, rounds = counters.store, 32, 40
    admitted: list[int] = []
    barrier = threading.Barrier(threads)

    def work() -> None:
        barrier.wait()
        mine = 0
        for _ in range(rounds):
            s.add("total", Amount(3, 1), None)
            ok, _, _ = s.try_reserve(["used"], "inf", Amount(0, 1), Limit(tokens=500), None)
            mine += ok
        admitted.append(mine)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert s.read(["total"], "inf") == (Amount(3 * threads * rounds, threads * rounds), Amount(0, 500))
    assert sum(admitted) == 500  # 1280 attempts, exactly the limit admitted


# --- SQLite: sharing, persistence, failure modes ----------------------------------------------------

_WORKER = """
import sys
from otel_llm_usage.ledger import Amount, Limit, SqliteCounterStore
store = SqliteCounterStore(sys.argv[1], busy_timeout=30)
admitted = 0
for _ in range(int(sys.argv[2])):
    store.add("total", Amount(7, 1), 3600)
    admitted += store.try_reserve(["used"], "inf", Amount(0, 1), Limit(tokens=150), 3600)[0]
store.close()
print(admitted)
"""


def test_sqlite_counters_are_atomic_across_four_processes(tmp_path: Path) -> None:
    path, rounds = tmp_path / "shared.db", 100
    SqliteCounterStore(path).close()  # create the schema once, as the first process would
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(path), str(rounds)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=90)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    store = SqliteCounterStore(path)
    try:
        assert store.read(["total"], "inf") == (Amount(7 * 4 * rounds, 4 * rounds), Amount(0, 150))
        assert sum(int(o) for o in outputs) == 150
    finally:
        store.close()


def test_sqlite_persists_records_and_counters_across_restarts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    records, counters = open_ledger(url)
    originals = [make_record(i) for i in range(10)]
    records.append(originals)
    counters.add("day", Amount(123, 45), 3600)
    assert counters.mark_once("warned", 3600)
    records.close()
    counters.close()

    records, counters = open_ledger(url)
    try:
        assert counters.read(["day"], "inf") == (Amount(123, 45), Amount())
        assert counters.mark_once("warned", 3600) is False
        got = records.query(RecordQuery())
        assert [r.record_id for r in got] == [r.record_id for r in originals]
        assert got[3].cost == Decimal("0.0012") and isinstance(got[3].cost, Decimal)
    finally:
        records.close()
        counters.close()


def test_sqlite_schema_has_version_and_indexes(tmp_path: Path) -> None:
    SqliteRecordStore(tmp_path / "s.db").close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"records_ts", "records_user", "records_model", "records_anchor"} <= indexes
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def _held_exclusively(path: Path) -> sqlite3.Connection:
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    return other


def test_locked_sqlite_degrades_to_memory_and_reconciles(tmp_path: Path) -> None:
    clock, path = FakeClock(), tmp_path / "locked.db"
    seen: list[str] = []
    store = FailOpenCounterStore(SqliteCounterStore(path, busy_timeout=0.05), probe_interval=5, clock=clock,
                                 on_degraded=seen.append)
    try:
        store.add("day", Amount(10, 1), 3600)
        assert store.try_reserve(["day"], "inf", Amount(0, 5), Limit(tokens=100), 3600)[0]
        store.settle("day", "inf", Amount(0, 5), Amount(0, 4), 3600)
        other = _held_exclusively(path)
        try:
            store.add("day", Amount(20, 2), 3600)  # times out on the lock → answered locally
            ok, used, inflight = store.try_reserve(["day"], "inf", Amount(0, 5), Limit(tokens=100), 3600)
            # Locally, admission starts from the last figures the database gave for these keys (before the
            # settle above: stale on the safe side) plus what was counted locally since.
            assert ok and used == Amount(30, 3) and inflight == Amount(0, 5)
            store.settle("day", "inf", Amount(0, 5), Amount(5, 5), 3600)
            # Settling the local reservation released it locally and counted its usage as a (local) add.
            assert store.degraded and store.degraded_ops == 3 and seen == ["add", "try_reserve", "add"]
            clock.advance(10)  # probe due, but the database is still locked
            store.add("day", Amount(1, 0), 3600)
            assert store.degraded and store.degraded_ops == 4
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert store.read(["day"], "inf") == (Amount(36, 8), Amount(0, 5))  # probe not due: local figures
        clock.advance(10)
        assert store.read(["day"], "inf") == (Amount(36, 12), Amount())  # replayed: 10+20+5+1, 1+4+2+5
        assert not store.degraded and store.recoveries == 1 and store.pending() == {}
    finally:
        store.close()


def test_read_only_sqlite_degrades_and_reconciles(tmp_path: Path) -> None:
    clock = FakeClock()
    primary = SqliteCounterStore(tmp_path / "ro.db")
    store = FailOpenCounterStore(primary, probe_interval=1, clock=clock)
    # The tests run as root, where chmod cannot make a file read-only; query_only makes SQLite refuse every
    # write with the same error ("attempt to write a readonly database").
    conn = primary._db._conn
    assert conn is not None
    conn.execute("PRAGMA query_only = ON")
    try:
        store.add("day", Amount(5, 5), None)
        assert store.mark_once("w", None) is True
        assert store.degraded and store.degraded_ops == 2
    finally:
        conn.execute("PRAGMA query_only = OFF")
    clock.advance(2)
    store.add("day", Amount(1, 1), None)
    assert not store.degraded
    assert primary.read(["day"], "inf") == (Amount(6, 6), Amount())
    store.close()


def test_corrupt_sqlite_file_is_a_clear_start_up_error(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(ConfigError, match="not a usable SQLite database"):
        SqliteCounterStore(path)
    with pytest.raises(ConfigError, match="not a usable SQLite database"):
        open_ledger(f"sqlite:///{path}")


def test_failopen_probes_at_most_once_per_interval() -> None:
    calls = 0

    class Down(MemoryCounterStore):
        def add(self, bucket_key: str, actual: Amount, ttl_s: int | None) -> None:
            nonlocal calls
            calls += 1
            raise ConnectionError("down")

    clock = FakeClock()
    store = FailOpenCounterStore(Down(), probe_interval=5, clock=clock)
    for _ in range(100):
        store.add("k", Amount(1, 1), None)
    assert calls == 1 and store.degraded_ops == 100 and store.outages == 1
    clock.advance(5)
    store.add("k", Amount(1, 1), None)
    assert calls == 2  # the probe (its replay failed, so the op itself was answered locally)
    assert store.pending() == {("k", None, None): (Amount(), Amount(101, 101), None)}


# --- records ----------------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def records(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RecordStore]:
    store: RecordStore
    store = MemoryRecordStore() if request.param == "memory" else SqliteRecordStore(tmp_path / "r.db")
    yield store
    store.close()


def check_record_store(store: RecordStore) -> None:
    """The RecordStore contract; the Redis tests run it too."""
    # A user outside ASCII: a store that counts a member's length in characters (not bytes) corrupts it.
    batch = [make_record(i) for i in range(9)] + [make_record(9, model="glm-4", user="主播·小美")]
    store.append(batch)
    store.append(batch[:3])  # a retried batch is not stored twice (memory keeps what it is given)
    got = store.query(RecordQuery(since=1_700_000_000.0 + 3, until=1_700_000_000.0 + 9))
    assert [r.timestamp - 1_700_000_000.0 for r in got] == [3, 4, 5, 6, 7, 8]
    first = got[0]
    assert first == dataclasses.replace(batch[3], request_params={"enable_thinking": True,
                                                                  "thinking": {"type": "on"}})
    assert [r.timestamp for r in store.query(RecordQuery(user="u1", limit=2, since=1_700_000_000.0))] == [
        1_700_000_001.0, 1_700_000_004.0]
    assert [r.user for r in store.query(RecordQuery(model="glm-4"))] == ["主播·小美"]
    assert store.query(RecordQuery(model="qwen-plus", anchor="nobody")) == []
    assert store.delete(model="glm-4") == 1
    with pytest.raises(ValueError):
        store.delete()
    assert purge_older_than(store, 1, now=1_700_000_005.0 + 86_400) == 5 + (3 if isinstance(
        store, MemoryRecordStore) else 0)
    assert [r.timestamp - 1_700_000_000.0 for r in store.query(RecordQuery())] == [5, 6, 7, 8]
    assert store.delete(user="u2") == 2


def test_record_store_contract(records: RecordStore) -> None:
    check_record_store(records)


def test_records_keep_no_private_params_and_unpriced_stays_none(records: RecordStore) -> None:
    rec = make_record(cost=None)
    rec.request_params = {"_raw_request": {"messages": "secret"}, "region": "cn", "obj": object()}
    records.append([rec])
    (got,) = records.query(RecordQuery())
    assert got.cost is None and got.currency is None
    assert got.request_params == {"region": "cn"}


def test_memory_record_store_is_bounded() -> None:
    store = MemoryRecordStore(maxlen=5)
    store.append([make_record(i) for i in range(8)])
    assert [r.timestamp - 1_700_000_000.0 for r in store.records()] == [3, 4, 5, 6, 7]


def test_open_ledger_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records, counters = open_ledger("memory://")
    assert isinstance(records, MemoryRecordStore) and isinstance(counters, MemoryCounterStore)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_sqlite_path() == tmp_path / "state" / "otel-llm-usage" / "ledger.db"
    records, counters = open_ledger("sqlite://")
    assert isinstance(records, SqliteRecordStore) and isinstance(counters, FailOpenCounterStore)
    records.close()
    counters.close()
    assert default_sqlite_path().exists()
    for bad in ("sqlite://relative.db", f"sqlite:///{tmp_path}/missing/x.db", "postgres://x", "nonsense"):
        with pytest.raises(ConfigError):
            open_ledger(bad)


# --- the writer -------------------------------------------------------------------------------------


class FlakyStore(MemoryRecordStore):
    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.batches: list[int] = []

    def write(self, encoded: Sequence[UsageRecord], *, pace: Callable[[], None] = no_pause) -> None:
        if self.down:
            raise ConnectionError("store down")
        self.batches.append(len(encoded))
        super().write(encoded)


def test_writer_batches_flushes_and_closes(tmp_path: Path) -> None:
    store = SqliteRecordStore(tmp_path / "w.db")
    writer = LedgerWriter(store, batch_size=100, flush_interval=30)
    try:
        for i in range(1050):
            writer.process(make_record(i))
        assert writer.flush(timeout=10)
        assert writer.written == 1050 and len(store.query(RecordQuery())) == 1050
        writer.process(make_record(5000))
        assert writer.close()
        assert writer.written == 1051 and writer.dropped == 0 and writer.failures == 0
        writer.process(make_record(5001))  # after close: written synchronously, not lost
        assert len(store.query(RecordQuery())) == 1052
    finally:
        writer.close()
        store.close()


def test_writer_keeps_batches_while_the_store_is_down_and_drops_oldest_beyond_max_buffer() -> None:
    store = FlakyStore()
    store.down = True
    writer = LedgerWriter(store, batch_size=10, flush_interval=0.01, max_buffer=50, retry_initial=0.01,
                          retry_max=0.05)
    try:
        for i in range(80):
            writer.process(make_record(i))
        assert writer.flush(timeout=0.3) is False
        assert writer.failures >= 1
        store.down = False
        assert writer.flush(timeout=10)
        assert writer.dropped == 30
        assert [r.timestamp - 1_700_000_000.0 for r in store.records()] == list(range(30, 80))
        assert max(store.batches) <= 10
    finally:
        writer.close()


def test_writer_bounds_its_queue_while_a_write_hangs() -> None:
    entered, release = threading.Event(), threading.Event()

    class Hanging(MemoryRecordStore):
        def write(self, encoded: Sequence[UsageRecord], *, pace: Callable[[], None] = no_pause) -> None:
            entered.set()
            release.wait(10)
            super().write(encoded)

    store = Hanging()
    writer = LedgerWriter(store, batch_size=1, flush_interval=0.01, max_buffer=50)
    try:
        writer.process(make_record(0))
        assert entered.wait(5)  # the thread is stuck writing record 0
        for i in range(1, 101):
            writer.process(make_record(i))
        assert writer.dropped == 50 and writer.pending == 51  # 50 queued + the one being written
        release.set()
        assert writer.flush(timeout=10)
        assert [r.timestamp - 1_700_000_000.0 for r in store.records()] == [0, *range(51, 101)]
    finally:
        release.set()
        writer.close()


def test_writer_close_gives_up_after_its_timeout_when_the_store_stays_down() -> None:
    store = FlakyStore()
    store.down = True
    writer = LedgerWriter(store, retry_initial=0.01)
    writer.process(make_record())
    assert writer.close(timeout=0.3) is False
    assert writer.dropped == 1 and writer.written == 0


_EXIT_SCRIPT = """
import os, signal, sys, time
from otel_llm_usage.ledger import LedgerWriter, SqliteRecordStore
from otel_llm_usage.usage import UsageRecord
store = SqliteRecordStore(sys.argv[1])
writer = LedgerWriter(store, batch_size=64, flush_interval=60)
mode = sys.argv[2]
if mode == "sigterm":
    def on_term(signum, frame):
        ok = writer.close()
        print(ok, writer.written, writer.dropped, flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
n = 0
while True:
    writer.process(UsageRecord(provider="openai", operation="chat", request_model="m"))
    n += 1
    if n == 1000:
        print("ready", flush=True)
        if mode == "exit":
            break  # interpreter exit without close(): the exit hook must flush
"""


@pytest.mark.parametrize("mode", ["exit", "sigterm"])
def test_writer_loses_nothing_at_exit_or_sigterm(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "exit.db"
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_EXIT_SCRIPT), str(path), mode], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    if mode == "sigterm":
        time.sleep(0.1)
        os.kill(proc.pid, signal.SIGTERM)
    tail = proc.stdout.read().split()
    proc.stdout.close()
    assert proc.wait(30) == 0
    store = SqliteRecordStore(path)
    try:
        count = len(store.query(RecordQuery()))
    finally:
        store.close()
    if mode == "exit":
        assert count == 1000
    else:  # everything processed before the handler ran: close() succeeded, nothing dropped
        assert tail[0] == "True" and int(tail[1]) == count >= 1000 and tail[2] == "0"


def test_runtime_purges_records_past_retention_at_start(tmp_path: Path) -> None:
    import time as _time

    from otel_llm_usage.config import Config
    from otel_llm_usage.runtime.core import Runtime

    url = f"sqlite:///{tmp_path / 'r.db'}"
    store, counters = open_ledger(url)
    now = _time.time()
    store.append([make_record(0, ts=now - 100 * 86_400), make_record(1, ts=now - 10 * 86_400)])
    store.close()
    counters.close()
    runtime = Runtime(Config(ledger=url, retention_days=30), None, None)
    try:
        deadline = _time.monotonic() + 10
        while len(runtime.records()) != 1 and _time.monotonic() < deadline:
            _time.sleep(0.05)
        (kept,) = runtime.records()
        assert kept.timestamp == pytest.approx(now - 10 * 86_400)
    finally:
        runtime.shutdown()


def test_sqlite_append_sends_rows_in_multi_row_statements_and_keeps_every_field(tmp_path: Path) -> None:
    """One ``sqlite3_step`` per row (``executemany``) hands the GIL over once per row, and on a busy host
    thread each hand-back waits up to the interpreter's switch interval: a 500-record batch cost the
    calling threads ~500 forced switches. Rows go in ``ROWS_PER_INSERT`` at a time instead."""
    from otel_llm_usage.ledger.sqlite import ROWS_PER_INSERT

    store = SqliteRecordStore(tmp_path / "m.db")
    try:
        store.append([make_record(0)])  # opens the connection
        inserts: list[str] = []
        store._db._conn.set_trace_callback(  # type: ignore[union-attr]
            lambda sql: inserts.append(sql) if sql.lstrip().upper().startswith("INSERT") else None)
        n = 2 * ROWS_PER_INSERT + 7
        batch = [make_record(i, ts=1_700_000_000.123456789 + i / 7) for i in range(n)]
        batch.append(dataclasses.replace(batch[5], user="a duplicate id in the same batch"))
        store.append(batch)
        assert len(inserts) == 3  # two full statements and one of the remaining 8 rows
        got = {r.record_id: r for r in store.query(RecordQuery())}
        assert len(got) == 1 + n  # the duplicate id is ignored, as a retried batch's rows are
        for rec in batch[:n]:
            assert dataclasses.asdict(got[rec.record_id]) == dataclasses.asdict(
                dataclasses.replace(rec, request_params={"enable_thinking": True, "thinking": {"type": "on"}}))
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_batch_is_written_in_paced_requests(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Records come to ``write`` encoded (``LedgerWriter.process`` encodes them where they are processed:
    for Redis, packed as ``ZADD`` arguments), and the store calls the writer's ``pace`` after every
    request it builds or sends: Redis records go ``_MEMBERS_PER_ZADD`` per ZADD, SQLite rows
    ``ROWS_PER_INSERT`` per INSERT, paced before the transaction (no pause holds the file's lock)."""
    from otel_llm_usage.ledger.redis import RedisRecordStore
    from otel_llm_usage.ledger.sqlite import ROWS_PER_INSERT

    store: RecordStore
    if backend == "sqlite":
        store = SqliteRecordStore(tmp_path / "p.db")
    else:
        store = RedisRecordStore(request.getfixturevalue("redis_url"), prefix="pace:")
    try:
        n = RedisRecordStore._MEMBERS_PER_ZADD + 100
        batch = [make_record(i) for i in range(n)]
        encoded = [store.encode(r) for r in batch]
        paces: list[int] = []  # per pace: records already readable by another connection
        if backend == "redis":
            import redis as redis_lib

            admin = redis_lib.Redis.from_url(request.getfixturevalue("redis_url"))
            admin.config_resetstat()
            store.write(encoded, pace=lambda: paces.append(-1))
            zadds = int(admin.info("commandstats")["cmdstat_zadd"]["calls"])
            admin.close()
            assert zadds == 2  # a full ZADD and the last 100
            assert len(paces) == 2
        else:
            reader = SqliteRecordStore(tmp_path / "p.db")
            store.write(encoded, pace=lambda: paces.append(len(reader.query(RecordQuery()))))
            reader.close()
            assert paces == [0] * -(-n // ROWS_PER_INSERT)
        got = store.query(RecordQuery())
        assert sorted(r.record_id for r in got) == sorted(r.record_id for r in batch)
    finally:
        store.close()


class WriteLog(MemoryRecordStore):
    """Notes each write's size and whether the writer paced it, after ``delay_s`` (a round trip)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.writes: list[tuple[int, bool]] = []

    def write(self, encoded: Sequence[UsageRecord], *, pace: Callable[[], None] = no_pause) -> None:
        self.writes.append((len(encoded), pace is not no_pause))
        time.sleep(self.delay_s)
        super().write(encoded)


def test_the_writer_waits_for_a_batch_or_the_interval_not_each_trickle() -> None:
    """Every write costs the host's threads a few interpreter hand-overs whatever its size. A writer
    that, after each write, sent whatever had arrived meanwhile (beside a busy event loop: 19 writes
    a second of ~50 records each) multiplied them. A busy writer waits for a full batch too, or for
    ``flush_interval``; a ``flush`` waits for neither."""
    store = WriteLog(delay_s=0.05)  # a round trip, while records keep coming
    w = LedgerWriter(store, batch_size=40, flush_interval=30.0)
    try:
        for i in range(130):
            w.process(make_record(i))
            time.sleep(0.004)
        assert w.flush(10)
        sizes = [n for n, _ in store.writes]
        assert sum(sizes) == 130 and len(store.records()) == 130
        assert sizes[:-1] == [40] * (len(sizes) - 1), sizes  # only the flush sent a partial batch
    finally:
        w.close()


def test_the_writer_paces_a_batch_unless_it_is_behind() -> None:
    """A writer more than a few batches behind writes flat out (the queue is the host's memory)."""
    store = WriteLog()
    w = LedgerWriter(store, batch_size=10, flush_interval=60.0)
    try:
        for i in range(5):
            w.process(make_record(i))
        assert w.flush(timeout=5)
        assert [paced for _, paced in store.writes] == [True]
        held = threading.Event()
        release = threading.Event()

        class Slow(WriteLog):
            def write(self, encoded: Sequence[UsageRecord], *, pace: Callable[[], None] = no_pause) -> None:
                held.set()
                release.wait(10)
                super().write(encoded, pace=pace)

        slow = Slow()
        w2 = LedgerWriter(slow, batch_size=10, flush_interval=60.0)
        try:
            for i in range(10):  # a full batch: the writer takes it and waits in append
                w2.process(make_record(i))
            assert held.wait(5)
            for i in range(10, 70):  # six batches queue up behind it: more than four
                w2.process(make_record(i))
            release.set()
            assert w2.flush(timeout=5)
            seen = [paced for _, paced in slow.writes]
            assert seen[0] is True and seen[1] is False
            assert seen[-1] is True  # caught up: paced again
            assert len(slow.records()) == 70
        finally:
            release.set()
            w2.close()
    finally:
        w.close()
