# SPDX-License-Identifier: Apache-2.0
"""Every instrument this package emits, created once, and how one record is recorded into them.

Metric labels are low-cardinality by construction (see ``labels``); spans carry the detail.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation, get_meter_provider

from .. import _names as N
from .._bounded import BoundedDict
from .._guard import internal_error, set_error_sink
from ..config import AttributionSettings
from ..usage import UsageRecord, billable_breakdown
from .attributes import semconv_attributes
from .labels import LabelPolicy

__all__ = ["Telemetry"]

# Bucket advice from the GenAI semantic conventions (gen-ai-metrics, read 2026-11-26).
_DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
_TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
_ATTR_CACHE_MAX = 20_000
_LABEL_CACHE_MAX = 4096  # its entries are the largest; high-cardinality users mostly fold into overflow


class _Sums:
    """Cumulative sums per attribute set, handed to the SDK only when a reader collects.

    The ``llm.usage.*`` counters change on every call with 8-9 attributes each; an SDK
    ``Counter.add`` hashes and validates those attributes on the calling thread every
    time. Keeping the running sums here (one dict lookup and an add under a lock) and
    exposing them through an observable counter moves that work to scrape/export time.
    The exported series, names and cumulative/delta semantics are the same.
    """

    def __init__(self, max_series: int = 20_000) -> None:
        self._cells: dict[tuple[Any, ...], list[Any]] = {}
        self._lock = threading.Lock()
        self._max_series = max_series

    def add(self, key: tuple[Any, ...], amount: float, attrs: Callable[[], dict[str, Any]]) -> None:
        """Add ``amount`` to the series ``key``; ``attrs()`` builds its attributes the first time only."""
        with self._lock:
            cell = self._cells.get(key)
            if cell is not None:
                cell[1] += amount
            elif len(self._cells) < self._max_series:
                self._cells[key] = [attrs(), amount]
            else:  # past the series cap everything lands in one overflow series, never dropped
                over = self._cells.setdefault(("__overflow__",), [{"otel.metric.overflow": True}, 0])
                over[1] += amount

    def observe(self, options: CallbackOptions) -> list[Observation]:
        with self._lock:
            cells = [(attrs, value) for attrs, value in self._cells.values()]
        return [Observation(value, attrs) for attrs, value in cells]


class Telemetry:
    """Creates the instruments once and records one :class:`UsageRecord` into them."""

    def __init__(self, settings: AttributionSettings, meter_provider: MeterProvider | None = None, *,
                 before_collect: Callable[[], object] | None = None) -> None:
        from .. import __version__

        self.labels = LabelPolicy(settings)
        meter: Meter = (meter_provider or get_meter_provider()).get_meter(
            "otel_llm_usage", __version__, schema_url="https://opentelemetry.io/schemas/1.37.0"
        )
        self.token_usage = meter.create_histogram(
            N.METRIC_TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used per operation.",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self.duration = meter.create_histogram(
            N.METRIC_OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.ttfc = meter.create_histogram(
            N.METRIC_TIME_TO_FIRST_CHUNK,
            unit="s",
            description="Time from request start to the first streamed chunk.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        # Records recorded off the calling thread (see pipeline.py) are drained into the instruments
        # before a reader collects them, so a scrape right after a call sees that call.
        self.before_collect = before_collect
        self.requests, self.tokens, self.cost = _Sums(), _Sums(), _Sums()
        meter.create_observable_counter(N.METRIC_REQUESTS, [self._observer(self.requests)],
                                        description="LLM calls, by outcome.")
        meter.create_observable_counter(N.METRIC_TOKENS, [self._observer(self.tokens)], unit="{token}",
                                        description="Tokens by type; the types are disjoint and sum to the total.")
        meter.create_observable_counter(N.METRIC_COST, [self._observer(self.cost)],
                                        description="Cost of LLM calls in the model's billing currency.")
        self.unpriced = meter.create_counter(N.METRIC_UNPRICED, description="Calls whose model has no known price.")
        self.budget_events = meter.create_counter(N.METRIC_BUDGET_EVENTS, description="Budget threshold events.")
        self.internal_errors = meter.create_counter(
            N.METRIC_INTERNAL_ERRORS, description="Faults inside otel-llm-usage (the host call was unaffected)."
        )
        self.meter = meter
        self._label_cache: BoundedDict[tuple[Any, ...], tuple[dict[str, Any], tuple[Any, ...]]] = \
            BoundedDict(_LABEL_CACHE_MAX)
        self._semconv_cache: BoundedDict[tuple[Any, ...], tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = \
            BoundedDict(_ATTR_CACHE_MAX)
        set_error_sink(lambda kind: self.internal_errors.add(1, {"kind": kind}))
        self.ledger_dropped = meter.create_counter(
            N.METRIC_LEDGER_DROPPED, description="Usage records the ledger could not write and dropped, by reason.")

    def _observer(self, sums: _Sums) -> Callable[[CallbackOptions], list[Observation]]:
        def observe(options: CallbackOptions) -> list[Observation]:
            drain = self.before_collect
            if drain is not None:
                try:
                    drain()
                except Exception as exc:
                    internal_error("telemetry.before_collect", exc)
            return sums.observe(options)

        return observe

    def _base_labels(self, record: UsageRecord) -> dict[str, Any]:
        lp = self.labels
        raw = {
            "provider": record.provider,
            "model": record.model,
            "function": record.function,
            "user": record.user,
            "session": record.session,
            "anchor": record.anchor,
        }
        return {k: lp.value(k, v) for k, v in raw.items() if k in lp.enabled}

    def _labels_of(self, record: UsageRecord) -> tuple[dict[str, Any], tuple[Any, ...]]:
        """Base labels and their key, remembered per raw attribution: a raw value's label never
        changes once the cap has decided it (admitted values stay admitted, overflow stays overflow)."""
        def build() -> tuple[dict[str, Any], tuple[Any, ...]]:
            base = self._base_labels(record)
            return base, tuple(base.values())

        raw = (record.provider, record.model, record.function, record.user, record.session, record.anchor)
        return self._label_cache.memo(raw, build)

    def record(self, record: UsageRecord) -> None:
        base, base_key = self._labels_of(record)
        self.requests.add((*base_key, record.status, record.error_type), 1,
                          lambda: {**base, "status": record.status, "error_type": record.error_type or "none"})
        for token_type, count in billable_breakdown(record.tokens).items():
            if count > 0:
                self.tokens.add((*base_key, token_type), count, partial(dict, base, token_type=token_type))
        if record.cost is not None:
            currency = record.currency or "unknown"
            self.cost.add((*base_key, currency), float(record.cost), lambda: {**base, "currency": currency})
        elif record.status != "blocked":
            self.unpriced.add(1, {"provider": record.provider, "model": self.labels.value("model", record.model)})
        self._record_semconv(record)

    def _semconv_sets(self, record: UsageRecord) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """The histograms' attribute sets (operation, input tokens, output tokens), built once per
        identity; the SDK copies what it keeps, so sharing the dicts is safe."""
        def build() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
            attrs = semconv_attributes(record)
            if record.error_type:
                attrs[N.ERROR_TYPE] = record.error_type
            return attrs, {**attrs, N.GEN_AI_TOKEN_TYPE: "input"}, {**attrs, N.GEN_AI_TOKEN_TYPE: "output"}

        key = (record.operation, record.provider, record.request_model, record.response_model,
               record.server_address, record.server_port, record.error_type)
        return self._semconv_cache.memo(key, build)

    def _record_semconv(self, record: UsageRecord) -> None:
        if record.status == "blocked":
            return  # nothing was sent: no operation to time
        attrs, input_attrs, output_attrs = self._semconv_sets(record)
        self.duration.record(record.duration_s, attrs)
        if record.ttft_s is not None:
            self.ttfc.record(record.ttft_s, attrs)
        if record.usage_source != "none" and not record.error_type:
            self.token_usage.record(record.tokens.input_tokens, input_attrs)
            if record.operation != N.OP_EMBEDDINGS:
                self.token_usage.record(record.tokens.output_tokens, output_attrs)

    def register_catalog_age(self, rows: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        """``llm_pricing_catalog_age_days``: one series per price catalog, its age at collection time.

        ``rows`` yields :func:`otel_llm_usage.pricing.freshness.catalog_rows`-shaped mappings; ``in_use``
        says whether the catalog priced a call in this process (what the stale-catalog alert keys on)."""
        def observe(options: CallbackOptions) -> list[Observation]:
            return [Observation(row["age_days"], {
                "catalog": row["catalog"], "provider": row["provider"], "region": row["region"] or "",
                "currency": row["currency"], "read_on": row["read_on"],
                "in_use": "true" if row["in_use"] else "false"}) for row in rows()]

        self.meter.create_observable_gauge(
            N.METRIC_CATALOG_AGE, [observe], unit="d",
            description="Days since the prices of a catalog were read (its oldest current entry).")

    def dropped_records(self, n: int, reason: str) -> None:
        self.ledger_dropped.add(n, {"reason": reason})

    def budget_event(self, budget: str, scope: str, level: str) -> None:
        self.budget_events.add(1, {"budget": budget, "scope": self.labels.value("budget_scope", scope), "level": level})
