# SPDX-License-Identifier: Apache-2.0
"""Report figures (``otel_llm_usage.tooling.reports``) over a hand-built set of records with known answers.

The data set (UTC, "now" = 2025-06-11 12:00): one call a day at 10:00 from June 1 to June 10 costing
1, 2, 1, 2, 1, 2, 1, 10, 2, 1 CNY (June 6 is billed as 0.25 USD at 8 CNY/USD; June 8 is carol's
10 CNY outlier), one unpriced call on June 9 at 11:00, and one 3 CNY call today (June 11, 09:00).
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from otel_llm_usage.ledger.totals import breakdown, summarize
from otel_llm_usage.pricing.stage import CostConverter
from otel_llm_usage.tooling.reports import anomalies, build_report, sparkline
from otel_llm_usage.usage import TokenUsage, UsageRecord

UTC = timezone.utc
NOW = datetime(2025, 6, 11, 12, 0, tzinfo=UTC).timestamp()
DAY_COSTS = [1, 2, 1, 2, 1, 2, 1, 10, 2, 1]  # June 1..10, CNY
RATES = {"USD": Decimal(8)}


def ts(day: int, hour: int = 10, month: int = 6) -> float:
    return datetime(2025, month, day, hour, 0, tzinfo=UTC).timestamp()


def rec(when: float, cost: Decimal | None, *, currency: str | None = "CNY", user: str = "alice",
        model: str = "qwen-plus", anchor: str = "anchor-lin", status: str = "ok", duration: float = 1.0,
        provider: str = "dashscope") -> UsageRecord:
    return UsageRecord(provider=provider, operation="chat", request_model=model,
                       tokens=TokenUsage(input_tokens=100, output_tokens=50), function="live-reply", user=user,
                       session="s1", anchor=anchor, status=status, duration_s=duration, timestamp=when,
                       cost=cost, currency=currency if cost is not None else None, priced=True)


def known_records() -> list[UsageRecord]:
    out = []
    for day, cost in enumerate(DAY_COSTS, start=1):
        if day == 6:
            out.append(rec(ts(day), Decimal("0.25"), currency="USD", model="gpt-4o", provider="openai"))
        elif day == 8:
            out.append(rec(ts(day), Decimal(cost), user="carol", anchor="anchor-zhao", duration=15.0))
        else:
            out.append(rec(ts(day), Decimal(cost), status="error" if day == 2 else "ok"))
    out.append(rec(ts(9, 11), None, user="bob", model="mystery", provider="openai"))
    out.append(rec(ts(11, 9), Decimal(3)))
    return out


def june_report(**kwargs: object) -> dict:
    args = {"convert": CostConverter("CNY", RATES), "tz": UTC, "now": NOW, "since": ts(1, 0), "until": ts(11, 0)}
    args.update(kwargs)
    return build_report(known_records(), **args)  # type: ignore[arg-type]


def test_totals_count_unpriced_apart_and_convert_currencies() -> None:
    t = june_report()["totals"]
    assert t["requests"] == 11 and t["errors"] == 1 and t["ok"] == 10
    assert t["cost"] == Decimal(23)  # sum(DAY_COSTS); the USD call is 0.25 x 8 = 2 CNY
    assert t["unpriced_requests"] == 1 and t["unpriced_tokens"] == 150
    assert t["success_rate"] == pytest.approx(10 / 11)
    assert t["total_tokens"] == 11 * 150


def test_unconvertible_currency_is_kept_apart_not_added() -> None:
    t = june_report(convert=CostConverter("CNY", {}))["totals"]
    assert t["cost"] == Decimal(21)
    assert t["unconverted"] == {"USD": Decimal("0.25")}


def test_breakdowns_rank_by_cost() -> None:
    r = june_report(top=2)
    users = [(row["key"], row["cost"], row["unpriced_requests"]) for row in r["by"]["user"]]
    assert users == [("alice", Decimal(13), 0), ("carol", Decimal(10), 0), ("bob", Decimal(0), 1)]
    assert [row["key"] for row in r["top"]["user"]] == ["alice", "carol"]
    assert [row["key"] for row in r["top"]["anchor"]] == ["anchor-lin", "anchor-zhao"]
    models = {row["key"]: row["cost"] for row in r["by"]["model"]}
    assert models == {"qwen-plus": Decimal(21), "gpt-4o": Decimal(2), "mystery": Decimal(0)}


def test_daily_monthly_and_trend() -> None:
    r = june_report()
    assert [d["period"] for d in r["daily"]] == [f"2025-06-{d:02d}" for d in range(1, 11)]
    assert [d["cost"] for d in r["daily"]] == [Decimal(c) for c in DAY_COSTS]
    assert [(m["period"], m["cost"]) for m in r["monthly"]] == [("2025-06", Decimal(23))]
    assert r["trend"]["days"] == [f"2025-06-{d:02d}" for d in range(4, 11)]
    assert r["trend"]["cost"] == [Decimal(c) for c in DAY_COSTS[3:]]
    assert r["trend"]["sparkline"] == "▂▁▂▁█▂▁"  # min-max scaled: 1 → ▁, 2 → ▂, 10 → █


def test_forecast_arithmetic() -> None:
    fc = june_report()["forecast"]
    # Month to date = complete June days 1..10 = 23. Average of the last 7 complete days (June 4..10)
    # = (2+1+2+1+10+2+1)/7 = 19/7 = 2.714285714 (nano-units). Days left, today included = 30 - 10 = 20.
    # Forecast = 23 + 2.714285714 x 20 = 77.28571428.
    assert fc["month_to_date"] == Decimal(23)
    assert fc["daily_average"] == Decimal("2.714285714")
    assert fc["days_left"] == 20 and fc["average_days"] == 7
    assert fc["forecast"] == Decimal("77.28571428")


def test_forecast_averages_only_days_the_ledger_existed() -> None:
    records = [rec(ts(9), Decimal(4)), rec(ts(10), Decimal(2))]
    fc = build_report(records, convert=CostConverter("CNY"), tz=UTC, now=NOW)["forecast"]
    # Two complete days of history: average (4 + 2) / 2 = 3; 6 so far + 3 x 20 days left = 66.
    assert fc["average_days"] == 2 and fc["forecast"] == Decimal(66)


def test_day_over_day() -> None:
    dod = june_report()["day_over_day"]
    assert (dod["day"], dod["cost"], dod["previous_cost"]) == ("2025-06-10", Decimal(1), Decimal(2))
    assert dod["change"] == Decimal(-1) and dod["change_pct"] == pytest.approx(-50.0)


def test_day_anomaly_beyond_two_sigma() -> None:
    an = june_report()["anomalies"]
    # June 8: 10 against the trailing [1,2,1,2,1,2,1] (mean 10/7, σ ≈ 0.495): z ≈ 17.3.
    assert [a["at"] for a in an["days"]] == ["2025-06-08"]
    assert an["days"][0]["z"] == pytest.approx((10 - 10 / 7) / 0.4948716593053935)
    assert an["metric"] == "cost"


def test_anomalies_flat_history_and_minimum_history() -> None:
    assert anomalies([(i, 1.0) for i in range(8)] + [(8, 50.0)], 7) == []  # σ = 0: no z-score
    assert anomalies([(0, 1.0), (1, 2.0), (2, 100.0)], 7) == []  # fewer than 3 points of history
    spikes = anomalies([(i, float(i % 2)) for i in range(10)] + [(10, -5.0)], 7, spikes_only=True)
    assert spikes == []


def test_hourly_peak_and_slow_calls() -> None:
    r = june_report()
    assert r["hourly_peak"]["hour_of_day"]["hour"] == 10
    assert r["hourly_peak"]["hour_of_day"]["requests"] == 10
    assert r["slow_calls"]["count"] == 1 and r["slow_calls"]["calls"][0]["user"] == "carol"
    assert june_report(slow_seconds=0.5)["slow_calls"]["count"] == 11


def test_days_follow_the_report_time_zone() -> None:
    # 10:00 UTC is 18:00 in Shanghai (same day), but 23:30 UTC on June 1 is June 2 in Shanghai.
    records = [rec(datetime(2025, 6, 1, 23, 30, tzinfo=UTC).timestamp(), Decimal(1))]
    days = build_report(records, convert=CostConverter("CNY"), tz=ZoneInfo("Asia/Shanghai"), now=NOW)["daily"]
    assert [d["period"] for d in days if d["requests"]] == ["2025-06-02"]


def test_summarize_and_breakdown_empty() -> None:
    assert summarize([], CostConverter("CNY")).requests == 0
    assert breakdown([], "user", CostConverter("CNY")) == []
    r = build_report([], convert=CostConverter("CNY"), tz=UTC, now=NOW)
    assert r["totals"]["requests"] == 0 and r["forecast"]["forecast"] is None and r["daily"] == []


def test_sparkline() -> None:
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([3, 3]) == "▄▄"
    assert sparkline([1, 8]) == "▁█"
    assert sparkline([0, 7, 14]) == "▁▅█"
    assert sparkline([]) == ""
