# SPDX-License-Identifier: Apache-2.0
"""A bounded in-process ledger: recent records plus running totals that never drop."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from ..usage import UsageRecord

__all__ = ["MemoryLedger", "Totals"]


@dataclass(slots=True)
class Totals:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: dict[str, Decimal] = field(default_factory=dict)  # by currency
    unpriced: int = 0

    def add(self, rec: UsageRecord) -> None:
        self.requests += 1
        self.errors += rec.status != "ok"
        self.input_tokens += rec.tokens.input_tokens
        self.output_tokens += rec.tokens.output_tokens
        if rec.cost is not None and rec.currency:
            self.cost[rec.currency] = self.cost.get(rec.currency, Decimal(0)) + rec.cost
        elif rec.status != "blocked":
            self.unpriced += 1


class MemoryLedger:
    """Keeps the last ``maxlen`` records and exact totals grouped by any attribution key."""

    def __init__(self, maxlen: int = 100_000) -> None:
        self._records: deque[UsageRecord] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self._totals: dict[tuple[str, str], Totals] = {}

    def process(self, record: UsageRecord) -> None:
        with self._lock:
            self._records.append(record)
            for key in ("model", "function", "user", "anchor", "provider"):
                value = getattr(record, key) or "unknown"
                self._totals.setdefault((key, value), Totals()).add(record)
            self._totals.setdefault(("all", "all"), Totals()).add(record)

    def records(self) -> list[UsageRecord]:
        with self._lock:
            return list(self._records)

    def totals(self, by: str = "all") -> dict[str, Totals]:
        with self._lock:
            return {value: t for (key, value), t in self._totals.items() if key == by}

    def extend(self, records: Iterable[UsageRecord]) -> None:
        for rec in records:
            self.process(rec)
