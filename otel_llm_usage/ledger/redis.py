# SPDX-License-Identifier: Apache-2.0
"""Redis ledger: budget counters and records shared by every process of a deployment.

Needs the ``redis`` extra (``pip install 'otel-llm-usage[redis]'``)::

    counters = RedisCounterStore("redis://localhost:6379/0", prefix="myapp:")
    counters.try_reserve(["b:day:2024-06-01"], "b:inflight", Amount(0, 500), Limit(tokens=10_000), 86_400)
    records = RedisRecordStore("redis://localhost:6379/0")
    records.append(batch)
    records.query(RecordQuery(since=time.time() - 86_400, user="alice"))

A Redis Cluster is ``redis+cluster://HOST:PORT[,HOST:PORT...][/0][?prefix=...]`` (any node will
do; listing several lets a client start while one is down); the same classes then use redis-py's
``RedisCluster``, made on first use so that, as with one Redis, opening the ledger never fails
on the network.

Key layout (``P`` is the prefix, default ``llm_usage:``):

* ``P c:{<budget>|<scope>}|<bucket>`` (a window bucket: ``day:2026-12-02``, a rolling window's
  minute...) and ``P c:{<budget>|<scope>}|[<bucket>|]inflight`` (in-flight reservations and
  leases of one budget instance) — a hash ``{c: cost nano-units, t: tokens}`` per counter key.
  ``HINCRBY`` keeps both exact 64-bit integers; the key's Redis TTL is the counter's TTL, so an
  expired counter is simply absent. The ``{...}`` is a Cluster hash tag: every key of one budget
  instance lives in one slot, so every script (which touches only the keys of one instance) runs
  on one node, and different instances spread over the nodes. A cluster prefix may not contain
  braces (it would move the tag).
* ``P c:{<budget>|<scope>}|[<bucket>|]inflight|holders`` — the leases of that in-flight key by
  holder (one field per process: ``"<cost> <tokens> <expiry, ms on the server's clock>"``), so
  the lease of a process that died is taken out of the in-flight total once it expires. Same hash
  tag, same slot; expires with the in-flight key.
* ``P m:<key>`` — a warn-once mark, ``SET NX EX`` (one key per command: any slot).
* ``P records`` — one sorted set (one slot: on a cluster all records sit on one node): member =
  the record as compact JSON (``_records.COLUMNS`` names,
  ``None`` values left out), score = its timestamp. Chosen over a Stream because records arrive
  out of time order (batched, retried after outages) and a sorted set still answers a time range
  exactly (``ZRANGE BYSCORE``) and purges exactly (``ZREMRANGEBYSCORE``). The member contains the
  ``record_id``, so a batch retried after an ambiguous failure is not stored twice.

Every counter operation is exactly one round trip: a Lua script (registered once, sent as
``EVALSHA``; redis-py re-sends the body after a ``NOSCRIPT``) or a single command. The Lua
scripts compare and clamp in Lua numbers (doubles), exact up to 2**53 nano-units (about 9
million currency units in one budget window); the stored values and the values returned to
Python are exact integers regardless.

Connections use short timeouts and no client-side retries, so an unreachable Redis fails fast
and :class:`~otel_llm_usage.ledger.resilient.FailOpenCounterStore` can answer locally.

A lease refill asked for on an asyncio event loop is awaited there
(:meth:`RedisCounterStore.lease_on_loop`): one ``redis.asyncio`` client per loop, with the same
timeouts, closed when the loop shuts down its asynchronous generators (``asyncio.run`` does).

Fork: nothing to do here. redis-py's ``ConnectionPool`` compares ``os.getpid()`` with the pid
that created it on every checkout and, in a forked child, drops the inherited sockets (without
shutting them down: they are still the parent's) and connects afresh; the registered scripts
are plain SHA1s and stay valid. ``tests/e2e/test_scale_out.py`` checks it with a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ..errors import ConfigError
from ..usage import UsageRecord
from . import _redis_lua as lua
from ._records import deletion, from_mapping, matches, select, to_mapping
from .base import Amount, Holder, Limit, RecordQuery, no_pause, saturated
from .urls import ledger_url_problem

if TYPE_CHECKING:
    import redis as redis_lib

__all__ = ["DEFAULT_PREFIX", "RedisCounterStore", "RedisRecordStore"]

DEFAULT_PREFIX = "llm_usage:"

def _import_redis() -> Any:
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ConfigError("the redis:// ledger needs the redis client: pip install 'otel-llm-usage[redis]'") \
            from exc
    return redis


def _connect(url: str, socket_timeout: float, prefix: str | None,
             client: redis_lib.Redis | None) -> tuple[redis_lib.Redis, str, Callable[[], Any] | None]:
    """The client to use, the key prefix (explicit arguments win over the URL's ``?prefix=``) and what
    makes its ``redis.asyncio`` twin (``None`` for a client given ready-made: its twin is unknown)."""
    make_async = None
    if client is None:
        client, url_prefix, make_async = _client(url, socket_timeout)
        prefix = prefix if prefix is not None else url_prefix
    prefix = prefix if prefix is not None else DEFAULT_PREFIX
    if ("{" in prefix or "}" in prefix) and _is_cluster(client):
        # A key's slot is that of its first {...}: a brace in the prefix would put every key of every
        # budget in one slot, or split one budget instance's keys over several and break its scripts.
        raise ConfigError(f"a Redis Cluster key prefix cannot contain {{ or }}, not {prefix!r}")
    return client, prefix, make_async


def _is_cluster(client: Any) -> bool:
    return not isinstance(client, _import_redis().Redis)  # a RedisCluster, or the lazy one below


def _client(url: str, socket_timeout: float) -> tuple[redis_lib.Redis, str | None, Callable[[], Any]]:
    """A client for ``url`` (its ``?prefix=`` taken out and returned), failing fast instead of retrying,
    and what makes the same client in ``redis.asyncio`` (for one event loop: its connections are the loop's)."""
    redis = _import_redis()
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in params if k == "prefix"), None)
    from redis import asyncio as aredis
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # redis-py's default is ten retries with backoff (seconds of blocking); the caller degrades instead.
    # On a cluster this is the client's retry; its per-node connections never retry.
    timeouts = {"socket_timeout": socket_timeout, "socket_connect_timeout": socket_timeout}
    fail_fast: dict[str, Any] = {**timeouts, "retry": Retry(NoBackoff(), 0)}
    fail_fast_async: dict[str, Any] = {**timeouts, "retry": AsyncRetry(NoBackoff(), 0)}
    if parts.scheme.lower() != "redis+cluster":
        clean = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in params if k != "prefix"])))
        return (redis.Redis.from_url(clean, **fail_fast), prefix,
                lambda: aredis.Redis.from_url(clean, **fail_fast_async))
    problem = ledger_url_problem(url)
    if problem is not None:
        raise ConfigError(f"ledger {url!r}: {problem}")
    from redis import cluster
    from redis.asyncio import cluster as acluster

    credentials, _, hosts = parts.netloc.rpartition("@")
    user, _, password = credentials.partition(":")
    addresses = [(host.strip("[]"), int(port)) for host, _, port in (n.rpartition(":") for n in hosts.split(","))]
    auth: dict[str, Any] = {"username": unquote(user) or None, "password": unquote(password) or None}
    node: Any = cluster.ClusterNode  # untyped in redis-py
    anode: Any = acluster.ClusterNode
    client: Any = _LazyCluster(lambda: cluster.RedisCluster(
        startup_nodes=[node(h, p) for h, p in addresses], **auth, **fail_fast))
    # The asyncio cluster fetches its slot map on its first command, so it is made as it is.
    return client, prefix, lambda: acluster.RedisCluster(
        startup_nodes=[anode(h, p) for h, p in addresses], **auth, **fail_fast_async)


