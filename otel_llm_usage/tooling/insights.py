# SPDX-License-Identifier: Apache-2.0
"""Cost insights computed from the ledger: what-if repricing, suggestions with savings, forecast.

Pure functions over :class:`~otel_llm_usage.usage.UsageRecord` lists and the
price catalog — no I/O, so every figure is reproducible in a test::

    insights = compute_insights(records, catalog, to_reporting, currency="CNY",
                                what_if=[("qwen-max", "qwen-plus")], now=time.time(), tz="Asia/Shanghai")

Every saving is computed from the recorded tokens repriced with the catalog
(tiers, cache prices, currency), never a hand-written percentage. Where a
suggestion needs an assumption (how much of a prompt a cache could share), the
assumption is part of its evidence.
"""

from __future__ import annotations

import calendar
import itertools
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from ..pricing import PriceCatalog, compute_cost
from ..pricing.compute import price_buckets, rates_for, split_tokens, thinking_mode
from ..usage import UsageRecord
from .reports import month_end_forecast

__all__ = ["CHEAPER_MODEL", "Forecast", "Insights", "Suggestion", "WhatIfRow", "compute_insights", "forecast"]

# Cost → reporting currency; ``None`` when no exchange rate is configured (kept out of every sum).
ToReporting = Callable[[Decimal, str], Decimal | None]

# The usual next-cheaper model of the same family; overridable per call (``cheaper=``).
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


@dataclass
class Forecast:
    month: str
    month_to_date: Decimal  # complete days before today
    today_so_far: Decimal
    daily_average: Decimal | None  # mean of the last (up to) 7 complete days
    month_end_by_average: Decimal | None
    month_end_by_trend: Decimal | None
    trend_slope_per_day: Decimal | None
    budget: Decimal | None = None
    budget_exhausted_on: str | None = None  # ISO date, by the average projection


@dataclass
class Insights:
    currency: str
    records: int
    total_cost: Decimal
    daily_cost_by_model: dict[str, dict[str, Decimal]]
    cost_by_function: dict[str, Decimal]
    what_if: list[WhatIfRow]
    suggestions: list[Suggestion]
    forecast: Forecast | None

    def to_json(self) -> dict[str, Any]:
        def conv(value: Any) -> Any:
            if isinstance(value, Decimal):
                return str(value)
            if isinstance(value, dict):
                return {k: conv(v) for k, v in value.items()}
            if isinstance(value, list):
                return [conv(v) for v in value]
            return value

        out: dict[str, Any] = conv(asdict(self))
        for row, data in zip(self.what_if, out["what_if"], strict=True):
            data["saving"] = str(row.saving)
        return out


class _Pricer:
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


def _median(values: Sequence[int]) -> float:
    return float(statistics.median(values)) if values else 0.0


def what_if_rows(records: Iterable[UsageRecord], pricer: _Pricer, swaps: Sequence[tuple[str, str]]) -> list[WhatIfRow]:
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


def _cheaper_model(by_fn_model: dict[tuple[str, str], list[UsageRecord]], pricer: _Pricer, th: Thresholds,
                   cheaper: dict[str, str]) -> list[Suggestion]:
    out = []
    for (function, model), recs in sorted(by_fn_model.items()):
        target = cheaper.get(model)
        if target is None or len(recs) < th.min_calls:
            continue
        med_in = _median([r.tokens.input_tokens for r in recs])
        med_out = _median([r.tokens.output_tokens for r in recs])
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


def _reduce_frequency(by_fn: dict[str, list[UsageRecord]], pricer: _Pricer, th: Thresholds) -> list[Suggestion]:
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


