# SPDX-License-Identifier: Apache-2.0
"""The suggestions of ``otel-llm-usage insights``, each from the recorded tokens repriced with the
catalog: a cheaper model, fewer calls, a prompt cache, a tier boundary, unpriced models."""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..pricing import PriceCatalog, compute_cost
from ..pricing.compute import price_buckets, rates_for, split_tokens, thinking_mode
from ..usage import UsageRecord

__all__ = ["CHEAPER_MODEL", "Pricer", "Suggestion", "Thresholds", "ToReporting", "WhatIfRow", "cheaper_model",
           "prompt_cache", "reduce_frequency", "tier_crossing", "unpriced", "what_if_rows"]

# Cost → reporting currency; ``None`` when no exchange rate is configured (kept out of every sum).
ToReporting = Callable[[Decimal, str], Decimal | None]

CHEAPER_MODEL: dict[str, str] = {
    "qwen-max": "qwen-plus",
    "qwen-plus": "qwen-turbo",
    "qwq-plus": "qwen-plus",
    "gpt-5": "gpt-5-mini",
    "gpt-5-mini": "gpt-5-nano",
    "gpt-4.1": "gpt-4.1-mini",
    "gpt-4.1-mini": "gpt-4.1-nano",
    "gpt-4o": "gpt-4o-mini",
    "gpt-4-turbo": "gpt-4o",
    "gpt-4": "gpt-4o-mini",
    "o3": "o4-mini",
    "o1": "o4-mini",
    "deepseek-reasoner": "deepseek-chat",
    "glm-4-plus": "glm-4-flash",
}


@dataclass(frozen=True)
class Thresholds:
    """When a suggestion fires. Defaults are conservative; all are documented in the CLI help."""

    short_input_tokens: int = 2000  # median input at or below this is "short"
    short_output_tokens: int = 300
    min_calls: int = 5
    busy_calls_per_minute: float = 1.0
    uniform_cv: float = 0.5  # coefficient of variation of the gaps between calls
    min_rate_calls: int = 30
    low_cache_share: float = 0.2
    min_cache_input_tokens: int = 10_000
    cacheable_prefix_share: float = 0.5  # assumed shareable part of uncached input


@dataclass
class WhatIfRow:
    function: str
    from_model: str
    to_model: str
    calls: int
    current_cost: Decimal
    what_if_cost: Decimal
    unpriced_calls: int = 0

    @property
    def saving(self) -> Decimal:
        return self.current_cost - self.what_if_cost


@dataclass
class Suggestion:
    kind: str  # cheaper_model | reduce_frequency | prompt_cache | tier_crossing | unpriced
    subject: str
    message: str
    saving: Decimal | None
    evidence: dict[str, Any] = field(default_factory=dict)


class Pricer:
    """Reprices records with the catalog, in the reporting currency."""

    def __init__(self, catalog: PriceCatalog, to_reporting: ToReporting) -> None:
        self.catalog = catalog
        self.to_reporting = to_reporting

    def recorded(self, rec: UsageRecord) -> Decimal | None:
        if rec.cost is None or not rec.currency:
            return None
        return self.to_reporting(rec.cost, rec.currency)

    def as_model(self, rec: UsageRecord, model: str) -> Decimal | None:
        entry = self.catalog.lookup(rec.provider, model, rec.server_address)
        if entry is None or not entry.is_priced or not entry.currency:
            return None
        return self.to_reporting(compute_cost(entry, rec.tokens, rec.request_params), entry.currency)


def median(values: Sequence[int]) -> float:
    return float(statistics.median(values)) if values else 0.0


def what_if_rows(records: Iterable[UsageRecord], pricer: Pricer, swaps: Sequence[tuple[str, str]]) -> list[WhatIfRow]:
    rows: dict[tuple[str, str, str], WhatIfRow] = {}
    targets = dict(swaps)
    for rec in records:
        to_model = targets.get(rec.model)
        if to_model is None or rec.status != "ok":
            continue
        current, repriced = pricer.recorded(rec), pricer.as_model(rec, to_model)
        key = (rec.function or "unknown", rec.model, to_model)
        row = rows.setdefault(key, WhatIfRow(key[0], rec.model, to_model, 0, Decimal(0), Decimal(0)))
        row.calls += 1
        if current is None or repriced is None:
            row.unpriced_calls += 1  # kept out of both sums so the saving compares like with like
            continue
        row.current_cost += current
        row.what_if_cost += repriced
    return sorted(rows.values(), key=lambda r: r.saving, reverse=True)


def cheaper_model(by_fn_model: dict[tuple[str, str], list[UsageRecord]], pricer: Pricer, th: Thresholds,
                   cheaper: dict[str, str]) -> list[Suggestion]:
    out = []
    for (function, model), recs in sorted(by_fn_model.items()):
        target = cheaper.get(model)
        if target is None or len(recs) < th.min_calls:
            continue
        med_in = median([r.tokens.input_tokens for r in recs])
        med_out = median([r.tokens.output_tokens for r in recs])
        if med_in > th.short_input_tokens or med_out > th.short_output_tokens:
            continue
        (row,) = what_if_rows(recs, pricer, [(model, target)])
        if row.saving <= 0:
            continue
        out.append(Suggestion(
            "cheaper_model", f"{function} on {model}",
            f"{function}: short calls on {model} (median {med_in:.0f} in / {med_out:.0f} out tokens) — "
            f"{target} would have cost {row.what_if_cost} instead of {row.current_cost}",
            row.saving,
            {"calls": len(recs), "median_input_tokens": med_in, "median_output_tokens": med_out,
             "current_cost": row.current_cost, "what_if_cost": row.what_if_cost, "to_model": target},
        ))
    return out


