# SPDX-License-Identifier: Apache-2.0
"""price → budgets → telemetry → ledger, as pluggable stages.

Each stage sees every :class:`~otel_llm_usage.usage.UsageRecord` once, in
order, and runs guarded: a failing stage is logged and counted and the next
stage still runs.

Two lists of stages. ``stages`` run on the calling thread (the runtime puts
none there). ``deferred`` stages (pricing, budget settlement, metrics, the ledger) run
afterwards on one worker thread, so a call returns to the host as soon as its
span has ended (a span that records is priced before it ends, by the lifecycle).
The worker takes what is queued every :data:`_POLL_S` seconds (``idle_wait``), or as soon as :data:`_WAKE_AT` records
wait, not on every call: a thread woken to run Python while the host's thread is running Python
waits for the GIL, and a host that only ever releases it for a moment (a system call per call,
such as the ``os.urandom`` of the OpenAI SDK's idempotency key) keeps it waiting until the host
blocks for real. Meanwhile every release of the host hands the GIL's condition over to the waiter
and back: measured, 1.2 futex calls and 20-40 us more CPU per call on the host thread, for nothing
processed (OpenTelemetry's ``BatchSpanProcessor`` wakes its worker on a batch or a schedule for the
same reason).
Nothing reads stale state because of it: every reader drains the queue first
(:meth:`Pipeline.drain` is called by metric collection, budget status and
refusals, ledger queries and flushes), a budget refusal is decided only after
everything queued is settled, and the reservations stay in flight until their
record is settled, so the overshoot bound of :mod:`otel_llm_usage.budgets.engine`
is unchanged.

A record submitted on a thread that runs an asyncio event loop is processed on that loop
instead, in slices of at most :data:`~otel_llm_usage._pacing.LOOP_SLICE_S` scheduled with
``call_soon`` between the host's own callbacks. A worker thread running beside a loop makes
the loop wait for the GIL whenever both want it at once (every forced switch waits for the
worker's next pause, and the wake-up after it is the operating system's to give); a slice on
the loop is the loop's own time, spent when the loop gets to it. The slices run under
:func:`~otel_llm_usage._blocking.no_waiting`: a stage that would have to wait for a store, or
run the host's callbacks, raises ``WouldBlock`` before doing anything, and the record goes on
from that stage on the worker (every record after it too, so the order holds). One slice a
loop turn does not keep up with a busy loop, whose turns are long: past :data:`_LOOP_BACKLOG`
queued records each call submitted on the loop schedules a step of two records (its own share
and one more) beside the regular slice, not in its own step, which is the host's. The worker
stays the fallback: it drains what a loop left behind when no slice ran for ``idle_wait`` (a
loop closed with a slice scheduled, or held by the host).

Budgets also get a say *before* a call (:meth:`Pipeline.before_call`): they
may raise :class:`~otel_llm_usage.errors.BudgetExceeded` or return a cheaper
model to use instead.
"""

from __future__ import annotations

import contextvars
import threading
import time
import weakref
from asyncio import AbstractEventLoop
from asyncio.events import _get_running_loop  # the loop of this thread or None, without raising
from collections import deque
from collections.abc import Callable

from .._blocking import WouldBlock, no_waiting
from .._fork import reset_after_fork
from .._guard import internal_error
from .._pacing import LOOP_SLICE_S, Pacer
from ..errors import BudgetExceeded
from ..usage import UsageRecord

__all__ = ["CallIntent", "Pipeline", "PreCallStage", "Stage"]


class Stage:
    """A step every record goes through, in the pipeline's order (``plan_stages`` says which runs where)."""

    __slots__ = ()

    def process(self, record: UsageRecord) -> None:
        raise NotImplementedError

    def close(self) -> object:
        """At shutdown, after the last record: let go of what the stage holds (most hold nothing)."""
        return None


class CallIntent:
    """What a call is about to do, for pre-call budget checks (no content).

    The input-size estimate walks the request's messages, so it is computed
    only if a budget actually needs it.
    """

    __slots__ = ("_estimate", "_input_tokens", "max_output_tokens", "record")

    def __init__(self, record: UsageRecord, estimate_input: Callable[[], int] | int,
                 max_output_tokens: int | None) -> None:
        self.record = record  # provider, model, attribution already filled in
        self.max_output_tokens = max_output_tokens
        self._estimate = estimate_input
        self._input_tokens: int | None = estimate_input if isinstance(estimate_input, int) else None

    @property
    def estimated_input_tokens(self) -> int:
        if self._input_tokens is None:
            self._input_tokens = self._estimate() if callable(self._estimate) else int(self._estimate)
        return self._input_tokens


