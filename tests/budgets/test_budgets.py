# SPDX-License-Identifier: Apache-2.0
"""Budgets end to end: the real OpenAI client, the loopback server, real counters and gauges.

The loopback server bills 4 input tokens for MSG and ``max_tokens`` output
words, so each call below costs exactly 9 tokens; the pre-call reservation
is 5 (estimated input: 18 chars / 4, rounded up) + 5 (max_tokens) = 10 tokens.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import openai
import pytest

from otel_llm_usage import BudgetExceeded, budget_bypass, flush, get_budget_status, usage_context
from otel_llm_usage.config import Config
from tests.conftest import close_otel, make_otel

MSG = [{"role": "user", "content": "one two three four"}]
CALL_TOKENS = 9
RESERVATION = 10


class Clock:
    def __init__(self, t: float = 1_790_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def budget_config(**budget) -> Config:
    return Config.model_validate({"provider_hosts": {"127.0.0.1": "openai"},
                                  "budgets": [{"name": "b", **budget}]})


def call(server, **kw):
    c = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-x", max_retries=0)
    return c.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5, **kw)


@pytest.fixture
def budgeted(llm_server, request):
    llm_server.clear()
    params = request.param if hasattr(request, "param") else {}
    clock = Clock()
    o = make_otel(llm_server, budget_config(**params), clock=clock)
    o.extra["clock"] = clock
    yield o
    close_otel(o)


@pytest.mark.parametrize("budgeted", [{"limit": {"tokens": 30}, "action": "block"}], indirect=True)
def test_block_refuses_before_the_request_leaves(budgeted):
    server = budgeted.server
    for _ in range(4):  # used 0, 9, 18, 27 — each below 30, so admitted
        call(server)
    with pytest.raises(BudgetExceeded) as info:
        call(server)
    assert len(server.requests) == 4  # the provider never saw the refused call
    exc = info.value
    assert (exc.budget, exc.scope, exc.unit, exc.used, exc.limit) == ("b", "all", "tokens", 36, 30)
    records = budgeted.records()
    assert [r.status for r in records] == ["ok"] * 4 + ["blocked"]
    assert budgeted.value("llm_usage_requests_total", status="blocked") == 1
    assert budgeted.value("llm_budget_events_total", budget="b", level="blocked") == 1
    assert budgeted.value("llm_budget_events_total", budget="b", level="exceeded") == 1
    assert budgeted.value("llm_budget_used", budget="b", unit="tokens") == 36
    assert budgeted.value("llm_budget_limit", budget="b", unit="tokens") == 30
    assert budgeted.value("llm_budget_utilization", budget="b", unit="tokens") == pytest.approx(1.2)
    blocked_span = budgeted.spans()[-1]
    assert blocked_span.attributes["error.type"] == "BudgetExceeded"


@pytest.mark.parametrize("budgeted", [{"limit": {"tokens": 30}, "action": "block", "window": "day"}],
                         indirect=True)
def test_new_day_resets_the_window_and_bypass_skips_it(budgeted):
    for _ in range(4):
        call(budgeted.server)
    with pytest.raises(BudgetExceeded):
        call(budgeted.server)
    with budget_bypass():
        call(budgeted.server)  # an admin call is recorded but never refused
    budgeted.extra["clock"].t += 86400
    call(budgeted.server)
    status = {(s["budget"], s["unit"]): s for s in get_budget_status()}
    assert status[("b", "tokens")]["used"] == CALL_TOKENS


@pytest.mark.parametrize("budgeted", [{"limit": {"tokens": 100}, "warn_at": [0.2, 0.5], "action": "alert"}],
                         indirect=True)
def test_warn_thresholds_fire_once_per_window(budgeted):
    events = []
    budgeted.instrumentor.runtime.budgets.callbacks.append(events.append)
    for _ in range(8):  # 72 tokens: crosses 20 % on call 3 and 50 % on call 6
        call(budgeted.server)
    assert flush()  # events fire as calls are settled, off the calling thread
    assert [(e.level, e.threshold) for e in events] == [("warn", 0.2), ("warn", 0.5)]
    assert budgeted.value("llm_budget_events_total", level="warn") == 2
    for _ in range(4):  # 108 tokens: exceeded once, alert-only so nothing is refused
        call(budgeted.server)
    assert flush()
    assert [e.level for e in events] == ["warn", "warn", "exceeded"]
    assert len(budgeted.server.requests) == 12


@pytest.mark.parametrize("budgeted", [{"limit": {"tokens": 15}, "action": "downgrade",
                                       "downgrade_to": "gpt-4.1-nano", "match": {"model": "gpt-4o*"}}],
                         indirect=True)
def test_downgrade_rewrites_the_model(budgeted):
    for _ in range(3):
        call(budgeted.server)
    models = [r.json["model"] for r in budgeted.server.requests]
    assert models == ["gpt-4o-mini", "gpt-4o-mini", "gpt-4.1-nano"]
    last = budgeted.records()[-1]
    assert last.request_model == "gpt-4.1-nano"
    assert budgeted.spans()[-1].attributes["llm_usage.downgraded_from"] == "gpt-4o-mini"
    assert budgeted.value("llm_budget_events_total", level="downgraded") == 1


@pytest.mark.parametrize("budgeted", [{"limit": {"tokens": 15}, "action": "block", "per": "user"}],
                         indirect=True)
def test_per_user_instances_are_independent(budgeted):
    with usage_context(user="alice"):
        call(budgeted.server)
        call(budgeted.server)
        with pytest.raises(BudgetExceeded):
            call(budgeted.server)
    with usage_context(user="bob"):
        call(budgeted.server)
    scopes = {lbl["scope"]: v for lbl, v in budgeted.samples("llm_budget_used") if lbl["unit"] == "tokens"}
    assert scopes == {"alice": 18, "bob": 9}


def test_cost_limit_with_exchange_rate(llm_server):
    llm_server.clear()
    cfg = Config.model_validate({
        "provider_hosts": {"127.0.0.1": "openai"},
        "pricing": {"currency": "CNY", "exchange_rates": {"USD": "7.1"}},
        # each call: (4 × 0.15 + 5 × 0.60) / 1e6 USD = 3.6e-6 USD = 2.556e-5 CNY
        "budgets": [{"name": "cny", "limit": {"cost": "0.00006"}, "action": "block"}],
    })
    o = make_otel(llm_server, cfg)
    try:
        for _ in range(3):  # used 0, 2.556e-5, 5.112e-5 < 6e-5 → admitted; then 7.668e-5
            call(llm_server)
        with pytest.raises(BudgetExceeded) as info:
            call(llm_server)
        assert info.value.unit == "CNY"
        assert info.value.used == Decimal("0.00007668")
        assert o.value("llm_budget_used", budget="cny", unit="CNY") == pytest.approx(7.668e-5)
    finally:
        close_otel(o)


LIMIT_CALLS = 50


@pytest.mark.parametrize("budgeted", [{"limit": {"tokens": LIMIT_CALLS * CALL_TOKENS}, "action": "block"}],
                         indirect=True)
def test_32_threads_cannot_overshoot_beyond_one_reservation(budgeted):
    server = budgeted.server
    outcomes = []
    lock = threading.Lock()

    def worker(_):
        try:
            call(server)
            result = "ok"
        except BudgetExceeded:
            result = "blocked"
        with lock:
            outcomes.append(result)

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(worker, range(200)))
    admitted = outcomes.count("ok")
    assert admitted + outcomes.count("blocked") == 200
    assert len(server.requests) == admitted
    (status,) = [s for s in get_budget_status() if s["unit"] == "tokens"]
    limit = LIMIT_CALLS * CALL_TOKENS
    # Documented bound: overshoot ≤ one reservation when reservations cover actual usage.
    assert status["used"] == admitted * CALL_TOKENS
    assert limit <= status["used"] <= limit + RESERVATION
    assert status["in_flight"] == 0
    budgeted.extra["overshoot"] = status["used"] - limit
    print(f"32 threads: admitted {admitted}, used {status['used']} of {limit} (overshoot {status['used'] - limit})")


@pytest.mark.parametrize("budgeted", [{"limit": {"tokens": LIMIT_CALLS * CALL_TOKENS}, "action": "block"}],
                         indirect=True)
def test_asyncio_gather_200_calls(budgeted):
    server = budgeted.server

    async def main():
        client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="sk-x", max_retries=0)

        async def one():
            try:
                await client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
                return "ok"
            except BudgetExceeded:
                return "blocked"

        results = await asyncio.gather(*(one() for _ in range(200)))
        await client.close()
        return results

    results = asyncio.run(main())
    admitted = results.count("ok")
    assert len(server.requests) == admitted
    (status,) = [s for s in get_budget_status() if s["unit"] == "tokens"]
    limit = LIMIT_CALLS * CALL_TOKENS
    # All 200 reserve before any settles: admission stops when reservations (10 each) fill the limit,
    # so a burst may use less than the limit — never more than one reservation over it.
    assert admitted == limit // RESERVATION
    assert status["used"] == admitted * CALL_TOKENS <= limit + RESERVATION
    # What the over-estimates held back is released on settlement and usable afterwards.
    call(server)
    assert len(server.requests) == admitted + 1
    print(f"asyncio: admitted {admitted}, used {status['used']} of {limit}")


@pytest.mark.slow
def test_exit_action_writes_report_and_terminates(llm_server, tmp_path):
    report = tmp_path / "exit-report.json"
    config = tmp_path / "cfg.yaml"
    config.write_text(textwrap.dedent(f"""\
        provider_hosts: {{"127.0.0.1": openai}}
        budgets:
          - name: ci-job
            limit: {{tokens: 30}}
            action: exit
            exit_code: 7
            exit_report: {report}
        """))
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent("""\
        import os, openai
        from otel_llm_usage.config import load_config
        from otel_llm_usage.instrumentor import LLMUsageInstrumentor
        LLMUsageInstrumentor().instrument(config=load_config(os.environ["CFG"]))
        c = openai.OpenAI(base_url=os.environ["URL"], api_key="sk-x", max_retries=0)
        for i in range(20):
            c.chat.completions.create(model="gpt-4o-mini", max_tokens=5,
                                      messages=[{"role": "user", "content": "one two three four"}])
            print("done", i, flush=True)
        print("NOT REACHED", flush=True)
        """))
    llm_server.clear()
    proc = subprocess.run([sys.executable, str(app)], env={**os.environ, "CFG": str(config),
                                                          "URL": llm_server.openai_base_url},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 7, proc.stderr
    assert "NOT REACHED" not in proc.stdout
    assert proc.stdout.count("done") == 4
    assert len(llm_server.requests) == 4  # nothing after the limit reached the provider
    data = json.loads(report.read_text())
    assert data["reason"]["budget"] == "ci-job" and data["reason"]["level"] == "exit"
    assert data["exit_code"] == 7
    (b,) = data["budgets"]
    assert b["used"] == 36 and b["limit"] == 30
    assert data["usage_by_model"]["gpt-4o-mini"]["requests"] == 4
    assert "budget ci-job exhausted with action: exit" in proc.stderr


@pytest.mark.parametrize("model", ["gpt-4o-mini", "qwen-plus", "text-embedding-3-small", "no-such-model"])
def test_reservation_priced_from_flat_rates_matches_the_full_pricing(llm_server, model):
    """Reservations price their estimate from cached per-token rates where the price is flat; the
    amount must be what full pricing gives (to the nano, rounded up), tiers and unpriced included."""
    from otel_llm_usage.runtime.pipeline import CallIntent
    from otel_llm_usage.usage import UsageRecord

    cfg = Config.model_validate({"provider_hosts": {"127.0.0.1": "openai"},
                                 "pricing": {"exchange_rates": {"USD": "7.1"}},
                                 "budgets": [{"name": "c", "limit": {"cost": 1000}, "action": "block"}]})
    o = make_otel(llm_server, cfg)
    try:
        engine = o.instrumentor.runtime.budgets
        provider = "dashscope" if model.startswith("qwen") else "openai"
        for inp, out in [(1, 1), (123, 456), (150_000, 8_192), (999_999, 1)]:
            record = UsageRecord(provider=provider, operation="chat", request_model=model)
            fast = engine._reservation(CallIntent(record, inp, out), with_cost=True)
            saved, engine._flat_rates = engine._flat_rates, None
            engine._rate_cache.clear()
            try:
                full = engine._reservation(CallIntent(record, inp, out), with_cost=True)
            finally:
                engine._flat_rates = saved
                engine._rate_cache.clear()
            assert fast.tokens == full.tokens == inp + out
            assert full.cost_nanos <= fast.cost_nanos <= full.cost_nanos + 1, (model, inp, out)
            assert (fast.cost_nanos > 0) == (model != "no-such-model")
    finally:
        close_otel(o)


@pytest.mark.parametrize("budgeted", [{"limit": {"tokens": 100}, "warn_at": [0.2, 0.5], "action": "alert"}],
                         indirect=True)
def test_async_calls_settle_on_the_loop_and_fire_thresholds_off_it(budgeted):
    """Records of an event loop are settled in the loop's own slices; the warn-once mark and the host's
    callbacks (which may block) wait for the pipeline's worker thread. Exact usage and events."""
    import threading

    server = budgeted.server
    events: list[tuple[str, float, str]] = []
    budgeted.instrumentor.runtime.budgets.callbacks.append(
        lambda e: events.append((e.level, e.threshold, threading.current_thread().name)))

    async def main() -> str:
        client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="sk-x", max_retries=0)
        for _ in range(12):  # 9 tokens each: 20 % on call 3, 50 % on call 6, exceeded on call 12
            await client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
            await asyncio.sleep(0.01)  # the loop's turn: the record's slice runs
        await client.close()
        return threading.current_thread().name

    loop_thread = asyncio.run(main())
    assert flush()
    assert [(level, t) for level, t, _ in events] == [("warn", 0.2), ("warn", 0.5), ("exceeded", 1.0)]
    assert {name for *_, name in events} == {"otel-llm-usage-pipeline"} and loop_thread != "otel-llm-usage-pipeline"
    (status,) = get_budget_status()
    assert status["used"] == 12 * CALL_TOKENS and status["in_flight"] == 0
    assert budgeted.value("llm_budget_events_total", level="warn") == 2
    assert len(budgeted.records()) == 12
