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


def _invocation_factory() -> Any:
    """A function making a fresh streaming Invocation; the handler and its pipeline are built once,
    so no per-repetition garbage lands in the timed loops."""
    from opentelemetry.trace import NoOpTracer

    from otel_llm_usage.attribution import Attribution
    from otel_llm_usage.config import AttributionSettings
    from otel_llm_usage.instrumentation.contract import CallSpec, RequestInfo
    from otel_llm_usage.instrumentation.invocation import Invocation
    from otel_llm_usage.instrumentation.lifecycle import CallHandler
    from otel_llm_usage.instrumentation.openai import OpenAIAdapter
    from otel_llm_usage.runtime.pipeline import Pipeline
    from otel_llm_usage.telemetry import LabelPolicy

    handler = CallHandler(NoOpTracer(), Pipeline([]), LabelPolicy(AttributionSettings()))
    spec = CallSpec(OpenAIAdapter(), "chat")
    info = RequestInfo(provider="openai", request_model="gpt-4o-mini", stream=True)
    return lambda: Invocation(handler, spec, info, (), {}, Attribution())


def run(chunks: int, repeats: int) -> dict[str, Any]:
    from otel_llm_usage.instrumentation.streams import StreamProxy

    from .transports import openai_client

    client = openai_client(chunks=chunks)
    # As the overhead surfaces do: usage asked for explicitly, so both reads see the same chunks.
    kwargs: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                              "stream": True, "stream_options": {"include_usage": True}}

    def stream() -> Any:
        return client.chat.completions.create(**kwargs)

    new_invocation = _invocation_factory()

    def read(proxy: bool) -> float:
        # The request is sent before the clock starts: only reading the chunks is timed.
        source = stream()
        if proxy:
            inv = new_invocation()
            inv.expect_stream_usage(injected=False)  # what prepare() notes for a request that asks for usage
            inv.done = True  # finalizing is the per-call cost, measured elsewhere
            source = StreamProxy(source, inv)
        start = time.perf_counter()
        for _chunk in source:
            pass
        return time.perf_counter() - start

    bare: list[float] = []
    proxied: list[float] = []
    for i in range(repeats):
        # Alternate which read goes first, so neither always runs on a warmer cache.
        if i % 2:
            bare.append(read(False))
            proxied.append(read(True))
        else:
            proxied.append(read(True))
            bare.append(read(False))
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
