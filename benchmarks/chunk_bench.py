# SPDX-License-Identifier: Apache-2.0
"""Per-chunk cost of the stream proxy, measured on real SDK streams without per-call noise.

    python -m benchmarks.chunk_bench --chunks 100 --repeats 2000

The end-to-end per-chunk figure (overhead at 100 chunks minus overhead at 1, over
99) subtracts two ~8 ms medians that include every per-call cost, so it moves by
microseconds between runs. Here the same openai SDK stream (mock transport, 100
chunks) is read bare and through the package's stream proxy with the OpenAI
adapter reading every chunk, interleaved; the call's finalization is excluded
(it is a per-call cost), everything per chunk is included.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Any

from .subproc import emit

__all__ = ["main", "run"]


def _invocation() -> Any:
    from opentelemetry.trace import NoOpTracer

    from otel_llm_usage.attribution import Attribution
    from otel_llm_usage.config import AttributionSettings
    from otel_llm_usage.instrumentation.lifecycle import CallHandler, CallSpec, Invocation, RequestInfo
    from otel_llm_usage.instrumentation.openai import OpenAIAdapter
    from otel_llm_usage.pipeline import Pipeline
    from otel_llm_usage.telemetry import LabelPolicy

    handler = CallHandler(NoOpTracer(), Pipeline([]), LabelPolicy(AttributionSettings()))
    info = RequestInfo(provider="openai", request_model="gpt-4o-mini", stream=True)
    inv = Invocation(handler, CallSpec(OpenAIAdapter(), "chat"), info, (), {}, Attribution())
    return inv


def run(chunks: int, repeats: int) -> dict[str, Any]:
    from otel_llm_usage.instrumentation.streams import StreamProxy

    from .transports import openai_client

    client = openai_client(chunks=chunks)
    messages = [{"role": "user", "content": "hi"}]

    def stream() -> Any:
        return client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)

    bare: list[float] = []
    proxied: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _chunk in stream():
            pass
        bare.append(time.perf_counter() - start)
        inv = _invocation()
        inv.done = True  # finalizing is the per-call cost, measured elsewhere
        start = time.perf_counter()
        for _chunk in StreamProxy(stream(), inv):
            pass
        proxied.append(time.perf_counter() - start)
    base = statistics.median(bare)
    return {"chunks": chunks, "repeats": repeats,
            "per_chunk_us": (statistics.median(proxied) - base) / chunks * 1e6,
            "p95_per_chunk_us": (sorted(proxied)[int(0.95 * repeats)] - base) / chunks * 1e6}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chunk_bench")
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=400)
    args = parser.parse_args(argv)
    emit(run(args.chunks, args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
