# SPDX-License-Identifier: Apache-2.0
"""The one call lifecycle shared by every provider, sync, async and streaming.

    resolve attribution → pre-call budget check → start span → call →
    normalize usage → finish span → one UsageRecord into the pipeline

Provider modules supply a :class:`ProviderAdapter` that only knows request
and response *shapes*. Everything here is guarded: the SDK call runs inside
``except BaseException`` that records and re-raises unchanged, and our own
work before and after it never raises into the host (``BudgetExceeded`` is
the single, opt-in exception).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar, Token
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from .. import _names as N
from .._blocking import WouldBlock, no_waiting
from .._fork import run_in_child
from .._guard import internal_error
from ..attribution import Attribution, current_attribution
from ..errors import BudgetExceeded
from ..runtime.pipeline import CallIntent, Pipeline
from ..telemetry import LabelPolicy, put_present, semconv_attributes
from ..usage import TokenUsage, UsageRecord, count_text, estimate_tokens, new_record_id

if TYPE_CHECKING:
    from .streams import AsyncStreamProxy, StreamProxy

__all__ = ["OUTPUT_TEXT_SAMPLE_CHUNKS", "CallHandler", "CallSpec", "Invocation", "ProviderAdapter", "RequestInfo",
           "Router", "fixed_route"]

#: When a stream's usage is expected in its last chunk, an adapter may stop reading chunk text
#: after this many chunks (reading it is most of the per-chunk cost); should usage then never
#: arrive (an abandoned stream), the output estimate scales this sample by the chunk count.
OUTPUT_TEXT_SAMPLE_CHUNKS = 8

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


@dataclass(slots=True)
class RequestInfo:
    """What an adapter reads from a request before it is sent (never content)."""

    provider: str
    request_model: str | None
    stream: bool = False
    server_address: str | None = None
    server_port: int | None = None
    user: str | None = None
    max_output_tokens: int | None = None
    params: dict[str, Any] | None = None  # temperature, top_p, enable_thinking, ...
    span_attributes: dict[str, Any] | None = None


class ProviderAdapter(Protocol):
    """Shape knowledge for one SDK surface. All methods may raise; callers guard them."""

    #: (sync, async) stream proxy classes: ``streams.STREAM_PROXIES`` or subclasses of them.
    stream_proxies: tuple[type[StreamProxy], type[AsyncStreamProxy]]

    def request_info(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> RequestInfo: ...

    def prepare(self, inv: Invocation, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments to send: may ask for stream usage, and applies a budget downgrade
        (``inv.record.request_model`` then differs from what the caller asked for)."""
        ...

    def input_text_size(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int]:
        """(latin chars, CJK chars) of the request's input, only for estimating missing usage."""
        ...

    def attach_stream(self, inv: Invocation, result: Any, wrap: Callable[[Invocation, Any], Any]) -> Any | None:
        """For SDK stream objects whose helpers read an inner stream: put ``wrap(inv, inner)`` inside
        and return the object; ``None`` when the result is not such an object."""
        ...

    def is_stream(self, inv: Invocation, result: Any) -> bool: ...

    def read_response(self, inv: Invocation, result: Any) -> None:
        """Fill usage/model/id/finish reasons; call ``inv.mark_error`` for a *returned* error."""
        ...

    def on_chunk(self, inv: Invocation, chunk: Any) -> bool:
        """Update state from one streamed chunk; return False to hide it from the caller."""
        ...


@dataclass(frozen=True, slots=True)
class CallSpec:
    """One kind of call: which adapter reads it and what operation it is."""

    adapter: ProviderAdapter
    operation: str


#: Picks the spec for one intercepted SDK call, or ``None`` for a call that is not an LLM
#: request (a client-level patch sees every HTTP request the client makes).
Router = Callable[[Any, tuple[Any, ...], dict[str, Any]], "CallSpec | None"]


