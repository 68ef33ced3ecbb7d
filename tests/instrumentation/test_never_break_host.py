# SPDX-License-Identifier: Apache-2.0
"""Faults inside our pipeline never reach the host; they are logged once and counted."""

from __future__ import annotations

import logging
from decimal import Decimal

import openai
import pytest

from otel_llm_usage import record_usage, usage_context
from otel_llm_usage.runtime.pipeline import Stage

MSG = [{"role": "user", "content": "one two three four"}]


class BrokenStage(Stage):
    """A real pipeline stage with a bug: it raises on every record."""

    def process(self, record):
        raise RuntimeError("bug in a stage")


def test_broken_stage_is_isolated_logged_once_and_counted(otel, caplog):
    runtime = otel.instrumentor.runtime
    runtime.pipeline.stages.insert(1, BrokenStage())
    caplog.set_level(logging.WARNING, logger="otel_llm_usage")
    c = openai.OpenAI(base_url=otel.server.openai_base_url, api_key="sk-x", max_retries=0)
    for _ in range(3):
        resp = c.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        assert resp.choices[0].message.content  # the caller got the real answer
    assert len(otel.records()) == 3  # later stages still ran
    assert otel.value("llm_usage_requests_total") == 3
    warnings = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert len(warnings) == 1 and "BrokenStage" in warnings[0].getMessage()
    assert otel.value("llm_usage_internal_errors_total", kind="stage:BrokenStage") == 3


@pytest.mark.parametrize("usage", ["null", "negative", "string", "huge"])
def test_malformed_usage_never_raises_and_never_records_garbage(otel, usage):
    c = openai.OpenAI(base_url=otel.server.openai_base_url, api_key="sk-x", max_retries=0)
    resp = c.chat.completions.create(model="gpt-4o-mini", messages=MSG,
                                     extra_headers={"X-Loopback-Scenario": f"usage={usage}"})
    assert resp.choices
    (rec,) = otel.records()
    assert rec.status == "ok"
    assert 0 <= rec.tokens.input_tokens < 10**9 and 0 <= rec.tokens.output_tokens < 10**9
    if usage == "string":  # "12"-style numbers are still numbers
        assert rec.usage_source == "reported"


def test_malformed_json_body_raises_what_the_sdk_raises(otel):
    c = openai.OpenAI(base_url=otel.server.openai_base_url, api_key="sk-x", max_retries=0)
    with pytest.raises(Exception) as info:
        c.chat.completions.create(model="gpt-4o-mini", messages=MSG,
                                  extra_headers={"X-Loopback-Scenario": "malformed_json=1"})
    (rec,) = otel.records()
    assert rec.status == "error" and rec.error_type == type(info.value).__qualname__


def test_record_usage_flows_through_pricing_budgets_and_metrics(otel):
    with usage_context(function="ide-assistant", user="dev-1"):
        rec = record_usage(provider="openai", model="gpt-4o-mini", input_tokens=1_000_000, output_tokens=0)
    assert rec.usage_source == "manual"
    assert rec.cost is not None and rec.currency == "USD"
    assert rec.cost == Decimal("0.15")  # 1M input tokens × 0.15 USD per 1M
    assert otel.value("llm_usage_tokens_total", function="ide-assistant", user="dev-1", token_type="input") == 1e6
    assert otel.value("llm_usage_cost_total", currency="USD") == pytest.approx(0.15)
    assert otel.records()[-1].record_id == rec.record_id


@pytest.mark.parametrize("bad", [-1, 1.5, "10", True])
def test_record_usage_rejects_bad_amounts(otel, bad):
    with pytest.raises(ValueError, match="input_tokens must be a non-negative integer"):
        record_usage(provider="openai", model="gpt-4o-mini", input_tokens=bad)
    assert otel.records() == []


def test_hourly_billed_model_accrues_cost_over_time(llm_server):
    from otel_llm_usage import start_model, stop_model
    from otel_llm_usage.config import Config
    from tests.conftest import close_otel, make_otel

    class Clock:
        t = 1_800_000_000.0

        def __call__(self):
            return self.t

    clock = Clock()
    cfg = Config.model_validate({"pricing": {"currency": "CNY",
                                             "hourly": [{"model": "my-llama", "per_hour": "12", "currency": "CNY"}]}})
    o = make_otel(llm_server, cfg, clock=clock)
    try:
        start_model("my-llama")
        clock.t += 1800  # half an hour at 12 CNY/h = 6 CNY
        assert o.value("llm_usage_hourly_cost_total", model="my-llama", currency="CNY") == pytest.approx(6.0)
        stop_model("my-llama")
        clock.t += 3600  # stopped: nothing more accrues
        assert o.value("llm_usage_hourly_cost_total", model="my-llama") == pytest.approx(6.0)
    finally:
        close_otel(o)