def reduce_frequency(by_fn: dict[str, list[UsageRecord]], pricer: Pricer, th: Thresholds) -> list[Suggestion]:
    out = []
    for function, recs in sorted(by_fn.items()):
        if len(recs) < th.min_rate_calls:
            continue
        times = sorted(r.timestamp for r in recs)
        span_min = (times[-1] - times[0]) / 60
        if span_min <= 0:
            continue
        rate = (len(times) - 1) / span_min
        gaps = [b - a for a, b in itertools.pairwise(times)]
        mean_gap = statistics.fmean(gaps)
        cv = statistics.pstdev(gaps) / mean_gap if mean_gap > 0 else 0.0
        if rate < th.busy_calls_per_minute or cv > th.uniform_cv:
            continue
        cost = sum((c for r in recs if (c := pricer.recorded(r)) is not None), Decimal(0))
        if cost <= 0:
            continue  # free, unpriced or unconvertible: halving the rate saves nothing we can show
        out.append(Suggestion(
            "reduce_frequency", function,
            f"{function}: {rate:.1f} calls/minute at a steady pace (gap CV {cv:.2f}) — batching or calling "
            f"half as often would save about {cost / 2}",
            cost / 2,
            {"calls": len(recs), "calls_per_minute": round(rate, 3), "gap_cv": round(cv, 3), "cost": cost},
        ))
    return out


def prompt_cache(by_model: dict[tuple[str, str], list[UsageRecord]], pricer: Pricer,
                  th: Thresholds) -> list[Suggestion]:
    out = []
    share_d = Decimal(str(th.cacheable_prefix_share))
    for (provider, model), recs in sorted(by_model.items()):
        entry = pricer.catalog.lookup(provider, model, recs[0].server_address)
        if entry is None or not entry.is_priced or not entry.currency:
            continue
        total_in = sum(r.tokens.input_tokens for r in recs)
        cached = sum(r.tokens.cached_input_tokens for r in recs)
        if total_in < th.min_cache_input_tokens or cached / total_in >= th.low_cache_share:
            continue
        saving = Decimal(0)
        for r in recs:
            rates = rates_for(entry, r.tokens.input_tokens)
            if rates.cached_input >= rates.input:
                continue
            uncached = split_tokens(r.tokens).uncached_input
            saving += share_d * uncached * (rates.input - rates.cached_input) / Decimal(1_000_000)
        if saving <= 0:
            continue
        converted = pricer.to_reporting(saving, entry.currency)
        if converted is None:
            continue  # no exchange rate for this model's currency: no comparable saving to show
        saving = converted
        out.append(Suggestion(
            "prompt_cache", f"{provider}/{model}",
            f"{model}: only {cached / total_in:.0%} of input tokens hit the prompt cache — if "
            f"{th.cacheable_prefix_share:.0%} of the uncached input were a shared prefix, caching it would "
            f"save {saving}",
            saving,
            {"input_tokens": total_in, "cached_input_tokens": cached, "cached_share": round(cached / total_in, 4),
             "assumed_cacheable_prefix_share": th.cacheable_prefix_share},
        ))
    return out


def tier_crossing(by_model: dict[tuple[str, str], list[UsageRecord]], pricer: Pricer) -> list[Suggestion]:
    out = []
    for (provider, model), recs in sorted(by_model.items()):
        entry = pricer.catalog.lookup(provider, model, recs[0].server_address)
        if entry is None or not entry.tiers or entry.tiers[0].max_input_tokens is None or not entry.currency:
            continue
        boundary = entry.tiers[0].max_input_tokens
        crossed = [r for r in recs if r.tokens.input_tokens > boundary]
        if not crossed:
            continue
        first = rates_for(entry, 1)
        extra = Decimal(0)
        for r in crossed:
            actual = compute_cost(entry, r.tokens, r.request_params)
            at_first = price_buckets(first, split_tokens(r.tokens), thinking=thinking_mode(r.tokens, r.request_params))
            extra += actual - at_first
        converted = pricer.to_reporting(extra, entry.currency)
        if converted is None:
            continue
        extra = converted
        out.append(Suggestion(
            "tier_crossing", f"{provider}/{model}",
            f"{model}: {len(crossed)} calls had more than {boundary} input tokens and were billed at a higher "
            f"tier — {extra} more than at the first tier's prices; trimming prompts below {boundary} avoids it",
            extra,
            {"calls_over_boundary": len(crossed), "boundary_input_tokens": boundary, "extra_cost": extra},
        ))
    return out


def unpriced(records: Sequence[UsageRecord]) -> list[Suggestion]:
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        if r.cost is None and r.status == "ok":
            c = counts[(r.provider, r.model)]
            c[0] += 1
            c[1] += r.tokens.total_tokens
    return [Suggestion("unpriced", f"{p}/{m}",
                       f"{m} ({p}) has no known price: {n} calls, {tok} tokens are missing from every cost "
                       "figure — add it under pricing.models in the config", None,
                       {"calls": n, "tokens": tok})
            for (p, m), (n, tok) in sorted(counts.items())]
