# SPDX-License-Identifier: Apache-2.0
"""The Redis ledger on a real three-master Redis Cluster (``redis+cluster://``).

Every counter script touches the keys of one budget instance, which share the engine's hash tag
(``{budget|scope}``) and so one slot; different instances land on different nodes. The tests
check both halves on the cluster itself, run every counter operation against the memory store
(the reference arithmetic) over instances on several nodes, and run the record store contract.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import redis as redis_lib

from otel_llm_usage._ports import free_port
from otel_llm_usage.errors import ConfigError
from otel_llm_usage.ledger import Amount, FailOpenCounterStore, Limit, MemoryCounterStore, RecordQuery, open_ledger
from otel_llm_usage.ledger.redis import RedisCounterStore, RedisRecordStore
from otel_llm_usage.ledger.urls import ledger_url_problem
from tests.ledger.test_ledger import check_record_store, make_record
from tests.support import redis_fixture

redis_cluster = redis_fixture.redis_cluster
redis_cluster_url = redis_fixture.redis_cluster_url

OPS = ["try_reserve", "lease", "lease", "settle", "settle_and_read", "add", "read", "mark_once"]
BUDGETS = ["daily", "monthly", "per-user", "ci", "team-a", "team-b"]
TTL = 3600


def tagged(budget: str) -> tuple[list[str], str, str]:
    """(used keys of a rolling window, its current bucket, in-flight key) of one budget instance, as
    the engine names them."""
    base = f"{{{budget}|all}}"
    return [f"{base}|m1", f"{base}|m2", f"{base}|m3"], f"{base}|m3", f"{base}|inflight"


@pytest.fixture
def store(redis_cluster_url: str) -> Iterator[RedisCounterStore]:
    s = RedisCounterStore(redis_cluster_url)
    yield s
    s.close()


def _node(store: RedisCounterStore, key: str) -> str:
    return str(store._redis.get_node_from_key(store._key(key)).name)


def test_one_instances_keys_share_a_slot_and_the_instances_span_the_nodes(store: RedisCounterStore) -> None:
    nodes = set()
    for budget in BUDGETS:
        used, _, inflight = tagged(budget)
        slots = {store._redis.keyslot(store._key(k)) for k in (*used, inflight)}
        assert len(slots) == 1, budget
        nodes.add(_node(store, inflight))
    assert len(nodes) >= 2, nodes  # otherwise the test below would prove nothing about a cluster


def test_every_counter_operation_matches_the_memory_store_across_nodes(store: RedisCounterStore) -> None:
    rng = random.Random(7)
    mem = MemoryCounterStore()
    limits = [Limit(tokens=4_000), Limit(cost_nanos=60_000), Limit(cost_nanos=90_000, tokens=3_000), Limit()]
    for step in range(400):
        used, bucket, inflight = tagged(rng.choice(BUDGETS))
        limit = rng.choice(limits)
        a = Amount(rng.randrange(0, 3_000), rng.randrange(0, 200))
        b = Amount(rng.randrange(0, 3_000), rng.randrange(0, 200))
        release = rng.choice([Amount(), b])
        share = rng.choice([0.0, 0.1, 0.5, 1.0])
        op = rng.choice(OPS)
        results = []
        for s in (mem, store):
            if op == "try_reserve":
                results.append(s.try_reserve(used, inflight, a, limit, TTL))
            elif op == "lease":
                results.append(s.lease(used, inflight, a, release, share, limit, TTL))
            elif op == "settle":
                results.append(s.settle(bucket, inflight, a, b, TTL))
            elif op == "settle_and_read":
                results.append(s.settle_and_read(bucket, inflight, a, b, TTL, used))
            elif op == "add":
                results.append(s.add(rng.choice(used), b, TTL))
            elif op == "read":
                results.append(s.read(used, inflight))
            else:
                results.append(s.mark_once(f"{bucket}|warn|{a.tokens % 5}", TTL))
        assert results[0] == results[1], (step, op, used, a, b, share, limit)
    for budget in BUDGETS:
        used, _, inflight = tagged(budget)
        assert store.read(used, inflight) == mem.read(used, inflight)


def test_a_multi_key_operation_on_untagged_keys_fails(store: RedisCounterStore) -> None:
    """Why the engine tags its keys: without a common tag one script's keys sit in several slots."""
    used, inflight = ["daily|all|day"], "daily|all|day|inflight"
    assert store._redis.keyslot(store._key(used[0])) != store._redis.keyslot(store._key(inflight))
    with pytest.raises(redis_lib.exceptions.RedisClusterException, match="same key slot"):
        store.try_reserve(used, inflight, Amount(0, 1), Limit(tokens=10), TTL)
    store.add(used[0], Amount(1, 1), TTL)  # a single-key script runs on any slot


def test_prefixes_keep_deployments_apart_and_may_not_carry_braces(redis_cluster_url: str) -> None:
    a, b = RedisCounterStore(redis_cluster_url, prefix="a:"), RedisCounterStore(f"{redis_cluster_url}?prefix=b:")
    used, bucket, inflight = tagged("daily")
    try:
        a.add(bucket, Amount(1, 1), None)
        assert a.read(used, inflight) == (Amount(1, 1), Amount())
        assert b.read(used, inflight) == (Amount(), Amount())
    finally:
        a.close()
        b.close()
    for bad in ("app{x}:", "app}", "{"):
        with pytest.raises(ConfigError, match="cannot contain"):
            RedisCounterStore(redis_cluster_url, prefix=bad)
        with pytest.raises(ConfigError, match="cannot contain"):
            RedisRecordStore(redis_cluster_url, prefix=bad)
    assert "cannot contain" in str(ledger_url_problem(f"{redis_cluster_url}?prefix=x{{y}}"))
    assert "no options" in str(ledger_url_problem(f"{redis_cluster_url}?ssl=true"))


