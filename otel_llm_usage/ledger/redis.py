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

Fork: nothing to do here. redis-py's ``ConnectionPool`` compares ``os.getpid()`` with the pid
that created it on every checkout and, in a forked child, drops the inherited sockets (without
shutting them down: they are still the parent's) and connects afresh; the registered scripts
are plain SHA1s and stay valid. ``tests/test_scale_out.py`` checks it with a real server.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ..errors import ConfigError
from ..usage import UsageRecord
from ._records import deletion, from_mapping, matches, select, to_mapping
from .base import Amount, Limit, RecordQuery, saturated
from .urls import ledger_url_problem

if TYPE_CHECKING:
    import redis as redis_lib

__all__ = ["DEFAULT_PREFIX", "RedisCounterStore", "RedisRecordStore"]

DEFAULT_PREFIX = "llm_usage:"

# HINCRBY fails ("would overflow") past the signed 64-bit range; a failed script would fail every later
# replay of the same usage too. Saturate instead (Python clamps the arguments to that range first).
# set_field writes an in-flight value computed in doubles, clamped so HINCRBY can still add to it.
_SATURATING = """
local function incr(key, field, by)
  local r = redis.pcall('HINCRBY', key, field, by)
  if type(r) == 'table' and r.err then
    redis.call('HSET', key, field, tonumber(by) < 0 and '-9223372036854775808' or '9223372036854775807')
  end
end
local function set_field(key, field, x)
  redis.call('HSET', key, field, x >= 9.2e18 and '9223372036854775807' or string.format('%.0f', x))
end
"""

# Reads KEYS[1..last] into raw (the exact strings) and sums them into c, t (doubles).
_SUM_KEYS = """
local function sum_keys(last, raw)
  local c, t = 0, 0
  for i = 1, last do
    local v = redis.call('HMGET', KEYS[i], 'c', 't')
    raw[2 * i - 1] = v[1] or '0'
    raw[2 * i] = v[2] or '0'
    c = c + (tonumber(v[1]) or 0)
    t = t + (tonumber(v[2]) or 0)
  end
  return c, t
end
"""

# KEYS = used keys..., inflight key (last). ARGV = reservation cost, tokens; limit cost, tokens ("" = no
# limit); ttl ("" = keep the key's TTL). Returns {admitted, used/inflight raw values as strings}: Python
# sums the raw strings so the amounts it reports are exact.
_TRY_RESERVE = _SATURATING + _SUM_KEYS + """
local n = #KEYS
local raw = {}
local c, t = sum_keys(n, raw)
local exhausted = (ARGV[3] ~= '' and c >= tonumber(ARGV[3])) or (ARGV[4] ~= '' and t >= tonumber(ARGV[4]))
if exhausted then
  return {0, raw}
end
incr(KEYS[n], 'c', ARGV[1])
incr(KEYS[n], 't', ARGV[2])
if ARGV[5] ~= '' then redis.call('EXPIRE', KEYS[n], ARGV[5]) end
return {1, raw}
"""

# KEYS = bucket, inflight. ARGV = reserved cost, tokens; actual cost, tokens; ttl ("" = keep).
# In-flight never goes below zero (a reservation released twice, or after its key expired).
_SETTLE = _SATURATING + """
local v = redis.call('HMGET', KEYS[2], 'c', 't')
local c = (tonumber(v[1]) or 0) - tonumber(ARGV[1])
local t = (tonumber(v[2]) or 0) - tonumber(ARGV[2])
if c < 0 then c = 0 end
if t < 0 then t = 0 end
set_field(KEYS[2], 'c', c)
set_field(KEYS[2], 't', t)
incr(KEYS[1], 'c', ARGV[3])
incr(KEYS[1], 't', ARGV[4])
if ARGV[5] ~= '' then
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
return 1
"""

# _SETTLE then a read of the window, in one round trip. KEYS = bucket, inflight, used keys...;
# ARGV as _SETTLE. Returns the raw values of the used keys and then the in-flight key.
_SETTLE_READ = _SETTLE.replace("return 1", """
local raw = {}
local n = 0
for i = 3, #KEYS + 1 do
  local key = KEYS[i]
  if i == #KEYS + 1 then key = KEYS[2] end
  local v = redis.call('HMGET', key, 'c', 't')
  raw[2 * n + 1] = v[1] or '0'
  raw[2 * n + 2] = v[2] or '0'
  n = n + 1
end
return raw""")

# KEYS = bucket. ARGV = cost, tokens, ttl ("" = keep).
_ADD = _SATURATING + """
incr(KEYS[1], 'c', ARGV[1])
incr(KEYS[1], 't', ARGV[2])
if ARGV[3] ~= '' then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return 1
"""

# _counting.lease in one round trip. KEYS = used keys..., inflight key (last). ARGV = need cost, tokens;
# release cost, tokens; share; limit cost, tokens ("" = no limit); ttl ("" = keep). Returns
# {granted cost, granted tokens, raw used/inflight values (inflight after the release)} as strings.
_LEASE = _SATURATING + _SUM_KEYS + """
local n = #KEYS
local raw = {}
local c, t = sum_keys(n - 1, raw)
local f = redis.call('HMGET', KEYS[n], 'c', 't')
local fc = (tonumber(f[1]) or 0) - tonumber(ARGV[3])
local ft = (tonumber(f[2]) or 0) - tonumber(ARGV[4])
if fc < 0 then fc = 0 end
if ft < 0 then ft = 0 end
local released = ARGV[3] ~= '0' or ARGV[4] ~= '0'
raw[2 * n - 1] = released and string.format('%.0f', fc) or (f[1] or '0')
raw[2 * n] = released and string.format('%.0f', ft) or (f[2] or '0')
local share = tonumber(ARGV[5])
-- max(need, floor(remaining * share), 1) on a limited axis; need wins as its own string, so it stays exact.
local function grant(need, limit, total)
  if limit == '' then return '0' end
  local g = math.max(math.floor((tonumber(limit) - total) * share), 1)
  if tonumber(need) >= g then return need end
  return string.format('%.0f', g)
end
local gc, gt = '0', '0'
local exhausted = (ARGV[6] ~= '' and c + fc >= tonumber(ARGV[6])) or (ARGV[7] ~= '' and t + ft >= tonumber(ARGV[7]))
local nothing = share == 0 and ARGV[1] == '0' and ARGV[2] == '0'
if not exhausted and not nothing then
  gc = grant(ARGV[1], ARGV[6], c + fc)
  gt = grant(ARGV[2], ARGV[7], t + ft)
end
if released then
  set_field(KEYS[n], 'c', fc)
  set_field(KEYS[n], 't', ft)
end
if gc ~= '0' then incr(KEYS[n], 'c', gc) end
if gt ~= '0' then incr(KEYS[n], 't', gt) end
if (released or gc ~= '0' or gt ~= '0') and ARGV[8] ~= '' then redis.call('EXPIRE', KEYS[n], ARGV[8]) end
return {gc, gt, raw}
"""

# KEYS = used keys..., inflight key (last). Returns the raw values, read atomically.
_READ = """
local raw = {}
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'c', 't')
  raw[2 * i - 1] = v[1] or '0'
  raw[2 * i] = v[2] or '0'
end
return raw
"""


def _import_redis() -> Any:
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ConfigError("the redis:// ledger needs the redis client: pip install 'otel-llm-usage[redis]'") \
            from exc
    return redis


def _connect(url: str, socket_timeout: float, prefix: str | None,
             client: redis_lib.Redis | None) -> tuple[redis_lib.Redis, str]:
    """The client to use and the key prefix: explicit arguments win over the URL's ``?prefix=``."""
    if client is None:
        client, url_prefix = _client(url, socket_timeout)
        prefix = prefix if prefix is not None else url_prefix
    prefix = prefix if prefix is not None else DEFAULT_PREFIX
    if ("{" in prefix or "}" in prefix) and not isinstance(client, _import_redis().Redis):
        # A key's slot is that of its first {...}: a brace in the prefix would put every key of every
        # budget in one slot, or split one budget instance's keys over several and break its scripts.
        raise ConfigError(f"a Redis Cluster key prefix cannot contain {{ or }}, not {prefix!r}")
    return client, prefix


def _client(url: str, socket_timeout: float) -> tuple[redis_lib.Redis, str | None]:
    """A client for ``url`` (its ``?prefix=`` taken out and returned), failing fast instead of retrying."""
    redis = _import_redis()
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in params if k == "prefix"), None)
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # redis-py's default is ten retries with backoff (seconds of blocking); the caller degrades instead.
    # On a cluster this is the client's retry; its per-node connections never retry.
    fail_fast: dict[str, Any] = {"socket_timeout": socket_timeout, "socket_connect_timeout": socket_timeout,
                                 "retry": Retry(NoBackoff(), 0)}
    if parts.scheme.lower() != "redis+cluster":
        clean = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in params if k != "prefix"])))
        return redis.Redis.from_url(clean, **fail_fast), prefix
    problem = ledger_url_problem(url)
    if problem is not None:
        raise ConfigError(f"ledger {url!r}: {problem}")
    from redis import cluster

    credentials, _, hosts = parts.netloc.rpartition("@")
    user, _, password = credentials.partition(":")
    node: Any = cluster.ClusterNode  # untyped in redis-py
    nodes = [node(host.strip("[]"), int(port)) for host, _, port in (n.rpartition(":") for n in hosts.split(","))]
    client: Any = _LazyCluster(lambda: cluster.RedisCluster(
        startup_nodes=nodes, username=unquote(user) or None, password=unquote(password) or None, **fail_fast))
    return client, prefix


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


