# SPDX-License-Identifier: Apache-2.0
"""Where the added latency of a non-stream chat call goes: each instrumentation built up one part at a time.

    python -m benchmarks.breakdown [--blocks 20] [--calls 400]

Two ladders climb the same levels (:data:`LEVELS`): ours and the official
instrumentation's, first with no-op tracer and meter providers (the
instrumentation's own work), then with the SDK's tracer, then with its meter;
ours adds a budget on top. So the report can say, level by level, which part of
the gap is the SDK's span and histograms (both pay those) and which is the
instrumentation itself.

Each step runs in its own interpreter. Inside it, the instrumentation is installed
and removed (``instrument()``/``uninstrument()``) for alternating blocks of calls,
so the instrumented and the plain side share one process, heap and machine state
(see :func:`measure` for the two figures a step gets). Only public knobs are used:
providers passed to ``instrument()`` and a budget in our config.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from .subproc import emit, run_module
from .variants import use_peer_path

__all__ = ["LEVELS", "STEPS", "main", "run_breakdown"]

#: The levels both ladders climb: level -> what it switches on over the level before.
LEVELS: dict[str, str] = {
    "bare": "no-op tracer and meter providers: the instrumentation's own work (ours prices on the worker)",
    "spans": "+ the SDK tracer provider: spans built and ended",
    "metrics": "+ the SDK meter provider: variant `ours`; for the official one, all of it",
    "budget": "+ one in-memory budget checked before the call: variant `ours_budgets` (the official has none)",
}

#: step -> (ladder, level); each step is one interpreter
STEPS: dict[str, tuple[str, str]] = {
    "bare": ("ours", "bare"),
    "spans": ("ours", "spans"),
    "metrics": ("ours", "metrics"),
    "budget": ("ours", "budget"),
    "official_bare": ("official", "bare"),
    "official_spans": ("official", "spans"),
    "official": ("official", "metrics"),
}

_WARMUP = 50


def _setup(step: str) -> tuple[Callable[[], None], dict[str, Any]]:
    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.trace import NoOpTracerProvider

    from .variants import OFFICIAL_MODULE, sdk_providers, setup_otel_peer, setup_ours

    ladder, level = STEPS[step]
    tracer_provider, meter_provider = sdk_providers()
    if level == "bare":
        tracer_provider = NoOpTracerProvider()
    if level in ("bare", "spans"):
        meter_provider = NoOpMeterProvider()
    if ladder == "official":
        return setup_otel_peer(OFFICIAL_MODULE, (tracer_provider, meter_provider))
    return setup_ours("ours_budgets" if level == "budget" else "ours", None, (tracer_provider, meter_provider))


def measure(step: str, blocks: int, calls: int, surface: str = "chat") -> dict[str, Any]:
    """Alternate plain and instrumented blocks of ``calls`` calls of ``surface`` (order flipped every block).

    Three figures, because part of our work runs on the pipeline's worker thread after the call
    returns: the median difference is the latency on the calling thread; the "all work" difference
    adds the time to drain what each block queued (timed, at the block's end) to the block's calls,
    which is what a host with no idle time pays in throughput. The official instrumentation does
    everything on the calling thread, so its two figures differ only by noise.
    """
    from otel_llm_usage import flush

    from .stats import median
    from .surfaces import Surfaces

    surfaces = Surfaces(None)
    unit = surfaces._unit(surface)
    for _ in range(_WARMUP):
        unit()
    clock = time.perf_counter_ns
    on: list[int] = []
    off: list[int] = []
    drained_ns = 0
    for block in range(blocks):
        for instrumented in ((True, False) if block % 2 else (False, True)):
            teardown = None
            if instrumented:
                teardown, _ = _setup(step)
                for _ in range(_WARMUP):  # first-call paths and caches of the fresh runtime
                    unit()
                flush()
            gc.collect()
            out = on if instrumented else off
            for _ in range(calls):
                t0 = clock()
                unit()
                out.append(clock() - t0)
            if teardown is not None:
                t0 = clock()
                flush()  # what this block queued is its own cost, not the next plain block's
                drained_ns += clock() - t0
                teardown()
    surfaces.close()
    return {"added_us": (median(on) - median(off)) / 1e3,
            "added_all_work_us": ((sum(on) + drained_ns) / len(on) - statistics.fmean(off)) / 1e3,
            "on_us": median(on) / 1e3, "off_us": median(off) / 1e3, "n": len(on)}


def run_breakdown(blocks: int, calls: int, surface: str = "chat") -> dict[str, Any]:
    """Every step in a fresh interpreter, one after the other; the official one when it is installed."""
    from .variants import OFFICIAL_MODULE, module_available

    steps: dict[str, Any] = {}
    official = module_available(OFFICIAL_MODULE)
    for step, (ladder, _) in STEPS.items():
        if ladder == "official" and not official:
            steps[step] = {"error": f"not installed ({OFFICIAL_MODULE} not importable)"}
            continue
        steps[step] = run_module("benchmarks.breakdown", ["--step", step, "--blocks", str(blocks),
                                                          "--calls", str(calls), "--surface", surface], timeout=600)
    return {"blocks": blocks, "calls": calls, "surface": surface, "steps": steps}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.breakdown", description=__doc__.splitlines()[0])
    parser.add_argument("--step", choices=list(STEPS), help="measure this step here and print it (worker mode)")
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--surface", choices=("chat", "embeddings"), default="chat")
    args = parser.parse_args(argv)
    if args.step:
        use_peer_path()
        emit(measure(args.step, args.blocks, args.calls, args.surface))
        return 0
    from .report import breakdown_lines

    print("\n".join(breakdown_lines(run_breakdown(args.blocks, args.calls, args.surface))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
