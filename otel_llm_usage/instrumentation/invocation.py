# SPDX-License-Identifier: Apache-2.0
"""One call's state from request to record, finalized exactly once: the span, the usage reported or
estimated, and the record(s) it hands to the pipeline."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from .. import _names as N
from .._guard import internal_error
from ..attribution import Attribution
from ..errors import BudgetExceeded
from ..telemetry import put_present, semconv_attributes
from ..usage import TokenUsage, UsageRecord, estimate_tokens, new_record_id
from .contract import CallSpec, RequestInfo
from .output import OutputBuffer

if TYPE_CHECKING:
    from .lifecycle import CallHandler

__all__ = ["Invocation"]


class Invocation:
    """One call's state from request to record; finalizes exactly once."""

    __slots__ = (
        "_args",
        "_handler",
        "_kwargs",
        "_lock",
        "_started",
        "adapter",
        "args",
        "attempts",
        "done",
        "kwargs",
        "max_output_tokens",
        "output",
        "record",
        "span",
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
        self.output = OutputBuffer()
        self.max_output_tokens = info.max_output_tokens
        self.attempts = 0
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

    def expect_stream_usage(self, *, injected: bool) -> None:
        """The stream will end with a usage chunk; ``injected``: because we asked for it, so the
        caller, who did not, never sees that chunk."""
        self.output.expect_usage(injected=injected)

    def on_first_chunk(self) -> None:
        self.output.first_chunk()

    def set_usage(self, tokens: TokenUsage | None) -> None:
        """Latest reported usage wins: streaming providers report cumulative totals."""
        if tokens is not None:
            self.record.tokens = tokens
            self.record.usage_source = "reported"
            self.output.usage_seen = True

    def set_model_usages(self, usages: Sequence[tuple[str, TokenUsage | None]]) -> None:
        """Usage split by model (an application runs several): one record per model, the span gets the sum.

        Latest report wins, like :meth:`set_usage`; entries without a model name are ignored.
        """
        self.set_usage(self.output.usage_split(usages))

    def add_output_text(self, text: str | None) -> None:
        """Count streamed text for the estimate used only if no usage arrives (per chunk: keep it cheap)."""
        self.output.add_text(text)

    def set_output_text(self, text: str | None) -> None:
        """For providers that resend the full text in every chunk (non-incremental)."""
        self.output.set_text(text)

    def defer_output_text(self, read: Callable[[], str]) -> None:
        """Like :meth:`set_output_text` for a cumulative stream, read only if an estimate is needed."""
        self.output.defer_text(read)

    def mark_error(self, error_type: str, *, refused: bool = False) -> None:
        """``refused``: the provider answered with an error instead of a result (nothing billed)."""
        self.record.status = "error"
        self.record.error_type = error_type
        if refused:
            self.output.refuse()

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
            first_chunk_at = self.output.first_chunk_at
            if first_chunk_at is not None:
                rec.ttft_s = max(0.0, first_chunk_at - self._started)
            if not self.output.usage_seen:
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
        self.output.forget_text()

    def _records(self) -> list[UsageRecord]:
        """The call's record, or one per model when usage came split by model (same call, own ids).
        The first keeps the call's id: the budget reservations taken before the call are held under it."""
        rec = self.record
        model_usages = self.output.model_usages
        if not model_usages:
            return [rec]
        return [
            dataclasses.replace(rec, response_model=model, tokens=tokens,
                                record_id=rec.record_id if i == 0 else new_record_id(),
                                request_params=dict(rec.request_params))
            for i, (model, tokens) in enumerate(model_usages)
        ]

    def _estimate_usage(self) -> None:
        """No usage from the provider: an estimate, never zero, when the request got an answer."""
        rec = self.record
        out = self.output
        try:
            out.read_deferred_text()
        except Exception as exc:
            internal_error("output_text", exc)
        if rec.status == "error" and not out.produced and not out.accepted:
            rec.usage_source = "none"  # the provider refused it: nothing billed
            return
        latin, cjk = self.adapter.input_text_size(self._args, self._kwargs)
        output = out.estimated_output_tokens()
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
            if rec.operation != N.OP_EMBEDDINGS:  # semconv's embeddings span counts input tokens only
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
