# SPDX-License-Identifier: Apache-2.0
"""The pricing dimensions of issue 20: time-of-day windows, output-length bands, cache prices for every
provider, tier boundaries, DashScope regions and gateway-aware pricing by model name.

Entries are built here so the arithmetic does not move with list prices; every expected cost is worked
out in the row's comment (prices per 1M tokens: cost = sum(tokens x price) / 1,000,000). One test at the
end prices the bundled DeepSeek catalog.
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from typing import Any

import pytest

from otel_llm_usage.pricing import PriceCatalog, PriceEntry, PricingSettings, PricingStage, compute_cost
from otel_llm_usage.pricing.catalog import dashscope_region
from otel_llm_usage.pricing.compute import active_window
from otel_llm_usage.usage import TokenUsage, UsageRecord, normalize_usage
from tests.pricing.test_pricing import BANDED, WINDOWED, make_entry, tok

BEIJING = dt.timezone(dt.timedelta(hours=8))


def beijing(year: int, month: int, day: int, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=BEIJING)


def rec(provider: str, model: str, tokens: TokenUsage, **kw: Any) -> UsageRecord:
    return UsageRecord(provider=provider, operation="chat", request_model=model, tokens=tokens, **kw)


# --- time-of-day windows (DeepSeek peak / off-peak) ---------------------------------------------------

# 10,000 input of which 4,000 cache hits, 2,000 output.
# Peak (list prices): 6000*2 + 4000*0.04 + 2000*8 = 12000 + 160 + 16000 = 28160 -> 0.02816 CNY
# Off-peak (x0.5):    6000*1 + 4000*0.02 + 2000*4 =  6000 +  80 +  8000 = 14080 -> 0.01408 CNY
PEAK, OFF_PEAK = "0.02816", "0.01408"
WINDOW_CASES = [
    # 2026-12-02 is a Wednesday.
    ("weekday 10:00 is peak", beijing(2026, 12, 2, 10), PEAK),
    ("weekday 11:59:59 is still peak", beijing(2026, 12, 2, 11, 59, 59), PEAK),
    ("weekday 12:00 starts off-peak (start inclusive)", beijing(2026, 12, 2, 12), OFF_PEAK),
    ("weekday 14:00 is peak again (end exclusive)", beijing(2026, 12, 2, 14), PEAK),
    ("weekday 08:59:59 is off-peak", beijing(2026, 12, 2, 8, 59, 59), OFF_PEAK),
    ("weekday 09:00 is peak", beijing(2026, 12, 2, 9), PEAK),
    ("weekday 23:30 is off-peak (24:00 end)", beijing(2026, 12, 2, 23, 30), OFF_PEAK),
    ("Saturday 10:00 is off-peak", beijing(2026, 12, 5, 10), OFF_PEAK),
    # 02:00 UTC is 10:00 in Beijing: the window's own time zone decides, not the caller's.
    ("UTC time converted to Beijing", dt.datetime(2026, 12, 2, 2, 0, tzinfo=dt.timezone.utc), PEAK),
    # 05:00 UTC is 13:00 in Beijing.
    ("epoch seconds", dt.datetime(2026, 12, 2, 5, 0, tzinfo=dt.timezone.utc).timestamp(), OFF_PEAK),
    ("unknown time: base (list) price", None, PEAK),
]


@pytest.mark.parametrize(("at", "expected"), [c[1:] for c in WINDOW_CASES], ids=[c[0] for c in WINDOW_CASES])
def test_deepseek_peak_and_off_peak(at: Any, expected: str) -> None:
    assert compute_cost(WINDOWED, tok(10_000, 2_000, cached=4_000), at=at) == Decimal(expected)


def test_window_names_the_matching_window() -> None:
    assert active_window(WINDOWED, beijing(2026, 12, 2, 13)).name == "off-peak-weekday"  # type: ignore[union-attr]
    assert active_window(WINDOWED, beijing(2026, 12, 6, 13)).name == "off-peak-weekend"  # type: ignore[union-attr]
    assert active_window(WINDOWED, beijing(2026, 12, 2, 10)) is None


def test_window_multiplies_tiered_and_thinking_prices() -> None:
    entry = make_entry(provider="t", model="tw", currency="CNY", tiers=[
        {"max_input_tokens": 1000, "input": "1", "output": "2", "thinking_output": "6"},
        {"input": "3", "output": "4", "thinking_output": "10"}],
        time_windows=[{"name": "night", "timezone": "UTC", "hours": ["00:00-06:00"], "multiplier": "0.25"}])
    night = dt.datetime(2026, 12, 2, 1, tzinfo=dt.timezone.utc)
    # tier 2 at night, thinking: (2000*3 + 1000*10) * 0.25 = 16000 * 0.25 = 4000 -> 0.004
    assert compute_cost(entry, tok(2000, 1000), {"enable_thinking": True}, at=night) == Decimal("0.004")
    # same call at noon: 2000*3 + 1000*10 = 16000 -> 0.016
    assert compute_cost(entry, tok(2000, 1000), {"enable_thinking": True},
                        at=night.replace(hour=12)) == Decimal("0.016")


def test_naive_call_time_is_refused() -> None:
    with pytest.raises(ValueError, match="UTC offset"):
        compute_cost(WINDOWED, tok(1, 1), at=dt.datetime(2026, 12, 2, 10))


def test_stage_prices_by_the_record_timestamp() -> None:
    stage = PricingStage(PriceCatalog(bundled=[WINDOWED]), PricingSettings())
    peak = rec("test", "windowed", tok(10_000, 2_000, cached=4_000), timestamp=beijing(2026, 12, 2, 10).timestamp())
    off = rec("test", "windowed", tok(10_000, 2_000, cached=4_000), timestamp=beijing(2026, 12, 2, 20).timestamp())
    stage.process(peak)
    stage.process(off)
    assert (peak.cost, off.cost) == (Decimal(PEAK), Decimal(OFF_PEAK))


@pytest.mark.parametrize(("window", "problem"), [
    ({"name": "w", "timezone": "Mars/Olympus", "hours": ["00:00-01:00"], "multiplier": 1}, "time zone"),
    ({"name": "w", "timezone": "UTC", "hours": ["18:00-09:00"], "multiplier": 1}, "split a range"),
    ({"name": "w", "timezone": "UTC", "hours": ["9-12"], "multiplier": 1}, "HH:MM-HH:MM"),
    ({"name": "w", "timezone": "UTC", "hours": ["00:00-24:01"], "multiplier": 1}, "within one day"),
    ({"name": "w", "timezone": "UTC", "weekdays": [0, 1], "hours": ["00:00-01:00"], "multiplier": 1}, "ISO day"),
    ({"name": "w", "timezone": "UTC", "hours": ["00:00-01:00"], "multiplier": -1}, "non-negative"),
    ({"name": "w", "timezone": "UTC", "dates": [dt.datetime(2026, 10, 1, 9)], "hours": ["00:00-24:00"],
      "multiplier": 1}, "without a time of day"),
    ({"name": "w", "timezone": "UTC", "dates": ["2026-10-01", "2026-10-01"], "hours": ["00:00-24:00"],
      "multiplier": 1}, "listed once"),
    ({"name": "w", "timezone": "UTC", "dates": ["2026-13-01"], "hours": ["00:00-24:00"], "multiplier": 1}, "date"),
])
def test_window_validation(window: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        make_entry(provider="t", model="m", input=1, output=1, time_windows=[window])


# Holidays: the windowed entry plus a whole-day window on listed dates (a public holiday on a weekday).
HOLIDAYS = make_entry(provider="test", model="holidays", currency="CNY", input="2", cached_input="0.04", output="8",
                      time_windows=[*(w.model_dump() for w in WINDOWED.time_windows),
                                    {"name": "off-peak-holiday", "timezone": "Asia/Shanghai",
                                     "dates": ["2026-10-06"], "hours": ["00:00-24:00"], "multiplier": "0.5"}])
HOLIDAY_CASES = [
    # 2026-10-06 is a Tuesday, a day off of the National Day holiday.
    ("holiday on a weekday, 10:00: off-peak", beijing(2026, 10, 6, 10), OFF_PEAK),
    ("the working Thursday after, 10:00: peak", beijing(2026, 10, 8, 10), PEAK),
    # 16:30 UTC on 10-05 is 00:30 on 10-06 in Beijing: the window's zone decides the day.
    ("the day is the window's local day", dt.datetime(2026, 10, 5, 16, 30, tzinfo=dt.timezone.utc), OFF_PEAK),
    # 01:30 UTC on 10-06 is 09:30 in Beijing, inside the holiday.
    ("UTC morning of the holiday", dt.datetime(2026, 10, 6, 1, 30, tzinfo=dt.timezone.utc), OFF_PEAK),
    # 16:30 UTC on 10-06 is 00:30 on Wednesday 10-07: not listed, but weekday night hours are off-peak anyway,
    # so take 02:00 UTC on 10-07 (10:00 Beijing) for the first peak moment after the holiday.
    ("the next local day, 10:00: peak", dt.datetime(2026, 10, 7, 2, 0, tzinfo=dt.timezone.utc), PEAK),
]


@pytest.mark.parametrize(("at", "expected"), [c[1:] for c in HOLIDAY_CASES], ids=[c[0] for c in HOLIDAY_CASES])
def test_a_window_on_listed_dates(at: Any, expected: str) -> None:
    assert compute_cost(HOLIDAYS, tok(10_000, 2_000, cached=4_000), at=at) == Decimal(expected)


def test_windows_and_volume_do_not_mix() -> None:
    with pytest.raises(ValueError, match="volume"):
        make_entry(provider="t", model="m", volume={"tiers": [{"input": 1, "output": 1}]},
                   time_windows=[{"name": "w", "timezone": "UTC", "hours": ["00:00-01:00"], "multiplier": 1}])


# --- output-length bands and tier boundaries --------------------------------------------------------

BAND_CASES = [
    # short answer, first band: 1000*2 + 200*8 = 2000 + 1600 = 3600 -> 0.0036
    ("answer of 200 tokens: short-answer band", tok(1000, 200), "0.0036"),
    # one token more, longer-answer band of the same input range: 1000*3 + 201*14 = 3000 + 2814 = 5814 -> 0.005814
    ("answer of 201 tokens: longer-answer band", tok(1000, 201), "0.005814"),
    # input bound inclusive: 32000*2 + 100*8 = 64000 + 800 = 64800 -> 0.0648
    ("input 32,000: first input band", tok(32_000, 100), "0.0648"),
    # one more input token: next input band whatever the answer: 32001*4 + 100*16 = 128004 + 1600 -> 0.129604
    ("input 32,001: next input band", tok(32_001, 100), "0.129604"),
    # longer than every band: last input band: 200000*4 + 10*16 = 800000 + 160 = 800160 -> 0.80016
    ("input past every band", tok(200_000, 10), "0.80016"),
]


@pytest.mark.parametrize(("tokens", "expected"), [c[1:] for c in BAND_CASES], ids=[c[0] for c in BAND_CASES])
def test_short_answer_band(tokens: TokenUsage, expected: str) -> None:
    assert compute_cost(BANDED, tokens) == Decimal(expected)


def test_qwen_tier_boundary_128000_vs_128001() -> None:
    qwen = make_entry(provider="t", model="qwen-like", currency="CNY", tiers=[
        {"max_input_tokens": 128_000, "input": "0.8", "output": "2"},
        {"max_input_tokens": 256_000, "input": "2.4", "output": "20"}])
    # 128000*0.8 + 100*2 = 102400 + 200 = 102600 -> 0.1026 (bound inclusive)
    assert compute_cost(qwen, tok(128_000, 100)) == Decimal("0.1026")
    # 128001*2.4 + 100*20 = 307202.4 + 2000 = 309202.4 -> 0.3092024 (the whole call at tier 2)
    assert compute_cost(qwen, tok(128_001, 100)) == Decimal("0.3092024")


@pytest.mark.parametrize(("tiers", "problem"), [
    ([{"max_input_tokens": 32000, "max_output_tokens": 200}, {"max_input_tokens": 128000},
      {"max_input_tokens": 32000}], "listed together"),
    ([{"max_input_tokens": 32000, "max_output_tokens": 200}, {"max_input_tokens": 128000}],
     "needs max_output_tokens: null"),
    ([{"max_input_tokens": 32000, "max_output_tokens": 500}, {"max_input_tokens": 32000, "max_output_tokens": 200},
      {"max_input_tokens": 32000}], "strictly increasing order"),
    ([{"max_input_tokens": 128000}, {"max_input_tokens": 32000}], "strictly increasing max_input_tokens"),
    ([{"max_input_tokens": None}, {"max_input_tokens": 32000}], "only the last tier may be unbounded"),
])
def test_nonsense_tier_orderings_are_rejected(tiers: list[dict[str, Any]], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        make_entry(provider="t", model="m", tiers=[{**t, "input": 1, "output": 1} for t in tiers])


# --- cache hits, priced for every provider ----------------------------------------------------------

DOUBAO = make_entry(provider="volcengine", model="doubao-like", currency="CNY", tiers=[
    {"max_input_tokens": 32_000, "max_output_tokens": 200, "input": "0.8", "cached_input": "0.16", "output": "2"},
    {"max_input_tokens": 32_000, "input": "0.8", "cached_input": "0.16", "output": "8"},
    {"max_input_tokens": 128_000, "input": "1.2", "cached_input": "0.16", "output": "16"},
    {"max_input_tokens": 256_000, "input": "2.4", "cached_input": "0.16", "output": "24"}])


@pytest.mark.parametrize(("entry", "usage", "expected"), [
    # Doubao (Ark reports prompt_tokens_details.cached_tokens), input band <=128K:
    # 20000*1.2 + 80000*0.16 + 1000*16 = 24000 + 12800 + 16000 = 52800 -> 0.0528
    pytest.param(DOUBAO, {"prompt_tokens": 100_000, "completion_tokens": 1_000,
                          "prompt_tokens_details": {"cached_tokens": 80_000}}, "0.0528", id="doubao"),
    # GLM (same usage shape), longer-answer band: 4000*3 + 6000*0.6 + 500*14 = 12000 + 3600 + 7000 = 22600 -> 0.0226
    pytest.param(BANDED, {"prompt_tokens": 10_000, "completion_tokens": 500,
                          "prompt_tokens_details": {"cached_tokens": 6_000}}, "0.0226", id="glm"),
    # GLM short answer with cache hits: 4000*2 + 6000*0.4 + 150*8 = 8000 + 2400 + 1200 = 11600 -> 0.0116
    pytest.param(BANDED, {"prompt_tokens": 10_000, "completion_tokens": 150,
                          "prompt_tokens_details": {"cached_tokens": 6_000}}, "0.0116", id="glm-short"),
    # DeepSeek reports prompt_cache_hit_tokens: 6000*2 + 4000*0.04 + 2000*8 = 28160 -> 0.02816 (base price)
    pytest.param(WINDOWED, {"prompt_tokens": 10_000, "completion_tokens": 2_000, "prompt_cache_hit_tokens": 4_000},
                 "0.02816", id="deepseek"),
    # Kimi reports a top-level cached_tokens: 7000*4 + 3000*1 + 100*16 = 28000 + 3000 + 1600 = 32600 -> 0.0326
    pytest.param(make_entry(provider="moonshot", model="kimi-like", currency="CNY", input="4", cached_input="1",
                            output="16"),
                 {"prompt_tokens": 10_000, "completion_tokens": 100, "cached_tokens": 3_000}, "0.0326", id="kimi"),
])
def test_cache_hits_use_the_cache_price(entry: PriceEntry, usage: dict[str, Any], expected: str) -> None:
    tokens = normalize_usage(usage)
    assert tokens is not None
    assert compute_cost(entry, tokens) == Decimal(expected)


def test_cache_hits_without_a_cache_price_bill_at_input_and_say_so(caplog: pytest.LogCaptureFixture) -> None:
    entry = make_entry(provider="zhipu", model="no-cache-price", currency="CNY", input="5", output="5")
    stage = PricingStage(PriceCatalog(bundled=[entry]), PricingSettings())
    records = [rec("zhipu", "no-cache-price", tok(1000, 0, cached=600)) for _ in range(2)]
    with caplog.at_level(logging.INFO, logger="otel_llm_usage.pricing"):
        for record in records:
            stage.process(record)
    # all 1000 input tokens at the input price: 1000*5 = 5000 -> 0.005
    assert [r.cost for r in records] == [Decimal("0.005")] * 2
    notes = [r.getMessage() for r in caplog.records if "no cache-hit price" in r.getMessage()]
    assert len(notes) == 1 and "zhipu/no-cache-price" in notes[0]


# --- DashScope regions ------------------------------------------------------------------------------

@pytest.mark.parametrize(("host", "region"), [
    ("dashscope.aliyuncs.com", "cn"),
    ("https://dashscope-intl.aliyuncs.com/compatible-mode/v1", "intl"),
    ("cn-hongkong.dashscope.aliyuncs.com", "hk"),
    ("dashscope-us.aliyuncs.com", "us"),
    ("ws-1.ap-southeast-1.maas.aliyuncs.com", "intl"),
    ("ws-1.cn-hongkong.maas.aliyuncs.com", "hk"),
    ("ws-1.cn-beijing.maas.aliyuncs.com", "cn"),
    ("ws-1.eu-central-1.maas.aliyuncs.com", "eu-central-1"),  # no price data: stays its own region
])
def test_dashscope_regions(host: str, region: str) -> None:
    assert dashscope_region(host) == region


def test_each_region_prices_from_its_own_entries_and_unknown_ones_stay_unpriced() -> None:
    entries = [make_entry(provider="dashscope", model="qwen-x", region=region, currency=ccy, input=price, output=price)
               for region, ccy, price in (("cn", "CNY", "2"), ("intl", "USD", "0.5"), ("hk", "USD", "0.6"))]
    catalog = PriceCatalog(bundled=entries)
    hk = catalog.lookup("openai", "qwen-x", "cn-hongkong.dashscope.aliyuncs.com")
    assert hk is not None and (hk.region, hk.currency) == ("hk", "USD")
    maas = catalog.lookup("dashscope", "qwen-x", "ws.ap-southeast-1.maas.aliyuncs.com")
    assert maas is not None and maas.region == "intl"
    # No us entries: a call to the US endpoint is unpriced, not priced as China or Singapore.
    assert catalog.lookup("dashscope", "qwen-x", "dashscope-us.aliyuncs.com") is None
    assert catalog.lookup("dashscope", "qwen-x", "ws.eu-central-1.maas.aliyuncs.com") is None
    stage = PricingStage(catalog, PricingSettings())
    record = rec("openai", "qwen-x", tok(1_000_000, 0), server_address="dashscope-us.aliyuncs.com")
    stage.process(record)
    assert record.cost is None


# --- gateway-aware pricing --------------------------------------------------------------------------

GATEWAY_CATALOG = [
    make_entry(provider="openai", model="gpt-test-mini", currency="USD", input="0.15", cached_input="0.075",
               output="0.6", source="bundled:openai-test.yaml@2026-12-01"),
    make_entry(provider="dashscope", region="cn", model="qwen-test", currency="CNY", input="2.4", output="9.6"),
    make_entry(provider="dashscope", region="intl", model="qwen-test", currency="USD", input="1.6", output="6.4"),
    make_entry(provider="deepseek", model="same-everywhere", currency="CNY", input="1", output="2"),
    make_entry(provider="volcengine", model="same-everywhere", currency="CNY", input="1", output="2"),
]


def test_gateway_call_priced_by_inference() -> None:
    stage = PricingStage(PriceCatalog(bundled=GATEWAY_CATALOG), PricingSettings())
    record = rec("llm-gw.internal", "gpt-test-mini", tok(1_000_000, 1_000_000, cached=400_000),
                 server_address="llm-gw.internal")
    stage.process(record)
    # 600000*0.15 + 400000*0.075 + 1000000*0.6 = 90000 + 30000 + 600000 = 720000 -> 0.72 USD
    assert (record.cost, record.currency, record.price_source) == (Decimal("0.72"), "USD", "inferred:openai")
    # Catalogs that agree on the price: priced, from the first.
    same = rec("10.0.0.7", "same-everywhere", tok(1000, 1000), server_address="10.0.0.7")
    stage.process(same)
    # 1000*1 + 1000*2 = 3000 -> 0.003 CNY
    assert (same.cost, same.price_source) == (Decimal("0.003"), "inferred:deepseek")


def test_ambiguous_gateway_call_left_unpriced(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[UsageRecord] = []
    stage = PricingStage(PriceCatalog(bundled=GATEWAY_CATALOG), PricingSettings(), on_unpriced=seen.append)
    records = [rec("llm-gw.internal", "qwen-test", tok(1000, 1000), server_address="llm-gw.internal")
               for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="otel_llm_usage.pricing"):
        for record in records:
            stage.process(record)
    assert all(r.cost is None and r.price_source is None for r in records)
    assert seen == records  # counted as unpriced, every call
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "dashscope/cn" in warnings[0] and "dashscope/intl" in warnings[0]
    assert 'provider_hosts: {"llm-gw.internal": dashscope}' in warnings[0]
    # The region in the request settles it: only the intl entry is a candidate. 1000*1.6 + 1000*6.4 -> 0.008 USD
    regional = rec("llm-gw.internal", "qwen-test", tok(1000, 1000), server_address="llm-gw.internal",
                   request_params={"region": "intl"})
    stage.process(regional)
    assert (regional.cost, regional.currency, regional.price_source) == (Decimal("0.008"), "USD",
                                                                         "inferred:dashscope:intl")


def test_provider_hosts_still_wins() -> None:
    stage = PricingStage(PriceCatalog(bundled=GATEWAY_CATALOG), PricingSettings())
    # The host was mapped to openai (the instrumentation then reports "openai"): openai has no qwen-test,
    # and the mapping is not second-guessed by model name.
    mapped = rec("openai", "qwen-test", tok(1000, 1000), server_address="llm-gw.internal")
    stage.process(mapped)
    assert mapped.cost is None
    # Mapped to dashscope: the China entry (the default region): 1000*2.4 + 1000*9.6 = 12000 -> 0.012 CNY
    to_dashscope = rec("dashscope", "qwen-test", tok(1000, 1000), server_address="llm-gw.internal")
    stage.process(to_dashscope)
    assert (to_dashscope.cost, to_dashscope.currency) == (Decimal("0.012"), "CNY")
    assert to_dashscope.price_source is not None and not to_dashscope.price_source.startswith("inferred:")


def test_gateway_inference_uses_exact_names_only() -> None:
    catalog = PriceCatalog(bundled=GATEWAY_CATALOG)
    assert catalog.resolve("llm-gw.internal", "gpt-test-mini-2026-01-01", "llm-gw.internal").entry is None
    assert catalog.resolve("llm-gw.internal", "GPT-TEST-MINI", "llm-gw.internal").inferred


# --- the bundled catalog ----------------------------------------------------------------------------

def test_bundled_deepseek_flash_peak_and_off_peak() -> None:
    """The bundled DeepSeek catalog: list (peak) prices on weekday business hours, half price otherwise."""
    entry = PriceCatalog().lookup("deepseek", "deepseek-flash", "api.deepseek.com")
    assert entry is not None and entry.currency == "CNY" and entry.time_windows
    assert entry.input is not None and entry.cached_input is not None and entry.output is not None
    tokens = tok(1_000_000, 1_000_000, cached=500_000)
    # peak: 500000*input + 500000*cached + 1000000*output, per 1M
    peak = (500_000 * entry.input + 500_000 * entry.cached_input + 1_000_000 * entry.output) / 1_000_000
    assert compute_cost(entry, tokens, at=beijing(2026, 12, 2, 10)) == peak
    assert compute_cost(entry, tokens, at=beijing(2026, 12, 2, 20)) == peak / 2
    assert compute_cost(entry, tokens, at=beijing(2026, 12, 5, 10)) == peak / 2  # Saturday


@pytest.mark.parametrize(("at", "off_peak"), [
    (beijing(2026, 10, 6, 10), True),    # Tuesday, a day off of the 2026 National Day holiday
    (beijing(2026, 2, 20, 15), True),    # Friday, a day off of the Spring Festival (swapped from a weekend)
    (beijing(2026, 10, 9, 10), False),   # Friday, a working day
    (beijing(2026, 10, 10, 10), True),   # Saturday, a make-up working day: the page says weekends are off-peak
    (beijing(2026, 12, 2, 10), False),   # Wednesday, no holiday
])
def test_bundled_deepseek_holidays_are_off_peak(at: dt.datetime, off_peak: bool) -> None:
    entry = PriceCatalog().lookup("deepseek", "deepseek-v4-pro", "api.deepseek.com")
    assert entry is not None
    # 10,000 input and 2,000 output at the page's peak prices 9 and 27 CNY per 1M:
    # 10000*9 + 2000*27 = 90000 + 54000 = 144000 -> 0.144 CNY; off-peak half of it, 0.072.
    assert (entry.input, entry.output) == (Decimal(9), Decimal(27))
    assert compute_cost(entry, tok(10_000, 2_000), at=at) == Decimal("0.072" if off_peak else "0.144")


@pytest.mark.parametrize(("host", "currency", "expected"), [
    # China platform, CNY 20 / 2 cached / 100: 6000*20 + 4000*2 + 1000*100 = 120000 + 8000 + 100000 -> 0.228
    ("api.moonshot.cn", "CNY", "0.228"),
    (None, "CNY", "0.228"),  # reported as "moonshot" with no host: the China platform
    # international platform, USD 3 / 0.3 / 15: 6000*3 + 4000*0.3 + 1000*15 = 18000 + 1200 + 15000 -> 0.0342
    ("api.moonshot.ai", "USD", "0.0342"),
])
def test_bundled_kimi_prices_by_platform(host: str | None, currency: str, expected: str) -> None:
    entry = PriceCatalog().lookup("moonshot", "kimi-k3", host)
    assert entry is not None and entry.currency == currency
    assert compute_cost(entry, tok(10_000, 1_000, cached=4_000)) == Decimal(expected)


def test_a_kimi_model_without_a_cny_price_is_not_priced_in_usd_on_the_china_platform() -> None:
    catalog = PriceCatalog()
    assert catalog.lookup("moonshot", "kimi-k3.1-pro", "api.moonshot.ai") is not None
    assert catalog.lookup("moonshot", "kimi-k3.1-pro", "api.moonshot.cn") is None
    # Through an unmapped gateway the two platforms' kimi-k3 prices disagree: unpriced, both named.
    resolution = catalog.resolve("gw.example", "kimi-k3", "gw.example")
    assert resolution.entry is None
    assert sorted((e.provider, e.region, e.currency) for e in resolution.candidates) == [
        ("moonshot", "cn", "CNY"), ("moonshot", "intl", "USD")]


def test_bundled_doubao_seed_2_prices_cache_hits() -> None:
    entry = PriceCatalog().lookup("volcengine", "doubao-seed-2-0-pro-260215", "ark.cn-beijing.volces.com")
    assert entry is not None and entry.currency == "CNY"
    # 50,000 input (band (32K, 128K]) of which 30,000 cache hits, 1,000 output:
    # 20000*4.8 + 30000*0.64 + 1000*24 = 96000 + 19200 + 24000 = 139200 -> 0.1392
    assert compute_cost(entry, tok(50_000, 1_000, cached=30_000)) == Decimal("0.1392")


QWEN_CN = [
    # qwen3.7-plus, input band bound inclusive: 256000*2 + 2000*8 = 512000 + 16000 = 528000 -> 0.528
    ("qwen3.7-plus", tok(256_000, 2_000), "0.528"),
    # one more input token, the whole call in the 256K-1M band: 256001*6 + 2000*24 = 1536006 + 48000 -> 1.584006
    ("qwen3.7-plus", tok(256_001, 2_000), "1.584006"),
    # qwen3.8-max, flat, 8,000 of 10,000 input tokens cache hits: 2000*12 + 8000*1.5 + 1000*36 = 72000 -> 0.072
    ("qwen3.8-max", tok(10_000, 1_000, cached=8_000), "0.072"),
    # a dated qwen3-coder-plus snapshot, third band: 200000*10 + 1000*40 = 2000000 + 40000 -> 2.04
    ("qwen3-coder-plus-2026-07-22", tok(200_000, 1_000), "2.04"),
]


@pytest.mark.parametrize(("model", "tokens", "expected"), QWEN_CN)
def test_bundled_qwen_china_current_models(model: str, tokens: TokenUsage, expected: str) -> None:
    entry = PriceCatalog().lookup("dashscope", model, "dashscope.aliyuncs.com")
    assert entry is not None and entry.currency == "CNY"
    assert compute_cost(entry, tokens) == Decimal(expected)


ZHIPU_BOUNDS = [
    # Zhipu writes its bands half-open in thousands of tokens: input [0, 32), output [0, 0.2).
    # GLM-4.7: 31999*2 + 199*8 = 63998 + 1592 = 65590 -> 0.06559 (short answer, first input band)
    ("glm-4.7", tok(31_999, 199), "0.06559"),
    # an answer of exactly 200 tokens is a longer answer: 31999*3 + 200*14 = 95997 + 2800 = 98797 -> 0.098797
    ("glm-4.7", tok(31_999, 200), "0.098797"),
    # an input of exactly 32,000 is in [32, 200): 32000*4 + 100*16 = 128000 + 1600 = 129600 -> 0.1296
    ("glm-4.7", tok(32_000, 100), "0.1296"),
    # GLM-5 below 32K: 31999*4 + 1000*18 = 127996 + 18000 = 145996 -> 0.145996
    ("glm-5", tok(31_999, 1_000), "0.145996"),
    # GLM-5 from 32K ("[32+)"), 20,000 of 40,000 input tokens cache hits:
    # 20000*6 + 20000*1.5 + 1000*22 = 120000 + 30000 + 22000 = 172000 -> 0.172
    ("glm-5", tok(40_000, 1_000, cached=20_000), "0.172"),
]


@pytest.mark.parametrize(("model", "tokens", "expected"), ZHIPU_BOUNDS)
def test_bundled_zhipu_bands_are_half_open_as_zhipu_writes_them(model: str, tokens: TokenUsage,
                                                                expected: str) -> None:
    entry = PriceCatalog().lookup("zhipu", model, "open.bigmodel.cn")
    assert entry is not None and entry.currency == "CNY"
    assert compute_cost(entry, tokens) == Decimal(expected)


def test_gateway_call_through_the_real_sdk_is_priced_by_inference(llm_server: Any) -> None:
    """An OpenAI client pointed at an unmapped gateway (the loopback host): priced by model name, and
    the span, record and ledger say so."""
    import openai

    from otel_llm_usage.config import Config
    from tests.conftest import close_otel, make_otel

    otel = make_otel(llm_server, Config())  # no provider_hosts: 127.0.0.1 is an unknown gateway
    try:
        c = openai.OpenAI(base_url=llm_server.openai_base_url, api_key="sk-test-secret", max_retries=0)
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "one two"}],
                                  extra_headers={"X-Loopback-Scenario": "prompt_tokens=1000;words=500"})
        (record,) = otel.records()
        entry = otel.instrumentor.runtime.pricer.stage.catalog.lookup("openai", "gpt-4o-mini")  # type: ignore[union-attr]
        assert entry is not None and entry.input is not None and entry.output is not None
        # 1000 input and 500 output at the bundled openai prices, per 1M tokens.
        expected = (1000 * entry.input + 500 * entry.output) / Decimal(1_000_000)
        assert record.provider == "127.0.0.1"
        assert (record.cost, record.currency, record.price_source) == (expected, "USD", "inferred:openai")
        (span,) = otel.spans()
        assert span.attributes["llm_usage.price_source"] == "inferred:openai"
        assert span.attributes["llm_usage.cost"] == pytest.approx(float(expected))
    finally:
        close_otel(otel)
