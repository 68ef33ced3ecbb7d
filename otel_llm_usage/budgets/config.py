# SPDX-License-Identifier: Apache-2.0
"""The ``budgets:`` section: one entry per budget, validated at start-up.

A per-provider cap from the old in-house monitor is three lines::

    - {name: openai-cap, match: {provider: openai}, window: month,
       limit: {tokens: 2000000, cost: 50}, action: block}
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .._zones import Zone

__all__ = ["BudgetConfig", "BudgetLimit", "BudgetMatch", "parse_rolling"]

_ROLLING = re.compile(r"^rolling:(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
SCOPE_KEYS = ("provider", "model", "function", "user", "session", "anchor")


def parse_rolling(window: str) -> int | None:
    """Seconds of a ``rolling:60m`` window, or ``None`` for a calendar window."""
    m = _ROLLING.match(window)
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)] if m else None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BudgetMatch(_Strict):
    provider: str | None = None
    model: str | None = None  # glob, e.g. "qwen-*"
    function: str | None = None
    user: str | None = None
    session: str | None = None
    anchor: str | None = None


class BudgetLimit(_Strict):
    cost: Decimal | None = Field(None, gt=0)
    tokens: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one(self) -> BudgetLimit:
        if self.cost is None and self.tokens is None:
            raise ValueError("set cost, tokens or both")
        return self


class BudgetConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    match: BudgetMatch = BudgetMatch()
    per: Literal["provider", "model", "function", "user", "session", "anchor"] | None = None
    window: str = "day"
    timezone: Zone = "UTC"
    limit: BudgetLimit
    warn_at: tuple[float, ...] = (0.8, 0.9)
    action: Literal["alert", "block", "downgrade", "exit"] = "alert"
    downgrade_to: str | None = None
    exit_report: str | None = None
    exit_code: int = Field(3, ge=1, le=255)

    @field_validator("window")
    @classmethod
    def _window(cls, v: str) -> str:
        if v in ("hour", "day", "week", "month", "total") or parse_rolling(v) is not None:
            return v
        raise ValueError("must be hour, day, week, month, total or rolling:<N><s|m|h|d> (e.g. rolling:60m)")

    @field_validator("warn_at")
    @classmethod
    def _fractions(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < x < 1 for x in v):
            raise ValueError("warn thresholds are fractions between 0 and 1, e.g. [0.8, 0.9]")
        return tuple(sorted(set(v)))

    @model_validator(mode="after")
    def _downgrade(self) -> BudgetConfig:
        if self.action == "downgrade" and not self.downgrade_to:
            raise ValueError("action: downgrade needs downgrade_to: <cheaper model>")
        return self