class PreCallStage(Stage):
    """A stage that also sees each call before it is sent (budgets, which can refuse or downgrade it)."""

    __slots__ = ()

    @property
    def wants_pre_call(self) -> bool:
        """``False`` while nothing it holds can act before a call (e.g. alert-only budgets)."""
        return True

    def before_call(self, intent: CallIntent) -> str | None:
        """Raise ``BudgetExceeded`` to block, return a model name to downgrade, else ``None``."""
        raise NotImplementedError


_POLL_S = 0.5  # the worker takes queued records at least this often (what a reader does not drain first)
_WAKE_AT = 128  # records queued at which a producer wakes the worker rather than leave them to the poll
_MAX_PENDING = 1000
_SHARE = 2  # records a producer processes itself past _MAX_PENDING (on a loop: past _LOOP_BACKLOG)
_LOOP_BACKLOG = 64  # records queued on a loop past which each call processes _SHARE where it submits it
_LOCKED_RETRY_S = 0.001  # a loop's slice finding the queue locked by a drain elsewhere tries again after this
_CATCH_UP = 256  # past this many queued records the worker stops pausing (see _pacing)


def _run_stages(stages: list[Stage], record: UsageRecord, start: int = 0) -> int | None:
    """Run ``stages[start:]``; the index of a stage that raised ``WouldBlock`` (it did nothing), else None."""
    for index in range(start, len(stages)):
        stage = stages[index]
        try:
            stage.process(record)
        except WouldBlock:
            return index
        except Exception as exc:  # one broken stage must not stop the others
            internal_error(f"stage:{type(stage).__name__}", exc)
    return None


