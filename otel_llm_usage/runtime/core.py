# SPDX-License-Identifier: Apache-2.0
"""The live wiring: config → telemetry, pipeline stages, call handler.

Built once by :class:`~otel_llm_usage.instrumentor.LLMUsageInstrumentor` (or
lazily by :func:`record_usage` when nothing is instrumented) from providers
that are passed in or, by default, the global ones.

Fork safety: a child forked after instrumentation (``multiprocessing``, a pre-fork
server that imports the app first) inherits the runtime but not its threads, and
possibly locks that a parent thread held at the moment of the fork. An
``os.register_at_fork`` hook re-creates those locks in the child and re-arms the
budget refresh thread, which starts again with the child's first recorded call; the
ledger writer and the SQLite/Redis stores do the same for their own state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.trace import TracerProvider, get_tracer

from .. import _names as N
from .._fork import reset_after_fork, run_in_child
from .._guard import internal_error
from ..budgets.config import BudgetConfig
from ..budgets.engine import BudgetEngine
from ..budgets.events import BudgetEvent
from ..budgets.status import BudgetStatus
from ..config import Config, load_config
from ..instrumentation.lifecycle import CallHandler
from ..ledger import RecordQuery, open_ledger, purge_older_than
from ..ledger.totals import breakdown
from ..pricing import PriceEntry, PricingStage
from ..pricing.stage import CostConverter
from ..telemetry import Telemetry, register_budget_gauges, register_lease_metrics, register_store_metrics
from ..usage import TokenUsage, UsageRecord
from .pipeline import Pipeline, Stage
from .plan import plan_stages

__all__ = ["Runtime", "active_runtime", "build_runtime"]

# The longest a host thread waits for the SQLite file (a lease request, or a reservation with leases
# off) before the counters fail open to local counting; our own threads wait longer.
_CALLER_WAIT_S = 0.1


class TelemetryStage(Stage):
    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def process(self, record: UsageRecord) -> None:
        self.telemetry.record(record)


class PricingStep(Stage):
    """Prices a record once: the lifecycle prices before the span ends, manual records here."""

    def __init__(self, stage: PricingStage) -> None:
        self.stage = stage

    def process(self, record: UsageRecord) -> None:
        if record.priced:
            return
        record.priced = True
        try:
            self.stage.process(record)
        except Exception as exc:
            internal_error("pricing", exc)


class _RestartAfterFork(Stage):
    """First pipeline stage of a forked child until its first record: restarts the budget refresh
    thread there (lazily, so a child that never makes a call never starts a thread), then leaves."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._lock = threading.Lock()

    def process(self, record: UsageRecord) -> None:
        with self._lock:
            pipeline = self._runtime.pipeline
            if self not in pipeline.stages:
                return
            # A new list, not remove(): a concurrent submit() may be iterating over the old one.
            pipeline.stages = [s for s in pipeline.stages if s is not self]
            if self._runtime.handler.enabled:
                self._runtime.budgets.start(self._runtime.config.budget_check_interval)


def _make_pricer(config: Config, clock: Callable[[], float]) -> PricingStep:
    from ..pricing import load_catalog

    return PricingStep(PricingStage(load_catalog(config.pricing), config.pricing, clock=clock))