def fixed_route(spec: CallSpec) -> Router:
    """The router of a method that is always the same kind of LLM call."""
    def route(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallSpec:
        return spec

    return route


class Invocation:
    """One call's state from request to record; finalizes exactly once."""

    __slots__ = (
        "_args",
        "_handler",
        "_kwargs",
        "_lock",
        "_output_text",
        "_started",
        "accepted",
        "adapter",
        "args",
        "attempts",
        "done",
        "estimated_output_chars",
        "first_chunk_at",
        "kwargs",
        "max_output_tokens",
        "model_usages",
        "output_chunks",
        "record",
        "span",
        "stream_usage_injected",
        "usage_expected",
        "usage_seen",
    )

    def __init__(self, handler: CallHandler, spec: CallSpec, info: RequestInfo,
                 args: tuple[Any, ...], kwargs: dict[str, Any], attribution: Attribution) -> None:
        self._handler = handler
        self.adapter = spec.adapter
        self._args = args
        self._kwargs = kwargs
        self.args = args
        self.kwargs = kwargs
        self.done = False
        self._lock = threading.Lock()
        self.usage_seen = False
        self.stream_usage_injected = False
        self.usage_expected = False  # the provider will report usage at the end of the stream
        self.output_chunks = 0
        self.first_chunk_at: float | None = None
        # The provider took the request and began answering (a raised error after this still
        # billed the input); an error frame undoes it (``mark_error(..., refused=True)``).
        self.accepted = False
        self.max_output_tokens = info.max_output_tokens
        self._output_text: Callable[[], str] | None = None
        self.attempts = 0
        self.estimated_output_chars = [0, 0]
        self.model_usages: list[tuple[str, TokenUsage]] = []
        self.record = UsageRecord(
            provider=info.provider,
            operation=spec.operation,
            request_model=info.request_model,
            streamed=info.stream,
            server_address=info.server_address,
            server_port=info.server_port,
            function=attribution.function,
            user=attribution.user,
            session=attribution.session,
            anchor=attribution.anchor,
            request_params=info.params or {},
        )
        self.span: trace.Span = trace.INVALID_SPAN
        self._started = 0.0

    # -- phases --------------------------------------------------------------
    def start_span(self, tracer: Tracer, info: RequestInfo) -> None:
        rec = self.record
        attrs = put_present(semconv_attributes(rec), (
            (N.GEN_AI_REQUEST_STREAM, True if info.stream else None),
            (N.GEN_AI_REQUEST_MAX_TOKENS, info.max_output_tokens),
            (N.ATTR_FUNCTION, rec.function), (N.ATTR_USER, rec.user),
            (N.ATTR_SESSION, rec.session), (N.ATTR_ANCHOR, rec.anchor),
        ))
        if info.span_attributes:
            attrs.update(info.span_attributes)
        downgraded_from = rec.request_params.get("downgraded_from")
        if downgraded_from:
            attrs[N.ATTR_DOWNGRADED_FROM] = str(downgraded_from)
        name = f"{rec.operation} {rec.request_model}" if rec.request_model else rec.operation
        self.span = tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attrs)
        self._started = time.perf_counter()

    def on_first_chunk(self) -> None:
        if self.first_chunk_at is None:
            self.first_chunk_at = time.perf_counter()
            self.accepted = True

    def set_usage(self, tokens: TokenUsage | None) -> None:
        """Latest reported usage wins: streaming providers report cumulative totals."""
        if tokens is not None:
            self.record.tokens = tokens
            self.record.usage_source = "reported"
            self.usage_seen = True

    def set_model_usages(self, usages: Sequence[tuple[str, TokenUsage | None]]) -> None:
        """Usage split by model (an application runs several): one record per model, the span gets the sum.

        Latest report wins, like :meth:`set_usage`; entries without a model name are ignored.
        """
        usable = [(model, tokens) for model, tokens in usages if model and tokens is not None]
        if not usable:
            return
        self.model_usages = usable
        self.set_usage(TokenUsage(
            input_tokens=sum(t.input_tokens for _, t in usable),
            output_tokens=sum(t.output_tokens for _, t in usable),
            cached_input_tokens=sum(t.cached_input_tokens for _, t in usable),
            cache_write_tokens=sum(t.cache_write_tokens for _, t in usable),
            reasoning_tokens=sum(t.reasoning_tokens for _, t in usable),
        ))

    def add_output_text(self, text: str | None) -> None:
        """Count streamed text for the estimate used only if no usage arrives (per chunk: keep it cheap)."""
        if text:
            if text.isascii():
                self.estimated_output_chars[0] += len(text)
            else:
                latin, cjk = count_text(text)
                self.estimated_output_chars[0] += latin
                self.estimated_output_chars[1] += cjk

    def set_output_text(self, text: str | None) -> None:
        """For providers that resend the full text in every chunk (non-incremental)."""
        self._output_text = None
        self.estimated_output_chars = [0, 0]
        self.add_output_text(text)

    def defer_output_text(self, read: Callable[[], str]) -> None:
        """Like :meth:`set_output_text` for a cumulative stream, read only if an estimate is needed:
        counting the whole text so far on every chunk made long streams quadratic."""
        self._output_text = read

    def mark_error(self, error_type: str, *, refused: bool = False) -> None:
        """``refused``: the provider answered with an error instead of a result (nothing billed)."""
        self.record.status = "error"
        self.record.error_type = error_type
        if refused:
            self.accepted = False

    def block(self, exc: BudgetExceeded, tracer: Tracer, info: RequestInfo) -> None:
        """A budget refused the call before it was sent: a span with the refusal, a record of nothing billed."""
        if not self._claim():
            return
        rec = self.record
        rec.status = "blocked"
        rec.error_type = type(exc).__name__
        rec.usage_source = "none"
        try:
            self.start_span(tracer, info)
            self.span.set_attribute(N.ERROR_TYPE, rec.error_type)
            self.span.set_status(Status(StatusCode.ERROR, "blocked by budget"))
            self.span.end()
        except Exception as span_exc:
            internal_error("blocked_span", span_exc)
        self._release_request()
        self._handler.pipeline.submit(rec)

    def finish(self, *, abandoned: bool = False) -> None:
        if self._claim():
            self._finalize(abandoned=abandoned)

    def fail(self, exc: BaseException, *, abandoned: bool = False) -> None:
        if self._claim():
            self.mark_error(_error_type(exc))
            # Only the type: exception messages can quote request content back.
            with contextlib.suppress(Exception):
                self.span.add_event("exception", {"exception.type": _error_type(exc)})
            self._finalize(abandoned=abandoned)

    # -- internals -----------------------------------------------------------
    def _claim(self) -> bool:
        # Finish can race between a consumer thread and the GC of an abandoned stream.
        with self._lock:
            if self.done:
                return False
            self.done = True
            return True

    def _finalize(self, *, abandoned: bool) -> None:
        rec = self.record
        records = [rec]
        try:
            end = time.perf_counter()
            rec.duration_s = max(0.0, end - self._started)
            if self.first_chunk_at is not None:
                rec.ttft_s = max(0.0, self.first_chunk_at - self._started)
            if not self.usage_seen:
                self._estimate_usage()
            records = self._records()
            self._end_span(abandoned, records)
        except Exception as exc:
            internal_error("finalize", exc)
            with contextlib.suppress(Exception):
                self.span.end()
        self._release_request()
        for record in records:
            self._handler.pipeline.submit(record)

    def _release_request(self) -> None:
        """Drop the request's arguments: a record outlives the call, the content must not."""
        self._args = self.args = ()
        self._kwargs = {}
        self.kwargs = {}
        self._output_text = None

    def _records(self) -> list[UsageRecord]:
        """The call's record, or one per model when usage came split by model (same call, own ids).
        The first keeps the call's id: the budget reservations taken before the call are held under it."""
        rec = self.record
        if not self.model_usages:
            return [rec]
        return [
            dataclasses.replace(rec, response_model=model, tokens=tokens,
                                record_id=rec.record_id if i == 0 else new_record_id(),
                                request_params=dict(rec.request_params))
            for i, (model, tokens) in enumerate(self.model_usages)
        ]

    def _estimate_usage(self) -> None:
        """No usage from the provider: an estimate, never zero, when the request got an answer."""
        rec = self.record
        if self._output_text is not None:
            try:
                self.set_output_text(self._output_text())
            except Exception as exc:
                internal_error("output_text", exc)
        produced = self.estimated_output_chars[0] + self.estimated_output_chars[1] > 0
        if rec.status == "error" and not produced and not self.accepted:
            rec.usage_source = "none"  # the provider refused it: nothing billed
            return
        latin, cjk = self.adapter.input_text_size(self._args, self._kwargs)
        out_latin, out_cjk = self.estimated_output_chars
        if self.usage_expected and self.output_chunks > OUTPUT_TEXT_SAMPLE_CHUNKS:
            scale = self.output_chunks / OUTPUT_TEXT_SAMPLE_CHUNKS
            out_latin, out_cjk = round(out_latin * scale), round(out_cjk * scale)
        output = estimate_tokens(out_latin, out_cjk)
        if self.max_output_tokens is not None:
            output = min(output, self.max_output_tokens)  # the provider cannot bill past the cap it was given
        rec.tokens = TokenUsage(input_tokens=estimate_tokens(latin, cjk), output_tokens=output)
        rec.usage_source = "estimated"

    def _end_span(self, abandoned: bool, records: list[UsageRecord]) -> None:
        span = self.span
        rec = self.record
        if not span.is_recording():
            span.end()
            return
        t = rec.tokens
        attrs: dict[str, Any] = {N.ATTR_USAGE_SOURCE: rec.usage_source}
        if rec.usage_source != "none":
            attrs[N.GEN_AI_USAGE_INPUT_TOKENS] = t.input_tokens
            attrs[N.GEN_AI_USAGE_OUTPUT_TOKENS] = t.output_tokens
            put_present(attrs, ((N.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, t.cached_input_tokens),
                                (N.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS, t.cache_write_tokens),
                                (N.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, t.reasoning_tokens)))
        put_present(attrs, ((N.GEN_AI_RESPONSE_MODEL, rec.response_model), (N.GEN_AI_RESPONSE_ID, rec.response_id),
                            (N.GEN_AI_RESPONSE_FINISH_REASONS, list(rec.finish_reasons) or None),
                            (N.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK, rec.ttft_s)))
        if abandoned:
            attrs[N.ATTR_STREAM_ABANDONED] = True
        if self.attempts > 1:
            attrs[N.HTTP_REQUEST_RESEND_COUNT] = self.attempts - 1
        # Pricing runs in the pipeline after the span ends, so it adds cost via the record;
        # the handler sets cost attributes before ending when a synchronous pricer is present.
        cost_attrs = self._price_now(records)
        if cost_attrs:
            attrs.update(cost_attrs)
        span.set_attributes(attrs)
        if rec.status == "error":
            span.set_attribute(N.ERROR_TYPE, rec.error_type or "_OTHER")
            span.set_status(Status(StatusCode.ERROR, rec.error_type))
        span.end()

    def _price_now(self, records: list[UsageRecord]) -> dict[str, Any] | None:
        """Span cost: the record's, or the sum of the per-model records' when all share a currency."""
        priced = [self._handler.price_now(r) for r in records]
        if len(records) == 1:
            return priced[0]
        if not all(priced) or len({r.currency for r in records}) != 1:
            return None  # partly unpriced or mixed currencies: no honest single total
        total = sum((r.cost or Decimal(0) for r in records), Decimal(0))
        return {N.ATTR_COST: float(total), N.ATTR_CURRENCY: records[0].currency or "unknown"}


def _error_type(exc: BaseException) -> str:
    return type(exc).__qualname__


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
