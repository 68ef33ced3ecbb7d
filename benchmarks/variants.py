# SPDX-License-Identifier: Apache-2.0
"""The instrumentation variants compared by the overhead benchmark, as data.

Each variant is set up inside its own worker process (see :mod:`benchmarks.worker`)
so patches never collide. Every variant that records telemetry gets the same
SDK pipeline: a ``TracerProvider`` with a ``SimpleSpanProcessor`` into an
exporter that drops spans, and a ``MeterProvider`` with an in-memory reader, so
the difference between variants is the instrumentation itself, not the export.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OFFICIAL_MODULE", "PEER_PATH_ENV", "VARIANTS", "Variant", "active_counters", "availability",
           "module_available", "runtime_facts", "sdk_providers", "setup_otel_peer", "setup_ours", "setup_variant",
           "use_peer_path"]

# Optional extra sys.path entry for the peer workers only (peers installed with ``pip --target``
# somewhere else, so their entry points do not load into every ``opentelemetry-instrument`` run).
PEER_PATH_ENV = "OTEL_LLM_USAGE_BENCH_PEERS_PATH"

#: The official OpenTelemetry GenAI instrumentation of OpenAI, the targets' yardstick.
OFFICIAL_MODULE = "opentelemetry.instrumentation.genai.openai"

OPENAI_SURFACES = ("chat", "chat_stream_1", "chat_stream_100", "embeddings", "async_chat_100", "chat_loopback")
DASHSCOPE_SURFACES = ("dashscope", "dashscope_stream_100")


@dataclass(frozen=True)
class Variant:
    """One column of the comparison."""

    name: str
    label: str
    kind: str  # plain | ours | peer
    surfaces: tuple[str, ...] = OPENAI_SURFACES + DASHSCOPE_SURFACES
    # Distribution whose presence decides availability; ``None`` = always available.
    requires: str | None = None
    note: str = ""
    needs: tuple[str, ...] = field(default=())  # external services: "redis"


VARIANTS: tuple[Variant, ...] = (
    Variant("plain", "plain SDK (uninstrumented)", "plain"),
    Variant("ours", "ours: spans+metrics+pricing", "ours",
            note="pricing always runs with our instrumentation"),
    Variant("ours_budgets", "ours: + budget (memory)", "ours",
            note="one budget matching every call, limit never reached"),
    Variant("ours_sqlite", "ours: + budget + SQLite ledger", "ours", note="ledger=sqlite:///<tmp file>"),
    Variant("ours_redis", "ours: + budget + Redis ledger", "ours", needs=("redis",),
            note="ledger=redis://127.0.0.1:<free port>/0, real redis-server"),
    Variant("otel_openai_v2", "peer: opentelemetry-instrumentation-openai-v2", "peer",
            surfaces=OPENAI_SURFACES, requires="opentelemetry.instrumentation.openai_v2"),
    Variant("otel_genai_openai", "peer: opentelemetry-instrumentation-genai-openai", "peer",
            surfaces=OPENAI_SURFACES, requires=OFFICIAL_MODULE),
    Variant("openlit", "peer: openlit", "peer", surfaces=OPENAI_SURFACES, requires="openlit"),
)


def use_peer_path() -> None:
    """Make the peers installed under ``$OTEL_LLM_USAGE_BENCH_PEERS_PATH`` importable here."""
    import sys

    extra_path = os.environ.get(PEER_PATH_ENV)
    if extra_path and extra_path not in sys.path:
        sys.path.insert(0, extra_path)


def module_available(module: str) -> bool:
    """Whether ``module`` can be imported here, the peers' path included."""
    use_peer_path()
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def availability(variant: Variant, redis_url: str | None) -> str | None:
    """``None`` when the variant can run here, else the reason it cannot (shown in the report)."""
    if variant.requires and not module_available(variant.requires):
        return f"not installed ({variant.requires} not importable; `pip install -e .[bench]`)"
    if "redis" in variant.needs and redis_url is None:
        return "redis-server not found on PATH"
    return None


# -- worker side ----------------------------------------------------------------


