# SPDX-License-Identifier: Apache-2.0
"""A runtime built lazily (``record_usage``, ``register_budget_callback``, ``start_model`` before
``instrument()``) is taken over, not leaked, when ``instrument()`` builds the real one."""

from __future__ import annotations

import otel_llm_usage
from otel_llm_usage.budgets.config import BudgetConfig
from otel_llm_usage.config import Config
from otel_llm_usage.runtime import core as rt
from tests.conftest import close_otel, make_otel


def test_instrument_takes_over_the_lazily_built_runtime(llm_server, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no otel-llm-usage.yaml of the developer's is read by the lazy runtime
    monkeypatch.delenv("OTEL_LLM_USAGE_CONFIG", raising=False)
    assert rt.active_runtime(create=False) is None
    events: list[otel_llm_usage.BudgetEvent] = []
    otel_llm_usage.register_budget_callback(events.append)  # nothing instrumented yet: built lazily
    lazy = rt.active_runtime(create=False)
    assert lazy is not None
    # 60 tokens before instrument(), in the lazy runtime's in-memory ledger and counters.
    otel_llm_usage.record_usage(provider="openai", model="gpt-4o-mini", input_tokens=50, output_tokens=10)
    config = Config(provider_hosts={"127.0.0.1": "openai"}, budgets=(BudgetConfig.model_validate(
        {"name": "b", "limit": {"tokens": 100}, "warn_at": [0.5, 0.8], "action": "alert", "window": "day"}),))
    otel = make_otel(llm_server, config)
    try:
        runtime = otel.instrumentor.runtime
        assert runtime is not None and runtime is not lazy
        assert rt.active_runtime(create=False) is runtime
        assert not lazy.handler.enabled  # shut down: its pipeline worker and stores are closed
        # The 60 tokens made before instrument() count here: they cross 50 % as they are taken over,
        # and 30 more make 90 of 100, past 80 %. Both events reach the callback registered first.
        otel_llm_usage.record_usage(provider="openai", model="gpt-4o-mini", input_tokens=20, output_tokens=10)
        assert otel_llm_usage.flush()
        assert [(e.budget, e.level, e.threshold, e.used) for e in events] == [
            ("b", "warn", 0.5, 60.0), ("b", "warn", 0.8, 90.0)]
        assert [(r.tokens.input_tokens, r.tokens.output_tokens) for r in otel.records()] == [(50, 10), (20, 10)]
        status = {(s["budget"], s["unit"]): s["used"] for s in otel_llm_usage.get_budget_status()}
        assert status == {("b", "tokens"): 90}
    finally:
        close_otel(otel)
    assert rt.active_runtime(create=False) is None


def test_an_hourly_meter_started_before_instrument_keeps_running_from_its_start(llm_server, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OTEL_LLM_USAGE_CONFIG", raising=False)
    (tmp_path / "otel-llm-usage.yaml").write_text("pricing:\n  hourly:\n    - {model: my-vllm, per_hour: 7.2}\n")
    otel_llm_usage.start_model("my-vllm")  # builds the runtime lazily from ./otel-llm-usage.yaml
    lazy = rt.active_runtime(create=False)
    assert lazy is not None
    started = lazy.pricer.stage.hourly.running_since()
    assert list(started) == ["my-vllm"]
    otel = make_otel(llm_server, Config.model_validate({"pricing": {"hourly": [{"model": "my-vllm",
                                                                               "per_hour": 7.2}]}}))
    try:
        runtime = otel.instrumentor.runtime
        assert runtime is not None and runtime is not lazy
        assert runtime.pricer.stage.hourly.running_since() == started  # the same start, not a restart
        assert not lazy.handler.enabled
    finally:
        close_otel(otel)