def test_record_store_contract(redis_cluster_url: str) -> None:
    store = RedisRecordStore(redis_cluster_url)
    try:
        check_record_store(store)
    finally:
        store.close()


def test_records_page_through_queries_deletes_and_purges(redis_cluster_url: str) -> None:
    store = RedisRecordStore(redis_cluster_url)
    try:
        store.append([make_record(i) for i in range(2345)])  # more than one page (1000) of each scan
        assert len(store.query(RecordQuery())) == 2345
        assert store.delete(user="u1") == 782  # i % 3 == 1
        assert store.purge(1_700_000_000.0 + 1000) == 1000 - 333
        assert len(store.query(RecordQuery())) == 2345 - 782 - 667
    finally:
        store.close()


def test_open_ledger_on_a_cluster_url(redis_cluster_url: str) -> None:
    records, counters = open_ledger(redis_cluster_url)
    try:
        assert isinstance(counters, FailOpenCounterStore) and isinstance(counters.primary, RedisCounterStore)
        used, bucket, inflight = tagged("ci")
        assert counters.try_reserve(used, inflight, Amount(0, 10), Limit(tokens=100), TTL)[0]
        assert counters.settle_and_read(bucket, inflight, Amount(0, 10), Amount(0, 9), TTL, used) == \
            (Amount(0, 9), Amount())
        records.append([make_record()])
        assert len(records.query(RecordQuery())) == 1
        assert not counters.degraded
    finally:
        records.close()
        counters.close()


def test_an_unreachable_cluster_opens_and_degrades_instead_of_raising() -> None:
    """As with one Redis: the client connects on first use, so a cluster down at start-up costs the
    operations (answered locally), not the process."""
    url = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/0"
    records, counters = open_ledger(url)
    try:
        used, _, inflight = tagged("daily")
        assert counters.try_reserve(used, inflight, Amount(0, 10), Limit(tokens=100), TTL)[0]
        assert isinstance(counters, FailOpenCounterStore) and counters.degraded
        with pytest.raises(redis_lib.exceptions.RedisClusterException, match="cannot be connected"):
            records.append([make_record()])  # the writer retries and buffers
    finally:
        records.close()
        counters.close()


def _move_slot(nodes: list[redis_lib.Redis], key: str) -> tuple[redis_lib.Redis, redis_lib.Redis]:
    """Reshard the slot of ``key`` (with the key) from its node to another, as ``redis-cli --cluster
    reshard`` does; returns (old owner, new owner)."""
    slot = int(nodes[0].execute_command("CLUSTER KEYSLOT", key))
    src = next(n for n in nodes if any(low <= slot <= high for low, high in _own_ranges(n)))
    dst = next(n for n in nodes if n is not src)
    src_id, dst_id = (n.execute_command("CLUSTER MYID") for n in (src, dst))
    dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
    port = dst.connection_pool.connection_kwargs["port"]
    src.execute_command("MIGRATE", "127.0.0.1", port, key, 0, 5000)
    for n in nodes:
        n.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
    return src, dst


def _own_ranges(node: redis_lib.Redis) -> list[tuple[int, int]]:
    me = node.execute_command("CLUSTER MYID")
    entry = next(e for e in node.execute_command("CLUSTER NODES").values() if e["node_id"] == me)
    return [(int(r[0]), int(r[-1])) for r in entry["slots"]]


def test_records_written_across_a_reshard_are_kept_once(redis_cluster_url: str) -> None:
    """The writer sends a batch to the node its slot map names; after the records key's slot moves
    that node answers MOVED: the store refreshes the map and fails the try, the writer retries on
    the new owner. Nothing lost, nothing stored twice."""
    from otel_llm_usage.ledger import LedgerWriter

    hosts = redis_cluster_url.split("://", 1)[1].split("/", 1)[0].split(",")
    nodes = [redis_lib.Redis(host="127.0.0.1", port=int(h.rsplit(":", 1)[1]), decode_responses=True)
             for h in hosts]
    store = RedisRecordStore(redis_cluster_url, prefix="reshard:")
    writer = LedgerWriter(store, batch_size=10, retry_initial=0.05, retry_max=0.05)
    src = dst = None
    try:
        for i in range(10):
            writer.process(make_record(i))
        assert writer.flush(10) and writer.failures == 0
        src, dst = _move_slot(nodes, "reshard:records")
        for i in range(10, 20):
            writer.process(make_record(i))
        assert writer.flush(10)
        assert writer.failures == 1  # MOVED once, then the fresh map
        got = store.query(RecordQuery())
        assert sorted(r.timestamp - 1_700_000_000.0 for r in got) == list(range(20))
        assert int(dst.execute_command("CLUSTER COUNTKEYSINSLOT",
                                       int(dst.execute_command("CLUSTER KEYSLOT", "reshard:records")))) == 1
    finally:
        writer.close()
        store.close()
        if src is not None and dst is not None:  # give the slot back: other tests expect the first layout
            dst.delete("reshard:records")
            slot = int(dst.execute_command("CLUSTER KEYSLOT", "reshard:records"))
            src_id = src.execute_command("CLUSTER MYID")
            for n in nodes:
                n.execute_command("CLUSTER SETSLOT", slot, "NODE", src_id)
        for n in nodes:
            n.close()
