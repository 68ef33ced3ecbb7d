# SPDX-License-Identifier: Apache-2.0
"""Memory after many recorded calls with high-cardinality users (label cap on, default 1000).

    python -m benchmarks.memory_bench --calls 1000000

Drives the real pipeline (pricing → budgets → telemetry → ledger) through the
public :func:`otel_llm_usage.record_usage`, one distinct user and session per
call, with SDK providers like an application's. Reports RSS and the
interpreter's allocated block count at 10 %, 50 % and 100 % of the calls: flat
from 10 % on means bounded. Then tracemalloc over 5 % more calls (tracing all
of them would take five times as long) shows what those calls left alive and
where: in steady state that is the newest records kept by the bounded in-memory
record store, each replacing an older, untraced one.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

from .subproc import emit

__all__ = ["main", "run"]


def rss_mib() -> float:
    """Current resident set size (not the peak) from /proc, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _distinct_user_labels(reader: Any) -> int:
    users: set[str] = set()
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "llm.usage.requests":
                    users.update(str(p.attributes.get("user")) for p in metric.data.data_points)
    return len(users)


def run(calls: int) -> dict[str, Any]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    from otel_llm_usage import record_usage
    from otel_llm_usage.config import Config
    from otel_llm_usage.instrumentor import LLMUsageInstrumentor

    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    instrumentor = LLMUsageInstrumentor()
    # No budget: the question is whether per-call state (labels, ledger, caches) stays bounded.
    config = Config.model_validate({"pricing": {"exchange_rates": {"USD": "7.1"}}})
    instrumentor.instrument(tracer_provider=TracerProvider(), meter_provider=meter_provider, config=config)
    runtime = instrumentor.runtime
    checkpoints = {max(1, calls // 10): "10%", max(1, calls // 2): "50%", calls: "100%"}
    window = max(1000, calls // 20)
    rss: list[dict[str, Any]] = []

    def call(i: int) -> None:
        record_usage(provider="openai", model="gpt-4o-mini", input_tokens=12, output_tokens=100,
                     user=f"user-{i}", session=f"session-{i}", function="bench")

    gc.collect()
    start_rss = rss_mib()
    started = time.perf_counter()
    for i in range(1, calls + 1):
        call(i)
        if i in checkpoints:
            gc.collect()
            rss.append({"calls": i, "rss_mib": round(rss_mib(), 1), "blocks": sys.getallocatedblocks()})
    elapsed = time.perf_counter() - started
    # tracemalloc only after the RSS readings (its own bookkeeping would show up in RSS), over a
    # window of extra calls: it reports what those calls left alive.
    tracemalloc.start(1)
    for i in range(calls + 1, calls + window + 1):
        call(i)
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    stats = tracemalloc.take_snapshot().statistics("lineno")
    tracemalloc.stop()
    traced = {
        "window_calls": window,
        "held_kib": round(current / 1024, 1),
        "held_bytes_per_call": round(current / window),
        "peak_kib": round(peak / 1024, 1),
        "top_held": [{"where": f"{s.traceback[0].filename}:{s.traceback[0].lineno}", "kib": round(s.size / 1024, 1)}
                     for s in stats[:5]],
    }
    result = {
        "calls": calls,
        "us_per_call": elapsed / calls * 1e6,
        "rss_start_mib": round(start_rss, 1),
        "rss": rss,
        "tracemalloc": traced,
        "distinct_user_label_values": _distinct_user_labels(reader),
        "max_label_values": config.attribution.max_label_values,
        "pipeline": ", ".join(type(s).__name__ for s in runtime.pipeline.all_stages) if runtime else "",
    }
    instrumentor.uninstrument()
    meter_provider.shutdown()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_bench")
    parser.add_argument("--calls", type=int, default=1_000_000)
    emit(run(parser.parse_args(argv).calls))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
