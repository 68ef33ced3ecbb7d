# SPDX-License-Identifier: Apache-2.0
"""The one entry point: runs every benchmark, writes ``results-<mode>.json`` and ``.md``, prints the table.

    python -m benchmarks              # full run, < 15 min on 2 cores
    python -m benchmarks --quick      # tiny counts, < 2 min: the harness works, numbers mean little

Order matters on a small machine: the per-call overhead benchmark and its
breakdown (:mod:`benchmarks.breakdown`) run first, on an otherwise idle machine;
the event-loop lag cases, the throughput, fleet and memory benchmarks follow, each
in fresh interpreters.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from tests.support.redis_server import RedisServer

from . import breakdown, overhead
from .fleet_bench import run_fleet
from .looplag_bench import run_looplag
from .report import evaluate_targets, render_markdown
from .subproc import run_module

__all__ = ["main"]

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# (ledger records, memory calls, contention seconds) per mode
_SIZES = {"full": (200_000, 1_000_000, 3.0), "quick": (2_000, 20_000, 0.3)}
# (blocks, calls per block) of each breakdown step
_BREAKDOWN = {"full": (20, 400), "quick": (2, 20)}
# the same ladders over embeddings, the surface of the "ours <= official" target
_BREAKDOWN_EMBEDDINGS = {"full": (12, 300), "quick": (2, 10)}
# seconds of 100-concurrent-call batches per event-loop lag case
_LOOPLAG_S = {"full": 3.0, "quick": 0.5}
# runs of each case (interpreters taking turns); a case reports its median run
_LOOPLAG_RUNS = {"full": 3, "quick": 1}
# (runs, token limit) of the fleet overshoot benchmark, 4 processes × 16 threads each
_FLEET = {"full": (5, 10_025), "quick": (1, 2_025)}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    return {"cpu": _cpu_model(), "nproc": os.cpu_count(), "python": platform.python_version(),
            "openai": _version("openai"), "dashscope": _version("dashscope"),
            "opentelemetry-sdk": _version("opentelemetry-sdk"),
            "peers": {d: _version(d) for d in ("opentelemetry-instrumentation-genai-openai",
                                               "opentelemetry-instrumentation-openai-v2", "openlit")}}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_all(quick: bool) -> dict[str, Any]:
    mode = "quick" if quick else "full"
    records, calls, seconds = _SIZES[mode]
    started = time.perf_counter()
    result: dict[str, Any] = {"mode": mode, "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "environment": environment(), "notes": []}
    from otel_llm_usage.testing import LoopbackLLMServer

    with contextlib.ExitStack() as stack:
        redis = RedisServer.start_if_available()
        if redis is None:
            result["notes"].append("redis-server not on PATH: Redis variants and benchmarks skipped")
        else:
            stack.callback(redis.close)
        redis_url = redis.url if redis else None
        # The loopback server runs in this (parent) process, which idles while a worker is timed.
        server = LoopbackLLMServer().start()
        stack.callback(server.stop)

        _log("per-call overhead ...")
        oh = overhead.run_overhead(overhead.QUICK if quick else overhead.FULL, redis_url,
                                   server.openai_base_url, log=_log)
        result["overhead"] = {"variants": oh.variants, "surfaces": oh.surfaces, "counts": oh.counts,
                              "seconds": oh.seconds}

        _log("where the added latency goes ...")
        result["breakdown"] = breakdown.run_breakdown(*_BREAKDOWN[mode])
        result["breakdown_embeddings"] = breakdown.run_breakdown(*_BREAKDOWN_EMBEDDINGS[mode], surface="embeddings")

        _log("stream proxy per chunk ...")
        result["chunk"] = run_module("benchmarks.chunk_bench", ["--repeats", "20" if quick else "400"],
                                     timeout=120)

        _log("event-loop lag ...")
        result["looplag"] = run_looplag(redis_url, _LOOPLAG_S[mode], runs=_LOOPLAG_RUNS[mode], log=_log)

        _log("ledger ingest ...")
        result["ledger"] = {}
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-"))
        urls = {"sqlite": f"sqlite:///{os.path.join(tmp, 'ingest.db')}"}
        if redis_url:
            urls["redis"] = redis_url
        for name, url in urls.items():
            if redis is not None:
                redis.flush()
            result["ledger"][name] = run_module("benchmarks.ledger_bench", ["--url", url, "--records", str(records)],
                                                timeout=300)

        _log("budget contention ...")
        result["contention"] = {}
        ledgers = {"memory": "memory://"}
        if redis_url:
            ledgers["redis"] = redis_url
        for name, url in ledgers.items():
            if redis is not None:
                redis.flush()
            result["contention"][name] = run_module(
                "benchmarks.contention_bench", ["--ledger", url, "--threads", "32", "--seconds", str(seconds)],
                timeout=120)

        _log("fleet overshoot ...")
        result["fleet"] = _fleet(redis_url, *_FLEET[mode], notes=result["notes"], tmp=tmp)

        _log(f"memory ({calls:,} record_usage calls) ...")
        result["memory"] = run_module("benchmarks.memory_bench", ["--calls", str(calls)], timeout=400)

    result["targets"] = evaluate_targets(result)
    result["seconds"] = time.perf_counter() - started
    return result


def _start_cluster(stack: contextlib.ExitStack) -> tuple[str | None, str | None]:
    """(ledger URL of a local three-master Redis Cluster, None) or (None, why there is none)."""
    from otel_llm_usage.ledger.urls import ledger_url_problem
    from tests.support.redis_server import RedisClusterServer

    problem = ledger_url_problem("redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002/0")
    if problem is not None:  # checked before starting three servers for nothing
        return None, f"the ledger does not accept redis+cluster:// URLs yet ({problem})"
    try:
        cluster = RedisClusterServer.start_if_available()
    except Exception as exc:  # a cluster that cannot form skips its rows, it does not end the run
        return None, f"Redis Cluster did not start: {type(exc).__name__}: {exc}"[:300]
    if cluster is None:
        return None, "redis-server or redis-cli not on PATH"
    stack.callback(cluster.close)
    url: str = cluster.url
    return url, None


def _fleet(redis_url: str | None, runs: int, limit: int, notes: list[str], tmp: str) -> dict[str, Any]:
    """Fleet overshoot on the single Redis, on a Redis Cluster started for it (when there can be one), and
    on SQLite (the processes of one host)."""
    out: dict[str, Any] = {}
    if redis_url is None:
        out["redis"] = {"skipped": "redis-server not on PATH"}
        out["redis_cluster"] = {"skipped": "redis-server not on PATH"}
    else:
        out["redis"] = run_fleet(redis_url, runs, limit=limit, log=_log)
        out["redis_cluster"] = _fleet_cluster(runs, limit, notes)
    out["sqlite"] = run_fleet(f"sqlite:///{os.path.join(tmp, 'fleet.db')}", runs, limit=limit, log=_log)
    return out


def _fleet_cluster(runs: int, limit: int, notes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        cluster_url, why = _start_cluster(stack)
        if cluster_url is None:
            notes.append(f"fleet overshoot on Redis Cluster skipped: {why}")
            return {"skipped": why}
        out = run_fleet(cluster_url, runs, limit=limit, log=_log)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny iteration counts (smoke test, < 2 min)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="directory for results-<mode>.json/.md "
                        "(default: benchmarks/results/)")
    args = parser.parse_args(argv)
    result = run_all(args.quick)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"results-{result['mode']}")
    markdown = render_markdown(result)
    with open(stem + ".json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    with open(stem + ".md", "w", encoding="utf-8") as f:
        f.write(markdown)
    print(markdown)
    _log(f"wrote {stem}.json and {stem}.md")
    return 0