class _LazyCluster:
    """A ``RedisCluster``, made on first use. Its constructor fetches the slot map and raises when no
    node answers, where a ``Redis`` connects only when used: opening a cluster ledger must not fail
    either (the first operation fails instead, and counters degrade, the writer retries). It answers
    every command the stores send as a ``Redis`` does. No lock: racing first uses each build a client
    and one is kept, and a fork can never inherit a held lock."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._client: Any = None

    def _connected(self) -> Any:
        if self._client is None:
            self._client = self._make()
        return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connected(), name)

    def register_script(self, script: str) -> Any:
        from redis.commands.core import Script

        client: Any = self  # Script only calls the client's evalsha and script_load
        return Script(client, script.encode())  # bytes: Script needs no encoder, so nothing connects yet

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _holder(holder: Holder | None) -> list[str]:
    return ["", "0"] if holder is None else [holder.id, str(max(1, round(holder.ttl_s * 1000)))]


def _ttl(ttl_s: int | None) -> str:
    return "" if ttl_s is None else str(int(ttl_s))


def _limit(value: int | None) -> str:
    return "" if value is None else str(value)


def _args(*amounts: Amount) -> list[int]:
    """Cost and tokens of each amount, within the range HINCRBY accepts."""
    return [v for a in map(saturated, amounts) for v in (a.cost_nanos, a.tokens)]


def _amounts(raw: Sequence[bytes | str]) -> list[Amount]:
    return [Amount(int(raw[i]), int(raw[i + 1])) for i in range(0, len(raw), 2)]


async def _closed_with_loop(client: Any) -> AsyncIterator[None]:
    """Closes ``client`` when its event loop shuts down: a loop closes the asynchronous generators it
    has seen (``asyncio.run`` does, through ``loop.shutdown_asyncgens``), and no other hook tells a
    library that a loop it does not own is ending. Its sockets would otherwise be left to the
    garbage collector (``ResourceWarning: unclosed transport``)."""
    try:
        yield
    finally:
        await client.aclose()


def _lease_answer(reply: Sequence[Any]) -> tuple[Amount, Amount, Amount]:
    """(granted, used, in flight before the grant) from the ``LEASE`` script's reply."""
    granted_c, granted_t, raw = reply
    amounts = _amounts(raw)
    return Amount(int(granted_c), int(granted_t)), sum(amounts[:-1], Amount()), amounts[-1]


