# SPDX-License-Identifier: Apache-2.0
"""Who hears of a budget event (logs, metrics, callbacks), and in which unit it is told."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from decimal import Decimal

from .._bounded import BoundedSet
from .._guard import internal_error
from ..ledger.base import Amount, from_nanos, to_nanos
from .config import BudgetConfig
from .events import BudgetEvent, EventLevel
from .windows import Window

__all__ = ["Events", "primary_unit", "units"]

logger = logging.getLogger("otel_llm_usage.budgets")


def units(budget: BudgetConfig, used: Amount, currency: str) -> list[tuple[str, Decimal | int, Decimal | int]]:
    """(unit, used, limit) for each axis the budget limits: the reporting currency, tokens."""
    out: list[tuple[str, Decimal | int, Decimal | int]] = []
    if budget.limit.cost is not None:
        out.append((currency, from_nanos(used.cost_nanos), budget.limit.cost))
    if budget.limit.tokens is not None:
        out.append(("tokens", used.tokens, budget.limit.tokens))
    return out


def primary_unit(budget: BudgetConfig, used: Amount, currency: str) -> tuple[str, Decimal | int, Decimal | int]:
    """The unit that is closest to (or past) its limit, for messages."""
    lim = budget.limit
    if lim.cost is not None and (lim.tokens is None or used.cost_nanos / to_nanos(lim.cost)
                                 >= used.tokens / lim.tokens):
        return currency, from_nanos(used.cost_nanos), lim.cost
    return "tokens", used.tokens, lim.tokens or 0  # the config sets cost, tokens or both


class Events:
    """Builds each event, logs it (the first of each kind per window at WARNING or INFO, the rest at
    DEBUG) and hands it to the runtime's listener and the user's callbacks, guarded."""

    def __init__(self, currency: str, on_event: Callable[[BudgetEvent], None] | None = None) -> None:
        self.currency = currency
        self.callbacks: list[Callable[[BudgetEvent], None]] = []
        self._on_event = on_event
        self._logged: BoundedSet[tuple[str, str, str, str]] = BoundedSet()
        self._lock = threading.Lock()

    def fire(self, budget: BudgetConfig, scope: str, window: Window, used: Amount, level: EventLevel,
             threshold: float | None = None) -> BudgetEvent:
        unit, used_v, limit_v = primary_unit(budget, used, self.currency)
        event = BudgetEvent(budget.name, scope, level, window.kind, float(used_v), float(limit_v), unit, threshold)
        with self._lock:
            first = self._logged.first((budget.name, scope, window.id, level))
        log = logger.warning if first and level in ("exceeded", "blocked", "exit") else (
            logger.info if first else logger.debug)
        log("budget %s (%s) %s: %s of %s %s used", budget.name, scope, level, used_v, limit_v, unit)
        for fn in (self._on_event, *self.callbacks):
            if fn is None:
                continue
            try:
                fn(event)
            except Exception as exc:  # a user callback must not break the call that triggered it
                internal_error("budget_callback", exc)
        return event

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
