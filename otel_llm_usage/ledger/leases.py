# SPDX-License-Identifier: Apache-2.0
"""Budget admission from local leases on a shared counter store (SQLite, Redis, Redis Cluster).

::

    counters = LeasedCounterStore(FailOpenCounterStore(RedisCounterStore(url)))
    counters.try_reserve(...)   # almost always answered here, from this process's lease
    counters.settle(...)        # counted here; written to the store by a background thread

A *lease* is a slice of one budget instance's remaining allowance, taken from the store
in one atomic step (:meth:`~otel_llm_usage.ledger.base.CounterStore.lease`) and held
there as in-flight, so other processes see it as spoken for. Calls are admitted against
it locally, with a lock and no I/O: a call fits when the lease's free part (granted −
in flight here − settled here but not yet written) covers its reservation.

Background work, on one thread (``otel-llm-usage-leases``), every ``flush_interval``:

* settled usage is written to the store (``settle_and_read``: the written usage leaves
  the lease, so the free part is unchanged) and the store's totals are read back for
  the warn/exceeded thresholds;
* a lease whose free part fell below ``low_water`` of its last grant is refilled ahead
  of need (``lease`` with nothing required). Asked for on an event loop's thread, on a store
  that can (:class:`~otel_llm_usage.ledger.base.LoopLeaseStore`: Redis), the refill is a task on
  that loop instead, awaiting the store there (see :meth:`LeasedCounterStore._ask_refill`);
* every ``ttl_s`` a lease in use is re-sized (its free part above the low-water mark handed
  back and a fresh share taken in the same step: the part it keeps admits the process's calls
  while the request is out); one unused for a whole ``ttl_s`` gives its free part back. A
  re-size due when an event loop asks for a refill goes with that refill, on the loop.
  Calendar windows key their in-flight by window, so the lease of a window that ended goes
  idle and is returned the same way.

Only a call that its lease cannot cover waits for the store: it hands back the free
part and asks for at least its own reservation in one step. A process has one lease request
per budget instance with the store at a time, the background thread's included: a grant on
its way is counted in the store's in-flight total, and a call that asked beside it would
take this process's own lease for other processes' and be refused below the limit. Where waiting is not
allowed (an event loop, see :mod:`otel_llm_usage._blocking`) that raises
:class:`~otel_llm_usage._blocking.WouldBlock` and the caller retries on a thread.

Sizing: each grant is ``share`` of what remains (``limit − used − in flight``, so it
shrinks as the budget nears its limit) and never less than the reservation waiting
for it. The overshoot bound is the one of per-call reservations, across the fleet: a
grant is only made below the limit and passes it by less than one reservation, and a
process only admits within its grants. What leases add is *under*-admission: a call
may be refused while other processes hold unused leases, by at most the sum of their
free parts (each at most ``share`` of what remained at its last grant, plus the ``low_water``
part of the grant before, which a refill or a re-size keeps).

At exit (and on ``flush``) settled usage is written and every free part is handed back,
so the store's in-flight returns to what calls really hold.

A process that dies without handing back (killed, out of memory) cannot, so each process is a
:class:`~otel_llm_usage.ledger.base.Holder`: the store keeps what every holder holds and when
it last heard from it, and a holder silent for :data:`HOLDER_TTL_FACTOR` × ``ttl_s`` loses its
lease to the next request of anyone (the background thread renews a held lease every
``ttl_s``). A live process that could not reach the store for :data:`LOCAL_SHARE` of that
time (its threads starved, the machine paused) stops admitting from its lease, and its next
request hands the whole of it back: it never admits from a lease the store may have taken.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from asyncio.events import _get_running_loop  # the loop of this thread or None, without raising
from collections.abc import Callable, Sequence

from .._blocking import WouldBlock, may_wait
from .._fork import reset_after_fork
from .._guard import internal_error
from ._lease_state import (
    ALL,
    HOLDER_TTL_FACTOR,
    LOCAL_SHARE,
    ZERO,
    Lease,
    LeaseStats,
    floor0,
    holder_id,
    min_amount,
    on_limited,
)
from .base import Amount, Holder, Limit, saturated
from .resilient import FailOpenCounterStore, flush_at_exit

__all__ = ["HOLDER_TTL_FACTOR", "LeaseStats", "LeasedCounterStore"]

# A request awaited on an event loop that has not landed after this is taken for stuck (its loop
# stopped with the task pending): a thread then asks the store beside it instead of waiting on.
_LOOP_FLIGHT_STUCK_S = 2.0


class _LoopFlight(threading.Event):
    """The flight of a lease request awaited on ``loop``, set when it lands."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.sent = time.monotonic()