class RedisCounterStore:
    """:class:`~otel_llm_usage.ledger.base.CounterStore` on Redis; behaves like ``MemoryCounterStore``
    (TTLs in whole seconds, as Redis keeps them)."""

    shared = True
    counts_locally = False

    def __init__(self, url: str = "redis://localhost:6379/0", *, prefix: str | None = None,
                 socket_timeout: float = 0.5, client: redis_lib.Redis | None = None) -> None:
        client, self._prefix, self._make_async = _connect(url, socket_timeout, prefix, client)
        self._redis = client
        self._loop_leases: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._try_reserve = client.register_script(lua.TRY_RESERVE)
        self._settle = client.register_script(lua.SETTLE)
        self._add = client.register_script(lua.ADD)
        self._read = client.register_script(lua.READ)
        self._settle_read = client.register_script(lua.SETTLE_READ)
        self._lease = client.register_script(lua.LEASE)
        self._settle_holder_read = client.register_script(lua.SETTLE_HOLDER_READ)

    def _key(self, key: str) -> str:
        return f"{self._prefix}c:{key}"

    def try_reserve(self, used_keys: Sequence[str], inflight_key: str, reservation: Amount, limit: Limit,
                    ttl_s: int | None) -> tuple[bool, Amount, Amount]:
        keys = [self._key(k) for k in (*used_keys, inflight_key)]
        admitted, raw = self._try_reserve(keys, [*_args(reservation), _limit(limit.cost_nanos),
                                                 _limit(limit.tokens), _ttl(ttl_s)])
        amounts = _amounts(raw)
        return bool(admitted), sum(amounts[:-1], Amount()), amounts[-1]

    def _holders_key(self, inflight_key: str) -> str:
        return self._key(inflight_key) + "|holders"  # the in-flight key's hash tag: the same slot

    def lease(self, used_keys: Sequence[str], inflight_key: str, need: Amount, release: Amount, share: float,
              limit: Limit, ttl_s: int | None, holder: Holder | None = None) -> tuple[Amount, Amount, Amount]:
        keys, args = self._lease_request(used_keys, inflight_key, need, release, share, limit, ttl_s, holder)
        return _lease_answer(self._lease(keys, args))

    @property
    def leases_on_loop(self) -> bool:
        """:meth:`lease_on_loop` works here: the store was opened from a URL, so it can make its
        ``redis.asyncio`` client (a client passed in ready-made has no known asyncio twin)."""
        return self._make_async is not None

    async def lease_on_loop(self, used_keys: Sequence[str], inflight_key: str, need: Amount, release: Amount,
                            share: float, limit: Limit, ttl_s: int | None,
                            holder: Holder | None = None) -> tuple[Amount, Amount, Amount]:
        """:meth:`lease`, awaited on the running event loop (one ``redis.asyncio`` client per loop): the
        same script, so the two kinds of request interleave as any two requests of the fleet do."""
        script = (await self._on_loop())[1]
        keys, args = self._lease_request(used_keys, inflight_key, need, release, share, limit, ttl_s, holder)
        return _lease_answer(await script(keys=keys, args=args))

    async def connect_on_loop(self) -> None:
        """Connect the running loop's client ahead of its first lease: on a loop whose turns are long,
        connecting took three or four of them, and the first refill came too late for the lease."""
        await (await self._on_loop())[0].ping()

    async def _on_loop(self) -> tuple[Any, Any]:
        """The running loop's ``redis.asyncio`` client and its ``LEASE`` script, made on first use."""
        loop = asyncio.get_running_loop()
        on_loop = self._loop_leases.get(loop)
        if on_loop is None:
            assert self._make_async is not None, "leases_on_loop is False"
            client = self._make_async()
            closer = _closed_with_loop(client)
            await closer.__anext__()  # iterated on the loop: the loop now tracks it (see _closed_with_loop)
            on_loop = self._loop_leases[loop] = (client, client.register_script(lua.LEASE), closer)
        return on_loop[0], on_loop[1]

    def _lease_request(self, used_keys: Sequence[str], inflight_key: str, need: Amount, release: Amount,
                       share: float, limit: Limit, ttl_s: int | None,
                       holder: Holder | None) -> tuple[list[str], list[Any]]:
        keys = [self._key(k) for k in (*used_keys, inflight_key)] + [self._holders_key(inflight_key)]
        return keys, [*_args(need, release), repr(float(share)), _limit(limit.cost_nanos), _limit(limit.tokens),
                      _ttl(ttl_s), *_holder(holder)]

    def settle(self, bucket_key: str, inflight_key: str, reserved: Amount, actual: Amount,
               ttl_s: int | None, holder: Holder | None = None) -> None:
        if holder is not None:
            self.settle_and_read(bucket_key, inflight_key, reserved, actual, ttl_s, (), holder)
            return
        self._settle([self._key(bucket_key), self._key(inflight_key)],
                     [*_args(reserved, actual), _ttl(ttl_s)])

    def settle_and_read(self, bucket_key: str, inflight_key: str, reserved: Amount, actual: Amount,
                        ttl_s: int | None, used_keys: Sequence[str],
                        holder: Holder | None = None) -> tuple[Amount, Amount]:
        """``settle`` then ``read`` in one round trip: the budget stage needs the new total right away."""
        if holder is None:
            keys = [self._key(k) for k in (bucket_key, inflight_key, *used_keys)]
            raw = self._settle_read(keys, [*_args(reserved, actual), _ttl(ttl_s)])
        else:
            keys = [self._key(bucket_key), self._key(inflight_key), self._holders_key(inflight_key),
                    *(self._key(k) for k in used_keys)]
            raw = self._settle_holder_read(keys, [*_args(reserved, actual), _ttl(ttl_s), *_holder(holder)])
        amounts = _amounts(raw)
        return sum(amounts[:-1], Amount()), amounts[-1]

    def add(self, bucket_key: str, actual: Amount, ttl_s: int | None) -> None:
        self._add([self._key(bucket_key)], [*_args(actual), _ttl(ttl_s)])

    def read(self, used_keys: Sequence[str], inflight_key: str) -> tuple[Amount, Amount]:
        amounts = _amounts(self._read([self._key(k) for k in (*used_keys, inflight_key)]))
        return sum(amounts[:-1], Amount()), amounts[-1]

    def mark_once(self, key: str, ttl_s: int | None) -> bool:
        if ttl_s is not None and ttl_s <= 0:
            return True  # already expired when set, as in MemoryCounterStore; Redis rejects EX 0
        return bool(self._redis.set(f"{self._prefix}m:{key}", 1, nx=True, ex=ttl_s))

    def flush(self, timeout_s: float = 2.0) -> bool:
        return True  # every operation is one script on the server: nothing held back

    def close(self) -> None:
        self._redis.close()


