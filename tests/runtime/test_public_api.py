# SPDX-License-Identifier: Apache-2.0
"""The public surface is exactly what ``__all__`` says, and every name resolves."""

from __future__ import annotations
import __future__

import types

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


def test_all_is_every_public_name_the_module_defines():
    # Like httpx's exported-members test: nothing public is missing from __all__, nothing extra in it.
    public = {name for name, value in vars(otel_llm_usage).items()
              if not name.startswith("_") and not isinstance(value, (types.ModuleType, __future__._Feature))}
    lazy = {"LLMUsageInstrumentor"}  # resolved on first access (it imports opentelemetry-instrumentation)
    assert public == set(otel_llm_usage.__all__) - lazy - {"__version__"}


def test_importing_the_package_loads_no_pipeline_ledger_or_opentelemetry_sdk():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import sys, otel_llm_usage; print(sorted(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    loaded = set(eval(out))  # a list literal we printed ourselves
    heavy = {"otel_llm_usage.runtime.pipeline", "otel_llm_usage.ledger", "otel_llm_usage.runtime.core",
             "otel_llm_usage.budgets.engine", "otel_llm_usage.telemetry", "opentelemetry.sdk", "sqlite3", "redis"}
    assert not heavy & loaded