class _Deferred:
    """The deferred stages, their queue and worker. Holds no reference to the ``Pipeline``,
    so the worker thread does not keep a discarded pipeline alive (see ``weakref.finalize``)."""

    def __init__(self, stages: list[Stage], idle_wait: float) -> None:
        self.stages = stages
        self.idle_wait = idle_wait
        self.pending: deque[UsageRecord] = deque()
        #: records an event loop's slice could not finish, each with the stage to go on from; first in line
        self.resumed: deque[tuple[UsageRecord, int]] = deque()
        #: loops with a slice scheduled, so a burst of calls schedules one
        self.loops: set[AbstractEventLoop] = set()
        self.loop_slices = 0  # slices run so far: the worker's sign that the loops keep up
        # Re-entrant: a budget callback run by a deferred stage may read budget status, which drains.
        self.lock = threading.RLock()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.stopped = threading.Event()

    def submit(self, record: UsageRecord) -> None:
        if self.stopped.is_set():
            _run_stages(self.stages, record)
            return
        self.pending.append(record)
        loop = _get_running_loop()
        if loop is not None and not self.resumed and len(self.pending) <= _MAX_PENDING:
            if len(self.pending) > _LOOP_BACKLOG:
                # One slice a turn does not keep up with a busy loop (100 tasks whose steps each cost
                # the SDK's work left 1 000 records queued): each call past the backlog schedules its
                # share as a step of its own. Not done in the call's step: that step is the host's,
                # and two records more in it were the loop's longest holds (~0.2 ms each time).
                loop.call_soon(self.loop_share, loop, context=contextvars.Context())
            self.carry_on(loop)
            if self.thread is None:
                self.start()  # the fallback for what a loop leaves behind
            return
        if len(self.pending) > _MAX_PENDING:
            # Back-pressure: a producer outpacing the worker does its own share and one record
            # more, so the queue (and the work a metric collection may have to drain) shrinks and
            # nothing is dropped, while no single call pays for the whole backlog (draining 1000
            # records on the calling thread held an event loop for ~100 ms).
            self.drain(limit=_SHARE)
            return
        if self.thread is None:
            self.start()
        # Lock-free. No wake-up is lost: the worker clears the flag *before* draining, so a record
        # appended before this check is drained either way; below _WAKE_AT the poll takes it.
        if len(self.pending) >= _WAKE_AT and not self.wake.is_set():
            self.wake.set()

    def schedule(self, loop: AbstractEventLoop) -> None:
        if loop in self.loops:
            return
        self.loops.add(loop)
        # An empty context: the slice must not run in (and stamp exemplars from) the caller's.
        loop.call_soon(self.loop_slice, loop, context=contextvars.Context())

    def loop_slice(self, loop: AbstractEventLoop) -> None:
        """Process queued records on the event loop for one slice; schedule the next if some are left."""
        self.loops.discard(loop)
        self.loop_slices += 1
        if self.stopped.is_set():
            return
        if self.resumed:
            self.wake.set()  # a record waits for the worker: the rest queue behind it
            return
        if not self.run_on_loop():
            # The worker or a reader is draining and takes these along (or a budget callback of the
            # host holds it). Look again shortly rather than wait for the lock on the loop, or spin.
            self.loops.add(loop)
            loop.call_later(_LOCKED_RETRY_S, self.loop_slice, loop, context=contextvars.Context())
            return
        self.carry_on(loop)

    def loop_share(self, loop: AbstractEventLoop) -> None:
        """A busy loop's extra step: at most :data:`_SHARE` queued records (a drain elsewhere, holding the
        queue, takes them along instead), then what ``carry_on`` says."""
        self.loop_slices += 1
        if self.stopped.is_set():
            return
        if not self.resumed:
            self.run_on_loop(_SHARE)
        self.carry_on(loop)

    def carry_on(self, loop: AbstractEventLoop) -> None:
        """After work on ``loop``: a record that would wait goes to the worker (the rest queue behind
        it), else what is left gets the loop's next slice."""
        if self.resumed:
            self.wake.set()
        elif self.pending:
            self.schedule(loop)

    def run_on_loop(self, limit: int = -1) -> bool:
        """Process queued records here, an event loop's thread, for one slice or ``limit`` records, under
        ``no_waiting``; a record whose stage would wait goes to ``resumed``. ``False`` if the queue was
        locked (a drain elsewhere takes the records along): the loop does not wait for it."""
        if not self.lock.acquire(blocking=False):
            return False
        try:
            pending = self.pending
            pacer = Pacer(slice_s=LOOP_SLICE_S)
            with no_waiting():
                while pending and limit != 0:
                    record = pending.popleft()
                    limit -= 1
                    stage = _run_stages(self.stages, record)
                    if stage is not None:
                        self.resumed.append((record, stage))
                        break
                    if pacer.due():
                        break
        finally:
            self.lock.release()
        return True

    def start(self) -> None:
        with self.lock:
            if self.thread is None and not self.stopped.is_set():
                self.thread = threading.Thread(target=self.run, name="otel-llm-usage-pipeline", daemon=True)
                self.thread.start()

    def run(self) -> None:
        stopped = self.stopped
        pacer = Pacer(time.thread_time)
        while not stopped.is_set():
            slices = self.loop_slices
            woken = self.wake.wait(self.idle_wait)  # by a batch, or a record a loop could not finish
            if not woken:
                if self.loop_slices != slices:
                    continue  # the event loops drain their own records
                self.loops.clear()  # a loop closed with a slice scheduled never runs it; others reschedule
            self.wake.clear()
            if self.pending or self.resumed:
                pacer.restart()
                self.drain(pacer=pacer)

    def drain(self, timeout: float = -1, pacer: Pacer | None = None, limit: int | None = None) -> bool:
        """Process every queued record on this thread (at most ``limit``), after any drain in progress
        elsewhere. ``False`` only when ``timeout`` passed before the lock was free. The worker passes
        its ``pacer`` and lets the host's threads run now and then; a reader draining on its own
        thread does not pause. Raises ``WouldBlock`` where waiting is not allowed and a stage needs
        to (the record stays first in line)."""
        if not self.lock.acquire(timeout=timeout):
            return False
        try:
            pending, resumed = self.pending, self.resumed
            left = -1 if limit is None else limit
            while left != 0:
                if resumed:
                    record, start = resumed.popleft()
                elif pending:
                    record, start = pending.popleft(), 0
                else:
                    break
                left -= 1
                stage = _run_stages(self.stages, record, start)
                if stage is not None:
                    # Only where waiting is not allowed (a reader on an event loop): it goes on where it may.
                    resumed.appendleft((record, stage))
                    raise WouldBlock(f"stage {stage}")
                if pacer is not None and 0 < len(pending) <= _CATCH_UP and pacer.due():
                    # Paused without the lock: a reader that drains meanwhile takes over the rest.
                    self.lock.release()
                    try:
                        pacer.pause()
                    finally:
                        self.lock.acquire()
            return True
        finally:
            self.lock.release()

    def stop(self, timeout: float | None = 10.0) -> None:
        self.stopped.set()
        self.wake.set()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.drain(-1 if timeout is None else timeout)

    def after_fork_in_child(self) -> None:
        """The queued records are the parent's to process; the worker starts with the next record."""
        self.pending.clear()
        self.resumed.clear()
        self.loops = set()
        self.lock = threading.RLock()
        self.wake = threading.Event()
        self.thread = None