class RedisRecordStore:
    """:class:`~otel_llm_usage.ledger.base.RecordStore` on a Redis sorted set scored by timestamp."""

    writes_block = True
    unwritable = None  # a failing Redis is an outage: the writer waits it out
    _PAGE = 1000
    _MEMBERS_PER_ZADD = 1024  # a batch of 256 is one ZADD (~170 KB at ~660 bytes a record)

    def __init__(self, url: str = "redis://localhost:6379/0", *, prefix: str | None = None,
                 socket_timeout: float = 5.0, client: redis_lib.Redis | None = None) -> None:
        self._redis, prefix, _ = _connect(url, socket_timeout, prefix, client)
        self._key = f"{prefix}records"
        key = self._key.encode()
        self._key_bulk = b"$%d\r\n%b\r\n" % (len(key), key)
        self._cluster = _is_cluster(self._redis)

    @property
    def location(self) -> str:
        return f"redis key {self._key}"

    def encode(self, record: UsageRecord) -> bytes:
        """The record as the two RESP bulk strings of a ``ZADD`` pair (score, member), packed where the
        record is processed: the writer thread then only joins and sends (see :meth:`write`)."""
        member = to_mapping(record).encode()
        score = repr(record.timestamp).encode()  # the form redis-py sends a float in
        return b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(score), score, len(member), member)

    def append(self, records: Sequence[UsageRecord], *, pace: Callable[[], None] = no_pause) -> None:
        self.write([self.encode(r) for r in records], pace=pace)

    def write(self, encoded: Sequence[bytes], *, pace: Callable[[], None] = no_pause) -> None:
        # Through redis-py's ``zadd`` a batch cost the writer thread ~6 us of Python per member
        # (packing, retry and metrics wrappers), time a host's event loop waited for the interpreter.
        # Packed by encode(), a ZADD here is one join, one send and one integer reply; a retried
        # batch re-adds the same members.
        for i in range(0, len(encoded), self._MEMBERS_PER_ZADD):
            part = encoded[i:i + self._MEMBERS_PER_ZADD]
            self._send(b"*%d\r\n$4\r\nZADD\r\n%b%b" % (2 + 2 * len(part), self._key_bulk, b"".join(part)))
            pace()

    def _send(self, command: bytes) -> None:
        client: Any = self._redis
        if self._cluster:
            client = client.get_node_from_key(self._key).redis_connection
        pool = client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([command])
            conn.read_response()  # raises a ResponseError reply; disconnects on a broken connection
        except Exception:
            if self._cluster:
                # MOVED after a reshard, a failed node: the writer retries the batch on a fresh slot map.
                with contextlib.suppress(Exception):
                    self._redis.nodes_manager.initialize()  # type: ignore[attr-defined]
            raise
        finally:
            pool.release(conn)

    def _scan(self, since: float | None, until: float | None) -> Any:
        """Members in time order, one page per round trip (a report never loads the whole set at once)."""
        low = "-inf" if since is None else repr(since)
        high = "+inf" if until is None else f"({until!r}"
        offset = 0
        while True:
            page = self._redis.zrangebyscore(self._key, low, high, start=offset, num=self._PAGE)
            yield from page
            if len(page) < self._PAGE:
                return
            offset += len(page)

    def query(self, q: RecordQuery) -> list[UsageRecord]:
        return select(q, (from_mapping(m) for m in self._scan(q.since, q.until)))

    def delete(self, *, model: str | None = None, user: str | None = None) -> int:
        q = deletion(model, user)
        doomed = [m for m in self._redis.zscan_iter(self._key, count=self._PAGE, score_cast_func=float)
                  if matches(q, from_mapping(m[0]))]
        removed = 0
        for i in range(0, len(doomed), self._PAGE):
            removed += int(self._redis.zrem(self._key, *(m[0] for m in doomed[i:i + self._PAGE])))
        return removed

    def purge(self, before: float) -> int:
        return int(self._redis.zremrangebyscore(self._key, "-inf", f"({before!r}"))

    def close(self) -> None:
        self._redis.close()
