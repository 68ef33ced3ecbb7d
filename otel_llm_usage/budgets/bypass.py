# SPDX-License-Identifier: Apache-2.0
"""Admin work that budgets record but never refuse."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["budget_bypass", "bypassed"]

_bypass: ContextVar[bool] = ContextVar("otel_llm_usage_budget_bypass", default=False)


@contextlib.contextmanager
def budget_bypass() -> Iterator[None]:
    """Calls inside this block are recorded but never blocked, downgraded or exited (admin work)."""
    token = _bypass.set(True)
    try:
        yield
    finally:
        _bypass.reset(token)


def bypassed() -> bool:
    return _bypass.get()