def _may_wait_for(flight: threading.Event) -> bool:
    """Whether this thread may wait for ``flight``: not if the request is awaited by the loop this very
    thread runs (a synchronous call on the loop would wait for itself), nor on a loop that stopped."""
    if not isinstance(flight, _LoopFlight):
        return True
    return (flight.loop is not _get_running_loop() and flight.loop.is_running()
            and time.monotonic() - flight.sent < _LOOP_FLIGHT_STUCK_S)


class LeasedCounterStore:
    """A :class:`~otel_llm_usage.ledger.base.CounterStore` admitting from local leases on ``store``.

    ``store`` is fail-open, so nothing here raises on a store fault: during an outage a lease
    keeps admitting until it is spent, then refills come from the fail-open fallback, and what
    was written meanwhile is replayed by it. Its health is this store's health.
    """

    # A thread waiting for another's store request looks at the lease again after this, and waits on if
    # the request is still out: the store's own timeouts end every request; this only bounds one wait.
    _FOLLOWER_WAIT_S = 5.0
    # A read waits this long at most for this process's requests on its way to the store (see ``read``).
    _READ_WAIT_S = 1.0
    shared = True
    counts_locally = True  # counted under a lock; the background thread writes

    def __init__(self, store: FailOpenCounterStore, *, share: float = 0.02, ttl_s: float = 5.0, low_water: float = 0.5,
                 flush_interval: float = 0.2, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < share <= 1 or not 0 < low_water < 1:
            raise ValueError("share must be in (0, 1] and low_water in (0, 1)")
        self.store = store
        self.share = share
        self.ttl_s = ttl_s
        self.low_water = low_water
        self.flush_interval = flush_interval
        self.stats = LeaseStats()
        self._clock = clock
        self._lock = threading.Lock()
        self._landed = threading.Condition(self._lock)  # notified whenever a store answer is taken in
        self._leases: dict[str, Lease] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop_tasks: set[asyncio.Task[None]] = set()
        self._loops_prepared: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        self._closed = False
        self.holder = Holder(holder_id(), HOLDER_TTL_FACTOR * ttl_s)
        reset_after_fork(self)
        # Finalizers run newest first at exit: this one after the pipeline's (settled usage reaches
        # the leases first) and before the fail-open store's (which replays what this writes).
        self._at_exit = weakref.finalize(self, flush_at_exit, weakref.ref(self))

    @property
    def backend(self) -> str:
        return self.store.backend

    @property
    def degraded(self) -> bool:
        return self.store.degraded

    @property
    def degraded_by_op(self) -> dict[str, int]:
        return self.store.degraded_by_op

    def admissions(self) -> dict[str, int]:
        """How budget checks were answered, by path (the ``llm_usage_budget_admissions_total`` metric)."""
        return self.stats.admissions()

    # --- admission ------------------------------------------------------------------------------

    def try_reserve(self, used_keys: Sequence[str], inflight_key: str, reservation: Amount, limit: Limit,
                    ttl_s: int | None) -> tuple[bool, Amount, Amount]:
        while True:
            with self._lock:
                lease = self._lease(inflight_key, used_keys, limit, ttl_s)
                if lease.granted != ZERO and self._clock() >= lease.valid_until:
                    self._lose(lease)
                if lease.fits(reservation):
                    lease.inflight += reservation
                    lease.busy = True
                    self.stats.local += 1
                    if not lease.refill and lease.low(self.low_water):
                        lease.refill = True
                        self._ask_refill(inflight_key)
                    return True, lease.seen_used + lease.unflushed_total, lease.others + lease.inflight
                if lease.refused_until > self._clock() and lease.free() == ZERO:
                    self.stats.refused_locally += 1
                    return False, lease.seen_used + lease.unflushed_total, lease.others + lease.inflight
                if not may_wait():
                    self.stats.would_block += 1
                    self._prepare_loop()
                    raise WouldBlock(inflight_key)
                flight = lease.flight
                if flight is None or not _may_wait_for(flight):  # this thread asks; others wait for its answer
                    flight = self._start(lease)
                    self.stats.waits += 1
                    release = floor0(lease.free())  # handed back in the same step: our leftovers never count
                    lease.granted -= release
                    release = self._sent_release(lease, release)
                    sent_at = self._clock()
                    break
            # One request per budget instance and process at a time: sixteen threads missing the
            # same lease would otherwise queue sixteen requests on the store (a SQLite file lock
            # shared by every process). Then this thread looks again: the grant may cover it too.
            flight.wait(self._FOLLOWER_WAIT_S)
        try:
            granted, used, inflight = self.store.lease(list(used_keys), inflight_key, on_limited(limit, reservation),
                                                       release, self.share, limit, ttl_s, self.holder)
        except BaseException:
            with self._lock:
                self._land(lease, flight)
            raise
        self._ensure_thread()
        with self._lock:
            self._land(lease, flight)
            self._seen(lease, used, inflight, granted, sent_at)
            if limit.exhausted_by(used + inflight):
                # A budget at its limit stays refused here until the next background write brings
                # fresh totals or a call settled here frees part of the lease (its free part went
                # back with this request): a blocked caller in a loop does not cost a round trip a call.
                lease.refused_until = self._clock() + self.flush_interval
            elif lease.fits(reservation):
                lease.inflight += reservation
                lease.busy = True
                return True, used, inflight
            return False, used, inflight

    @staticmethod
    def _send(lease: Lease, loop: asyncio.AbstractEventLoop | None = None) -> threading.Event:
        """Start this process's one lease request for ``lease`` (awaited on ``loop``, if given); the
        caller holds ``_lock``."""
        lease.exchanges += 1
        flight = lease.flight = threading.Event() if loop is None else _LoopFlight(loop)
        return flight

    def _start(self, lease: Lease) -> threading.Event | None:
        """Start this thread's request for ``lease``: the lease's one flight, or, beside a request this
        thread may not wait for (see :func:`_may_wait_for`), an exchange of its own with no flight
        (``None``). The caller holds ``_lock``."""
        if lease.flight is None:
            return self._send(lease)
        lease.exchanges += 1
        return None

    def _land(self, lease: Lease, flight: threading.Event | None = None) -> None:
        """End a request of this process for ``lease`` (its lease request if ``flight``); the caller
        holds ``_lock``. Waiters wake now but look at the lease only once the lock is released, so the
        answer the caller takes in under the same lock is there when they do."""
        lease.exchanges -= 1
        lease.landed += 1
        self._landed.notify_all()
        if flight is not None:
            if lease.flight is flight:  # not one a thread started after giving up waiting for this one
                lease.flight = None
            flight.set()

    def lease(self, used_keys: Sequence[str], inflight_key: str, need: Amount, release: Amount, share: float,
              limit: Limit, ttl_s: int | None, holder: Holder | None = None) -> tuple[Amount, Amount, Amount]:
        """Passed to the store: leases of leases would only add a layer of slack."""
        return self.store.lease(used_keys, inflight_key, need, release, share, limit, ttl_s, holder)

    def _lease(self, inflight_key: str, used_keys: Sequence[str], limit: Limit, ttl_s: int | None) -> Lease:
        """The lease of ``inflight_key``, created empty; the caller holds ``_lock``."""
        lease = self._leases.get(inflight_key)
        if lease is None:
            lease = self._leases[inflight_key] = Lease(tuple(used_keys), limit, ttl_s,
                                                        renew_at=self._clock() + self.ttl_s)
        else:
            if len(used_keys) != len(lease.used_keys) or used_keys[-1] != lease.used_keys[-1]:
                lease.used_keys = tuple(used_keys)  # a rolling window moved on to a new bucket
            lease.limit, lease.ttl_s = limit, ttl_s
        return lease

    def _lose(self, lease: Lease) -> None:
        """No answer from the store for too long: the store may have taken the lease. Admit nothing
        more from it; the next request hands back all the store still holds of it."""
        lease.granted = ZERO
        lease.lost = True

    def _sent_release(self, lease: Lease, release: Amount) -> Amount:
        """What a request hands back: ``release``, or everything after the lease went stale."""
        if lease.lost:
            lease.lost = False
            return ALL
        return release

    def _seen(self, lease: Lease, used: Amount, inflight: Amount, granted: Amount, sent_at: float) -> None:
        """Take in a store answer to a request sent at ``sent_at``: ``inflight`` is the store's before
        ``granted`` was added. The store renewed the holder's lease when it answered, so the lease
        may be used for a while after ``sent_at``."""
        lease.valid_until = sent_at + LOCAL_SHARE * self.holder.ttl_s
        lease.others = floor0(inflight - (lease.granted))
        lease.granted += granted
        lease.seen_used = used
        if granted != ZERO:
            lease.last_grant = granted
            self.stats.refills += 1
            # Whoever asked, the grant answers a refill asked for meanwhile; a lease still low asks
            # again at its next admission. Left set, it waited for the lease thread to clear it, and
            # beside a busy event loop no admission asked for a refill until then.
            lease.refill = False

    # --- settlement -----------------------------------------------------------------------------

    def settle(self, bucket_key: str, inflight_key: str, reserved: Amount, actual: Amount,
               ttl_s: int | None, holder: Holder | None = None) -> None:
        self.settle_and_read(bucket_key, inflight_key, reserved, actual, ttl_s, (bucket_key,))

    def settle_and_read(self, bucket_key: str, inflight_key: str, reserved: Amount, actual: Amount,
                        ttl_s: int | None, used_keys: Sequence[str],
                        holder: Holder | None = None) -> tuple[Amount, Amount]:
        """Counted here, written by the background thread: the totals returned are the store's at the
        last contact plus what this process has not written yet."""
        with self._lock:
            lease = self._leases.get(inflight_key)
            if lease is None:  # a budget that never reserves here (alert-only), or after a fork
                lease = self._leases[inflight_key] = Lease(tuple(used_keys), Limit(), ttl_s,
                                                            renew_at=self._clock() + self.ttl_s)
            lease.inflight = floor0(lease.inflight - reserved)
            lease.unflushed[bucket_key] = lease.unflushed.get(bucket_key, ZERO) + actual
            lease.unflushed_total += actual
            lease.ttl_s = ttl_s
            used, inflight = lease.seen_used + lease.unflushed_total, lease.others + lease.inflight
        self._ensure_thread()
        return saturated(used), saturated(inflight)

    def add(self, bucket_key: str, actual: Amount, ttl_s: int | None) -> None:
        self.store.add(bucket_key, actual, ttl_s)

    def read(self, used_keys: Sequence[str], inflight_key: str) -> tuple[Amount, Amount]:
        """The store's totals, with this process's share of them made exact: usage not written yet
        counts as used, and of its lease only what calls hold counts as in flight.

        Exact only from a store read during which none of this process's requests on the key was on
        its way: a write on its way has left the lease and may not have reached the store (it counted
        nowhere), a hand-back has left ``granted`` and may still be in the store's in-flight (it
        counted as another process's). So the read waits for such a request to be answered, and
        reads again if one started or landed meanwhile, for :data:`_READ_WAIT_S` at most; then (or
        where waiting is not allowed) it takes the store's answer as it is."""
        deadline = time.monotonic() + self._READ_WAIT_S
        patient = may_wait()
        while True:
            with self._lock:
                lease = self._leases.get(inflight_key)
                while patient and lease is not None and lease.exchanges and time.monotonic() < deadline:
                    self._landed.wait(deadline - time.monotonic())
                    lease = self._leases.get(inflight_key)
                landed = -1 if lease is None else lease.landed
            used, inflight = self.store.read(used_keys, inflight_key)
            with self._lock:
                now = self._leases.get(inflight_key)
                settled = now is lease and (now is None or (now.exchanges == 0 and now.landed == landed))
                if settled or not patient or time.monotonic() >= deadline:
                    if now is None:
                        return used, inflight
                    mine = now.unflushed_total, floor0(inflight - now.granted) + now.inflight
                    return saturated(used + mine[0]), saturated(mine[1])

    def mark_once(self, key: str, ttl_s: int | None) -> bool:
        return self.store.mark_once(key, ttl_s)

    # --- background -----------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None and not self._closed:
            with self._lock:
                if self._thread is None and not self._closed:
                    self._thread = threading.Thread(target=self._run, name="otel-llm-usage-leases", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        stop, wake = self._stop, self._wake
        while not stop.is_set():
            wake.wait(self.flush_interval)
            wake.clear()
            try:
                self.maintain()
            except Exception as exc:  # the store never raises; this guards our own bookkeeping
                internal_error("ledger.leases", exc)

    def maintain(self, *, final: bool = False) -> None:
        """One round of background work (see the module docstring); ``final`` hands back every free part."""
        now = self._clock()
        with self._lock:
            keys = list(self._leases)
        for key in keys:
            self._write(key)
            self._resize(key, now, final)

    def _write(self, key: str) -> None:
        """Write the lease's settled usage; the written part leaves the lease (its free part is unchanged)."""
        with self._lock:
            lease = self._leases.get(key)
            if lease is None or not lease.unflushed:
                return
            if lease.granted != ZERO and self._clock() >= lease.valid_until:
                self._lose(lease)
            batches, lease.unflushed = lease.unflushed, {}
            used_keys, ttl_s = lease.used_keys, lease.ttl_s
            out = []
            for bucket, actual in batches.items():
                release = on_limited(lease.limit, min_amount(floor0(actual), floor0(lease.granted)))
                lease.granted -= release
                lease.unflushed_total -= actual
                out.append((bucket, actual, self._sent_release(lease, release)))
            lease.exchanges += len(out)
        for sent, (bucket, actual, release) in enumerate(out):
            sent_at = self._clock()
            try:
                used, inflight = self.store.settle_and_read(bucket, key, release, actual, ttl_s, used_keys,
                                                            self.holder)
            except BaseException:
                with self._lock:
                    for _ in out[sent:]:
                        self._land(lease)
                raise
            with self._lock:
                self._land(lease)
                if lease.granted != ZERO:  # the store renewed what it holds of the lease
                    lease.valid_until = sent_at + LOCAL_SHARE * self.holder.ttl_s
                lease.seen_used = used
                lease.others = floor0(inflight - lease.granted)
                if not lease.limit.exhausted_by(used + inflight):
                    lease.refused_until = 0.0
                self.stats.flushes += 1

    def _resize(self, key: str, now: float, final: bool) -> None:
        while True:
            with self._lock:
                lease = self._leases.get(key)
                if lease is None:
                    return
                flight = lease.flight
                if flight is None or not _may_wait_for(flight):
                    request = self._resize_request(key, lease, now, final)
                    if request is None:
                        return
                    # Until its answer is in, a call that misses waits for it rather than asking beside
                    # it: the store counts this grant in flight, and the call would take it for others'.
                    flight = self._start(lease)
                    used_keys, limit, ttl_s = lease.used_keys, lease.limit, lease.ttl_s
                    break
            # A call is asking the store for this lease: what to hand back or top up depends on its answer.
            flight.wait(self._FOLLOWER_WAIT_S)
        release, share = request
        sent_at = self._clock()
        try:
            granted, used, inflight = self.store.lease(used_keys, key, ZERO, release, share, limit, ttl_s,
                                                       self.holder)
        except BaseException:
            with self._lock:
                self._land(lease, flight)
            raise
        with self._lock:
            self._land(lease, flight)
            self._seen(lease, used, inflight, granted, sent_at)
            if release != ZERO:
                self.stats.returns += 1
            if final and lease.idle():
                self._leases.pop(key, None)

    def _ask_refill(self, key: str) -> None:
        """Top up the lease of ``key`` ahead of need; the caller holds ``_lock``.

        From an event loop's thread the request is awaited on the loop when the store can do that
        (Redis): a thread beside a busy loop waits for the interpreter as long as the loop keeps
        releasing it for a moment only, since each release wakes the waiter and the loop takes it
        back first. Measured beside 100 concurrent calls: 0.17 s median, up to 0.9 s, from the
        refill being asked for to the lease thread sending it, while the lease's low-water part
        lasted ~0.1 s of calls; a fifth of the calls then missed their lease. The lease thread is
        not woken as well: it would often take the request first and then wait as long for the
        interpreter to read the answer, with the loop's request held back behind it."""
        loop = _get_running_loop()
        if loop is None or not self.store.leases_on_loop or self._closed:
            self._wake.set()
            return
        self._keep(loop.create_task(self._refill_on_loop(key, loop)))

    def _prepare_loop(self) -> None:
        """On an event loop's thread, connect the loop's client once, ahead of its first refill: a call
        on a loop that missed its lease (the loop's first call always does) starts it."""
        loop = _get_running_loop()
        if loop is None or loop in self._loops_prepared or not self.store.leases_on_loop or self._closed:
            return
        self._loops_prepared.add(loop)
        self._keep(loop.create_task(self.store.connect_on_loop()))

    def _keep(self, task: asyncio.Task[None]) -> None:
        self._loop_tasks.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._loop_tasks.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:  # our bug: logged once, never the host's
            internal_error("ledger.leases.loop", exc)

    async def _refill_on_loop(self, key: str, loop: asyncio.AbstractEventLoop) -> None:
        """One refill of ``key``'s lease, awaited on ``loop``, with its renewal if that is due; the lease
        thread does what this cannot: a lease gone stale (all the store holds of it goes back), a store
        that did not answer."""
        with self._lock:
            lease = self._leases.get(key)
            if lease is None or lease.flight is not None:  # gone, or a request is on its way already
                return
            now = self._clock()
            # A renewal due now goes with the refill: left to the lease thread, which beside a busy
            # loop gets the interpreter a tenth of a second late, the lease ran dry meanwhile (a run
            # slower than the renewal interval missed a loop turn of calls).
            if lease.lost or (lease.granted != ZERO and now >= lease.valid_until):
                self._wake.set()
                return
            request = self._resize_request(key, lease, now, final=False)
            if request is None:
                return
            release, share = request
            flight = self._send(lease, loop)
            used_keys, limit, ttl_s = lease.used_keys, lease.limit, lease.ttl_s
        answer = None
        sent_at = self._clock()
        try:
            answer = await self.store.lease_on_loop(list(used_keys), key, ZERO, release, share, limit, ttl_s,
                                                    self.holder)
        finally:  # a cancelled task too: the request ends here, and the lease thread asks instead
            with self._lock:
                self._land(lease, flight)
                if answer is None:  # no answer (a fault, the loop closing): the store may have granted,
                    # and kept what a renewal going with the refill handed back
                    lease.uncertain = True
                    lease.refill = True
                    self._wake.set()
                else:
                    granted, used, inflight = answer
                    self._seen(lease, used, inflight, granted, sent_at)
                    if release != ZERO:  # a renewal that went with the refill handed part back
                        self.stats.returns += 1
                    if granted != ZERO:
                        self.stats.loop_refills += 1

    def _resize_request(self, key: str, lease: Lease, now: float, final: bool) -> tuple[Amount, float] | None:
        """What to hand back and what share to ask for, the lease updated as if it were sent; ``None``
        when there is nothing to ask the store. The caller holds ``_lock``."""
        if lease.granted != ZERO and now >= lease.valid_until:
            self._lose(lease)
        due = final or now >= lease.renew_at
        quiet = due and not lease.busy and lease.unflushed_total == ZERO
        if lease.uncertain and lease.inflight == ZERO and (final or quiet):
            # Hand back all the store holds of this lease, the unseen grant included: at exit, or at a
            # renewal with no call in flight, none admitted since the last and no usage left to write
            # (the lease keeps nothing then), so a process that lives on does not hold it until exit.
            lease.lost = True
            lease.uncertain = False
        if lease.refill and not lease.low(self.low_water):
            lease.refill = False  # an answer that landed since the call asked for it covered it
        if not (due or lease.refill or lease.lost):
            return None
        keep = lease.busy and not final
        # A lease in use keeps what a refill would leave it while the request is out: handing back all
        # of its free part made every call of a busy process miss until the answer came (on an event
        # loop each went to an admission thread, elsewhere each waited for the store).
        kept = lease.low_mark(self.low_water) if keep else ZERO
        release = floor0(lease.free() - kept) if due else ZERO
        # A lease still held (calls in flight use it) is renewed even with nothing to hand back:
        # the store takes it from a holder it has not heard from.
        if release == ZERO and not keep and not lease.refill and not lease.lost and \
                (lease.granted == ZERO or not due):
            if due:
                lease.renew_at = now + self.ttl_s
                if lease.idle():
                    del self._leases[key]
            return None
        lease.granted -= release
        release = self._sent_release(lease, release)
        lease.refill = False
        if due:
            lease.busy = False
            lease.renew_at = now + self.ttl_s
        if lease.limit == Limit():  # nothing limited: only usage to write, nothing to lease
            return None
        return release, (self.share if (keep or not due) else 0.0)

    # --- lifecycle ------------------------------------------------------------------------------

    def flush(self, timeout_s: float = 2.0) -> bool:
        """Write settled usage and hand back every free part now, then flush the store; never raises."""
        try:
            self.maintain(final=True)
        except Exception as exc:
            internal_error("ledger.leases.flush", exc)
        return self.store.flush(timeout_s)

    def after_fork_in_child(self) -> None:
        """The leases are the parent's (it writes their usage and hands them back); the child starts empty.
        The store under it resets its own state."""
        self._lock = threading.Lock()
        self._landed = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self._leases = {}
        self._loop_tasks, self._loops_prepared = set(), weakref.WeakSet()  # the parent's loops
        self.holder = Holder(holder_id(), self.holder.ttl_s)  # the parent's leases are the parent's

    def close(self) -> None:
        if self._closed:
            return
        self._at_exit.detach()
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        self._closed = True
        self.flush()
        try:
            self.store.close()
        except Exception as exc:
            internal_error("ledger.leases.close", exc)

