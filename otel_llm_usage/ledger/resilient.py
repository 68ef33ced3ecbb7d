# SPDX-License-Identifier: Apache-2.0
"""Budget counters that never fail the host: a shared store with a local stand-in.

::

    counters = FailOpenCounterStore(RedisCounterStore(url), probe_interval=5.0)
    counters.try_reserve(...)       # Redis down? answered locally, never raised
    counters.degraded_ops           # how many operations the local store answered

When the primary store raises (Redis unreachable, SQLite locked or read-only), the
fault is logged once and counted through :func:`~otel_llm_usage._guard.internal_error`,
the store switches to *degraded* and the local fallback answers. While degraded the
primary is not touched again until ``probe_interval`` seconds have passed, so an outage
costs one timeout per interval, not one per call. A store that was only *busy* (it raised
:class:`~otel_llm_usage.ledger.base.StoreBusy`: another process held the SQLite file past the
thread's wait) is asked again after ``BUSY_RETRY_S``, and at once by the next budget
admission, which waits for a busy store as long as our own threads do (a lock held past even
that wait is still contention: the admission is answered locally and the next one asks again).
The first operation after that probes: it replays the usage recorded while degraded
(``add`` / ``settle`` deltas, merged per key) into the primary, and on success the store is healthy again, so the
shared totals reconcile. One thread replays at a time, and it keeps replaying until the
pending set is empty, switching to healthy in the same locked step that finds it empty:
usage other threads defer while a replay runs is replayed too, and usage deferred by a
thread that was answered locally just before the switch is replayed by that thread.
``flush()`` (and ``close()``) replays at once, whatever the probe schedule, within a
bounded time, and logs what it could not replay; at interpreter exit it runs by itself.

What stays approximate during an outage, always on the safe (counting more) side:

* Admission uses the last ``used + inflight`` seen from the primary for the same keys
  (kept for the ``baseline_size`` most recent budget instances) plus the local usage, so
  a user who was at the limit stays blocked; other processes' spend is not seen until
  the primary is back.
* A reservation taken on the primary and settled while degraded is released on the
  primary at replay; until then it counts both as in-flight and as used.
* An operation that failed *after* the primary applied it (a reply lost on the wire) is
  counted again at replay: over-counting is the failure mode budgets can live with.
* ``mark_once`` falls back to local marks: a warning may fire once more per process.
* A reservation whose reply was lost stays in flight on the primary until its window's
  in-flight key expires (the engine keys in-flight per calendar window).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from .._blocking import may_wait, waiting_for_admission
from .._fork import reset_after_fork
from .._guard import internal_error
from ._outage import Baseline, LocalReservations
from .base import Amount, CounterStore, Holder, Limit, LoopLeaseStore, StoreBusy
from .memory import MemoryCounterStore

__all__ = ["FailOpenCounterStore"]

logger = logging.getLogger("otel_llm_usage.ledger")

T = TypeVar("T")
# (bucket, in-flight key or None for a plain add, the lease holder it releases from) -> (reserved, actual, ttl)
_Pending = dict[tuple[str, str | None, Holder | None], tuple[Amount, Amount, int | None]]


class _Unavailable:
    """What :meth:`FailOpenCounterStore._attempt` returns when the fallback has to answer."""


_UNAVAILABLE = _Unavailable()
BUSY_RETRY_S = 0.25  # a write lock held by another process's transaction: milliseconds, rarely more


def _reduced(limit: Limit, by: Amount) -> Limit:
    return Limit(None if limit.cost_nanos is None else limit.cost_nanos - by.cost_nanos,
                 None if limit.tokens is None else limit.tokens - by.tokens)


class FailOpenCounterStore:
    """A :class:`~otel_llm_usage.ledger.base.CounterStore` that answers from ``fallback`` while
    ``primary`` fails and replays the difference once it is back.

    ``on_degraded(op)`` is called (guarded) for every operation the fallback answers, with the
    operation's name, e.g. to feed a metric; ``degraded_ops`` counts the same.
    """

    def __init__(self, primary: CounterStore, fallback: CounterStore | None = None, *,
                 probe_interval: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 on_degraded: Callable[[str], None] | None = None, baseline_size: int = 10_000) -> None:
        self.primary = primary
        self._loop_primary = primary if isinstance(primary, LoopLeaseStore) and primary.leases_on_loop else None
        self.shared = primary.shared
        self.counts_locally = primary.counts_locally
        self.fallback: CounterStore = fallback if fallback is not None else MemoryCounterStore()
        self.on_degraded = on_degraded
        self.probe_interval = probe_interval
        self.degraded_ops = 0
        self.degraded_by_op: dict[str, int] = {}  # operation name → answered locally (a metric reads it)
        self.outages = 0
        self.recoveries = 0
        self._clock = clock
        self._lock = threading.Lock()
        self._replaying = threading.Lock()  # held by the one thread replaying pending usage
        self._down = False
        self._busy = False  # the last fault was contention (StoreBusy), not an outage
        self._down_since = 0.0
        self._next_probe = 0.0
        self._pending: _Pending = {}
        self._local = LocalReservations()
        self._baseline = Baseline(baseline_size)
        self._kind = f"ledger.counters:{type(primary).__name__}"
        # "redis", "sqlite", ...: the ``store`` label of the store metrics.
        self.backend = type(primary).__name__.removesuffix("CounterStore").lower() or "custom"
        # At exit, after the pipeline (created later, finalized first) has settled its queue:
        # a process leaving right after an outage still hands its local usage to the primary.
        self._at_exit = weakref.finalize(self, flush_at_exit, weakref.ref(self))
        reset_after_fork(self)

    @property
    def degraded(self) -> bool:
        return self._down

    def pending(self) -> _Pending:
        """Usage recorded while degraded and not replayed yet (for tests and diagnostics)."""
        with self._lock:
            return dict(self._pending)

    # --- CounterStore -------------------------------------------------------------------------

    def try_reserve(self, used_keys: Sequence[str], inflight_key: str, reservation: Amount, limit: Limit,
                    ttl_s: int | None) -> tuple[bool, Amount, Amount]:
        where = (tuple(used_keys), inflight_key)
        answer = self._attempt("try_reserve", lambda: self.primary.try_reserve(
            used_keys, inflight_key, reservation, limit, ttl_s), admission=True)
        if not isinstance(answer, _Unavailable):
            admitted, used, inflight = answer
            self._baseline.remember(where, used, inflight + reservation if admitted else inflight)
            return answer
        base_used, base_inflight = self._baseline.recall(where)
        admitted, used, inflight = self.fallback.try_reserve(
            used_keys, inflight_key, reservation, _reduced(limit, base_used + base_inflight), ttl_s)
        if admitted:
            self._local.hold(inflight_key, reservation)
        return admitted, used + base_used, inflight + base_inflight

    def lease(self, used_keys: Sequence[str], inflight_key: str, need: Amount, release: Amount, share: float,
              limit: Limit, ttl_s: int | None, holder: Holder | None = None) -> tuple[Amount, Amount, Amount]:
        where = (tuple(used_keys), inflight_key)
        answer = self._attempt("lease", lambda: self.primary.lease(
            used_keys, inflight_key, need, release, share, limit, ttl_s, holder), admission=True)
        if not isinstance(answer, _Unavailable):
            granted, used, inflight = answer
            self._baseline.remember(where, used, inflight + granted)
            return answer
        local_release = Amount()
        if release != Amount():
            if self._local.take(inflight_key, release):
                local_release = release
            else:  # held on the primary: give it back there once it is reachable
                self._defer(inflight_key, inflight_key, release, Amount(), ttl_s, holder)
        base_used, base_inflight = self._baseline.recall(where)
        granted, used, inflight = self.fallback.lease(used_keys, inflight_key, need, local_release, share,
                                                      _reduced(limit, base_used + base_inflight), ttl_s)
        if granted != Amount():
            self._local.hold(inflight_key, granted)
        return granted, used + base_used, inflight + base_inflight

    @property
    def leases_on_loop(self) -> bool:
        """:meth:`lease_on_loop` may be awaited now: the primary leases on an event loop and is up."""
        return self._loop_primary is not None and not self._down

    async def lease_on_loop(self, used_keys: Sequence[str], inflight_key: str, need: Amount, release: Amount,
                            share: float, limit: Limit, ttl_s: int | None,
                            holder: Holder | None = None) -> tuple[Amount, Amount, Amount] | None:
        """:meth:`lease` from the primary, awaited on the running event loop; ``None`` when the primary
        did not answer. Nothing is answered locally here: the store is marked down as a failed
        :meth:`lease` marks it, and the caller asks again through :meth:`lease`, which answers locally."""
        assert self._loop_primary is not None, "leases_on_loop is False"
        try:
            answer = await self._loop_primary.lease_on_loop(used_keys, inflight_key, need, release, share, limit,
                                                            ttl_s, holder)
        except Exception as exc:  # any primary fault degrades, none reaches the host
            self._fail(exc)
            return None
        granted, used, inflight = answer
        self._baseline.remember((tuple(used_keys), inflight_key), used, inflight + granted)
        return answer

    async def connect_on_loop(self) -> None:
        """Connect the primary on the running event loop ahead of need; a fault is left for the first
        request to meet (and degrade on)."""
        assert self._loop_primary is not None, "leases_on_loop is False"
        with contextlib.suppress(Exception):
            await self._loop_primary.connect_on_loop()

    def settle(self, bucket_key: str, inflight_key: str, reserved: Amount, actual: Amount,
               ttl_s: int | None, holder: Holder | None = None) -> None:
        if self._local.take(inflight_key, reserved):
            # Reserved by the fallback during an outage: release it there, count the usage as new.
            self.fallback.settle(bucket_key, inflight_key, reserved, Amount(), ttl_s)
            self.add(bucket_key, actual, ttl_s)
            return
        answer = self._attempt("settle", lambda: self.primary.settle(
            bucket_key, inflight_key, reserved, actual, ttl_s, holder))
        if isinstance(answer, _Unavailable):
            self.fallback.add(bucket_key, actual, ttl_s)
            self._defer(bucket_key, inflight_key, reserved, actual, ttl_s, holder)

    def settle_and_read(self, bucket_key: str, inflight_key: str, reserved: Amount, actual: Amount,
                        ttl_s: int | None, used_keys: Sequence[str],
                        holder: Holder | None = None) -> tuple[Amount, Amount]:
        """One primary round trip unless the reservation was the fallback's (then ``settle`` + ``read``)."""
        if inflight_key in self._local:
            self.settle(bucket_key, inflight_key, reserved, actual, ttl_s, holder)
            return self.read(used_keys, inflight_key)
        answer = self._attempt("settle", lambda: self.primary.settle_and_read(
            bucket_key, inflight_key, reserved, actual, ttl_s, used_keys, holder))
        if isinstance(answer, _Unavailable):
            self.fallback.add(bucket_key, actual, ttl_s)
            self._defer(bucket_key, inflight_key, reserved, actual, ttl_s, holder)
            return self.read(used_keys, inflight_key)
        self._baseline.remember((tuple(used_keys), inflight_key), *answer)
        return answer

    def add(self, bucket_key: str, actual: Amount, ttl_s: int | None) -> None:
        answer = self._attempt("add", lambda: self.primary.add(bucket_key, actual, ttl_s))
        if isinstance(answer, _Unavailable):
            self.fallback.add(bucket_key, actual, ttl_s)
            self._defer(bucket_key, None, Amount(), actual, ttl_s)

    def read(self, used_keys: Sequence[str], inflight_key: str) -> tuple[Amount, Amount]:
        where = (tuple(used_keys), inflight_key)
        answer = self._attempt("read", lambda: self.primary.read(used_keys, inflight_key))
        if not isinstance(answer, _Unavailable):
            self._baseline.remember(where, *answer)
            return answer
        base_used, base_inflight = self._baseline.recall(where)
        used, inflight = self.fallback.read(used_keys, inflight_key)
        return used + base_used, inflight + base_inflight

    def mark_once(self, key: str, ttl_s: int | None) -> bool:
        answer = self._attempt("mark_once", lambda: self.primary.mark_once(key, ttl_s))
        return self.fallback.mark_once(key, ttl_s) if isinstance(answer, _Unavailable) else answer

    def after_fork_in_child(self) -> None:
        """A new lock in a forked child (its local fallback resets its own)."""
        self._lock = threading.Lock()
        self._replaying = threading.Lock()
        self._local.after_fork_in_child()
        self._baseline.after_fork_in_child()

    def flush(self, timeout_s: float = 2.0) -> bool:
        """Replay pending usage now, retrying until ``timeout_s``; never raises. ``False`` (and one
        warning with what is left) if some could not be replayed."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if not self._pending:
                    return True
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if not self._replaying.acquire(timeout=left):
                continue
            try:
                self._drain()
                failed = False
            except Exception as exc:  # still unreachable: try again until the deadline
                self._fail(exc)
                failed = True
            finally:
                self._replaying.release()
            if failed:
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        with self._lock:
            pending = dict(self._pending)
        left_over = sum((actual for _, actual, _ in pending.values()), Amount())
        logger.warning("budget counters: %s unreachable for %.1f s; %d counter updates (%d tokens, "
                       "%d cost nano-units) could not be replayed and stay counted in this process only",
                       self.backend, timeout_s, len(pending), left_over.tokens, left_over.cost_nanos)
        return False

    def close(self) -> None:
        self._at_exit.detach()
        try:
            self.flush()
        except Exception as exc:  # flush does not raise; this is for a subclass's fault
            internal_error(self._kind + ".flush", exc)
        for store in (self.primary, self.fallback):
            try:
                store.close()
            except Exception as exc:
                internal_error(self._kind + ".close", exc)

    # --- degradation and recovery -------------------------------------------------------------

    def _attempt(self, op: str, call: Callable[[], T], *, admission: bool = False) -> T | _Unavailable:
        """The primary's answer, or ``_UNAVAILABLE`` (counted as degraded) when it is down or fails.

        An ``admission`` (a reservation or lease the call waits for) is contention's exception: it
        waits for a busy store as our own threads do, and asks it again at once when the store is
        degraded only because it was busy. Answered locally, it admitted against totals that other
        processes' spend no longer matched: a 4-process fleet on one SQLite file ran up to 300 calls
        past its limit. An outage still answers it locally."""
        patient = admission and may_wait()
        with waiting_for_admission() if patient else contextlib.nullcontext():
            if self._primary_usable(probe_if_busy=patient):
                try:
                    return call()
                except Exception as exc:  # any primary fault degrades, none reaches the host
                    self._fail(exc)
        self._count_degraded(op)
        return _UNAVAILABLE

    def _fail(self, exc: Exception) -> None:
        internal_error(self._kind, exc)
        # Contention ends when the other process commits: ask again soon. Answering locally for the
        # whole probe interval let every process of a fleet admit against stale totals for 5 s.
        busy = isinstance(exc, StoreBusy)
        retry = BUSY_RETRY_S if busy else self.probe_interval
        with self._lock:
            self._next_probe = self._clock() + retry
            self._busy = busy
            if not self._down:
                self._down = True
                self._down_since = time.monotonic()
                self.outages += 1

    def _count_degraded(self, op: str) -> None:
        with self._lock:
            self.degraded_ops += 1
            self.degraded_by_op[op] = self.degraded_by_op.get(op, 0) + 1
        callback = self.on_degraded
        if callback is not None:
            try:
                callback(op)
            except Exception as exc:  # a user callback must not break budgets
                internal_error("ledger.on_degraded", exc)

    def _primary_usable(self, *, probe_if_busy: bool = False) -> bool:
        """True when healthy, or when a due probe replayed everything; False while degraded.
        ``probe_if_busy``: a store degraded only by contention is probed now, not when due."""
        if not self._down:
            return True
        with self._lock:
            if not self._down:
                return True
            now = self._clock()
            if now < self._next_probe and not (probe_if_busy and self._busy):
                return False
            # Claim the probe: other threads keep using the fallback until it is done.
            self._next_probe = now + self.probe_interval
        return self._replay_now()

    def _replay_now(self) -> bool:
        """Drain unless another thread is replaying; True when it left the store healthy.

        After releasing ``_replaying`` it looks again: an entry deferred while it held the lock
        (whose thread could not take it) is replayed here rather than left behind."""
        while self._replaying.acquire(blocking=False):
            try:
                self._drain()
            except Exception as exc:
                self._fail(exc)
                return False
            finally:
                self._replaying.release()
            with self._lock:
                if not self._pending or self._down:
                    return not self._down
        return False

    def _drain(self) -> None:
        """Replay until nothing is pending, then be healthy; the caller holds ``_replaying``.

        Raises (with the rest re-deferred) when the primary fails. The switch to healthy happens
        under ``_lock`` together with seeing the pending set empty, so nothing deferred before it
        is left behind; what is deferred after it is replayed by its own thread (``_defer``)."""
        replayed = 0
        while True:
            with self._lock:
                pending, self._pending = self._pending, {}
                if not pending:
                    recovered = self._down
                    self._down = False
                    if recovered:
                        self.recoveries += 1
                    break
            self._replay(pending)
            replayed += len(pending)
        if recovered:
            logger.info("budget counters: %s is reachable again after %.1f s; %d counter updates made "
                        "meanwhile were replayed into it", self.backend, time.monotonic() - self._down_since,
                        replayed)

    def _replay(self, pending: _Pending) -> None:
        """Apply ``pending`` to the primary; what was not applied goes back to the pending set."""
        items = list(pending.items())
        for done, ((bucket, inflight, holder), (reserved, actual, ttl_s)) in enumerate(items):
            try:
                if inflight is None:
                    self.primary.add(bucket, actual, ttl_s)
                else:
                    self.primary.settle(bucket, inflight, reserved, actual, ttl_s, holder)
            except BaseException:
                for (b, f, h), (r, a, t) in items[done:]:
                    self._defer(b, f, r, a, t, h)
                raise
            self._forget_local(bucket, actual)

    def _forget_local(self, bucket: str, replayed: Amount) -> None:
        """Take replayed usage back out of the fallback, so the next outage starts from the primary's
        figures instead of counting this one twice (never below zero: the key may have expired)."""
        try:
            have, _ = self.fallback.read([bucket], bucket)
            take = Amount(min(have.cost_nanos, replayed.cost_nanos), min(have.tokens, replayed.tokens))
            if take != Amount():
                self.fallback.add(bucket, Amount() - take, None)
        except Exception as exc:  # the fallback is local; a fault here only over-counts
            internal_error("ledger.fallback", exc)

    def _defer(self, bucket: str, inflight: str | None, reserved: Amount, actual: Amount,
               ttl_s: int | None, holder: Holder | None = None) -> None:
        with self._lock:
            key = (bucket, inflight, holder)
            old = self._pending.get(key)
            if old is not None:
                reserved, actual = old[0] + reserved, old[1] + actual
                ttl_s = ttl_s if ttl_s is not None else old[2]
            self._pending[key] = (reserved, actual, ttl_s)
            stranded = not self._down
        # Answered locally just before a replay switched the store back to healthy: no probe will
        # come for this entry, so this thread replays it (or the replayer holding the lock does).
        if stranded:
            self._replay_now()


class _Flushable(Protocol):
    def flush(self, timeout_s: float = 2.0) -> bool: ...


def flush_at_exit(ref: weakref.ref[_Flushable]) -> None:
    """A ``weakref.finalize`` callback: flush the store if it still exists; never raises."""
    store = ref()
    if store is not None:
        try:
            store.flush()
        except Exception as exc:  # runs at interpreter exit: nothing may escape
            internal_error("ledger.flush_at_exit", exc)
