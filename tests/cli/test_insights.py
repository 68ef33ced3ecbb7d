# SPDX-License-Identifier: Apache-2.0
"""Insights on a ledger with known usage and a fixed clock; every saving is worked out by hand below.

Prices used (bundled catalog, per 1M tokens): DashScope China (CNY) qwen-max 2.4 in / 9.6 out;
qwen-plus tier ≤128K 0.8 / 2, tier ≤256K 2.4 / 20, cache hits at 20 % of input; OpenAI gpt-4o-mini
0.15 / 0.60 USD; exchange rate 1 USD = 7 CNY.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from otel_llm_usage.ledger import open_ledger
from otel_llm_usage.pricing import PricingSettings, PricingStage, load_catalog
from otel_llm_usage.tooling.insights import compute_insights, forecast
from otel_llm_usage.usage import TokenUsage, UsageRecord

CN = "dashscope.aliyuncs.com"
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=ZoneInfo("UTC")).timestamp()
SETTINGS = PricingSettings(currency="CNY", exchange_rates={"USD": Decimal(7)})


@pytest.fixture(scope="module")
def stage():
    return PricingStage(load_catalog(SETTINGS), SETTINGS)


def rec(stage, *, model, provider, fn, inp, out, ts, cached=0, server=None):
    r = UsageRecord(provider=provider, operation="chat", request_model=model, function=fn,
                    tokens=TokenUsage(input_tokens=inp, output_tokens=out, cached_input_tokens=cached),
                    timestamp=ts, server_address=server)
    stage.process(r)
    return r


@pytest.fixture(scope="module")
def records(stage):
    out = []
    # live-reply: 10 short qwen-max calls, 900 in / 200 out, spread over a day (not a steady high rate).
    out += [rec(stage, model="qwen-max", provider="dashscope", fn="live-reply", inp=900, out=200, server=CN,
                ts=NOW - 86400 + i * 3000) for i in range(10)]
    # gift-thanks: 40 gpt-4o-mini calls exactly 30 s apart → 2 calls/minute, gap CV 0.
    out += [rec(stage, model="gpt-4o-mini", provider="openai", fn="gift-thanks", inp=100, out=20,
                ts=NOW - 3600 + i * 30) for i in range(40)]
    # room-summary: 2 long qwen-plus calls, 200 000 in / 1 000 out, nothing cached.
    out += [rec(stage, model="qwen-plus", provider="dashscope", fn="room-summary", inp=200_000, out=1000,
                server=CN, ts=NOW - 7200 + i) for i in range(2)]
    # an unpriced model
    out.append(rec(stage, model="my-local-llm", provider="vllm.internal", fn="tagging", inp=50, out=5, ts=NOW - 60))
    return out


def by_kind(ins, kind):
    return {s.subject: s for s in ins.suggestions if s.kind == kind}


def test_what_if_reprices_per_function(stage, records):
    ins = compute_insights(records, stage.catalog, stage.to_reporting, currency="CNY", now=NOW,
                           what_if=[("qwen-max", "qwen-plus")])
    (row,) = ins.what_if
    # qwen-max:  900 × 2.4/1e6 + 200 × 9.6/1e6 = 0.00216 + 0.00192 = 0.00408 per call → 0.0408 for 10
    # qwen-plus: 900 × 0.8/1e6 + 200 × 2/1e6   = 0.00072 + 0.0004  = 0.00112 per call → 0.0112 for 10
    assert (row.function, row.calls) == ("live-reply", 10)
    assert row.current_cost == Decimal("0.0408")
    assert row.what_if_cost == Decimal("0.0112")
    assert row.saving == Decimal("0.0296")


def test_each_suggestion_has_its_hand_computed_saving(stage, records):
    ins = compute_insights(records, stage.catalog, stage.to_reporting, currency="CNY", now=NOW)
    cheaper = by_kind(ins, "cheaper_model")
    assert set(cheaper) == {"live-reply on qwen-max"}  # gpt-4o-mini has no cheaper sibling in the map
    assert cheaper["live-reply on qwen-max"].saving == Decimal("0.0296")  # as in the what-if test

    freq = by_kind(ins, "reduce_frequency")
    assert set(freq) == {"gift-thanks"}
    # 100 × 0.15/1e6 + 20 × 0.60/1e6 = 0.000027 USD × 7 = 0.000189 CNY per call; × 40 = 0.00756; half = 0.00378
    assert freq["gift-thanks"].saving == Decimal("0.00378")
    assert freq["gift-thanks"].evidence["calls_per_minute"] == 2.0

    cache = by_kind(ins, "prompt_cache")
    # Only qwen-plus has enough input (400 000 ≥ 10 000) with a low cache share (0 %): at tier ≤256K the cache
    # price is 20 % of 2.4 = 0.48; saving = 0.5 × 200 000 × (2.4 − 0.48)/1e6 = 0.192 per call → 0.384.
    assert set(cache) == {"dashscope/qwen-plus"}
    assert cache["dashscope/qwen-plus"].saving == Decimal("0.384")

    tier = by_kind(ins, "tier_crossing")
    # Billed at ≤256K: 200 000 × 2.4/1e6 + 1 000 × 20/1e6 = 0.48 + 0.02 = 0.50;
    # at the first tier: 200 000 × 0.8/1e6 + 1 000 × 2/1e6 = 0.16 + 0.002 = 0.162 → extra 0.338 × 2 = 0.676.
    assert tier["dashscope/qwen-plus"].saving == Decimal("0.676")
    assert tier["dashscope/qwen-plus"].evidence["calls_over_boundary"] == 2

    unpriced = by_kind(ins, "unpriced")
    assert unpriced["vllm.internal/my-local-llm"].evidence == {"calls": 1, "tokens": 55}
    assert [s.kind for s in ins.suggestions][:1] == ["tier_crossing"]  # biggest saving first


def test_no_suggestion_fires_on_modest_usage(stage):
    quiet = [rec(stage, model="gpt-4o-mini", provider="openai", fn="faq", inp=300, out=50, ts=NOW - i * 600)
             for i in range(6)]
    ins = compute_insights(quiet, stage.catalog, stage.to_reporting, currency="CNY", now=NOW)
    assert ins.suggestions == []


def test_forecast_by_average_and_trend_and_budget_day():
    # Daily cost = the day of the month for Nov 1..25; today is Nov 26 (30 days in November).
    daily = {date(2026, 11, d): Decimal(d) for d in range(1, 26)}
    f = forecast(daily, date(2026, 11, 26), budget=Decimal(400))
    assert f.month_to_date == Decimal(325)  # 1 + … + 25
    assert f.daily_average == Decimal(22)  # (19 + … + 25) / 7 = 154 / 7
    assert f.month_end_by_average == Decimal(435)  # 325 + 22 × 5 days (26th … 30th)
    assert f.trend_slope_per_day == Decimal(1)
    assert f.month_end_by_trend == Decimal(465)  # 325 + 26 + 27 + 28 + 29 + 30
    assert f.budget_exhausted_on == "2026-11-29"  # 347, 369, 391, 413 ≥ 400


def test_cli_insights_json_and_html(stage, records, tmp_path):
    db = tmp_path / "ledger.db"
    store, counters = open_ledger(f"sqlite:///{db}")
    store.append(records)
    store.close()
    counters.close()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("pricing: {currency: CNY, exchange_rates: {USD: 7}}\n")
    html = tmp_path / "insights.html"
    proc = subprocess.run([sys.executable, "-m", "otel_llm_usage.cli", "insights", "--config", str(cfg),
                           "--ledger", f"sqlite:///{db}", "--what-if", "qwen-max=qwen-plus", "--format", "json",
                           "--output", str(html)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert Decimal(data["what_if"][0]["saving"]) == Decimal("0.0296")
    kinds = {s["kind"] for s in data["suggestions"]}
    assert kinds == {"cheaper_model", "reduce_frequency", "prompt_cache", "tier_crossing", "unpriced"}
    page = html.read_text()
    assert "<svg" in page and "Daily cost by model" in page and "Cost by function" in page


def test_cli_rejects_bad_what_if(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "otel_llm_usage.cli", "insights", "--ledger", "memory://",
                           "--what-if", "qwen-max"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "FROM=TO" in proc.stderr


def test_cost_in_a_currency_without_a_rate_is_left_out_not_a_crash(records):
    from otel_llm_usage.pricing.stage import CostConverter

    catalog = load_catalog(PricingSettings(currency="CNY"))  # no USD rate configured
    ins = compute_insights(records, catalog, CostConverter("CNY"), currency="CNY", now=NOW)
    # The CNY figures are exactly those of the fully converted run; the USD-priced calls are left out.
    assert ins.total_cost == Decimal("0.0408") + 2 * Decimal("0.50")  # qwen-max (10 calls) + qwen-plus (2 calls)
    assert {s.kind for s in ins.suggestions} == {"cheaper_model", "prompt_cache", "tier_crossing", "unpriced"}