def _stop_deferred(state: _Deferred) -> None:
    try:
        state.stop()
    except Exception as exc:  # runs at exit or from the garbage collector; nothing may escape
        internal_error("pipeline.stop", exc)


class Pipeline:
    def __init__(self, stages: list[Stage] | None = None, deferred: list[Stage] | None = None, *,
                 clock: Callable[[], float] = time.time, idle_wait: float | None = None) -> None:
        self.stages: list[Stage] = list(stages or [])
        self._clock = clock
        self._deferred = state = _Deferred(list(deferred or []), _POLL_S if idle_wait is None else idle_wait)
        reset_after_fork(state)
        # At interpreter exit (newest first: before the ledger writer created earlier flushes)
        # or when the pipeline is collected, the queue is drained and the worker stopped.
        self._finalizer = weakref.finalize(self, _stop_deferred, state)
        self._pre_call_cache: tuple[int, int, list[PreCallStage]] | None = None

    @property
    def deferred(self) -> list[Stage]:
        return self._deferred.stages

    @property
    def all_stages(self) -> list[Stage]:
        return [*self.stages, *self._deferred.stages]

    def add(self, stage: Stage) -> None:
        self.stages.append(stage)

    @property
    def has_pre_call(self) -> bool:
        return bool(self._pre_call_stages())

    def _pre_call_stages(self) -> list[PreCallStage]:
        """Stages that want to see calls before they are sent (budgets that can refuse).

        Cached, as ``wants_pre_call`` may do work; the key notices the list being replaced
        or grown from outside (the fork hook, tests).
        """
        key = (id(self.stages), len(self.stages) + len(self._deferred.stages))
        cache = self._pre_call_cache
        if cache is None or cache[:2] != key:
            found: list[PreCallStage] = [s for s in self.all_stages
                                         if isinstance(s, PreCallStage) and s.wants_pre_call]
            cache = (key[0], key[1], found)
            self._pre_call_cache = cache
        return cache[2]

    def before_call(self, intent: CallIntent) -> str | None:
        """Pre-call checks; ``BudgetExceeded`` propagates on purpose, and ``WouldBlock`` (the checks need
        the store where waiting is not allowed: run them again on a thread); anything else is ours."""
        new_model: str | None = None
        for stage in self._pre_call_stages():
            try:
                new_model = stage.before_call(intent) or new_model
            except (BudgetExceeded, WouldBlock):
                raise
            except Exception as exc:
                internal_error(f"stage:{type(stage).__name__}.before_call", exc)
        return new_model

    def submit(self, record: UsageRecord) -> None:
        record.submitted_at = self._clock()
        _run_stages(self.stages, record)
        if self._deferred.stages:
            self._deferred.submit(record)

    def drain(self, timeout: float = -1) -> bool:
        """Run the deferred stages for everything submitted so far, on this thread.

        Waits for a drain in progress on another thread first, so on return every record
        submitted before the call has been through every stage. ``False`` if ``timeout``
        (seconds) passed first; callers that must not block indefinitely (signal paths) set one."""
        return self._deferred.drain(timeout)

    @property
    def pending(self) -> int:
        """Records whose deferred stages have not run yet."""
        return len(self._deferred.pending) + len(self._deferred.resumed)

    def shutdown(self) -> None:
        self._finalizer.detach()
        _stop_deferred(self._deferred)
        for stage in self.all_stages:
            try:
                stage.close()
            except Exception as exc:
                internal_error(f"stage:{type(stage).__name__}.close", exc)
