# SPDX-License-Identifier: Apache-2.0
"""Ledger ingest: sustained records/s through the batching writer, and the caller's enqueue cost.

    python -m benchmarks.ledger_bench --url sqlite:///tmp/x.db --records 200000

``LedgerWriter(store).process(record)`` is what the pipeline calls for every LLM
call; the writer thread batches into ``store.append``. Throughput is measured
from the first ``process`` to the moment ``flush`` returns (every record
written), so it is what the store sustains, not how fast a deque fills.
Enqueue cost is timed on the calling thread in blocks of 100 calls (so the
timer's own ~50 ns does not dominate) and reported per record.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from .stats import median, percentile
from .subproc import emit

__all__ = ["main", "make_records", "run"]

_BLOCK = 100


def make_records(n: int) -> list[Any]:
    """Priced synthetic records with realistic attribution (1000 users, 50 sessions each)."""
    from otel_llm_usage.usage import TokenUsage, UsageRecord

    out = []
    for i in range(n):
        out.append(UsageRecord(
            provider="openai", operation="chat", request_model="gpt-4o-mini",
            response_model="gpt-4o-mini-2024-07-18", tokens=TokenUsage(12, 100), duration_s=0.5,
            function="bench", user=f"user-{i % 1000}", session=f"session-{i % 50_000}", anchor="anchor-1",
            server_address="api.openai.com", server_port=443, response_id=f"chatcmpl-{i}",
            finish_reasons=("stop",), cost=Decimal("0.0000618"), currency="USD", price_source="catalog",
            priced=True,
        ))
    return out


def run(url: str, records: int) -> dict[str, Any]:
    from otel_llm_usage.ledger import LedgerWriter, open_ledger

    store, counters = open_ledger(url)
    batch = make_records(records)
    # max_buffer above the run size: this measures sustained ingest, not the overflow policy.
    writer = LedgerWriter(store, max_buffer=records + 1)
    block_ns: list[float] = []
    clock = time.perf_counter_ns
    process = writer.process
    started = time.perf_counter()
    for k in range(0, records, _BLOCK):
        chunk = batch[k:k + _BLOCK]
        t0 = clock()
        for rec in chunk:
            process(rec)
        block_ns.append((clock() - t0) / len(chunk))
    enqueued = time.perf_counter()
    flushed = writer.flush(timeout=300)
    done = time.perf_counter()
    result = {
        "url_scheme": url.split("://", 1)[0],
        "records": records,
        "records_per_s": records / (done - started),
        "enqueue_phase_s": enqueued - started,
        "total_s": done - started,
        "flushed": flushed,
        "written": writer.written,
        "dropped": writer.dropped,
        "failures": writer.failures,
        "enqueue_us_median": median(block_ns) / 1e3,
        "enqueue_us_p95": percentile(block_ns, 95) / 1e3,
        "batch_size": 500,
    }
    writer.close()
    store.close()
    counters.close()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ledger_bench")
    parser.add_argument("--url", required=True)
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args(argv)
    emit(run(args.url, args.records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
