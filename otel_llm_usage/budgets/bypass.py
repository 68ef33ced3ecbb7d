# SPDX-License-Identifier: Apache-2.0
"""Admin work that budgets record but never refuse."""

from __future__ import annotations

from contextlib import AbstractContextManager

from .._context_flag import ContextFlag

__all__ = ["budget_bypass", "bypassed"]

_bypass = ContextFlag("otel_llm_usage_budget_bypass")


def budget_bypass() -> AbstractContextManager[None]:
    """Calls inside this block are recorded but never blocked, downgraded or exited (admin work)."""
    return _bypass.on()


def bypassed() -> bool:
    return _bypass.is_set()
