# SPDX-License-Identifier: Apache-2.0
"""Fleet overshoot: several processes × threads spending one token budget on a shared store.

    python -m benchmarks.fleet_bench --ledger redis://127.0.0.1:6379/0 --runs 5

Each run starts ``--procs`` interpreters (:func:`worker`). Each one instruments the openai
SDK with our plugin and one ``block`` budget (``limit: {tokens: --limit}``, the ledger URL
given), makes one uninstrumented call to load what the SDK loads lazily, reports ready and
waits; when every process is ready the parent releases them together. Then ``--threads``
threads per process make real ``OpenAI`` chat calls over an in-process mock transport, each
with ``max_tokens`` set, until each gets :class:`otel_llm_usage.BudgetExceeded`. Every
process then shuts the plugin down (settled usage written, leases handed back) and exits.

The mock answers every call with exactly its reservation: ``prompt_tokens`` = the plugin's
input estimate (:func:`otel_llm_usage.usage.estimate_tokens` of the prompt) and
``completion_tokens`` = ``max_tokens``. So every admitted call spends all it reserved — the
worst case for overshoot — and the documented bound, one call's reservation (estimated input
tokens + ``max_tokens``), applies exactly.

The parent then reads the budget from the store (``budget status`` rows, as the CLI does):
final usage − limit in tokens and in calls; what is still held as in flight (should be 0);
whether the store's usage equals admitted calls × tokens per call (nothing lost or counted
twice). Each run uses its own budget name, so runs need no flush in between.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from .subproc import ROOT, TAG, emit

__all__ = ["main", "reservation_tokens", "run_fleet", "worker"]

READY = "@@fleet-ready"
PROMPT_CHARS = 120
MAX_TOKENS = 20


def _prompt(chars: int) -> str:
    return ("lorem ipsum " * (chars // 12 + 1))[:chars]


def reservation_tokens(prompt_chars: int, max_tokens: int) -> tuple[int, int]:
    """(the plugin's input estimate for the prompt, one call's reservation = estimate + max_tokens)."""
    from otel_llm_usage.usage import count_text, estimate_tokens

    estimate = estimate_tokens(*count_text(_prompt(prompt_chars)))
    return estimate, estimate + max_tokens


def _budget(name: str, limit: int) -> dict[str, Any]:
    return {"name": name, "window": "day", "limit": {"tokens": limit}, "action": "block"}


def _client(prompt_tokens: int, max_tokens: int) -> Any:
    """A sync ``openai.OpenAI`` whose mock server spends exactly the reservation of every call."""
    import httpx2
    import openai

    from . import transports as T

    body = json.dumps({
        "id": "chatcmpl-fleet", "object": "chat.completion", "created": 1_700_000_000,
        "model": T.CHAT_MODEL + "-2024-07-18", "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "logprobs": None, "finish_reason": "length",
                     "message": {"role": "assistant", "content": "lorem " * max_tokens, "refusal": None}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens,
                  "total_tokens": prompt_tokens + max_tokens},
    }).encode()

    def handler(request: Any) -> Any:
        return httpx2.Response(200, content=body, headers={"content-type": "application/json"})

    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    return openai.OpenAI(api_key="bench", base_url=T.OPENAI_BASE, http_client=http, max_retries=0)


# -- one process of the fleet -------------------------------------------------------------------


def worker(ledger: str, budget: str, limit: int, threads: int, max_tokens: int, prompt_chars: int) -> dict[str, Any]:
    from otel_llm_usage import BudgetExceeded
    from otel_llm_usage.config import Config
    from otel_llm_usage.instrumentor import LLMUsageInstrumentor

    from . import transports as T
    from .variants import active_counters, runtime_facts, sdk_providers

    prompt = _prompt(prompt_chars)
    estimate, _ = reservation_tokens(prompt_chars, max_tokens)
    client = _client(estimate, max_tokens)
    messages = [{"role": "user", "content": prompt}]

    def call() -> None:
        client.chat.completions.create(model=T.CHAT_MODEL, messages=messages, max_tokens=max_tokens)

    call()  # uninstrumented: the SDK's lazy imports and first-call work happen before the race
    tracer_provider, meter_provider = sdk_providers()
    instrumentor = LLMUsageInstrumentor()
    config = Config.model_validate({"budgets": [_budget(budget, limit)], "ledger": ledger,
                                    "pricing": {"exchange_rates": {"USD": "7.1"}}})
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider, config=config)
    counters = active_counters()

    calls = [0] * threads
    refused = [0] * threads
    errors: list[str] = []
    start = threading.Barrier(threads + 1)

    def spend(slot: int) -> None:
        start.wait()
        try:
            while True:
                call()
                calls[slot] += 1
        except BudgetExceeded:
            refused[slot] = 1
        except Exception as exc:  # reported; this thread stops
            errors.append(f"{type(exc).__name__}: {exc}"[:300])

    pool = [threading.Thread(target=spend, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    sys.stdout.write(READY + "\n")
    sys.stdout.flush()
    sys.stdin.readline()  # "go", written to every process of the fleet at once
    start.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    instrumentor.uninstrument()  # settles, writes leased usage and hands leases back
    meter_provider.shutdown()
    facts = runtime_facts(counters)  # after the shutdown: a store that failed while writing back counts too
    return {"pid": os.getpid(), "calls": sum(calls), "refused_threads": sum(refused), "errors": errors[:3],
            "seconds": elapsed, **facts}


# -- the parent ---------------------------------------------------------------------------------


def _read_budget(ledger: str, budget: str, limit: int) -> dict[str, Any]:
    """The budget's row from the store, as ``otel-llm-usage budget status`` reads it."""
    from otel_llm_usage.cli.budget import budget_status
    from otel_llm_usage.config import Config
    from otel_llm_usage.ledger import open_ledger

    cfg = Config.model_validate({"budgets": [_budget(budget, limit)], "ledger": ledger})
    store, counters = open_ledger(ledger)
    try:
        rows = [r for r in budget_status(cfg, store, counters) if r["unit"] == "tokens"]
    finally:
        store.close()
        counters.close()
    if not rows:
        raise RuntimeError(f"no tokens row for budget {budget!r}")
    return {"used": int(rows[0]["used"]), "in_flight": int(rows[0]["in_flight"])}


