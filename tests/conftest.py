# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: one loopback LLM server per session, fresh OTel providers per test.

Providers and the Prometheus registry are passed explicitly to the
instrumentor; no test touches the global providers.
"""

from __future__ import annotations

import gc
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from otel_llm_usage.config import Config
from otel_llm_usage.instrumentor import LLMUsageInstrumentor
from otel_llm_usage.testing import LoopbackLLMServer
from otel_llm_usage.usage import UsageRecord

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Fixture ledgers hold records from fixed past dates; the default 90-day retention of every runtime
# (including CLI subprocesses, which inherit this) would purge them mid-test. Retention has its own test.
os.environ["OTEL_LLM_USAGE_RETENTION_DAYS"] = "36500"


def require_binary(name: str) -> str:
    """A real binary a test needs: fail loudly in CI, skip (with the reason) elsewhere."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} not found on PATH (apt-get install the package that provides it; .ci/run does)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def llm_server() -> Iterator[LoopbackLLMServer]:
    server = LoopbackLLMServer()
    server.start()
    yield server
    server.stop()


@dataclass
class Otel:
    server: LoopbackLLMServer
    spans_exporter: InMemorySpanExporter
    registry: CollectorRegistry
    instrumentor: LLMUsageInstrumentor
    meter_provider: MeterProvider
    extra: dict[str, Any] = field(default_factory=dict)

    def spans(self) -> list[ReadableSpan]:
        return list(self.spans_exporter.get_finished_spans())

    def records(self) -> list[UsageRecord]:
        runtime = self.instrumentor.runtime
        assert runtime is not None
        return runtime.records()

    def scrape(self) -> str:
        return generate_latest(self.registry).decode()

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        out = []
        for family in text_string_to_metric_families(self.scrape()):
            for sample in family.samples:
                if sample.name == name:
                    out.append((dict(sample.labels), sample.value))
        return out

    def value(self, name: str, **labels: str) -> float:
        """Sum of samples of ``name`` whose labels include ``labels``."""
        return sum(v for lbl, v in self.samples(name) if all(lbl.get(k) == val for k, val in labels.items()))


def make_otel(server: LoopbackLLMServer, config: Config | None = None, *, sampler: Any = None,
              **instrument_kwargs: Any) -> Otel:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=sampler) if sampler is not None else TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    meter_provider = MeterProvider(metric_readers=[reader])
    instrumentor = LLMUsageInstrumentor()
    config = config or Config(provider_hosts={"127.0.0.1": "openai"})
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider, config=config,
                            **instrument_kwargs)
    return Otel(server, exporter, registry, instrumentor, meter_provider)


def close_otel(otel: Otel) -> None:
    gc.collect()  # finalize abandoned streams of this test while its providers still exist
    otel.instrumentor.uninstrument()
    otel.meter_provider.shutdown()


@pytest.fixture
def otel(llm_server: LoopbackLLMServer) -> Iterator[Otel]:
    llm_server.clear()
    llm_server.default_scenario = None
    o = make_otel(llm_server)
    yield o
    close_otel(o)


@pytest.fixture
def ds(otel: Otel) -> Iterator[Otel]:
    """The classic DashScope API pointed at the loopback server; module globals restored afterwards."""
    import dashscope

    saved = dashscope.base_http_api_url, dashscope.api_key
    dashscope.base_http_api_url = otel.server.dashscope_base_url
    dashscope.api_key = "sk-test-secret"
    yield otel
    dashscope.base_http_api_url, dashscope.api_key = saved
