# SPDX-License-Identifier: Apache-2.0
"""The one call lifecycle shared by every provider, sync, async and streaming.

    resolve attribution → pre-call budget check → start span → call →
    normalize usage → finish span → one UsageRecord into the pipeline

Provider modules supply a :class:`~.contract.ProviderAdapter` that only knows
request and response *shapes*; :class:`~.invocation.Invocation` holds one call's
state. Everything here is guarded: the SDK call runs inside ``except BaseException``
that records and re-raises unchanged, and our own work before and after it never
raises into the host (``BudgetExceeded`` is the single, opt-in exception).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar, Token
from typing import Any

from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.trace import Tracer

from .. import _names as N
from .._blocking import WouldBlock, no_waiting
from .._fork import run_in_child
from .._guard import internal_error
from ..attribution import Attribution, current_attribution
from ..errors import BudgetExceeded
from ..runtime.pipeline import CallIntent, Pipeline
from ..telemetry import LabelPolicy
from ..usage import UsageRecord, estimate_tokens
from .contract import RequestInfo, Router
from .invocation import Invocation

__all__ = ["CallHandler", "note_attempt"]

# Set while an instrumented call is on the stack, so an SDK method that calls
# another patched method (e.g. a helper calling ``create``) is recorded once.
_in_call: ContextVar[Invocation | None] = ContextVar("otel_llm_usage_in_call", default=None)


def note_attempt() -> None:
    """Called each time the SDK builds an HTTP request: retries become span events, not new records."""
    inv = _in_call.get()
    if inv is not None:
        inv.attempts += 1
        if inv.attempts > 1:
            with contextlib.suppress(Exception):
                inv.span.add_event("retry", {N.HTTP_REQUEST_RESEND_COUNT: inv.attempts - 1})


class CallHandler:
    """Builds invocations and drives one call through its lifecycle.

    ``call_sync`` and ``call_async`` differ by a single ``await``; streams and
    raw responses are handed to the proxies in ``streams.py``.
    """

    def __init__(
        self,
        tracer: Tracer,
        pipeline: Pipeline,
        labels: LabelPolicy,
        *,
        capture_content: bool = False,
        stream_include_usage: bool = True,
        pricer: Callable[[UsageRecord], None] | None = None,
    ) -> None:
        self.tracer = tracer
        self.pipeline = pipeline
        self.labels = labels
        self.capture_content = capture_content
        self.stream_include_usage = stream_include_usage
        self.enabled = True
        self._pricer = pricer

    def price_now(self, record: UsageRecord) -> dict[str, Any] | None:
        """Price before the span ends so the span carries the cost; the pricing stage then skips it."""
        if self._pricer is None:
            return None
        self._pricer(record)
        if record.cost is None:
            return None
        return {N.ATTR_COST: float(record.cost), N.ATTR_CURRENCY: record.currency or "unknown",
                N.ATTR_PRICE_SOURCE: record.price_source or "unknown"}

    # -- entry points used by the wrappers ---------------------------------------
    def begin(self, route: Router, instance: Any, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Invocation | None:
        """Everything before the SDK call. ``None`` means "pass through untouched"."""
        if not self.enabled or _in_call.get():
            return None
        try:
            spec = route(instance, args, kwargs)
            if spec is None:
                return None
            info = spec.adapter.request_info(instance, args, kwargs)
            explicit = Attribution(user=info.user) if info.user else None
            attribution = current_attribution(explicit)
            if attribution.user is not None:
                attribution = Attribution(attribution.function, self.labels.hash_user(attribution.user),
                                          attribution.session, attribution.anchor)
            inv = Invocation(self, spec, info, args, kwargs, attribution)
        except Exception as exc:
            internal_error("request", exc)
            return None
        if self.pipeline.has_pre_call:
            self._pre_call(inv, info, args, kwargs)  # may raise BudgetExceeded
        try:
            inv.start_span(self.tracer, info)
            inv.args, inv.kwargs = spec.adapter.prepare(inv, args, kwargs)
        except Exception as exc:
            internal_error("prepare", exc)
            inv.args, inv.kwargs = args, kwargs
        return inv

    def _pre_call(self, inv: Invocation, info: RequestInfo, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        def estimate_input() -> int:
            try:
                return estimate_tokens(*inv.adapter.input_text_size(args, kwargs))
            except Exception as exc:
                internal_error("pre_call_estimate", exc)
                return 0

        intent = CallIntent(inv.record, estimate_input, info.max_output_tokens)
        try:
            new_model = self.pipeline.before_call(intent)
        except BudgetExceeded as exc:
            inv.block(exc, self.tracer, info)
            raise
        if new_model and new_model != inv.record.request_model:
            # The adapter's prepare() writes the new model into the request it sends.
            inv.record.request_params["downgraded_from"] = inv.record.request_model
            inv.record.request_model = new_model

    def finish_result(self, inv: Invocation, result: Any) -> Any:
        """After a successful SDK call: wrap streams, read responses; never raises."""
        from .streams import wrap_result

        try:
            return wrap_result(inv, result)
        except Exception as exc:
            internal_error("response", exc)
            inv.finish()
            return result

    def call_sync(self, route: Router, wrapped: Callable[..., Any], instance: Any,
                  args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        inv = self.begin(route, instance, args, kwargs)
        if inv is None:
            return wrapped(*args, **kwargs)
        tokens = _enter_call(inv)
        try:
            result = wrapped(*inv.args, **inv.kwargs)
        except BaseException as exc:
            inv.fail(exc)
            raise
        finally:
            _exit_call(tokens)
        return self.finish_result(inv, result)

    async def call_async(self, route: Router, wrapped: Callable[..., Any], instance: Any,
                         args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            with no_waiting():  # this is the event loop: budgets admit from their lease or say so
                inv = self.begin(route, instance, args, kwargs)
        except WouldBlock:
            # The lease cannot cover the call: wait for the store on one of our threads, not on the
            # loop (the context, attribution included, goes with it). Ours rather than the loop's
            # default executor: the host may keep that one busy, and our threads may wait for the
            # SQLite file as long as the ledger writer does (the coroutine awaits; the loop runs on).
            ctx = contextvars.copy_context()
            inv = await asyncio.get_running_loop().run_in_executor(
                _admission_pool(), functools.partial(ctx.run, self.begin, route, instance, args, kwargs))
        if inv is None:
            return await wrapped(*args, **kwargs)
        tokens = _enter_call(inv)
        try:
            result = await wrapped(*inv.args, **inv.kwargs)
        except BaseException as exc:  # CancelledError included: recorded, re-raised unchanged
            inv.fail(exc)
            raise
        finally:
            _exit_call(tokens)
        return self.finish_result(inv, result)


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _admission_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="otel-llm-usage-admission")
    return _pool


@run_in_child
def _forget_pool_in_child() -> None:
    """The pool's threads did not survive the fork: the child makes its own on first use."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


def _enter_call(inv: Invocation) -> tuple[Token[Invocation | None], Token[Context]]:
    """Around the SDK call: our span is current and nested patched calls pass through. Plain
    attach/detach rather than ``use_span``: this runs on every call, a generator-based context
    manager costs more than the two context-variable writes it wraps."""
    return _in_call.set(inv), context.attach(trace.set_span_in_context(inv.span))


def _exit_call(tokens: tuple[Token[Invocation | None], Token[Context]]) -> None:
    context.detach(tokens[1])
    _in_call.reset(tokens[0])
