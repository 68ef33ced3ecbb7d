# SPDX-License-Identifier: Apache-2.0
"""What a budget event says: warn, exceeded, blocked, downgraded, exit (the public data, no machinery)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["BudgetEvent", "EventLevel"]

EventLevel = Literal["warn", "exceeded", "blocked", "downgraded", "exit"]


@dataclass(frozen=True, slots=True)
class BudgetEvent:
    budget: str
    scope: str
    level: EventLevel
    window: str
    used: float
    limit: float
    unit: str
    threshold: float | None = None
