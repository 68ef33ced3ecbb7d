# SPDX-License-Identifier: Apache-2.0
"""The live wiring: config → telemetry, pipeline stages, call handler.

Built once by :class:`~otel_llm_usage.instrumentor.LLMUsageInstrumentor` (or
lazily by :func:`record_usage` when nothing is instrumented) from providers
that are passed in or, by default, the global ones.
"""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider, get_tracer

from ._guard import internal_error
from .config import Config, load_config
from .instrumentation.lifecycle import CallHandler
from .ledger import MemoryLedger
from .pipeline import Pipeline
from .pricing import PricingStage
from .telemetry import Telemetry
from .usage import UsageRecord

__all__ = ["Runtime", "active_runtime", "build_runtime"]


class TelemetryStage:
    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def process(self, record: UsageRecord) -> None:
        self.telemetry.record(record)


class PricingStep:
    """Prices a record once: the lifecycle prices before the span ends, manual records here."""

    def __init__(self, stage: PricingStage) -> None:
        self.stage = stage
        self._price = stage.process

    def __call__(self, record: UsageRecord) -> None:
        if record.priced:
            return
        record.priced = True
        try:
            self._price(record)
        except Exception as exc:  # noqa: BLE001
            internal_error("pricing", exc)

    def process(self, record: UsageRecord) -> None:
        self(record)


def _make_pricer(config: Config) -> PricingStep:
    from .pricing import load_catalog

    return PricingStep(PricingStage(load_catalog(config.pricing), config.pricing))


class Runtime:
    def __init__(self, config: Config, tracer_provider: TracerProvider | None,
                 meter_provider: MeterProvider | None) -> None:
        from . import __version__

        self.config = config
        self.telemetry = Telemetry(config.attribution, meter_provider)
        self.ledger = MemoryLedger()
        self.pricer = _make_pricer(config)
        stages: list[Any] = [self.pricer, TelemetryStage(self.telemetry), self.ledger]
        self.pipeline = Pipeline(stages)
        tracer = get_tracer("otel_llm_usage", __version__, tracer_provider,
                            schema_url="https://opentelemetry.io/schemas/1.37.0")
        self.handler = CallHandler(
            tracer,
            self.pipeline,
            self.telemetry.labels,
            capture_content=config.capture_content,
            stream_include_usage=config.stream_include_usage,
            pricer=self.pricer,
        )

    def shutdown(self) -> None:
        self.handler.enabled = False
        self.pipeline.shutdown()


_lock = threading.Lock()
_active: Runtime | None = None


def build_runtime(config: Config | None = None, tracer_provider: TracerProvider | None = None,
                  meter_provider: MeterProvider | None = None) -> Runtime:
    global _active
    runtime = Runtime(config or load_config(), tracer_provider, meter_provider)
    with _lock:
        _active = runtime
    return runtime


def active_runtime(create: bool = True) -> Runtime | None:
    """The runtime of the current instrumentation; built from defaults on first use if asked."""
    global _active
    with _lock:
        if _active is None and create:
            _active = Runtime(load_config(), None, None)
        return _active


def clear_runtime(runtime: Runtime) -> None:
    global _active
    with _lock:
        if _active is runtime:
            _active = None
