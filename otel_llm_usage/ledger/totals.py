# SPDX-License-Identifier: Apache-2.0
"""Calls, tokens and cost of a set of ledger records, in total and per dimension (model, user, ...)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .._names import UNKNOWN
from ..usage import UsageRecord

__all__ = ["Converter", "Totals", "breakdown", "summarize"]

#: Cost in a currency → the reporting currency, ``None`` when no rate is known.
Converter = Callable[[Decimal, str], "Decimal | None"]


@dataclass
class Totals:
    """Calls, tokens and cost of a set of records."""

    requests: int = 0
    ok: int = 0
    errors: int = 0
    blocked: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    cost: Decimal = Decimal(0)
    unpriced_requests: int = 0
    unpriced_tokens: int = 0
    unconverted: dict[str, Decimal] = field(default_factory=dict)
    first: float | None = None
    last: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def success_rate(self) -> float | None:
        return self.ok / self.requests if self.requests else None

    def add(self, rec: UsageRecord, convert: Converter) -> None:
        self.requests += 1
        self.ok += rec.status == "ok"
        self.errors += rec.status == "error"
        self.blocked += rec.status == "blocked"
        t = rec.tokens
        self.input_tokens += t.input_tokens
        self.output_tokens += t.output_tokens
        self.cached_input_tokens += t.cached_input_tokens
        self.reasoning_tokens += t.reasoning_tokens
        self.first = rec.timestamp if self.first is None else min(self.first, rec.timestamp)
        self.last = rec.timestamp if self.last is None else max(self.last, rec.timestamp)
        if rec.cost is None:
            self.unpriced_requests += 1
            self.unpriced_tokens += t.total_tokens
            return
        converted = convert(rec.cost, rec.currency) if rec.currency else rec.cost
        if converted is None:
            ccy = str(rec.currency)
            self.unconverted[ccy] = self.unconverted.get(ccy, Decimal(0)) + rec.cost
        else:
            self.cost += converted

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "ok": self.ok, "errors": self.errors, "blocked": self.blocked,
            "success_rate": self.success_rate,
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
            "cached_input_tokens": self.cached_input_tokens, "reasoning_tokens": self.reasoning_tokens,
            "total_tokens": self.total_tokens, "cost": self.cost,
            "unpriced_requests": self.unpriced_requests, "unpriced_tokens": self.unpriced_tokens,
            "unconverted": dict(self.unconverted), "first": self.first, "last": self.last,
        }


def summarize(records: Iterable[UsageRecord], convert: Converter) -> Totals:
    totals = Totals()
    for rec in records:
        totals.add(rec, convert)
    return totals


def _key(rec: UsageRecord, dimension: str) -> str:
    value = rec.model if dimension == "model" else getattr(rec, dimension)
    return str(value) if value else UNKNOWN


def breakdown(records: Iterable[UsageRecord], dimension: str, convert: Converter) -> list[tuple[str, Totals]]:
    """Totals per distinct value of ``dimension``, most expensive first (then most calls, then name)."""
    groups: dict[str, Totals] = defaultdict(Totals)
    for rec in records:
        groups[_key(rec, dimension)].add(rec, convert)
    return sorted(groups.items(), key=lambda kv: (-kv[1].cost, -kv[1].requests, kv[0]))