class Runtime:
    def __init__(self, config: Config, tracer_provider: TracerProvider | None,
                 meter_provider: MeterProvider | None, *, clock: Callable[[], float] = time.time) -> None:
        from .. import __version__

        self.config = config
        # Built by a library call before instrument(): the runtime instrument() builds takes it over.
        self.lazy = False
        # The pipeline is built last (its stages are these objects); what they call of it is late-bound.
        self.telemetry = Telemetry(config.attribution, meter_provider, before_collect=lambda: self.pipeline.drain())
        self.pricer = _make_pricer(config, clock)
        # A host thread waits at most _CALLER_WAIT_S for the SQLite file (another process may hold
        # it for seconds); past that the counters fail open. Our own threads wait longer.
        self.store, self.counters = open_ledger(config.ledger, caller_wait=_CALLER_WAIT_S,
                                                leases=config.budget_leases, clock=clock)
        self.budgets = BudgetEngine(
            config.budgets,
            self.counters,
            currency=config.pricing.currency,
            to_reporting=self.pricer.stage.to_reporting,
            estimate_cost=self._estimate_cost,
            flat_rates=self._flat_rates,
            on_event=lambda e: self.telemetry.budget_event(e.budget, e.scope, e.level),
            on_exit=self._emergency_exit,
            settle_pending=lambda: self.pipeline.drain(),
            clock=clock,
            max_instances=config.attribution.max_label_values,
        )
        register_budget_gauges(self.telemetry.meter, self.budgets.refresh)
        register_store_metrics(self.telemetry.meter, self.counters)  # the store these budgets count in
        register_lease_metrics(self.telemetry.meter, self.counters)
        self._register_hourly_cost()
        self._watch_catalog_ages(clock)
        self._meter_provider = meter_provider
        self._tracer_provider = tracer_provider
        plan = plan_stages(self.pricer, self.budgets, TelemetryStage(self.telemetry), self.store,
                           on_dropped=self.telemetry.dropped_records)
        self.ledger = plan.ledger
        self.pipeline = Pipeline(plan.inline, deferred=plan.deferred, clock=clock)
        self._retention_stop = threading.Event()
        if plan.retention_thread:
            threading.Thread(target=self._retention_loop, name="otel-llm-usage-retention", daemon=True).start()
        self.budgets.start(config.budget_check_interval)  # its refresh settles through the pipeline
        tracer = get_tracer("otel_llm_usage", __version__, tracer_provider,
                            schema_url="https://opentelemetry.io/schemas/1.37.0")
        self.handler = CallHandler(
            tracer,
            self.pipeline,
            self.telemetry.labels,
            capture_content=config.capture_content,
            stream_include_usage=config.stream_include_usage,
            pricer=self.pricer.process,
        )
        reset_after_fork(self)

    def take_over(self, lazy: Runtime) -> None:
        """Adopt what a runtime built before ``instrument()`` was given: its budget callbacks, the
        meters of hourly-billed models it started, and the usage it kept in memory (records go to
        this ledger and count in this runtime's budgets; a shared store already holds them)."""
        lazy.pipeline.drain()
        self.budgets.callbacks.extend(lazy.budgets.callbacks)
        hourly = self.pricer.stage.hourly
        for model, since in lazy.pricer.stage.hourly.running_since().items():
            with contextlib.suppress(KeyError):  # not billed by the hour in this config
                hourly.start_model(model, since)
        if lazy.store.writes_block and lazy.counters.shared:
            return
        earlier = lazy.store.query(RecordQuery())
        if not lazy.counters.shared:
            for record in earlier:
                self.budgets.process(record)
        if not lazy.store.writes_block:
            for record in earlier:
                self.ledger.process(record)

    def _retention_loop(self) -> None:
        """Purge records past ``retention_days`` now and then daily, off the calling threads."""
        while True:
            try:
                purge_older_than(self.store, self.config.retention_days)
            except Exception as exc:  # a locked or unreachable ledger: try again tomorrow
                internal_error("retention", exc)
            if self._retention_stop.wait(86_400):
                return

    def _register_hourly_cost(self) -> None:
        """Self-hosted models billed per hour: their cost accrues with runtime, not with calls."""
        hourly = self.pricer.stage.hourly
        if not self.config.pricing.hourly:
            return

        def observe(options: CallbackOptions) -> list[Observation]:
            return [Observation(float(cost), {"model": model, "currency": hourly.currency(model)})
                    for model, cost in hourly.accrued_cost().items()]

        self.telemetry.meter.create_observable_counter(
            N.METRIC_HOURLY_COST, [observe],
            description="Accrued runtime cost of hourly-billed (self-hosted) models, in their currency.")

    def _watch_catalog_ages(self, clock: Callable[[], float]) -> None:
        """The catalog age gauge, and one start-up warning when a catalog in use is stale."""
        from ..pricing.freshness import catalog_rows, today_utc, warn_if_stale

        stage = self.pricer.stage
        self.telemetry.register_catalog_age(
            lambda: catalog_rows(stage.catalog, today_utc(clock()), stage.used_catalogs))
        warn_if_stale(stage.catalog.catalogs, today_utc(clock()))

    def _priced_entry(self, record: UsageRecord) -> tuple[PriceEntry, str] | None:
        """The catalog entry that prices a budgeted call before it is sent, and its currency."""
        stage = self.pricer.stage
        entry = stage.entry_for(record)
        if entry is None or not entry.is_priced:
            return None
        return entry, entry.currency or stage.settings.currency

    def _estimate_cost(self, record: UsageRecord, tokens: TokenUsage) -> tuple[Decimal, str] | None:
        from ..pricing import compute_cost

        priced = self._priced_entry(record)
        return None if priced is None else (
            compute_cost(priced[0], tokens, record.request_params, at=record.timestamp), priced[1])

    def _flat_rates(self, record: UsageRecord) -> tuple[Decimal, Decimal, str] | None:
        """Per-1M (input, output) prices and currency when the call's price is flat; zero if unpriced."""
        from ..pricing.compute import ZERO, flat_rates

        priced = self._priced_entry(record)
        if priced is None:
            return ZERO, ZERO, self.pricer.stage.settings.currency  # what _estimate_cost's None amounts to
        rates = flat_rates(priced[0])
        return None if rates is None else (*rates, priced[1])

    def budget_status(self) -> list[BudgetStatus]:
        self.pipeline.drain()
        return self.budgets.status()

    def _emergency_exit(self, budget: BudgetConfig, event: BudgetEvent) -> None:
        """``action: exit``: report, callbacks, flush what we hold, then end the process.

        ``os._exit`` rather than ``SystemExit``: the call may be on any thread, and
        host code catching ``BaseException`` must not be able to swallow the stop.
        """
        path = budget.exit_report or os.environ.get("OTEL_LLM_USAGE_EXIT_REPORT", "llm-usage-exit-report.json")
        try:
            self.budgets.write_report(path, event, {"usage_by_model": self.usage_by_model(),
                                                    "exit_code": budget.exit_code})
        except Exception as exc:
            internal_error("exit_report", exc)
        # os._exit skips atexit, where the SDK would have exported the last metrics: do it here,
        # for whichever provider our instruments report to (the one zero-code set-up installed, too).
        self.flush(5.0)
        self.shutdown()
        logging.getLogger("otel_llm_usage.budgets").critical(
            "budget %s exhausted with action: exit; terminating with code %d (report: %s)",
            budget.name, budget.exit_code, path)
        logging.shutdown()
        os._exit(budget.exit_code)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Settle and write every record so far, then export metrics and spans, each within ``timeout_s``.

        For exits that skip ``atexit`` (``action: exit``, SIGTERM) and :func:`otel_llm_usage.flush`;
        never raises. ``False`` if the records were not all written in time."""
        written = False
        try:
            written = self.flush_ledger(timeout_s)
        except Exception as exc:
            internal_error("ledger.flush", exc)
        providers = (self._meter_provider or metrics.get_meter_provider(),
                     self._tracer_provider or trace.get_tracer_provider())
        for provider in providers:
            flush = getattr(provider, "force_flush", None)  # API no-op/proxy providers have none
            if flush is not None:
                with contextlib.suppress(Exception):
                    flush(int(timeout_s * 1000))
        return written

    def flush_ledger(self, timeout_s: float | None = None) -> bool:
        """Write every record submitted so far (settling budgets and metrics on the way);
        ``False`` if that did not finish within ``timeout_s``."""
        if not self.pipeline.drain(-1 if timeout_s is None else timeout_s):
            return False
        # Budget usage counted locally during a counter-store outage goes to the shared store now.
        self.counters.flush(min(2.0, 2.0 if timeout_s is None else timeout_s))
        return self.ledger.flush(timeout_s)

    def after_fork_in_child(self) -> None:
        """Only the forking thread exists in the child: re-create what the parent's background
        threads may have been holding, and re-arm the refresh thread for the first call."""
        budgets = self.budgets
        budgets.after_fork_in_child()
        if self.handler.enabled and budgets.budgets:
            self.pipeline.stages.insert(0, _RestartAfterFork(self))

    def records(self, query: RecordQuery | None = None) -> list[UsageRecord]:
        """Ledger records, after everything queued so far is written."""
        self.flush_ledger(30)
        return self.store.query(query or RecordQuery())

    def usage_by_model(self) -> dict[str, dict[str, Any]]:
        """Calls, tokens and cost (reporting currency) per model: the exit report's usage section."""
        convert = CostConverter(self.config.pricing.currency, self.config.pricing.exchange_rates)
        return {model: totals.as_dict() for model, totals in breakdown(self.records(), "model", convert)}

    def shutdown(self) -> None:
        """Stop patching, flush the ledger, close the stores. Idempotent."""
        if not self.handler.enabled:
            return
        self.handler.enabled = False
        self.pricer.stage.hourly.stop_all()  # hourly-billed runtime ends with the process
        self._retention_stop.set()
        self.budgets.close()
        self.pipeline.shutdown()
        for closeable in (self.store, self.counters):
            with contextlib.suppress(Exception):
                closeable.close()