def _prompt_cache(by_model: dict[tuple[str, str], list[UsageRecord]], pricer: _Pricer,
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


def _tier_crossing(by_model: dict[tuple[str, str], list[UsageRecord]], pricer: _Pricer) -> list[Suggestion]:
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


def _unpriced(records: Sequence[UsageRecord]) -> list[Suggestion]:
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


def _local_day(ts: float, tz: ZoneInfo) -> date:
    return datetime.fromtimestamp(ts, tz).date()


def forecast(daily: dict[date, Decimal], today: date, *, budget: Decimal | None = None) -> Forecast:
    """Month-end spend from the recent daily average (the report's own forecast) and from a
    least-squares trend, and the day a monthly budget runs out on the average projection.

    Both project *today through month end* (today's partial spend is replaced by the
    projection); ``month_to_date`` is the complete days before today.
    """
    by_average = month_end_forecast(lambda d: daily.get(d, Decimal(0)), min(daily, default=None), today)
    mtd: Decimal = by_average["month_to_date"]
    avg: Decimal | None = by_average["daily_average"]
    days_in_month = calendar.monthrange(today.year, today.month)[1]
    complete = [today.replace(day=day) for day in range(1, today.day)]
    by_trend = slope = None
    if len(complete) >= 3:
        xs = [d.day for d in complete]
        ys = [daily.get(d, Decimal(0)) for d in complete]
        n = Decimal(len(xs))
        mx = sum((Decimal(x) for x in xs), Decimal(0)) / n
        my = sum(ys, Decimal(0)) / n
        sxx = sum(((Decimal(x) - mx) ** 2 for x in xs), Decimal(0))
        slope = sum(((Decimal(x) - mx) * (y - my) for x, y in zip(xs, ys, strict=True)), Decimal(0)) / sxx
        intercept = my - slope * mx
        by_trend = mtd + sum((max(Decimal(0), intercept + slope * day)
                              for day in range(today.day, days_in_month + 1)), Decimal(0))
    exhausted = None
    if budget is not None and mtd >= budget:  # already spent: the complete day that crossed it
        running = Decimal(0)
        for d in complete:
            running += daily.get(d, Decimal(0))
            if running >= budget:
                exhausted = d.isoformat()
                break
    elif budget is not None and avg is not None:
        running = mtd
        for i in range(by_average["days_left"]):
            running += avg
            if running >= budget:
                exhausted = (today + timedelta(days=i)).isoformat()
                break
    return Forecast(f"{today:%Y-%m}", mtd, daily.get(today, Decimal(0)), _q(avg), _q(by_average["forecast"]),
                    _q(by_trend), _q(slope), budget, exhausted)


def _q(value: Decimal | None) -> Decimal | None:
    """Projections are estimates: a nano-unit is finer than any bill, and repeating decimals are noise."""
    if value is None:
        return None
    value = value.quantize(Decimal("1e-9"))
    # normalize() alone would print whole numbers as 4E+2.
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value.normalize()


def compute_insights(
    records: Sequence[UsageRecord],
    catalog: PriceCatalog,
    to_reporting: ToReporting,
    *,
    currency: str,
    now: float,
    tz: str = "UTC",
    what_if: Sequence[tuple[str, str]] = (),
    cheaper: dict[str, str] | None = None,
    monthly_budget: Decimal | None = None,
    thresholds: Thresholds | None = None,
) -> Insights:
    th = thresholds or Thresholds()
    zone = ZoneInfo(tz)
    pricer = _Pricer(catalog, to_reporting)
    ok = [r for r in records if r.status == "ok"]
    by_fn_model: dict[tuple[str, str], list[UsageRecord]] = defaultdict(list)
    by_fn: dict[str, list[UsageRecord]] = defaultdict(list)
    by_model: dict[tuple[str, str], list[UsageRecord]] = defaultdict(list)
    daily_by_model: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    by_function_cost: dict[str, Decimal] = defaultdict(Decimal)
    daily: dict[date, Decimal] = defaultdict(Decimal)
    total = Decimal(0)
    for r in ok:
        fn = r.function or "unknown"
        by_fn_model[(fn, r.model)].append(r)
        by_fn[fn].append(r)
        by_model[(r.provider, r.model)].append(r)
    for r in records:
        cost = pricer.recorded(r)
        if cost is None:
            continue
        day = _local_day(r.timestamp, zone)
        daily[day] += cost
        daily_by_model[day.isoformat()][r.model] += cost
        by_function_cost[r.function or "unknown"] += cost
        total += cost
    suggestions = [
        *_cheaper_model(by_fn_model, pricer, th, {**CHEAPER_MODEL, **(cheaper or {})}),
        *_reduce_frequency(by_fn, pricer, th),
        *_prompt_cache(by_model, pricer, th),
        *_tier_crossing(by_model, pricer),
        *_unpriced(records),
    ]
    suggestions.sort(key=lambda s: s.saving if s.saving is not None else Decimal(-1), reverse=True)
    return Insights(
        currency=currency,
        records=len(records),
        total_cost=total,
        daily_cost_by_model={d: dict(m) for d, m in sorted(daily_by_model.items())},
        cost_by_function=dict(sorted(by_function_cost.items(), key=lambda kv: -kv[1])),
        what_if=what_if_rows(ok, pricer, what_if),
        suggestions=suggestions,
        forecast=forecast(dict(daily), _local_day(now, zone), budget=monthly_budget) if records else None,
    )