class _DropSpans:
    """A span exporter that accepts and forgets: spans are built and ended, never serialized."""

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def sdk_providers() -> tuple[Any, Any]:
    """The (tracer, meter) providers every variant that records telemetry gets (see the module doc)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(_DropSpans()))  # type: ignore[arg-type]
    return tracer_provider, MeterProvider(metric_readers=[InMemoryMetricReader()])


def bench_budget() -> Any:
    """A budget that matches every call and can never trip within a benchmark."""
    from otel_llm_usage.budgets.config import BudgetConfig

    return BudgetConfig.model_validate({"name": "bench-never-trips", "window": "day",
                                        "limit": {"cost": 10**12, "tokens": 10**15}, "action": "block"})


def ours_config(name: str, redis_url: str | None, tmpdir: str) -> Any:
    """The ``Config`` of one of our variants."""
    from otel_llm_usage.config import Config

    # The loopback surface talks to 127.0.0.1; production gateways are declared the same way.
    kwargs: dict[str, Any] = {"provider_hosts": {"127.0.0.1": "openai"},
                              # Budgets count cost in the reporting currency (CNY); OpenAI prices in USD.
                              "pricing": {"exchange_rates": {"USD": "7.1"}}}
    if name != "ours":
        kwargs["budgets"] = (bench_budget(),)
    if name == "ours_sqlite":
        kwargs["ledger"] = f"sqlite:///{os.path.join(tmpdir, 'ledger.db')}"
    elif name == "ours_redis":
        assert redis_url is not None
        kwargs["ledger"] = redis_url
    return Config.model_validate(kwargs)


def describe_wiring(runtime: Any) -> str:
    """What the live pipeline actually holds, so a config key that is not wired yet shows in the report."""
    stages = getattr(getattr(runtime, "pipeline", None), "all_stages", [])
    return ", ".join(type(s).__name__ for s in stages)


def active_counters() -> Any:
    """The counter store of our active runtime, or ``None``."""
    from otel_llm_usage.instrumentor import LLMUsageInstrumentor

    return getattr(getattr(LLMUsageInstrumentor, "_runtime", None), "counters", None)


def runtime_facts(counters: Any = None) -> dict[str, Any]:
    """The counter store our active runtime (or ``counters``) really uses, whether it degraded (fell back
    to local counting: then a "shared ledger" figure measured the fallback), and its lease counts if any."""
    if counters is None:
        counters = active_counters()
    if counters is None:
        return {}
    by_op = dict(getattr(counters, "degraded_by_op", None) or {})  # operations answered locally, ever
    facts: dict[str, Any] = {"counter_store": type(counters).__name__,
                             "degraded": bool(getattr(counters, "degraded", False)) or bool(by_op)}
    if by_op:
        facts["degraded_by_op"] = by_op
    stats = getattr(counters, "stats", None)
    if stats is not None and hasattr(stats, "__dataclass_fields__"):
        facts["lease_stats"] = {k: getattr(stats, k) for k in stats.__dataclass_fields__}
    return facts


def _dashscope_patched() -> bool:
    """Whether our instrumentor wrapped ``Generation.call`` (the DashScope module may not exist yet)."""
    try:
        from dashscope.aigc.generation import Generation
    except ImportError:
        return False
    return hasattr(vars(Generation).get("call"), "__wrapped__")


def setup_ours(name: str, redis_url: str | None, providers: tuple[Any, Any] | None = None,
               ) -> tuple[Callable[[], None], dict[str, Any]]:
    """Our variant ``name``; ``providers`` (tracer, meter) replaces the SDK pair, e.g. with no-op ones."""
    from otel_llm_usage.instrumentor import LLMUsageInstrumentor

    tmpdir = tempfile.mkdtemp(prefix="bench-ledger-")
    tracer_provider, meter_provider = providers or sdk_providers()
    instrumentor = LLMUsageInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                            config=ours_config(name, redis_url, tmpdir))
    info = {"pipeline": describe_wiring(instrumentor.runtime),
            "pre_call": bool(instrumentor.runtime and instrumentor.runtime.pipeline.has_pre_call),
            "dashscope_patched": _dashscope_patched()}

    def teardown() -> None:
        instrumentor.uninstrument()
        if hasattr(meter_provider, "shutdown"):
            meter_provider.shutdown()
        shutil.rmtree(tmpdir, ignore_errors=True)

    return teardown, info


def setup_otel_peer(module: str, providers: tuple[Any, Any] | None = None,
                    ) -> tuple[Callable[[], None], dict[str, Any]]:
    """An official OpenTelemetry OpenAI instrumentation; ``providers`` as in :func:`setup_ours`."""
    from opentelemetry.sdk._logs import LoggerProvider

    instrumentor_cls = importlib.import_module(module).OpenAIInstrumentor
    tracer_provider, meter_provider = providers or sdk_providers()
    instrumentor = instrumentor_cls()
    # Content capture stays at its default (off), as ours; a logger provider without processors
    # keeps any events they emit in-process.
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                            logger_provider=LoggerProvider())

    def teardown() -> None:
        instrumentor.uninstrument()
        getattr(meter_provider, "shutdown", lambda: None)()  # the no-op one has none

    return teardown, {}


def _setup_openlit() -> tuple[Callable[[], None], dict[str, Any]]:
    import json

    import openlit
    from opentelemetry import metrics, trace

    tracer_provider, meter_provider = sdk_providers()
    # openlit reuses configured global providers; this worker process is ours alone.
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    # A local price list: by default openlit downloads one at init.
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as prices:
        json.dump({"chat": {"gpt-4o-mini": {"promptPrice": 0.00015, "completionPrice": 0.0006}},
                   "embeddings": {"text-embedding-3-small": 0.00002}}, prices)
    openlit.init(otlp_endpoint=None, disable_batch=True, capture_message_content=False,
                 collect_gpu_stats=False, pricing_json=prices.name,
                 # Only the OpenAI SDK instrumentation: the HTTP client instrumentors would add
                 # their own spans around the mock transport and muddle the comparison.
                 disabled_instrumentors=list(_OPENLIT_OTHERS))

    def teardown() -> None:
        os.unlink(prices.name)

    return teardown, {}


_OPENLIT_OTHERS = ("requests", "urllib", "urllib3", "httpx", "aiohttp-client", "asgi", "django", "falcon",
                   "fastapi", "flask", "pyramid", "starlette", "tornado", "anthropic", "bedrock",
                   "langchain", "litellm", "openai-agents", "mistral", "groq")


def setup_variant(name: str, redis_url: str | None) -> tuple[Callable[[], None], dict[str, Any]]:
    """Instrument this process as ``name``; returns (teardown, facts for the report)."""
    if name == "plain":
        return (lambda: None), {}
    if name.startswith("ours"):
        return setup_ours(name, redis_url)
    if name == "otel_openai_v2":
        return setup_otel_peer("opentelemetry.instrumentation.openai_v2")
    if name == "otel_genai_openai":
        return setup_otel_peer(OFFICIAL_MODULE)
    if name == "openlit":
        return _setup_openlit()
    raise ValueError(f"unknown variant {name!r}")