def _last_line(stderr: str) -> str:
    """The exception of a traceback, from its ``SomeError: ...`` line to the end, on one line."""
    lines = [x.strip() for x in stderr.splitlines() if x.strip() and "For further information" not in x]
    start = max((i for i, x in enumerate(lines) if re.match(r"^[\w.]+(Error|Exception|Exceeded)\b", x)),
                default=len(lines) - 1)
    return " ".join(lines[max(0, start):])[:500] if lines else "(no output)"


def _one_run(ledger: str, budget: str, procs: int, threads: int, limit: int, max_tokens: int, prompt_chars: int,
             timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "benchmarks.fleet_bench", "--worker", "--ledger", ledger, "--budget", budget,
           "--limit", str(limit), "--threads", str(threads), "--max-tokens", str(max_tokens),
           "--prompt-chars", str(prompt_chars)]
    fleet = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT, env=env, bufsize=1) for _ in range(procs)]
    results: list[dict[str, Any]] = []
    try:
        for p in fleet:  # wait until every process is instrumented and its threads wait at the start line
            out: IO[str] | None = p.stdout
            assert out is not None
            line = out.readline()
            while line and not line.startswith(READY):  # anything else a library prints is ignored
                line = out.readline()
            if not line:
                stderr = p.stderr.read() if p.stderr else ""
                raise RuntimeError(f"fleet process exited ({p.wait()}): {_last_line(stderr)}")
        t0 = time.perf_counter()
        for p in fleet:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in fleet:
            stdout, stderr = p.communicate(timeout=timeout)
            reply = next((json.loads(x[len(TAG):]) for x in stdout.splitlines() if x.startswith(TAG)), None)
            if reply is None:
                raise RuntimeError(f"fleet process exited ({p.returncode}): {_last_line(stderr)}")
            results.append(reply)
        wall = time.perf_counter() - t0
    finally:
        for p in fleet:
            if p.poll() is None:
                p.kill()
                p.wait()
    return {"wall_s": wall, "processes": results}


def _merged(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return out


def run_fleet(ledger: str, runs: int, procs: int = 4, threads: int = 16, limit: int = 20_000,
              max_tokens: int = MAX_TOKENS, prompt_chars: int = PROMPT_CHARS, timeout: float = 120.0,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """``runs`` fleets, one after the other, on ``ledger``; one budget name per run."""
    estimate, reservation = reservation_tokens(prompt_chars, max_tokens)
    fits = limit // reservation
    out: dict[str, Any] = {"store": ledger.split("://", 1)[0], "procs": procs, "threads": threads,
                           "limit_tokens": limit, "max_tokens": max_tokens, "estimated_input_tokens": estimate,
                           "reservation_tokens": reservation, "bound_tokens": reservation,
                           "calls_within_limit": fits, "runs": []}
    tag = f"{os.getpid()}-{int(time.time())}"
    for i in range(runs):
        budget = f"fleet-{tag}-{i}"
        try:
            fleet = _one_run(ledger, budget, procs, threads, limit, max_tokens, prompt_chars, timeout)
            read = _read_budget(ledger, budget, limit)
        except Exception as exc:
            out["runs"].append({"run": i + 1, "error": f"{type(exc).__name__}: {exc}"[:600]})
            log(f"  fleet {out['store']} run {i + 1}: error {exc}"[:300])
            continue
        processes = fleet["processes"]
        calls = sum(p["calls"] for p in processes)
        over = read["used"] - limit
        row = {"run": i + 1, "calls": calls, "used_tokens": read["used"], "in_flight_tokens": read["in_flight"],
               "over_tokens": over, "over_calls": over / reservation, "calls_over_fit": calls - fits,
               "within_bound": over <= reservation,
               "store_matches_calls": read["used"] == calls * reservation,
               "refused_threads": sum(p["refused_threads"] for p in processes),
               "errors": [e for p in processes for e in p["errors"]][:3],
               "degraded": any(p.get("degraded") for p in processes),
               "degraded_by_op": _merged(p.get("degraded_by_op", {}) for p in processes),
               "counter_store": processes[0].get("counter_store") if processes else None,
               "lease_waits": sum(p.get("lease_stats", {}).get("waits", 0) for p in processes),
               "wall_s": fleet["wall_s"]}
        out["runs"].append(row)
        log(f"  fleet {out['store']} run {i + 1}: {calls} calls, usage − limit {over:+d} tokens"
            f"{'' if row['within_bound'] else ' (EXCEEDS the bound)'}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet_bench")
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--worker", action="store_true", help="one process of the fleet (started by the parent)")
    parser.add_argument("--budget", default="fleet")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--limit", type=int, default=20_000)
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    parser.add_argument("--prompt-chars", type=int, default=PROMPT_CHARS)
    args = parser.parse_args(argv)
    if args.worker:
        emit(worker(args.ledger, args.budget, args.limit, args.threads, args.max_tokens, args.prompt_chars))
    else:
        emit(run_fleet(args.ledger, args.runs, args.procs, args.threads, args.limit, args.max_tokens,
                       args.prompt_chars, log=lambda m: print(m, file=sys.stderr)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
