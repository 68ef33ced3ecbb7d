# SPDX-License-Identifier: Apache-2.0
"""Per-chunk cost of the stream proxy alone, measured without the SDK's own parsing noise.

    python -m benchmarks.chunk_bench --chunks 100 --repeats 2000

The end-to-end per-chunk figure (overhead at 100 chunks minus overhead at 1, over
99) subtracts two numbers of ~8 ms to find microseconds, so it moves by a few µs
between runs. This isolates what we add per chunk: real ``ChatCompletionChunk``
objects (parsed by the openai SDK) iterated through the package's stream proxy
with the OpenAI adapter reading each one, against iterating them bare.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Any

from .subproc import emit

__all__ = ["main", "run"]


def _chunks(n: int) -> list[Any]:
    from openai.types.chat import ChatCompletionChunk

    def chunk(i: int) -> Any:
        delta = {"role": "assistant", "content": "word "} if i == 0 else {"content": "word "}
        return ChatCompletionChunk.model_validate({
            "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}], "usage": None})

    return [chunk(i) for i in range(n)]


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

    items = _chunks(chunks)
    bare: list[float] = []
    proxied: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _chunk in iter(items):
            pass
        bare.append(time.perf_counter() - start)
        inv = _invocation()
        inv.done = True  # measure the per-chunk path only; finalizing is the per-call cost
        start = time.perf_counter()
        for _chunk in StreamProxy(iter(items), inv):
            pass
        proxied.append(time.perf_counter() - start)
    per_chunk = (statistics.median(proxied) - statistics.median(bare)) / chunks * 1e6
    return {"chunks": chunks, "repeats": repeats, "per_chunk_us": per_chunk,
            "p95_per_chunk_us": (sorted(proxied)[int(0.95 * repeats)] - statistics.median(bare)) / chunks * 1e6}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chunk_bench")
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args(argv)
    emit(run(args.chunks, args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
