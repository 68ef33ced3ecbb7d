# SPDX-License-Identifier: Apache-2.0
"""Ledger writes off the calling thread: queue in microseconds, write in batches, survive outages.

::

    writer = LedgerWriter(SqliteRecordStore(path), batch_size=256, flush_interval=1.0)
    pipeline.add(writer)            # writer.process(record) for every call
    writer.flush(timeout=5)         # True once everything queued so far is written
    writer.close()                  # flush and stop (also runs at interpreter exit)

How it behaves:

* ``process`` encodes the record for the store (``store.encode``: Python work, no I/O), appends
  it to a ``collections.deque`` and returns: no lock, no I/O. Encoding here puts that work where
  the record is processed (an event loop's slices, the pipeline's worker), not on the writer
  thread, where it competed with the loop for the interpreter for as long as a batch took to
  write. The deque is drained by one daemon thread that writes ``batch_size`` records per
  ``store.write`` when a batch is full, a ``flush`` waits, or the oldest record has waited
  ``flush_interval``: never the trickle that arrived during the last write, since each write costs
  the host's threads a few interpreter hand-overs whatever its size. Batches are 256 records (64
  were measured to cut SQLite ingest from ~65 k to ~42 k records/s); the store sends a batch in
  paced requests (:mod:`otel_llm_usage._pacing`, slices of the thread's own CPU time), so a host
  thread does not wait for the GIL while a batch is built. A writer more than
  :data:`_CATCH_UP_BATCHES` batches behind writes without pausing until it has caught up.
* A failing ``append`` keeps its batch, counts ``failures``, logs once via ``internal_error``
  and retries with exponential backoff (``retry_initial`` doubling up to ``retry_max``)
  until the store is back; stores ignore a record id they already have, so a retried batch
  is never counted twice. At most ``max_buffer`` records wait; beyond that the *oldest* are
  dropped and counted in ``dropped`` (and reported to ``on_dropped(n, reason)``, which feeds
  ``llm_usage_ledger_dropped_records_total{reason}``).
* ``flush`` puts a marker in the queue and waits for the thread to pass it.
* ``close`` (and the exit hook, registered through :func:`weakref.finalize` so a writer that is
  garbage-collected does not stay registered) flushes for up to ``close_timeout`` seconds and
  stops the thread. Records that could not be written by then are counted as ``dropped``. A store
  that says it cannot be written at all (``store.unwritable``: a read-only file or folder) gets
  :data:`UNWRITABLE_CLOSE_S` instead: waiting the full ``close_timeout`` for a permission to change
  would only delay the exit.

Fork: a child forked while a writer exists inherits its queue but not its thread. An
``os.register_at_fork`` hook empties the child's copy of the queue (those records are the
parent's to write), re-creates the locks and the wake-up queue, and the child's first
``process`` starts a new thread: a child that never records anything never starts one.

Signal handlers: ``process``, ``flush`` and ``close`` may be called from a ``SIGTERM`` handler.
A handler runs on the main thread *between* two bytecodes of whatever the main thread was
doing, so it must not wait for a lock the interrupted code could be holding. The calling-side
methods therefore never block on a lock the main thread could hold: ``process`` uses only
``deque`` operations (atomic), ``flush``/``close`` wake the thread through a
``queue.SimpleQueue`` (whose ``put`` is documented as reentrant), wait on a fresh
``threading.Event`` created by that very call and on ``Thread.join``, and detach the exit hook
with the lock-free ``weakref.finalize.detach``. The overflow path takes its private lock
without blocking (skipping the trim if it is taken), and drop counting waits at most a second.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .._blocking import WouldBlock, may_wait
from .._fork import reset_after_fork
from .._guard import internal_error
from .._pacing import Pacer
from ..runtime.pipeline import Stage
from ..usage import UsageRecord
from .base import RecordStore, no_pause

__all__ = ["DROP_BUFFER_FULL", "DROP_SHUTDOWN", "DROP_UNWRITABLE", "UNWRITABLE_CLOSE_S", "LedgerWriter"]

logger = logging.getLogger("otel_llm_usage")

UNWRITABLE_CLOSE_S = 1.0
#: A writer with more than this many batches queued is behind and stops pacing itself.
_CATCH_UP_BATCHES = 4
# ``reason`` label values of the dropped-records counter.
DROP_BUFFER_FULL = "buffer_full"  # max_buffer records were waiting already (the store is slow or down)
DROP_UNWRITABLE = "unwritable"  # still unwritten at exit, the store cannot be written at all
DROP_SHUTDOWN = "shutdown_timeout"  # still unwritten when close() stopped waiting (a locked or slow store)

DropSink = Callable[[int, str], None]


class _Marker:
    """A flush request travelling through the queue behind the records it waits for."""

    __slots__ = ("done", "target")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.target = -1  # records drained before it; set by the writer thread


class _State:
    """Everything the writer thread needs, so the thread does not keep the ``LedgerWriter`` alive."""

    def __init__(self, store: RecordStore, batch_size: int, flush_interval: float, max_buffer: int,
                 retry_initial: float, retry_max: float, on_dropped: DropSink | None) -> None:
        self.store = store
        self.on_dropped = on_dropped
        self.batch_size = max(1, batch_size)
        self.flush_interval = flush_interval
        self.max_buffer = max(1, max_buffer)
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.incoming: deque[Any] = deque()  # records as the store encoded them, and markers
        self.wakeups: queue.SimpleQueue[None] = queue.SimpleQueue()
        self.drop_lock = threading.Lock()
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self.stopping = False
        self.abandon = False
        self.restart = False  # set in a forked child: start a thread at the next process()
        # Writer-thread-only state below: the thread is the sole reader and writer.
        self.buffer: deque[Any] = deque()
        self.markers: deque[_Marker] = deque()
        self.first_at = 0.0  # monotonic time the oldest buffered record was drained
        self.drained = 0  # records moved from incoming to buffer, ever
        self.done = 0  # of those, written or dropped (they leave the buffer in order)
        self.thread: threading.Thread | None = None

    # --- calling side -------------------------------------------------------------------------

    def wake(self) -> None:
        self.wakeups.put(None)

    def overflow(self) -> None:
        """Keep ``incoming`` bounded while the thread is stuck in a slow ``append``: drop the oldest.

        Non-blocking: if another caller (or the code a signal handler interrupted) is trimming
        already, skip; the next ``process`` trims again."""
        if not self.drop_lock.acquire(blocking=False):
            return
        try:
            while len(self.incoming) > self.max_buffer:
                try:
                    item = self.incoming.popleft()
                except IndexError:
                    return
                if isinstance(item, _Marker):
                    self.incoming.append(item)  # still after everything it waited for, just later
                else:
                    self.dropped += 1
                    self.report_dropped(1, DROP_BUFFER_FULL)
        finally:
            self.drop_lock.release()

    def count_dropped(self, n: int, reason: str) -> None:
        # Bounded wait: the holder is the writer thread (which never blocks inside) or an
        # interrupted trim; in the second case an inexact count beats a deadlock.
        locked = self.drop_lock.acquire(timeout=1.0)
        try:
            self.dropped += n
        finally:
            if locked:
                self.drop_lock.release()
        self.report_dropped(n, reason)

    def report_dropped(self, n: int, reason: str) -> None:
        sink = self.on_dropped
        if sink is not None and n:
            try:
                sink(n, reason)
            except Exception as exc:  # a metric callback must not stop the writer
                internal_error("ledger.on_dropped", exc)

    def unwritable(self) -> str | None:
        return self.store.unwritable

    def start(self) -> None:
        thread = threading.Thread(target=self.run, name="otel-llm-usage-ledger-writer", daemon=True)
        self.thread = thread
        thread.start()

    def after_fork_in_child(self) -> None:
        """The parent's thread is gone and its queued records are the parent's: start empty."""
        self.incoming.clear()
        self.buffer.clear()
        self.markers.clear()
        self.drained = self.done = 0
        self.wakeups = queue.SimpleQueue()
        self.drop_lock = threading.Lock()
        self.thread = None
        self.restart = not self.stopping

    def restart_once(self) -> None:
        # Non-blocking, like overflow(): whoever holds the lock is starting the thread already,
        # and the record appended after this call is drained by that thread.
        if not self.drop_lock.acquire(blocking=False):
            return
        try:
            if self.restart:
                self.restart = False
                self.start()
        finally:
            self.drop_lock.release()

    def stop(self, timeout: float | None) -> bool:
        """Flush, then stop the thread; ``False`` if records were left unwritten (now counted dropped)."""
        thread = self.thread
        self.stopping = True
        self.wake()
        if thread is None or thread is threading.current_thread():
            return not self.incoming and not self.buffer
        if self.unwritable() is not None:
            timeout = UNWRITABLE_CLOSE_S if timeout is None else min(timeout, UNWRITABLE_CLOSE_S)
        thread.join(timeout)
        if thread.is_alive():
            before = self.dropped
            self.abandon = True  # the thread drops what is left and exits at its next wake-up
            self.wake()
            thread.join(1.0)
            why = self.unwritable()
            logger.error("otel-llm-usage: %d usage records dropped at exit: ledger %s %s",
                         self.dropped - before, self.store.location,
                         f"cannot be written ({why})" if why else "did not accept them in time")
            return False
        return True

    # --- writer thread ------------------------------------------------------------------------

    def run(self) -> None:
        backoff = 0.0  # current retry delay; 0.0 while the store is healthy
        retry_at = 0.0  # monotonic time of the next attempt after a failure
        closing_seen = False
        pacer = Pacer(time.thread_time)
        while True:
            self._drain()
            if self.abandon:
                reason = DROP_UNWRITABLE if self.unwritable() is not None else DROP_SHUTDOWN
                self._drop(len(self.buffer), reason)
                self._drain()
                self._drop(len(self.buffer), reason)
                return
            if self.stopping and not closing_seen:
                # Closing: retry now and then often, until stop() gives up waiting.
                closing_seen, retry_at, backoff = True, 0.0, min(backoff, 0.1)
            now = time.monotonic()
            if self.buffer and now >= retry_at and self._due(now):
                # Behind (more than a few batches queued): write flat out, the queue is the host's memory.
                pace = pacer.pace if len(self.buffer) <= _CATCH_UP_BATCHES * self.batch_size else no_pause
                if self._write(pace):
                    backoff = 0.0
                    pace()
                    continue
                backoff = min(self.retry_max, backoff * 2 or self.retry_initial)
                retry_at = time.monotonic() + (min(backoff, 0.1) if self.stopping else backoff)
            if self.stopping and not self.buffer and not self.incoming:
                self._release_markers()
                return
            if not self.buffer:
                timeout = self.flush_interval
            else:
                timeout = max(0.0, max(retry_at, self.first_at + self.flush_interval) - time.monotonic())
            with contextlib.suppress(queue.Empty):
                self.wakeups.get(timeout=timeout)
            pacer.restart()

    def _due(self, now: float) -> bool:
        """Write now: a full batch, a flush waiting, closing, or the oldest record ``flush_interval`` old.
        Each write costs the host's threads a few interpreter hand-overs whatever its size, so the
        writer does not send each trickle of records as it arrives (beside a busy event loop, 19
        writes a second of ~50 records, 30 hand-overs each, were measured)."""
        return (len(self.buffer) >= self.batch_size or bool(self.markers) or self.stopping
                or now - self.first_at >= self.flush_interval)

    def _write(self, pace: Callable[[], None]) -> bool:
        """Write the oldest batch, the store pacing itself with ``pace``; ``False`` (batch kept) if it failed."""
        batch = list(itertools.islice(self.buffer, self.batch_size))
        try:
            self.store.write(batch, pace=pace)
        except Exception as exc:  # the store is I/O; keep the batch and retry
            self.failures += 1
            internal_error(f"ledger.write:{type(self.store).__name__}", exc)
            return False
        for _ in batch:
            self.buffer.popleft()
        self.written += len(batch)
        self.done += len(batch)
        self._release_markers()
        return True

    def _drain(self) -> None:
        incoming = self.incoming
        if incoming and not self.buffer:
            self.first_at = time.monotonic()
        while incoming:
            try:
                item = incoming.popleft()
            except IndexError:  # the overflow path took it
                break
            if isinstance(item, _Marker):
                item.target = self.drained
                self.markers.append(item)
            else:
                self.buffer.append(item)
                self.drained += 1
        excess = len(self.buffer) - self.max_buffer
        if excess > 0:
            self._drop(excess, DROP_BUFFER_FULL)
        self._release_markers()

    def _drop(self, n: int, reason: str) -> None:
        for _ in range(n):
            self.buffer.popleft()
        self.count_dropped(n, reason)
        self.done += n

    def _release_markers(self) -> None:
        while self.markers and self.markers[0].target <= self.done:
            self.markers.popleft().done.set()


def _shutdown(state: _State, timeout: float) -> None:
    """Exit hook and garbage-collection hook (must not reference the ``LedgerWriter``)."""
    try:
        state.stop(timeout)
    except Exception as exc:  # runs at exit; nothing may escape
        internal_error("ledger.writer.close", exc)


class LedgerWriter(Stage):
    """A pipeline stage that hands records to a :class:`~otel_llm_usage.ledger.base.RecordStore` in
    batches on a daemon thread. It does not close the store: whoever opened it does."""

    def __init__(self, store: RecordStore, *, batch_size: int = 256, flush_interval: float = 1.0,
                 max_buffer: int = 100_000, retry_initial: float = 0.5, retry_max: float = 30.0,
                 close_timeout: float = 10.0, on_dropped: DropSink | None = None) -> None:
        self.store = store
        self.close_timeout = close_timeout
        self._state = state = _State(store, batch_size, flush_interval, max_buffer, retry_initial, retry_max,
                                     on_dropped)
        # Bound once: process() is the hot path.
        self._encode = store.encode
        self._append = state.incoming.append
        self._incoming = state.incoming
        self._batch_size = state.batch_size
        self._max_buffer = state.max_buffer
        state.start()
        reset_after_fork(state)
        # Runs at interpreter exit (atexit) or when this writer is collected, whichever is first;
        # holds only the state, so registering does not keep the writer alive.
        self._finalizer = weakref.finalize(self, _shutdown, state, close_timeout)

    @property
    def written(self) -> int:
        return self._state.written

    @property
    def dropped(self) -> int:
        return self._state.dropped

    @property
    def failures(self) -> int:
        return self._state.failures

    @property
    def pending(self) -> int:
        """Records queued or buffered, not written yet."""
        return len(self._incoming) + len(self._state.buffer)

    def process(self, record: UsageRecord) -> None:
        if self._state.stopping:
            if not may_wait():
                raise WouldBlock("the writer has stopped: this record is written here")
            self._write_now([record])
            return
        if self._state.restart:  # first record in a forked child
            self._state.restart_once()
        self._append(self._encode(record))
        n = len(self._incoming)
        if n == self._batch_size:
            self._state.wake()
        elif n > self._max_buffer:
            self._state.overflow()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record queued before this call is written (or dropped); ``False`` on timeout."""
        state = self._state
        thread = state.thread
        if thread is None or not thread.is_alive():
            return not state.incoming and not state.buffer
        marker = _Marker()
        self._append(marker)
        state.wake()
        deadline = None if timeout is None else time.monotonic() + timeout
        # Wait in slices: if the thread stops (close from elsewhere) the marker may never be reached.
        while not marker.done.wait(0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic()))):
            if not thread.is_alive():
                return marker.done.is_set() or (
                    not state.buffer and all(isinstance(i, _Marker) for i in list(state.incoming)))
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Flush (for up to ``timeout``, default ``close_timeout`` seconds) and stop the thread.
        Idempotent. ``False`` if records had to be left unwritten."""
        if self._finalizer.detach() is None:  # already closed (detach is lock-free: signal-safe)
            return not self._state.incoming and not self._state.buffer
        return self._state.stop(self.close_timeout if timeout is None else timeout)

    def _write_now(self, records: Sequence[UsageRecord]) -> None:
        """After ``close``: write synchronously (late records at exit) rather than lose them."""
        try:
            self.store.append(records)
            self._state.written += len(records)
        except Exception as exc:
            internal_error(f"ledger.write:{type(self.store).__name__}", exc)
            state = self._state
            state.count_dropped(len(records), DROP_UNWRITABLE if state.unwritable() is not None else DROP_SHUTDOWN)
