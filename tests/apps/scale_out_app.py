# SPDX-License-Identifier: Apache-2.0
"""A small instrumented process for tests/e2e/test_scale_out.py, run as a real subprocess.

Configured like a zero-code deployment: ``OTEL_LLM_USAGE_CONFIG`` for the config,
``OTEL_METRICS_EXPORTER`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` for where metrics go, and
``setup_providers=True`` (what ``opentelemetry-instrument`` does) so the library installs
the providers itself. ``LOOPBACK_OPENAI_URL`` is the LLM endpoint.

    python scale_out_app.py calls 3             # 3 calls, then a normal exit (atexit flush)
    python scale_out_app.py calls 3 --wait      # ... then print READY and sleep (SIGTERM test)
    python scale_out_app.py until-blocked       # READY, wait for "GO" on stdin, call until refused
    python scale_out_app.py fork                # 2 calls, fork: the child makes 3, the parent 1 more
"""

from __future__ import annotations

import json
import os
import sys
import time

import openai

from otel_llm_usage import BudgetExceeded
from otel_llm_usage._guard import internal_error_counts
from otel_llm_usage.instrumentor import LLMUsageInstrumentor
from otel_llm_usage.ledger import LeasedCounterStore

MESSAGES = [{"role": "user", "content": "one two three four"}]  # 9 tokens a call with max_tokens=5


def client() -> openai.OpenAI:
    return openai.OpenAI(base_url=os.environ["LOOPBACK_OPENAI_URL"], api_key="sk-scale", max_retries=0)


def call(c: openai.OpenAI) -> None:
    c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)


def report(**fields: object) -> None:
    print(json.dumps({"pid": os.getpid(), **fields}), flush=True)


def calls(n: int, wait: bool) -> None:
    c = client()
    for _ in range(n):
        call(c)
    report(calls=n)
    if wait:
        print("READY", flush=True)
        time.sleep(120)  # the test sends SIGTERM long before this ends
        print("NOT KILLED", flush=True)


def until_blocked() -> None:
    c = client()
    print("READY", flush=True)
    sys.stdin.readline()  # all processes start calling together
    admitted = 0
    for _ in range(100_000):  # bounded: the budget ends this long before
        try:
            call(c)
        except BudgetExceeded:
            break
        admitted += 1
    report(admitted=admitted, errors=internal_error_counts())


def state() -> dict[str, object]:
    """What a forked child must have re-created: its own threads and connections."""
    runtime = LLMUsageInstrumentor().runtime
    assert runtime is not None
    writer = runtime.ledger
    counters = runtime.counters
    assert isinstance(counters, LeasedCounterStore)  # shared ledgers admit from leases
    primary = counters.store.primary
    redis = getattr(primary, "_redis", None)
    thread = writer._state.thread
    return {
        "writer_thread_alive": bool(thread is not None and thread.is_alive()),
        "writer_thread_id": None if thread is None else thread.ident,
        "budget_thread_alive": runtime.budgets.refresher.running,
        "redis_pool_pid": None if redis is None else redis.connection_pool.pid,
        "degraded_ops": counters.store.degraded_ops,
        "lease_waits": counters.stats.waits,
    }


def fork() -> None:
    c = client()
    call(c)
    call(c)  # still queued in the parent's writer (1 s flush interval) when we fork
    pid = os.fork()
    if pid == 0:
        for _ in range(3):
            call(c)
        runtime = LLMUsageInstrumentor().runtime
        assert runtime is not None
        runtime.flush_ledger(10)
        report(role="child", written=runtime.ledger.written, errors=internal_error_counts(), **state())
        sys.exit(0)  # a normal exit: the inherited atexit hooks run in the child
    _, status = os.waitpid(pid, 0)
    call(c)
    runtime = LLMUsageInstrumentor().runtime
    assert runtime is not None
    runtime.flush_ledger(10)
    report(role="parent", child_status=status, written=runtime.ledger.written, errors=internal_error_counts(),
           **state())


def main() -> None:
    LLMUsageInstrumentor().instrument(setup_providers=True)
    mode = sys.argv[1]
    if mode == "calls":
        calls(int(sys.argv[2]), "--wait" in sys.argv)
    elif mode == "until-blocked":
        until_blocked()
    elif mode == "fork":
        fork()
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
