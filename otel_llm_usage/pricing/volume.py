# SPDX-License-Identifier: Apache-2.0
"""Cumulative (volume) tier pricing over a billing period.

Some contracts price by how much you have already used this period ("the first 10M
tokens of the month at X, the rest at Y") rather than by the length of one request.
That needs state, so it lives here and not in the pure :mod:`compute` module.

Semantics:

* The meter counts *all* tokens of a call (input, cached, cache-write and output) towards
  the period's cumulative total. Tier ``i`` applies while the cumulative count is within
  ``(up_to_tokens[i-1], up_to_tokens[i]]``.
* A call that straddles a threshold is split token by token: its tokens are consumed in the
  fixed order cached input, cache write, uncached input, output, and each token is billed
  at the tier in force at its position. The order only matters for the few tokens at a
  boundary; it is fixed so results are reproducible.
* Periods (hour/day/month/total) are computed from an injectable clock (epoch seconds) at
  a fixed UTC offset; the count resets when the period changes. State is per process:
  restarting mid-period starts at tier 1 again (the ledger, not this meter, is the record).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from ..usage import TokenUsage
from .compute import DECIMAL_CONTEXT, MILLION, apply_batch, split_tokens, thinking_mode
from .models import PriceEntry, VolumePricing, VolumeTier

__all__ = ["Clock", "VolumeMeter"]

Clock = Callable[[], float]


class VolumeMeter:
    """Prices calls of one model against cumulative tiers in the current period."""

    def __init__(self, entry: PriceEntry, clock: Clock = time.time) -> None:
        if entry.volume is None:
            raise ValueError(f"price entry {entry.model!r} has no volume tiers")
        self._entry = entry
        self._volume: VolumePricing = entry.volume
        self._clock = clock
        self._lock = threading.Lock()
        self._period: object = None
        self._used = 0

    @property
    def used(self) -> int:
        """Tokens counted in the current period (as of the last charge)."""
        with self._lock:
            return self._used

    def period_key(self, now: float) -> object:
        tz = timezone(timedelta(hours=self._volume.utc_offset_hours))
        moment = datetime.fromtimestamp(now, tz)
        period = self._volume.period
        if period == "hour":
            return (moment.year, moment.month, moment.day, moment.hour)
        if period == "day":
            return (moment.year, moment.month, moment.day)
        if period == "month":
            return (moment.year, moment.month)
        return "total"

    def _tier_at(self, position: int) -> tuple[VolumeTier, int | None]:
        """Tier that prices the token after ``position`` tokens have been used, and its upper bound."""
        for tier in self._volume.tiers:
            if tier.up_to_tokens is None or position < tier.up_to_tokens:
                return tier, tier.up_to_tokens
        last = self._volume.tiers[-1]
        return last, None  # beyond the last bounded tier: keep billing at the top tier

    def _rate(self, tier: VolumeTier, bucket: str, thinking: bool) -> Decimal:
        inp = tier.input if tier.input is not None else Decimal(0)
        if bucket == "uncached_input":
            return inp
        if bucket == "cached_input":
            if tier.cached_input is not None:
                return tier.cached_input
            ratio = self._entry.cached_input_ratio
            return DECIMAL_CONTEXT.multiply(inp, ratio) if ratio is not None else inp
        if bucket == "cache_write":
            if tier.cache_write is not None:
                return tier.cache_write
            ratio = self._entry.cache_write_ratio
            return DECIMAL_CONTEXT.multiply(inp, ratio) if ratio is not None else inp
        if self._entry.kind == "embedding":
            return Decimal(0)
        if thinking and tier.thinking_output is not None:
            return tier.thinking_output
        return tier.output if tier.output is not None else Decimal(0)

    def charge(self, tokens: TokenUsage, request_params: Mapping[str, Any] | None = None) -> Decimal:
        """Add one call to the period's total and return its exact cost."""
        buckets = split_tokens(tokens)
        thinking = thinking_mode(tokens, request_params)
        segments = (
            ("cached_input", buckets.cached_input),
            ("cache_write", buckets.cache_write),
            ("uncached_input", buckets.uncached_input),
            ("output", buckets.output),
        )
        per_million = Decimal(0)
        with self._lock:
            key = self.period_key(self._clock())
            if key != self._period:
                self._period = key
                self._used = 0
            for bucket, count in segments:
                while count > 0:
                    tier, bound = self._tier_at(self._used)
                    take = count if bound is None else min(count, bound - self._used)
                    rate = self._rate(tier, bucket, thinking)
                    part = DECIMAL_CONTEXT.multiply(Decimal(take), rate)
                    per_million = DECIMAL_CONTEXT.add(per_million, part)
                    self._used += take
                    count -= take
        return apply_batch(self._entry, DECIMAL_CONTEXT.divide(per_million, MILLION), request_params)
