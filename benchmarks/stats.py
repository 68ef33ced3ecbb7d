# SPDX-License-Identifier: Apache-2.0
"""Order statistics over timing samples (nearest-rank, no interpolation, no numpy), and paired ratios."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["RatioEstimate", "median", "paired_added_us", "paired_ratio", "percentile", "relative_overheads",
           "summarize"]


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


# Paired estimates from per-round medians. The machine's speed drifts by tens of percent over
# seconds, which moves a ~1 ms plain median by more than the ~0.25 ms overheads being compared,
# so a difference of medians pooled over the whole run is dominated by drift. Within one
# interleaved round every variant sees the same speed: dividing by that round's plain median
# cancels a multiplicative drift, and a round is the unit a bootstrap may resample.

#: bootstrap resamples and seed: fixed, so one result always renders to the same report
RESAMPLES = 1000
SEED = 20240601


class RatioEstimate(NamedTuple):
    """A ratio of added latencies and its bootstrap interval (``ci_high`` may be ``inf``)."""

    ratio: float
    ci_low: float
    ci_high: float


def _aligned(*series: Sequence[float] | None) -> bool:
    lengths = {len(s) if s is not None else 0 for s in series}
    return len(lengths) == 1 and 0 not in lengths


def relative_overheads(variant: Sequence[float], plain: Sequence[float]) -> list[float] | None:
    """``variant[i] / plain[i] − 1`` per round; ``None`` unless both cover the same (non-zero) rounds."""
    if not _aligned(variant, plain) or any(p <= 0 for p in plain):
        return None
    return [v / p - 1 for v, p in zip(variant, plain, strict=True)]


def paired_added_us(variant: Sequence[float] | None, plain: Sequence[float] | None) -> float | None:
    """Added latency (µs): median relative overhead × median plain round median."""
    if variant is None or plain is None:
        return None
    rel = relative_overheads(variant, plain)
    return None if rel is None else median(rel) * median(plain)


def paired_ratio(variant: Sequence[float] | None, base: Sequence[float] | None, plain: Sequence[float] | None,
                 level: float = 0.90, resamples: int = RESAMPLES, seed: int = SEED) -> RatioEstimate | None:
    """Median relative overhead of ``variant`` over that of ``base``, with a percentile bootstrap over rounds.

    ``None`` when a series is missing or misaligned, or ``base`` added nothing measurable (≤ 0)."""
    if variant is None or base is None or plain is None:
        return None
    rel_v, rel_b = relative_overheads(variant, plain), relative_overheads(base, plain)
    if rel_v is None or rel_b is None or median(rel_b) <= 0:
        return None
    rng = random.Random(seed)
    rounds = range(len(rel_b))
    boot: list[float] = []
    for _ in range(resamples):
        idx = rng.choices(rounds, k=len(rel_b))
        b = median([rel_b[i] for i in idx])
        # A resample where the base added nothing leaves the ratio unbounded: counting it as
        # infinite widens the interval instead of hiding that the base is within noise.
        boot.append(median([rel_v[i] for i in idx]) / b if b > 0 else math.inf)
    tail = round((1 - level) / 2 * 100, 9)  # (1 - 0.9) / 2 * 100 is 4.999…, one rank off at the top
    return RatioEstimate(median(rel_v) / median(rel_b), percentile(boot, tail), percentile(boot, 100 - tail))
