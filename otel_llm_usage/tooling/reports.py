# SPDX-License-Identifier: Apache-2.0
"""Report figures over a list of :class:`~otel_llm_usage.usage.UsageRecord`: pure, no I/O.

    convert = CostConverter("CNY", {"USD": Decimal("7.1")})
    report = build_report(records, convert=convert, tz=ZoneInfo("Asia/Shanghai"), now=time.time(),
                          since=None, until=None)
    report["totals"]["cost"]          # Decimal, in CNY
    summarize(records, convert)       # one Totals: calls, tokens, cost, unpriced

Conventions every figure follows:

* Costs are in the reporting currency. A record whose cost is ``None`` is *unpriced*: it is
  counted in ``unpriced_requests``/``unpriced_tokens`` and never as a cost of 0. A priced record
  whose currency has no exchange rate is kept apart in ``unconverted`` (per currency).
* Days and hours are local to ``tz``; day and hour series are zero-filled.
* "Complete" days are those that ended before the report's reference instant (``min(now, until)``):
  trend, forecast and day-over-day use complete days only, so a half-finished today never reads
  as a drop.
* Month-end forecast = cost of the month's complete days + average daily cost of the last
  :data:`FORECAST_DAYS` complete days (fewer if the ledger is younger) x days left in the month,
  today included.
* Anomalies: a complete day whose cost lies more than :data:`ANOMALY_SIGMA` population standard
  deviations from the mean of the trailing 7 days (at least 3 of them), and a complete hour more
  than 2σ *above* the mean of the trailing 168 hours (at least 24). A flat history (σ = 0) has
  no z-score and flags nothing. When nothing in the report is priced, tokens are used.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any

from ..ledger.totals import Converter, Totals, breakdown, summarize
from ..pricing.stage import CostConverter
from ..usage import UsageRecord

__all__ = [
    "ANOMALY_SIGMA",
    "DIMENSIONS",
    "FORECAST_DAYS",
    "anomalies",
    "build_report",
    "day_start",
    "month_end_forecast",
    "sparkline",
]

DIMENSIONS = ("provider", "model", "function", "user", "anchor", "session")
FORECAST_DAYS = 7
ANOMALY_SIGMA = 2.0
TREND_DAYS = 7
DAY_WINDOW = 7
HOUR_WINDOW = 7 * 24
NANO = Decimal("1e-9")
_SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float]) -> str:
    """Eight-level unicode bars scaled from the smallest to the largest value (the shape, not the level)."""
    lo, hi = min(values, default=0.0), max(values, default=0.0)
    if hi == lo:
        return (_SPARKS[0] if hi <= 0 else _SPARKS[3]) * len(values)
    top = len(_SPARKS) - 1
    return "".join(_SPARKS[round((v - lo) / (hi - lo) * top)] for v in values)


def day_start(day: date, tz: tzinfo) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()


def _day(ts: float, tz: tzinfo) -> date:
    return datetime.fromtimestamp(ts, tz).date()


def _hour(ts: float, tz: tzinfo) -> datetime:
    return datetime.fromtimestamp(ts, tz).replace(minute=0, second=0, microsecond=0)


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def anomalies(series: Sequence[tuple[Any, float]], window: int, *, min_history: int = 3,
              evaluate_from: int = 0, sigma: float = ANOMALY_SIGMA, spikes_only: bool = False
              ) -> list[dict[str, Any]]:
    """Points of ``series`` (label, value) beyond ``sigma`` σ of their trailing ``window`` points
    (only those above the mean with ``spikes_only``)."""
    out = []
    for i in range(max(evaluate_from, min_history), len(series)):
        history = [v for _, v in series[max(0, i - window):i]]
        if len(history) < min_history:
            continue
        mean, sd = statistics.fmean(history), statistics.pstdev(history)
        label, value = series[i]
        deviation = value - mean if spikes_only else abs(value - mean)
        if sd > 0 and deviation > sigma * sd:
            out.append({"at": label, "value": value, "mean": mean, "stdev": sd,
                        "z": (value - mean) / sd, "direction": "above" if value > mean else "below"})
    return out


@dataclass
class _Series:
    """Per-day and per-hour cost/token sums of every loaded record (not only the period's)."""

    tz: tzinfo
    convert: Converter
    days: dict[date, Totals] = field(default_factory=lambda: defaultdict(Totals))
    hours: dict[datetime, Totals] = field(default_factory=lambda: defaultdict(Totals))

    def add(self, rec: UsageRecord) -> None:
        self.days[_day(rec.timestamp, self.tz)].add(rec, self.convert)
        self.hours[_hour(rec.timestamp, self.tz)].add(rec, self.convert)

    def day_cost(self, day: date) -> Decimal:
        t = self.days.get(day)
        return t.cost if t is not None else Decimal(0)


def month_end_forecast(day_cost: Callable[[date], Decimal], first_day: date | None,
                       current_day: date) -> dict[str, Any]:
    """Month-end forecast from the recent daily average (module docstring has the formula).

    Shared with :mod:`otel_llm_usage.tooling.insights`, which adds a trend fit and the budget-exhaustion day.
    """
    month_start = current_day.replace(day=1)
    next_month = (month_start + timedelta(days=32)).replace(day=1)
    days_in_month = (next_month - month_start).days
    days_left = days_in_month - (current_day.day - 1)
    mtd = sum((day_cost(d) for d in _days(month_start, current_day - timedelta(days=1))), Decimal(0))
    recent_first = current_day - timedelta(days=FORECAST_DAYS)
    if first_day is not None and first_day > recent_first:
        recent_first = first_day
    has_history = first_day is not None and recent_first < current_day
    recent = _days(recent_first, current_day - timedelta(days=1)) if has_history else []
    result: dict[str, Any] = {"month": month_start.strftime("%Y-%m"), "month_to_date": mtd,
                              "complete_days": current_day.day - 1, "days_left": days_left,
                              "average_days": len(recent), "daily_average": None, "forecast": None}
    if recent:
        # Nano-units, like budget counters: a division must not print 28 digits of noise.
        avg = (sum((day_cost(d) for d in recent), Decimal(0)) / len(recent)).quantize(NANO)
        result.update(daily_average=avg, forecast=mtd + avg * days_left)
    return result


def _day_over_day(series: _Series, last_complete: date) -> dict[str, Any]:
    prev = last_complete - timedelta(days=1)
    a, b = series.day_cost(prev), series.day_cost(last_complete)
    return {"day": last_complete.isoformat(), "previous_day": prev.isoformat(), "cost": b, "previous_cost": a,
            "change": b - a, "change_pct": float((b - a) / a * 100) if a else None}


def _metric_value(t: Totals | None, metric: str) -> float:
    if t is None:
        return 0.0
    return float(t.cost) if metric == "cost" else float(t.total_tokens)


def _anomaly_section(series: _Series, metric: str, period: tuple[float, float], end: float) -> dict[str, Any]:
    """Complete days and hours inside the period, each against its trailing window (from all records)."""
    tz = series.tz
    if not series.days:
        return {"metric": metric, "days": [], "hours": []}
    first_day = min(series.days)
    last_day = _day(end, tz) - timedelta(days=1)
    day_points = [(d, _metric_value(series.days.get(d), metric)) for d in _days(first_day, last_day)]
    start_idx = next((i for i, (d, _) in enumerate(day_points) if day_start(d, tz) >= period[0]), len(day_points))
    days = anomalies(day_points, DAY_WINDOW, evaluate_from=start_idx)
    first_hour = min(series.hours)
    hour_points: list[tuple[datetime, float]] = []
    h = first_hour
    while h.timestamp() + 3600 <= end:
        hour_points.append((h, _metric_value(series.hours.get(h), metric)))
        h = datetime.fromtimestamp(h.timestamp() + 3600, tz)  # real hours: DST days have 23 or 25
    start_idx = next((i for i, (x, _) in enumerate(hour_points) if x.timestamp() >= period[0]), len(hour_points))
    # Hours: a week of trailing hours, so quiet nights do not make every busy hour an outlier, and
    # spikes only (a quiet hour is normal, not news).
    hours = anomalies(hour_points, HOUR_WINDOW, min_history=24, evaluate_from=start_idx, spikes_only=True)
    for a in days:
        a["at"] = a["at"].isoformat()
    for a in hours:
        a["at"] = a["at"].isoformat(timespec="minutes")
    return {"metric": metric, "days": days, "hours": hours}


def _hourly_peak(period_records: Sequence[UsageRecord], convert: Converter, tz: tzinfo) -> dict[str, Any]:
    by_hour_of_day: dict[int, Totals] = defaultdict(Totals)
    by_clock_hour: dict[datetime, Totals] = defaultdict(Totals)
    for rec in period_records:
        local = _hour(rec.timestamp, tz)
        by_hour_of_day[local.hour].add(rec, convert)
        by_clock_hour[local].add(rec, convert)
    if not by_clock_hour:
        return {"hour_of_day": None, "busiest_hour": None}
    hod, hod_t = max(by_hour_of_day.items(), key=lambda kv: (kv[1].requests, kv[1].cost, -kv[0]))
    busiest, b_t = max(by_clock_hour.items(), key=lambda kv: (kv[1].requests, kv[1].cost, -kv[0].timestamp()))
    return {"hour_of_day": {"hour": hod, "requests": hod_t.requests, "cost": hod_t.cost},
            "busiest_hour": {"start": busiest.isoformat(timespec="minutes"), "requests": b_t.requests,
                             "cost": b_t.cost}}


def _slow(period_records: Sequence[UsageRecord], threshold: float, show: int) -> dict[str, Any]:
    slow = sorted((r for r in period_records if r.duration_s >= threshold), key=lambda r: -r.duration_s)
    return {"threshold_s": threshold, "count": len(slow), "calls": [
        {"time": r.timestamp, "provider": r.provider, "model": r.model, "function": r.function, "user": r.user,
         "duration_s": r.duration_s, "status": r.status} for r in slow[:show]]}


def _calendar(series: Totals | None, label: str) -> dict[str, Any]:
    return {"period": label, **(series or Totals()).as_dict()}


def build_report(
    records: Iterable[UsageRecord],
    *,
    convert: CostConverter,
    tz: tzinfo,
    now: float,
    since: float | None = None,
    until: float | None = None,
    top: int = 10,
    slow_seconds: float = 10.0,
) -> dict[str, Any]:
    """Every report figure. ``records`` may reach further back than ``since``: the trend, forecast and
    anomaly windows use all of them, the period figures only those in ``[since, until)``."""
    records = sorted(records, key=lambda r: r.timestamp)
    series = _Series(tz, convert)
    period_records: list[UsageRecord] = []
    for rec in records:
        series.add(rec)
        if (since is None or rec.timestamp >= since) and (until is None or rec.timestamp < until):
            period_records.append(rec)
    end = min(now, until) if until is not None else now
    # The day containing the reference instant is "current" (at exactly 00:00 the previous day has
    # just completed, which is what _day gives too).
    current_day = _day(end, tz)
    last_complete = current_day - timedelta(days=1)
    first_day = min(series.days) if series.days else None

    totals = summarize(period_records, convert)
    metric = "cost" if totals.cost > 0 or not totals.total_tokens else "tokens"
    period_start = since if since is not None else (records[0].timestamp if records else end)
    p_first = _day(period_start, tz) if period_records or since is not None else None
    p_last = _day((until if until is not None else max(end, totals.last or end)) - 1e-6, tz)
    period_days: dict[date, Totals] = defaultdict(Totals)
    months: dict[str, Totals] = defaultdict(Totals)
    for rec in period_records:
        period_days[_day(rec.timestamp, tz)].add(rec, convert)
        months[_day(rec.timestamp, tz).strftime("%Y-%m")].add(rec, convert)
    daily = [_calendar(period_days.get(d), d.isoformat()) for d in (_days(p_first, p_last) if p_first else [])]
    trend_days = _days(last_complete - timedelta(days=TREND_DAYS - 1), last_complete)
    trend_values = [series.day_cost(d) for d in trend_days]
    by = {dim: [{"key": k, **t.as_dict()} for k, t in breakdown(period_records, dim, convert)]
          for dim in DIMENSIONS}
    return {
        "currency": convert.currency,
        "timezone": str(tz),
        "since": since, "until": until, "now": now,
        "totals": totals.as_dict(),
        "by": by,
        "top": {dim: by[dim][:top] for dim in ("user", "anchor", "function")},
        "daily": daily,
        "monthly": [_calendar(months[m], m) for m in sorted(months)],
        "trend": {"days": [d.isoformat() for d in trend_days], "cost": trend_values,
                  "sparkline": sparkline([float(v) for v in trend_values])},
        "forecast": month_end_forecast(series.day_cost, first_day, current_day),
        "day_over_day": _day_over_day(series, last_complete),
        "hourly_peak": _hourly_peak(period_records, convert, tz),
        "slow_calls": _slow(period_records, slow_seconds, top),
        "anomalies": _anomaly_section(series, metric, (period_start, end), end),
    }

