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
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from ..pricing import PriceCatalog
from ..usage import UsageRecord
from .reports import month_end_forecast
from .suggestions import (
    CHEAPER_MODEL,
    Pricer,
    Suggestion,
    Thresholds,
    ToReporting,
    WhatIfRow,
    cheaper_model,
    prompt_cache,
    reduce_frequency,
    tier_crossing,
    unpriced,
    what_if_rows,
)

__all__ = ["CHEAPER_MODEL", "Forecast", "Insights", "Suggestion", "WhatIfRow", "compute_insights", "forecast"]


# The usual next-cheaper model of the same family; overridable per call (``cheaper=``).
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
    pricer = Pricer(catalog, to_reporting)
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
        *cheaper_model(by_fn_model, pricer, th, {**CHEAPER_MODEL, **(cheaper or {})}),
        *reduce_frequency(by_fn, pricer, th),
        *prompt_cache(by_model, pricer, th),
        *tier_crossing(by_model, pricer),
        *unpriced(records),
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
