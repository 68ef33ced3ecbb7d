# SPDX-License-Identifier: Apache-2.0
"""Where our per-call time goes: pyinstrument over one instrumented surface, our frames only.

    python -m benchmarks.profile chat_stream_100 --calls 300 [--variant ours_budgets]

Runs the surface under the given variant in this process with a sampling
profiler (``pip install pyinstrument``; part of the ``bench`` extra) and prints
the functions of ``otel_llm_usage`` with the most *self* time and the most
*total* time, as ``file:line function``. Not part of ``python -m benchmarks``:
profiling perturbs timings, so it is a separate, on-demand step.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

__all__ = ["hotspots", "main"]

_OURS = os.sep + "otel_llm_usage" + os.sep


def _walk(frame: Any, self_time: dict[str, float], total_time: dict[str, float], seen: set[str]) -> None:
    path = frame.file_path or ""
    ours = _OURS in path
    key = f"{os.path.relpath(path)}:{frame.line_no} {frame.function}" if ours else ""
    if ours:
        self_time[key] += frame.total_self_time
        # Recursion (or a wrapper calling itself through wrapt) would count a frame twice.
        if key not in seen:
            total_time[key] += frame.time
    for child in frame.children:
        _walk(child, self_time, total_time, seen | {key} if ours else seen)


def hotspots(surface: str, calls: int, variant: str, top: int = 12) -> dict[str, Any]:
    from pyinstrument import Profiler

    from .surfaces import Surfaces
    from .variants import setup_variant

    teardown, _ = setup_variant(variant, None)
    surfaces = Surfaces(None)
    surfaces.run(surface, max(5, calls // 10))  # warm-up: imports, caches, first-call paths
    profiler = Profiler(interval=0.0002)
    profiler.start()
    surfaces.run(surface, calls)
    session = profiler.stop()
    surfaces.close()
    teardown()
    root = session.root_frame()
    if root is None:
        raise RuntimeError("the profiler took no samples; raise --calls")
    self_time: dict[str, float] = defaultdict(float)
    total_time: dict[str, float] = defaultdict(float)
    _walk(root, self_time, total_time, set())
    wall = root.time or 1.0
    per_call = 1e6 / calls

    def rank(d: dict[str, float]) -> list[dict[str, Any]]:
        return [{"where": k, "us_per_call": round(v * per_call, 2), "share": round(v / wall, 3)}
                for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {"surface": surface, "variant": variant, "calls": calls, "wall_s": wall,
            "self": rank(self_time), "total": rank(total_time)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    parser.add_argument("surface")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--variant", default="ours_budgets")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    result = hotspots(args.surface, args.calls, args.variant, args.top)
    print(f"{result['variant']} on {result['surface']}: {result['calls']} calls, {result['wall_s']:.2f} s")
    for title in ("self", "total"):
        print(f"\n{title} time in otel_llm_usage (µs per call, share of wall):")
        for row in result[title]:
            print(f"  {row['us_per_call']:8.2f}  {row['share']:6.1%}  {row['where']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
