# SPDX-License-Identifier: Apache-2.0
"""Order statistics over timing samples (nearest-rank, no interpolation, no numpy)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["median", "percentile", "summarize"]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` in [0, 100] of a non-empty sample."""
    if not values:
        raise ValueError("percentile of an empty sample")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median of an empty sample")
    mid = n // 2
    return float(ordered[mid]) if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def summarize(ns: Sequence[int]) -> dict[str, float]:
    """Median and p95 in microseconds, plus the sample size."""
    return {"n": len(ns), "median_us": median(ns) / 1e3, "p95_us": percentile(ns, 95) / 1e3}