_lock = threading.Lock()
_active: Runtime | None = None


@run_in_child
def _new_lock_in_child() -> None:
    """Another thread may have held the lock at the fork; the child's copy would never be released."""
    global _lock
    _lock = threading.Lock()


def build_runtime(config: Config | None = None, tracer_provider: TracerProvider | None = None,
                  meter_provider: MeterProvider | None = None, *, clock: Callable[[], float] = time.time) -> Runtime:
    """The runtime of ``instrument()``. One built lazily before it is taken over, then shut down."""
    global _active
    runtime = Runtime(config or load_config(), tracer_provider, meter_provider, clock=clock)
    with _lock:
        previous, _active = _active, runtime
    if previous is not None and previous is not runtime and previous.lazy:
        try:
            runtime.take_over(previous)
        except Exception as exc:
            internal_error("runtime.take_over", exc)
        previous.shutdown()
    return runtime


def active_runtime(create: bool = True) -> Runtime | None:
    """The runtime of the current instrumentation; built from defaults on first use if asked."""
    global _active
    with _lock:
        if _active is None and create:
            _active = Runtime(load_config(), None, None)
            _active.lazy = True
        return _active


def clear_runtime(runtime: Runtime) -> None:
    global _active
    with _lock:
        if _active is runtime:
            _active = None
