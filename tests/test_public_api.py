# SPDX-License-Identifier: Apache-2.0
"""The public surface is exactly what ``__all__`` says, and every name resolves."""

from __future__ import annotations

import otel_llm_usage

EXPECTED = [
    "Attribution", "BudgetEvent", "BudgetExceeded", "ConfigError", "LLMUsageInstrumentor", "OtelLLMUsageError",
    "TokenUsage", "UsageRecord", "__version__", "budget_bypass", "current_attribution", "flush",
    "get_budget_status",
    "record_usage", "register_budget_callback", "start_model", "stop_model", "track", "usage_context",
]


def test_all_is_sorted_and_complete():
    assert otel_llm_usage.__all__ == sorted(otel_llm_usage.__all__)
    assert otel_llm_usage.__all__ == EXPECTED
    for name in otel_llm_usage.__all__:
        assert getattr(otel_llm_usage, name) is not None


def test_budget_exceeded_is_part_of_the_documented_hierarchy():
    assert issubclass(otel_llm_usage.BudgetExceeded, otel_llm_usage.OtelLLMUsageError)
    assert issubclass(otel_llm_usage.ConfigError, ValueError)