def _ttl(ttl_s: int | None) -> str:
    return "" if ttl_s is None else str(int(ttl_s))


def _limit(value: int | None) -> str:
    return "" if value is None else str(value)


def _args(*amounts: Amount) -> list[int]:
    """Cost and tokens of each amount, within the range HINCRBY accepts."""
    return [v for a in map(saturated, amounts) for v in (a.cost_nanos, a.tokens)]


def _amounts(raw: Sequence[bytes | str]) -> list[Amount]:
    return [Amount(int(raw[i]), int(raw[i + 1])) for i in range(0, len(raw), 2)]


class RedisCounterStore:
    """:class:`~otel_llm_usage.ledger.base.CounterStore` on Redis; behaves like ``MemoryCounterStore``
    (TTLs in whole seconds, as Redis keeps them)."""

    def __init__(self, url: str = "redis://localhost:6379/0", *, prefix: str | None = None,
                 socket_timeout: float = 0.5, client: redis_lib.Redis | None = None) -> None:
        client, self._prefix = _connect(url, socket_timeout, prefix, client)
        self._redis = client
        self._try_reserve = client.register_script(_TRY_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._add = client.register_script(_ADD)
        self._read = client.register_script(_READ)
        self._settle_read = client.register_script(_SETTLE_READ)
        self._lease = client.register_script(_LEASE)

    def _key(self, key: str) -> str:
        return f"{self._prefix}c:{key}"

    def try_reserve(self, used_keys: Sequence[str], inflight_key: str, reservation: Amount, limit: Limit,
                    ttl_s: int | None) -> tuple[bool, Amount, Amount]:
        keys = [self._key(k) for k in (*used_keys, inflight_key)]
        admitted, raw = self._try_reserve(keys, [*_args(reservation), _limit(limit.cost_nanos),
                                                 _limit(limit.tokens), _ttl(ttl_s)])
        amounts = _amounts(raw)
        return bool(admitted), sum(amounts[:-1], Amount()), amounts[-1]

    def lease(self, used_keys: Sequence[str], inflight_key: str, need: Amount, release: Amount, share: float,
              limit: Limit, ttl_s: int | None) -> tuple[Amount, Amount, Amount]:
        keys = [self._key(k) for k in (*used_keys, inflight_key)]
        granted_c, granted_t, raw = self._lease(keys, [*_args(need, release), repr(float(share)),
                                                       _limit(limit.cost_nanos), _limit(limit.tokens), _ttl(ttl_s)])
        amounts = _amounts(raw)
        return Amount(int(granted_c), int(granted_t)), sum(amounts[:-1], Amount()), amounts[-1]

    def settle(self, bucket_key: str, inflight_key: str, reserved: Amount, actual: Amount,
               ttl_s: int | None) -> None:
        self._settle([self._key(bucket_key), self._key(inflight_key)],
                     [*_args(reserved, actual), _ttl(ttl_s)])

    def settle_and_read(self, bucket_key: str, inflight_key: str, reserved: Amount, actual: Amount,
                        ttl_s: int | None, used_keys: Sequence[str]) -> tuple[Amount, Amount]:
        """``settle`` then ``read`` in one round trip: the budget stage needs the new total right away."""
        keys = [self._key(k) for k in (bucket_key, inflight_key, *used_keys)]
        amounts = _amounts(self._settle_read(keys, [*_args(reserved, actual), _ttl(ttl_s)]))
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

    def close(self) -> None:
        self._redis.close()


class RedisRecordStore:
    """:class:`~otel_llm_usage.ledger.base.RecordStore` on a Redis sorted set scored by timestamp."""

    _PAGE = 1000

    def __init__(self, url: str = "redis://localhost:6379/0", *, prefix: str | None = None,
                 socket_timeout: float = 5.0, client: redis_lib.Redis | None = None) -> None:
        self._redis, prefix = _connect(url, socket_timeout, prefix, client)
        self._key = f"{prefix}records"

    def append(self, records: Sequence[UsageRecord]) -> None:
        if records:
            self._redis.zadd(self._key, {to_mapping(r): r.timestamp for r in records})

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
