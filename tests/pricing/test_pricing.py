# SPDX-License-Identifier: Apache-2.0
"""Pricing rules, catalog lookup, stage behaviour, volume/hourly billing and the prices CLI.

Every expected cost is worked out by hand in the row's comment: prices are per 1M tokens,
so cost = sum(tokens x price) / 1,000,000.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from otel_llm_usage.cli.prices import prices_app
from otel_llm_usage.pricing import (
    HourlyBilling,
    HourlyPrice,
    PriceCatalog,
    PriceEntry,
    PricingSettings,
    PricingStage,
    VolumeMeter,
    compute_cost,
    load_bundled,
    load_catalog,
)
from otel_llm_usage.usage import TokenUsage, UsageRecord


def make_entry(**fields: Any) -> PriceEntry:
    return PriceEntry.model_validate(fields)


# A synthetic flat-priced chat model so rule tests do not move when list prices change.
FLAT = make_entry(provider="test", model="flat", currency="USD", input="2", cached_input="0.5",
                  cache_write="2.5", output="8", batch_discount="0.5")
# Same without cache prices: cached and cache-write tokens fall back to the input price.
NO_CACHE = make_entry(provider="test", model="nocache", currency="USD", input="2", output="8")
# Cache price stated as a ratio of input (Alibaba style).
RATIO = make_entry(provider="test", model="ratio", currency="CNY", input="1", output="4",
                   cached_input_ratio="0.2")
EMBED = make_entry(provider="test", model="embed", currency="USD", kind="embedding", input="0.02")
# Qwen-plus-like request-length tiers with separate thinking output prices (K = 1,000).
TIERED = PriceEntry.model_validate({
    "provider": "test", "model": "tiered", "currency": "CNY",
    "tiers": [
        {"max_input_tokens": 128_000, "input": "0.8", "output": "2", "thinking_output": "8"},
        {"max_input_tokens": 256_000, "input": "2.4", "output": "20", "thinking_output": "24"},
        {"max_input_tokens": 1_000_000, "input": "4.8", "output": "48", "thinking_output": "64"},
    ],
})

# GLM-4.5-like: in the first input band, answers of at most 200 tokens bill lower (listed first).
BANDED = PriceEntry.model_validate({
    "provider": "test", "model": "banded", "currency": "CNY",
    "tiers": [
        {"max_input_tokens": 32_000, "max_output_tokens": 200, "input": "2", "cached_input": "0.4", "output": "8"},
        {"max_input_tokens": 32_000, "input": "3", "cached_input": "0.6", "output": "14"},
        {"max_input_tokens": 128_000, "input": "4", "cached_input": "0.8", "output": "16"},
    ],
})
# DeepSeek-like: list (peak) prices, off-peak windows at half price in Beijing time.
WINDOWED = make_entry(provider="test", model="windowed", currency="CNY", input="2", cached_input="0.04", output="8",
                      time_windows=[
                          {"name": "off-peak-weekday", "timezone": "Asia/Shanghai", "weekdays": [1, 2, 3, 4, 5],
                           "hours": ["00:00-09:00", "12:00-14:00", "18:00-24:00"], "multiplier": "0.5"},
                          {"name": "off-peak-weekend", "timezone": "Asia/Shanghai", "weekdays": [6, 7],
                           "hours": ["00:00-24:00"], "multiplier": "0.5"}])


def tok(inp: int = 0, out: int = 0, cached: int = 0, write: int = 0, reasoning: int = 0) -> TokenUsage:
    return TokenUsage(input_tokens=inp, output_tokens=out, cached_input_tokens=cached,
                      cache_write_tokens=write, reasoning_tokens=reasoning)


COST_CASES: list[tuple[str, PriceEntry, TokenUsage, dict[str, Any], str]] = [
    # 1000*2 + 500*8 = 6000 -> 0.006
    ("basic input/output", FLAT, tok(1000, 500), {}, "0.006"),
    # uncached 600*2 + cached 400*0.5 = 1200 + 200 = 1400 -> 0.0014 (cached not billed again at input)
    ("cached input", FLAT, tok(1000, 0, cached=400), {}, "0.0014"),
    # no cached price: 1000*2 = 2000 -> 0.002
    ("cached without cached price", NO_CACHE, tok(1000, 0, cached=400), {}, "0.002"),
    # uncached 700*2 + write 300*2.5 = 1400 + 750 = 2150 -> 0.00215
    ("cache write", FLAT, tok(1000, 0, write=300), {}, "0.00215"),
    # no cache-write price: 1000*2 = 2000 -> 0.002
    ("cache write defaults to input", NO_CACHE, tok(1000, 0, write=300), {}, "0.002"),
    # output 1000 (600 of it reasoning) billed once: 1000*8 = 8000 -> 0.008 (not 1600*8)
    ("reasoning billed once", FLAT, tok(0, 1000, reasoning=600), {}, "0.008"),
    # 600*2 + 400*0.5 + 1000*8 = 1200 + 200 + 8000 = 9400 -> 0.0094
    ("cached + reasoning", FLAT, tok(1000, 1000, cached=400, reasoning=600), {}, "0.0094"),
    # uncached 500*1 + cached 500*(1*0.2) = 500 + 100 = 600 -> 0.0006
    ("cached price from ratio", RATIO, tok(1000, 0, cached=500), {}, "0.0006"),
    # embeddings are input only: 1,000,000*0.02 = 20000 -> 0.02 (the 5 "output" tokens are ignored)
    ("embedding input only", EMBED, tok(1_000_000, 5), {}, "0.02"),
    # tier 1 inclusive: 128000*0.8 + 1000*2 = 102400 + 2000 = 104400 -> 0.1044
    ("tier boundary 128000", TIERED, tok(128_000, 1000), {}, "0.1044"),
    # tier 2, whole request: 128001*2.4 + 1000*20 = 307202.4 + 20000 = 327202.4 -> 0.3272024
    ("tier boundary 128001", TIERED, tok(128_001, 1000), {}, "0.3272024"),
    # tier 2 inclusive: 256000*2.4 + 1000*20 = 614400 + 20000 = 634400 -> 0.6344
    ("tier boundary 256000", TIERED, tok(256_000, 1000), {}, "0.6344"),
    # tier 3: 256001*4.8 + 1000*48 = 1228804.8 + 48000 = 1276804.8 -> 1.2768048
    ("tier boundary 256001", TIERED, tok(256_001, 1000), {}, "1.2768048"),
    # thinking by param: 1000*0.8 + 1000*8 = 800 + 8000 = 8800 -> 0.0088
    ("thinking by enable_thinking", TIERED, tok(1000, 1000), {"enable_thinking": True}, "0.0088"),
    # thinking inferred from reasoning tokens: same 0.0088
    ("thinking by reasoning tokens", TIERED, tok(1000, 1000, reasoning=300), {}, "0.0088"),
    # explicit enable_thinking=False wins over reasoning>0: 1000*0.8 + 1000*2 = 2800 -> 0.0028
    ("non-thinking by param", TIERED, tok(1000, 1000, reasoning=300), {"enable_thinking": False}, "0.0028"),
    # no param, no reasoning: non-thinking 0.0028
    ("non-thinking by default", TIERED, tok(1000, 1000), {}, "0.0028"),
    # thinking in tier 2: 200000*2.4 + 1000*24 = 480000 + 24000 = 504000 -> 0.504
    ("thinking in tier 2", TIERED, tok(200_000, 1000), {"enable_thinking": True}, "0.504"),
    # batch: (1000*2 + 500*8)/1e6 = 0.006, x (1 - 0.5) = 0.003
    ("batch discount", FLAT, tok(1000, 500), {"batch": True}, "0.003"),
    # batch requested but the entry has no batch discount: 0.006... for NO_CACHE 1000*2+500*8 -> 0.006
    ("batch without discount", NO_CACHE, tok(1000, 500), {"batch": True}, "0.006"),
]


@pytest.mark.parametrize(("entry", "tokens", "params", "expected"),
                         [c[1:] for c in COST_CASES], ids=[c[0] for c in COST_CASES])
def test_compute_cost_rules(entry: PriceEntry, tokens: TokenUsage, params: dict[str, Any],
                            expected: str) -> None:
    assert compute_cost(entry, tokens, params) == Decimal(expected)


def test_free_model_is_exactly_zero() -> None:
    entry = PriceCatalog().lookup("zhipu", "glm-4-flash")
    assert entry is not None
    cost = compute_cost(entry, tok(10_000, 5_000), {})
    assert cost == Decimal("0") and str(cost) == "0"


def test_compute_does_not_mutate_tokens() -> None:
    tokens = tok(100, 10, cached=500, reasoning=50)  # inconsistent on purpose
    compute_cost(FLAT, tokens, {})
    assert (tokens.cached_input_tokens, tokens.reasoning_tokens) == (500, 50)


# --- catalog lookup ------------------------------------------------------------------

LOOKUP_CASES = [
    # (provider, model, server_address, expected model, expected region, expected currency)
    ("openai", "gpt-4o-2024-08-06", None, "gpt-4o", None, "USD"),
    ("openai", "gpt-4o-2024-05-13", None, "gpt-4o-2024-05-13", None, "USD"),
    ("azure.ai.openai", "gpt-4o-mini", "x.openai.azure.com", "gpt-4o-mini", None, "USD"),
    ("openai", "gpt-4-0125-preview", None, "gpt-4-turbo", None, "USD"),
    ("dashscope", "qwen-plus-2025-07-28", None, "qwen-plus", "cn", "CNY"),
    ("dashscope", "qwen-plus-latest", "dashscope.aliyuncs.com", "qwen-plus", "cn", "CNY"),
    ("dashscope", "qwen-plus-latest", "dashscope-intl.aliyuncs.com", "qwen-plus", "intl", "USD"),
    ("dashscope", "QWEN-MAX", "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
     "qwen-max", "intl", "USD"),
    # OpenAI-compatible client pointed at DashScope: the host decides the provider
    ("openai", "qwen-turbo", "dashscope.aliyuncs.com", "qwen-turbo", "cn", "CNY"),
    ("deepseek", "deepseek-reasoner", "api.deepseek.com", "deepseek-reasoner", None, "CNY"),
    ("volcengine", "doubao-1-5-pro-32k-250115", None, "doubao-1-5-pro-32k", None, "CNY"),
    ("zhipu", "glm-4.5", None, "glm-4.5", None, "CNY"),
]


@pytest.mark.parametrize(("provider", "model", "server", "exp_model", "exp_region", "exp_ccy"), LOOKUP_CASES)
def test_lookup(provider: str, model: str, server: str | None, exp_model: str, exp_region: str | None,
                exp_ccy: str) -> None:
    entry = PriceCatalog().lookup(provider, model, server)
    assert entry is not None
    assert (entry.model, entry.region, entry.currency) == (exp_model, exp_region, exp_ccy)
    assert entry.source is not None and entry.source.startswith("bundled:") and "@" in entry.source


def test_lookup_unknown_and_memoised() -> None:
    catalog = PriceCatalog()
    assert catalog.lookup("api.example.com", "mystery-model") is None
    assert catalog.lookup("openai", None) is None
    first = catalog.lookup("openai", "gpt-4o-2024-11-20")
    assert first is catalog.lookup("openai", "gpt-4o-2024-11-20")


def test_region_prices_differ() -> None:
    catalog = PriceCatalog()
    cn = catalog.lookup("dashscope", "qwen-max", "dashscope.aliyuncs.com")
    intl = catalog.lookup("dashscope", "qwen-max", "dashscope-intl.aliyuncs.com")
    assert cn is not None and intl is not None
    # 1M input + 1M output: cn 2.4 + 9.6 = 12 CNY; intl 1.6 + 6.4 = 8 USD
    assert (compute_cost(cn, tok(1_000_000, 1_000_000)), cn.currency) == (Decimal("12"), "CNY")
    assert (compute_cost(intl, tok(1_000_000, 1_000_000)), intl.currency) == (Decimal("8"), "USD")


def test_region_param_overrides_unknown_gateway_host() -> None:
    catalog = PriceCatalog()
    entry = catalog.lookup("dashscope", "qwen-max", "llm-gw.internal", region="intl")
    assert entry is not None and (entry.region, entry.currency) == ("intl", "USD")
    stage = PricingStage(catalog, PricingSettings())
    record = rec("dashscope", "qwen-max", tok(1_000_000, 0), server_address="llm-gw.internal",
                 request_params={"region": "intl"})
    stage.process(record)
    # 1M input x 1.6 USD = 1.6 USD
    assert (record.cost, record.currency) == (Decimal("1.6"), "USD")


def test_bundled_catalog_is_complete_and_sourced() -> None:
    entries = load_bundled()
    have = {(e.provider, e.region, e.model) for e in entries}
    for model in ("gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o",
                  "gpt-4o-mini", "o3", "o4-mini", "o1", "gpt-4", "gpt-4-turbo", "gpt-3.5-turbo",
                  "text-embedding-3-small", "text-embedding-3-large"):
        assert ("openai", None, model) in have, model
    for region in ("cn", "intl"):
        for model in ("qwen-max", "qwen-plus", "qwen-turbo", "qwen-flash", "qwen3-235b-a22b", "qwen3-32b",
                      "qwen3-8b", "qwq-plus", "qvq-max", "qwen-vl-max", "qwen-vl-plus", "text-embedding-v3",
                      "text-embedding-v4"):
            assert ("dashscope", region, model) in have, (region, model)
    assert ("dashscope", "cn", "qwen-long") in have
    for provider, model in (("deepseek", "deepseek-chat"), ("deepseek", "deepseek-reasoner"),
                            ("zhipu", "glm-4"), ("zhipu", "glm-4-plus"), ("zhipu", "glm-4-flash"),
                            ("zhipu", "glm-4.5"), ("volcengine", "doubao-pro-32k"),
                            ("volcengine", "doubao-lite-32k")):
        assert (provider, None, model) in have, model
    assert all(e.source and e.source.startswith("bundled:") for e in entries)
    assert all(e.is_priced for e in entries)
    assert all(e.verified or e.note or e.source for e in entries)


# --- config overrides ------------------------------------------------------------------

def test_config_override_wins_and_reports_config() -> None:
    settings = PricingSettings.model_validate({"models": [
        {"provider": "openai", "model": "gpt-4o", "input": 1, "output": 2},
        {"provider": "openai", "model": "my-ft-model", "currency": "USD", "input": 3.0, "output": 12.0},
    ]})
    catalog = PriceCatalog.from_settings(settings)
    entry = catalog.lookup("openai", "gpt-4o")
    assert entry is not None and entry.source == "config"
    # 1M*1 + 1M*2 = 3 USD; the bundled cached price is dropped with the bundled prices
    assert compute_cost(entry, tok(1_000_000, 1_000_000, cached=0)) == Decimal("3")
    assert entry.cached_input is None and entry.currency == "USD"
    snapshot = catalog.lookup("openai", "gpt-4o-2024-08-06")  # inherits the bundled patterns
    assert snapshot is not None and snapshot.source == "config"
    ft = catalog.lookup("openai", "my-ft-model")
    # 1000*3 + 1000*12 = 15000 -> 0.015
    assert ft is not None and ft.source == "config" and compute_cost(ft, tok(1000, 1000)) == Decimal("0.015")


def test_config_rejects_typos_and_incomplete_entries() -> None:
    with pytest.raises(ValueError, match="cahced_input"):
        PricingSettings.model_validate(
            {"models": [{"model": "x", "input": 1, "output": 1, "cahced_input": 1}]})
    with pytest.raises(ValueError, match="input price"):
        PriceCatalog.from_settings(PricingSettings.model_validate({"models": [{"model": "new-model"}]}))


def test_new_config_entry_defaults_to_reporting_currency() -> None:
    settings = PricingSettings.model_validate(
        {"currency": "CNY", "models": [{"provider": "llm.internal", "model": "m", "input": 1, "output": 1}]})
    entry = PriceCatalog.from_settings(settings).lookup("llm.internal", "m")
    assert entry is not None and entry.currency == "CNY"


# --- stage -----------------------------------------------------------------------------

def rec(provider: str, model: str, tokens: TokenUsage, **kw: Any) -> UsageRecord:
    return UsageRecord(provider=provider, operation="chat", request_model=model, tokens=tokens, **kw)


def test_stage_prices_record() -> None:
    entry = make_entry(provider="openai", model="gpt-test", currency="USD", input="2.5", output="10",
                       source="bundled:test.yaml@2026-11-30")
    stage = PricingStage(PriceCatalog(bundled=[entry]), PricingSettings())
    record = rec("openai", "gpt-test", tok(1000, 1000))
    stage.process(record)
    # 1000*2.5 + 1000*10 = 12500 -> 0.0125 USD
    assert (record.cost, record.currency) == (Decimal("0.0125"), "USD")
    assert record.price_source == "bundled:test.yaml@2026-11-30"


def test_stage_source_names_the_bundled_catalog() -> None:
    catalog = load_catalog(PricingSettings())
    record = rec("openai", "gpt-4o-mini", tok(1000, 1000))
    PricingStage(catalog, PricingSettings()).process(record)
    entry = catalog.lookup("openai", "gpt-4o-mini")
    assert entry is not None
    file = catalog.catalog_of(entry)
    assert file is not None and file.name == "openai.yaml"
    assert record.price_source == f"bundled:openai.yaml@{file.file_read_on.isoformat()}" == file.key


def test_stage_unknown_model(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[UsageRecord] = []
    stage = PricingStage(PriceCatalog(), PricingSettings(), on_unpriced=seen.append)
    records = [rec("api.example.com", "mystery", tok(10, 10)) for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="otel_llm_usage.pricing"):
        for record in records:
            stage.process(record)
    assert all(r.cost is None and r.currency is None and r.price_source is None for r in records)
    warnings = [r for r in caplog.records
                if r.name == "otel_llm_usage.pricing" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "mystery" in warnings[0].getMessage()
    assert seen == records  # the callback runs once per call


def test_stage_status_rules() -> None:
    catalog = PriceCatalog(bundled=[
        make_entry(provider="openai", model="gpt-test", currency="USD", input="2.5", output="10"),
        make_entry(provider="deepseek", model="ds-test", currency="CNY", input="2", output="3"),
    ])
    stage = PricingStage(catalog, PricingSettings())
    blocked = rec("openai", "gpt-test", tok(), status="blocked")
    stage.process(blocked)
    assert blocked.cost == Decimal(0) and blocked.currency == "USD"
    blocked_unknown = rec("x.example", "nope", tok(), status="blocked")
    stage.process(blocked_unknown)
    assert blocked_unknown.cost is None
    # an error that still reported usage is billed: 1000*2 + 0 = 2000 -> 0.002 CNY
    errored = rec("deepseek", "ds-test", tok(1000, 0), status="error", error_type="Timeout")
    stage.process(errored)
    assert (errored.cost, errored.currency) == (Decimal("0.002"), "CNY")


def test_stage_uses_response_model_and_request_params() -> None:
    stage = PricingStage(PriceCatalog(), PricingSettings())
    # Azure deployment name is not a model id; the response model is
    record = UsageRecord(provider="azure.ai.openai", operation="chat", request_model="my-deployment",
                         response_model="gpt-4o-mini-2024-07-18", tokens=tok(1_000_000, 0))
    stage.process(record)
    assert (record.cost, record.currency) == (Decimal("0.15"), "USD")
    # qwen-plus cn, thinking on: 1000*0.8 + 1000*8 = 8800 -> 0.0088 CNY
    qwen = rec("dashscope", "qwen-plus", tok(1000, 1000), request_params={"enable_thinking": True},
               server_address="dashscope.aliyuncs.com")
    stage.process(qwen)
    assert (qwen.cost, qwen.currency) == (Decimal("0.0088"), "CNY")


def test_stage_never_raises_on_odd_input() -> None:
    stage = PricingStage(PriceCatalog(), PricingSettings())
    odd = rec("openai", "gpt-4o", tok(1, 1))
    odd.tokens = "garbage"  # type: ignore[assignment]
    stage.process(odd)
    assert odd.cost is None
    odd2 = rec("openai", "gpt-4o", tok(1, 1))
    odd2.tokens.input_tokens = "many"  # type: ignore[assignment]
    stage.process(odd2)
    assert odd2.cost is None


def test_genai_prices_fallback() -> None:
    """The real ``genai-prices`` package (dev extra) prices a model the bundled catalog lacks."""
    pytest.importorskip("genai_prices", reason="genai-prices not installed (pip install otel-llm-usage[genai-prices])")
    on = PricingStage(PriceCatalog(), PricingSettings(fallback_genai_prices=True))
    record = rec("anthropic", "claude-3-5-haiku-latest", tok(1_000_000, 0))
    on.process(record)
    # Anthropic's list price for Claude 3.5 Haiku input: 0.80 USD per 1M tokens.
    assert (record.cost, record.currency, record.price_source) == (Decimal("0.80"), "USD", "genai-prices")
    off = PricingStage(PriceCatalog(), PricingSettings())
    record = rec("anthropic", "claude-3-5-haiku-latest", tok(1_000_000, 0))
    off.process(record)
    assert record.cost is None


# --- currency --------------------------------------------------------------------------

CONVERT_CASES = [
    # 12.5 USD x 7.1 = 88.75 CNY
    ("12.5", "USD", "CNY", "88.75"),
    # 71 CNY / 7.1 = 10 USD
    ("71", "CNY", "USD", "10"),
    # 7.8 USD -> 7.8*7.1 = 55.38 CNY -> / 7.8 = 7.1 EUR
    ("7.8", "USD", "EUR", "7.1"),
    ("3", "cny", "CNY", "3"),
]


@pytest.mark.parametrize(("amount", "src", "dst", "expected"), CONVERT_CASES)
def test_convert(amount: str, src: str, dst: str, expected: str) -> None:
    settings_ = PricingSettings.model_validate(
        {"currency": "CNY", "exchange_rates": {"USD": 7.1, "EUR": 7.8}})
    stage = PricingStage(PriceCatalog(), settings_)
    assert stage.convert(Decimal(amount), src, dst) == Decimal(expected)


def test_convert_missing_rate() -> None:
    settings_ = PricingSettings.model_validate({"currency": "CNY", "exchange_rates": {"USD": 7.1}})
    stage = PricingStage(PriceCatalog(), settings_)
    with pytest.raises(ValueError, match="JPY"):
        stage.convert(Decimal(1), "JPY", "CNY")


# --- volume tiers ----------------------------------------------------------------------

class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_volume_tiers_split_a_straddling_call() -> None:
    entry = PriceEntry.model_validate({
        "provider": "test", "model": "vol", "currency": "CNY",
        "volume": {"period": "day", "tiers": [
            {"up_to_tokens": 1000, "input": 1, "output": 1},
            {"up_to_tokens": None, "input": "0.5", "output": "0.5"},
        ]},
    })
    clock = FakeClock(1_700_000_000.0)
    meter = VolumeMeter(entry, clock=clock)
    # 800 input, all in tier 1: 800*1 = 800 -> 0.0008
    assert meter.charge(tok(800, 0)) == Decimal("0.0008")
    # 300 input + 100 output straddle 1000: 200*1 + 100*0.5 (input) + 100*0.5 (output) = 300 -> 0.0003
    assert meter.charge(tok(300, 100)) == Decimal("0.0003")
    assert meter.used == 1200
    # next day: the count resets, 100*1 = 100 -> 0.0001
    clock.now += 86_400
    assert meter.charge(tok(100, 0)) == Decimal("0.0001")


def test_volume_tiers_through_stage() -> None:
    settings = PricingSettings.model_validate({"models": [{
        "provider": "llm.internal", "model": "vol", "currency": "CNY",
        "volume": {"period": "month", "tiers": [{"up_to_tokens": 10, "input": 10, "output": 10},
                                               {"input": 1, "output": 1}]},
    }]})
    stage = PricingStage(PriceCatalog.from_settings(settings), settings, clock=FakeClock(0.0))
    first, second = rec("llm.internal", "vol", tok(8, 0)), rec("llm.internal", "vol", tok(4, 0))
    stage.process(first)
    stage.process(second)
    # first: 8*10 = 80 -> 0.00008; second: 2*10 + 2*1 = 22 -> 0.000022
    assert (first.cost, second.cost) == (Decimal("0.00008"), Decimal("0.000022"))


# --- hourly ----------------------------------------------------------------------------

def test_hourly_accrual() -> None:
    clock = FakeClock(1000.0)
    price = HourlyPrice(model="llama-70b", per_hour=Decimal(36), currency="CNY")
    billing = HourlyBilling([price], clock=clock)
    billing.start_model("llama-70b")
    clock.now = 1000 + 1800  # half an hour: 36 * 0.5 = 18
    assert billing.accrued_cost() == {"llama-70b": Decimal("18")}
    billing.stop_model("llama-70b", now=1000 + 3600)  # one hour: 36
    clock.now = 100_000
    assert billing.accrued_cost()["llama-70b"] == Decimal("36")  # stopped: no more accrual
    billing.start_model("llama-70b", now=200_000)
    # 36 + 900 s = 0.25 h * 36 = 9 -> 45
    assert billing.accrued_cost(now=200_900)["llama-70b"] == Decimal("45")


def test_hourly_starts_on_first_call_via_stage() -> None:
    clock = FakeClock(0.0)
    settings = PricingSettings.model_validate({"hourly": [{"model": "my-vllm", "per_hour": 7.2}]})
    stage = PricingStage(PriceCatalog.from_settings(settings), settings, clock=clock)
    clock.now = 500.0
    record = rec("gpu-box.local", "my-vllm", tok(100, 100))
    stage.process(record)
    assert (record.cost, record.currency, record.price_source) == (Decimal(0), "CNY", "config:hourly")
    clock.now = 500.0 + 600  # 10 min = 1/6 h x 7.2 = 1.2
    assert stage.hourly.accrued_cost()["my-vllm"] == Decimal("1.2")
    stage.hourly.stop_all()
    clock.now = 10_000.0
    assert stage.hourly.accrued_cost()["my-vllm"] == Decimal("1.2")


# --- CLI -------------------------------------------------------------------------------

@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "otel-llm-usage.yaml"
    path.write_text(
        "pricing:\n  currency: CNY\n  exchange_rates: {USD: 7.1}\n  models:\n"
        "    - {provider: openai, model: my-ft-model, currency: USD, input: 3.0, output: 12.0}\n"
        "    - {provider: deepseek, model: ds-cached, currency: CNY, input: 2, cached_input: 0.2, output: 3}\n",
        encoding="utf-8",
    )
    return path


def test_cli_list(config_file: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(prices_app, ["gpt-4o-mini"])
    assert result.exit_code == 0, result.output
    assert "gpt-4o-mini" in result.output and "0.15" in result.output and "0.6" in result.output
    result = runner.invoke(prices_app, ["my-ft-model", "--config", str(config_file), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert '"source": "config"' in result.output and '"input": "3.0"' in result.output
    result = runner.invoke(prices_app, ["--provider", "deepseek"])
    assert result.exit_code == 0 and "deepseek-reasoner" in result.output


def test_cli_estimate(config_file: Path) -> None:
    runner = CliRunner()
    # gpt-4o: 1M*2.5 + 1M*10 = 12.5 USD; x 7.1 = 88.75 CNY
    result = runner.invoke(prices_app, ["estimate", "gpt-4o", "--input", "1000000", "--output", "1000000",
                                        "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    assert "cost: 12.5 USD" in result.output and "reporting: 88.75 CNY" in result.output
    # qwen-plus cn thinking: 1000*0.8 + 1000*8 = 8800 -> 0.0088 CNY
    result = runner.invoke(prices_app, ["estimate", "qwen-plus", "--input", "1000", "--output", "1000",
                                        "--provider", "dashscope", "--region", "cn", "--thinking"])
    assert result.exit_code == 0, result.output
    assert "cost: 0.0088 CNY" in result.output
    # cached + reasoning: 600*2 + 400*0.2 + 1000*3 = 1200 + 80 + 3000 = 4280 -> 0.00428 CNY
    result = runner.invoke(prices_app, ["estimate", "ds-cached", "--input", "1000", "--cached", "400",
                                        "--output", "1000", "--reasoning", "600", "--config", str(config_file)])
    assert "cost: 0.00428 CNY" in result.output
    result = runner.invoke(prices_app, ["estimate", "no-such-model", "--input", "1"])
    assert result.exit_code == 1


def test_cli_mounted_as_subcommand(config_file: Path) -> None:
    app = typer.Typer()
    app.add_typer(prices_app, name="prices")

    @app.command()
    def version() -> None:
        typer.echo("0")

    runner = CliRunner()
    listed = runner.invoke(app, ["prices", "deepseek-chat"])
    assert listed.exit_code == 0 and "deepseek-chat" in listed.output
    # 10*2 + 10*3 = 50 -> 0.00005 CNY
    estimated = runner.invoke(app, ["prices", "estimate", "ds-cached", "--input", "10", "--output", "10",
                                    "--config", str(config_file)])
    assert estimated.exit_code == 0 and "cost: 0.00005 CNY" in estimated.output


# --- properties ------------------------------------------------------------------------

PRICEABLE = [e for e in load_bundled() if e.is_priced] + [FLAT, NO_CACHE, RATIO, TIERED, EMBED, BANDED, WINDOWED]


@settings(max_examples=300, database=None, deadline=None)
@given(entry=st.sampled_from(PRICEABLE), inp=st.integers(0, 1_200_000), cached_frac=st.floats(0, 1),
       out=st.integers(0, 200_000), extra=st.integers(0, 200_000), reasoning=st.integers(0, 200_000),
       thinking=st.sampled_from([None, True, False]), batch=st.booleans())
def test_cost_monotonic_in_output_and_never_negative(
    entry: PriceEntry, inp: int, cached_frac: float, out: int, extra: int, reasoning: int,
    thinking: bool | None, batch: bool,
) -> None:
    params: dict[str, Any] = {"batch": batch}
    if thinking is not None:
        params["enable_thinking"] = thinking
    cached = int(inp * cached_frac)
    reasoning = min(reasoning, out)
    low = compute_cost(entry, tok(inp, out, cached=cached, reasoning=reasoning), params)
    high = compute_cost(entry, tok(inp, out + extra, cached=cached, reasoning=reasoning), params)
    assert Decimal(0) <= low <= high


@settings(max_examples=300, database=None, deadline=None)
@given(entry=st.sampled_from(PRICEABLE), inp=st.integers(0, 1_200_000), cached_frac=st.floats(0, 1),
       out=st.integers(0, 100_000))
def test_cached_never_costs_more(entry: PriceEntry, inp: int, cached_frac: float, out: int) -> None:
    cached = int(inp * cached_frac)
    assert compute_cost(entry, tok(inp, out, cached=cached)) <= compute_cost(entry, tok(inp, out))


_TIER_BOUNDS = sorted({b + d for e in PRICEABLE for t in e.tiers if (b := t.max_input_tokens) for d in (-1, 0, 1)})
_OUT_BOUNDS = sorted({b + d for e in PRICEABLE for t in e.tiers if (b := t.max_output_tokens) for d in (-1, 0, 1)})


@settings(max_examples=800, database=None, deadline=None)
@given(entry=st.sampled_from(PRICEABLE),
       inp=st.one_of(st.integers(0, 3_000_000), st.sampled_from(_TIER_BOUNDS)), cached=st.integers(0, 3_000_000),
       write=st.integers(0, 3_000_000), out=st.one_of(st.integers(0, 500_000), st.sampled_from(_OUT_BOUNDS)),
       reasoning=st.integers(0, 500_000),
       batch=st.booleans(), thinking=st.sampled_from([None, True, False, "true", "0"]),
       at=st.one_of(st.none(), st.floats(1.7e9, 1.9e9)))
def test_integer_fast_path_gives_the_reference_decimal(
    entry: PriceEntry, inp: int, cached: int, write: int, out: int, reasoning: int, batch: bool, thinking: Any,
    at: float | None,
) -> None:
    """compute_cost prices in integers; it must equal the Decimal rules exactly, exponent included
    (the ledger stores the string), for every bundled and hand-made entry: tiers at and around their
    bounds, output bands, time windows, thinking prices, batch discounts, cache buckets."""
    from otel_llm_usage.pricing.compute import (
        apply_batch,
        price_buckets,
        rates_for,
        split_tokens,
        thinking_mode,
    )

    tokens = TokenUsage(input_tokens=inp, output_tokens=out, cached_input_tokens=cached,
                        cache_write_tokens=write, reasoning_tokens=min(reasoning, out))
    params: dict[str, Any] = {"batch": batch}
    if thinking is not None:
        params["enable_thinking"] = thinking
    if entry.volume is not None and not entry.tiers and entry.input is None:
        return  # priced by VolumeMeter, outside the fast path
    if entry.is_free:
        reference = Decimal(0)
    else:
        buckets = split_tokens(tokens)
        rates = rates_for(entry, buckets.uncached_input + buckets.cached_input + buckets.cache_write,
                          buckets.output, at)
        reference = apply_batch(entry, price_buckets(rates, buckets, thinking=thinking_mode(tokens, params),
                                                     embedding=entry.kind == "embedding"), params)
    cost = compute_cost(entry, tokens, params, at=at)
    assert str(cost) == str(reference)


def test_flat_rates_only_for_prices_linear_in_tokens() -> None:
    from otel_llm_usage.pricing.compute import flat_rates

    assert flat_rates(FLAT) == (FLAT.input, FLAT.output)
    assert flat_rates(TIERED) is None  # the input length picks the price
    assert flat_rates(EMBED) == (EMBED.input, Decimal(0))
    thinking = make_entry(provider="x", model="hybrid", input="1", output="2", thinking_output="8")
    assert flat_rates(thinking) is None
    discounted = make_entry(provider="x", model="batchable", input="1", output="2", batch_discount="0.5")
    assert flat_rates(discounted) == (Decimal("1"), Decimal("2"))  # undiscounted: an upper bound


@settings(max_examples=600, database=None, deadline=None)
@given(entry=st.sampled_from(PRICEABLE), inp=st.integers(0, 1_200_000), cached_frac=st.floats(0, 1),
       out=st.integers(0, 200_000), reasoning=st.integers(0, 200_000), batch=st.booleans(),
       thinking=st.sampled_from([None, True, False]), at=st.floats(1.7e9, 1.9e9),
       status=st.sampled_from(["ok", "error", "blocked"]))
def test_a_model_priced_before_is_priced_as_the_rules_say(
    entry: PriceEntry, inp: int, cached_frac: float, out: int, reasoning: int, batch: bool, thinking: bool | None,
    at: float, status: str,
) -> None:
    """The stage remembers how a model and host were priced and prices its next calls from that
    (the calling thread waits for it); whatever the next call's tokens, batch flag, thinking mode,
    time or status, its cost is compute_cost's, exponent included."""
    stage = PricingStage(PriceCatalog(bundled=[entry]), PricingSettings())
    assert entry.provider is not None
    first = rec(entry.provider, entry.model, tok(1000, 10), timestamp=1.8e9)
    stage.process(first)
    if first.cost is None or (entry.volume is not None and not entry.tiers and entry.input is None):
        return  # not priced by model name alone, or priced by a VolumeMeter (period state)
    params: dict[str, Any] = {"batch": batch}
    if thinking is not None:
        params["enable_thinking"] = thinking
    cached = int(inp * cached_frac)
    tokens = tok(inp, out, cached=cached, reasoning=min(reasoning, out))
    record = rec(entry.provider, entry.model, tokens, request_params=params, timestamp=at, status=status)
    stage.process(record)
    expected = Decimal(0) if status == "blocked" else compute_cost(entry, tokens, params, at=at)
    assert (str(record.cost), record.currency, record.price_source) == \
        (str(expected), first.currency, first.price_source)
