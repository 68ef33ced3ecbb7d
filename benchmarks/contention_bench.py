# SPDX-License-Identifier: Apache-2.0
"""Budget contention: calls/s when many threads spend from one budget at once.

    python -m benchmarks.contention_bench --ledger memory:// --threads 32 --seconds 3

Each "call" is what the budget engine does around a real LLM call: the
pre-call check (``before_call``: reserve against the limit) and the settle
(``process``: release the reservation, add actual usage, read back for
warnings). The engine is taken from a runtime built from a ``Config`` exactly as
the instrumentor builds it, so the counter store is the one the ledger URL
names (in-memory, SQLite or Redis). Records arrive pre-priced: pricing is not
part of the budget path.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from .subproc import emit

__all__ = ["main", "run"]


def _engine(ledger: str) -> tuple[Any, Any]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    from otel_llm_usage.config import Config
    from otel_llm_usage.runtime.core import Runtime

    from .variants import bench_budget

    config = Config.model_validate({"budgets": [bench_budget().model_dump()], "ledger": ledger,
                                    "pricing": {"exchange_rates": {"USD": "7.1"}}})
    runtime = Runtime(config, TracerProvider(), MeterProvider())
    engine = next((s for s in runtime.pipeline.all_stages if hasattr(s, "before_call")), None)
    if engine is None:
        raise RuntimeError("no pre-call (budget) stage in the runtime pipeline")
    return runtime, engine


def run(ledger: str, threads: int, seconds: float) -> dict[str, Any]:
    from otel_llm_usage.runtime.pipeline import CallIntent
    from otel_llm_usage.usage import TokenUsage, UsageRecord

    runtime, engine = _engine(ledger)

    def one_call() -> None:
        record = UsageRecord(provider="openai", operation="chat", request_model="gpt-4o-mini",
                             tokens=TokenUsage(12, 100), cost=Decimal("0.0000618"), currency="USD",
                             priced=True, user="u1")
        engine.before_call(CallIntent(record, 12, 100))
        engine.process(record)

    counts = [0] * threads
    errors: list[str] = []
    stop = threading.Event()
    start = threading.Barrier(threads + 1)

    def worker(slot: int) -> None:
        start.wait()
        n = 0
        try:
            while not stop.is_set():
                one_call()
                n += 1
        except Exception as exc:  # reported, the others keep going
            errors.append(f"{type(exc).__name__}: {exc}")
        counts[slot] = n

    for _ in range(50):  # warm-up: connections, caches, window keys
        one_call()
    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    used = engine.status() if hasattr(engine, "status") else []
    runtime.shutdown()
    total = sum(counts)
    return {
        "ledger": ledger.split("://", 1)[0],
        "threads": threads,
        "seconds": elapsed,
        "calls": total,
        "calls_per_s": total / elapsed,
        "errors": errors[:3],
        "store": type(engine.store).__name__,
        "budget_used": [{k: str(v) for k, v in s.items() if k in ("used", "unit", "scope")} for s in used][:2],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.contention_bench")
    parser.add_argument("--ledger", default="memory://")
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    emit(run(args.ledger, args.threads, args.seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
