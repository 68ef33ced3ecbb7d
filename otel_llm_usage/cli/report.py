# SPDX-License-Identifier: Apache-2.0
"""``otel-llm-usage report``: cost, calls and tokens over a period, from the ledger or from Prometheus.

    otel-llm-usage report --since 7d --ledger sqlite:///var/lib/app/llm-usage.db
    otel-llm-usage report --month --tz Asia/Shanghai --format json
    otel-llm-usage report --since 2024-06-01 --until 2024-06-30 --output june.html
    otel-llm-usage report --prometheus http://prometheus:9090

Ledger figures come from :func:`otel_llm_usage.tooling.reports.build_report`; Prometheus figures from
PromQL over ``/api/v1/query`` (:func:`prometheus_report`). Without ``--since`` the Prometheus
figures are the counters' current values (exact, since the exporting processes started); with
it they are ``increase()`` over the period, which Prometheus extrapolates.
"""

from __future__ import annotations

import html
import json
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from datetime import datetime, tzinfo
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..ledger import RecordQuery
from ..pricing.stage import CostConverter
from ..tooling.reports import DIMENSIONS, FORECAST_DAYS, TREND_DAYS, build_report, day_start
from . import _common as C

__all__ = ["report"]

_ROW_COLUMNS = ("section", "key", "requests", "ok", "errors", "blocked", "input_tokens", "output_tokens",
                "cached_input_tokens", "reasoning_tokens", "total_tokens", "cost", "unpriced_requests",
                "unpriced_tokens")


def report(
    since: C.SinceOption = None,
    until: C.UntilOption = None,
    today: Annotated[bool, typer.Option("--today", help="Only today (local to --tz).")] = False,
    month: Annotated[bool, typer.Option("--month", help="Only this calendar month.")] = False,
    top: Annotated[int, typer.Option("--top", min=1, help="How many users/anchors/functions to rank.")] = 10,
    slow_seconds: Annotated[float, typer.Option("--slow-seconds", min=0,
                                                help="Calls at least this long count as slow.")] = 10.0,
    prometheus: Annotated[str | None, typer.Option(
        "--prometheus", help="Compute the headline figures from this Prometheus server, not the ledger.")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Also write the report to FILE: .csv, .json or .html (daily cost chart).")] = None,
    tz: C.TzOption = None,
    now: C.NowOption = None,
    config: C.ConfigOption = None,
    ledger: C.LedgerOption = None,
    fmt: C.FormatOption = C.OutputFormat.table,
) -> None:
    """Totals, breakdowns, daily/monthly summaries, trend, forecast and anomalies for a period."""
    if output is not None and output.suffix.lower() not in (".csv", ".json", ".html", ".htm"):
        C.fail(f"--output {output}: use a .csv, .json or .html file name", 2)
    zone = C.resolve_tz(tz)
    instant = C.resolve_now(now, zone)
    lo, hi = C.resolve_period(since, until, today, month, zone, instant)
    if prometheus:
        cfg = C.load(config, ledger, durable=False)
        data = prometheus_report(prometheus, C.converter(cfg), since=lo, until=hi, now=instant, top=top)
        C.emit(data, fmt, table=lambda: _prom_table(data), csv_rows=lambda: _prom_rows(data))
        _write(output, data, lambda: _prom_rows(data), zone)
        return
    cfg = C.load(config, ledger)
    # Trend, forecast and anomalies look back from "now" whatever the period: load enough history.
    today_start = day_start(datetime.fromtimestamp(instant, zone).date(), zone)
    history = min(today_start - (FORECAST_DAYS + TREND_DAYS + 31) * 86400.0, today_start)
    load_from = None if lo is None else min(lo, history)
    with C.open_stores(cfg) as (store, _):
        records = C.load_records(store, RecordQuery(since=load_from), until_hint=instant)
    data = build_report(records, convert=C.converter(cfg), tz=zone, now=instant, since=lo, until=hi, top=top,
                        slow_seconds=slow_seconds)
    data["ledger"] = cfg.ledger
    C.emit(data, fmt, table=lambda: _table(data, zone, top), csv_rows=lambda: _rows(data))
    _write(output, data, lambda: _rows(data), zone)


# -- ledger report: table view ----------------------------------------------------------------------------

def _period_text(data: dict[str, Any], zone: tzinfo) -> str:
    lo, hi = data["since"], data["until"]
    return (f"{C.fmt_time(lo, zone) if lo is not None else 'the beginning'} → "
            f"{C.fmt_time(hi, zone) if hi is not None else 'now'} ({data['timezone']})")


def _totals_lines(t: dict[str, Any], ccy: str) -> list[tuple[str, str]]:
    rate = t["success_rate"]
    lines = [
        ("requests", f"{t['requests']:,} ({t['errors']:,} errors, {t['blocked']:,} blocked)"),
        ("success rate", "-" if rate is None else f"{rate:.1%}"),
        ("tokens", f"{t['total_tokens']:,} (input {t['input_tokens']:,} incl. cached {t['cached_input_tokens']:,}; "
                   f"output {t['output_tokens']:,} incl. reasoning {t['reasoning_tokens']:,})"),
        ("cost", f"{C.fmt_money(t['cost'])} {ccy}"),
    ]
    if t["unpriced_requests"]:
        lines.append(("unpriced", f"{t['unpriced_requests']:,} calls, {t['unpriced_tokens']:,} tokens "
                                  "(price unknown: not included in cost)"))
    for cur, amount in t["unconverted"].items():
        lines.append(("unconverted", f"{C.fmt_money(amount)} {cur} (no pricing.exchange_rates.{cur})"))
    return lines


def _kv_table(title: str, lines: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for k, v in lines:
        table.add_row(k, v)
    return table


def totals_table(rows: list[dict[str, Any]], first_column: str, ccy: str, *, title: str, limit: int | None = None,
                 ) -> Table:
    """Calls/tokens/cost per key: the shape of every breakdown, daily and monthly table."""
    table = Table(title=title, title_justify="left")
    for name in (first_column, "calls", "errors", "input tok", "output tok", f"cost {ccy}", "unpriced"):
        table.add_column(name, justify="left" if name == first_column else "right")
    for row in rows[:limit]:
        table.add_row(str(row.get("key", row.get("period"))), f"{row['requests']:,}", f"{row['errors']:,}",
                      f"{row['input_tokens']:,}", f"{row['output_tokens']:,}", C.fmt_money(row["cost"]),
                      f"{row['unpriced_requests']:,}" if row["unpriced_requests"] else "")
    if limit is not None and len(rows) > limit:
        table.caption = f"top {limit} of {len(rows)}"
    return table


def _insights(data: dict[str, Any]) -> list[tuple[str, str]]:
    ccy = data["currency"]
    trend, fc, dod = data["trend"], data["forecast"], data["day_over_day"]
    lines = [("7-day trend", f"{trend['sparkline']}  {trend['days'][0]} … {trend['days'][-1]}: "
                             + " ".join(C.fmt_money(v, 4) for v in trend["cost"]))]
    if fc["forecast"] is not None:
        lines.append(("month-end forecast",
                      f"{C.fmt_money(fc['forecast'])} {ccy} ({fc['month']}: {C.fmt_money(fc['month_to_date'])} "
                      f"so far + {C.fmt_money(fc['daily_average'])}/day × {fc['days_left']} days left; "
                      f"average of {fc['average_days']} days)"))
    else:
        lines.append(("month-end forecast", "not enough history (no complete day yet)"))
    pct = dod["change_pct"]
    lines.append(("day over day", f"{dod['day']}: {C.fmt_money(dod['cost'])} vs {C.fmt_money(dod['previous_cost'])} "
                                  f"({'n/a' if pct is None else f'{pct:+.1f}%'})"))
    peak = data["hourly_peak"]
    if peak["hour_of_day"] is not None:
        lines.append(("peak hour", f"{peak['hour_of_day']['hour']:02d}:00 ({peak['hour_of_day']['requests']:,} calls); "
                                   f"busiest {peak['busiest_hour']['start']} ({peak['busiest_hour']['requests']:,})"))
    slow = data["slow_calls"]
    lines.append(("slow calls", f"{slow['count']:,} at ≥ {slow['threshold_s']:g}s"))
    an = data["anomalies"]
    strongest = sorted(an["days"], key=lambda a: -abs(a["z"])) + sorted(an["hours"], key=lambda a: -a["z"])
    found = [f"{a['at']} ({a['z']:+.1f}σ)" for a in strongest]
    more = f" … ({len(found)} in all)" if len(found) > 4 else ""
    lines.append((f"anomalies ({an['metric']})", ", ".join(found[:4]) + more if found else "none beyond 2σ"))
    return lines


def _table(data: dict[str, Any], zone: tzinfo, top: int) -> None:
    con = C.console()
    ccy = data["currency"]
    con.print(_kv_table(f"LLM usage {_period_text(data, zone)}", _totals_lines(data["totals"], ccy)))
    con.print(_kv_table("Insights", _insights(data)))
    for dim in DIMENSIONS:
        rows = data["by"][dim]
        if rows:
            con.print(totals_table(rows, dim, ccy, title=f"By {dim}", limit=top))
    if data["daily"]:
        con.print(totals_table(data["daily"], "day", ccy, title="Daily", limit=None))
    if len(data["monthly"]) > 1:
        con.print(totals_table(data["monthly"], "month", ccy, title="Monthly", limit=None))


def _rows(data: dict[str, Any]) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    rows = [{"section": "total", "key": "all", **data["totals"]}]
    rows += [{"section": f"by_{dim}", **row} for dim in DIMENSIONS for row in data["by"][dim]]
    rows += [{"section": "day", "key": row["period"], **row} for row in data["daily"]]
    rows += [{"section": "month", "key": row["period"], **row} for row in data["monthly"]]
    return rows, _ROW_COLUMNS


# -- Prometheus report ------------------------------------------------------------------------------------

def _prom_table(data: dict[str, Any]) -> None:
    con = C.console()
    ccy = data["currency"]
    costs = ", ".join(f"{C.fmt_money(v)} {k}" for k, v in data["cost_by_currency"].items()) or "0"
    rate = data["error_rate"]
    lines = [("source", f"{data['url']} ({data['window']})"), ("cost", costs),
             (f"cost in {ccy}", C.fmt_money(data["cost"])), ("requests", f"{data['requests']:,.0f}"),
             ("error rate", "-" if rate is None else f"{rate:.1%}")]
    lines += [(f"{k} tokens", f"{v:,.0f}") for k, v in data["tokens"].items()]
    con.print(_kv_table("LLM usage from Prometheus", lines))
    for dim, rows in data["top"].items():
        table = Table(title=f"Top {dim}s by cost ({ccy})", title_justify="left")
        table.add_column(dim)
        table.add_column("cost", justify="right")
        for row in rows:
            table.add_row(row["key"], C.fmt_money(row["cost"]))
        con.print(table)


def _prom_rows(data: dict[str, Any]) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    rows: list[dict[str, Any]] = [{"metric": "cost", "key": k, "value": v} for k, v in data["cost_by_currency"].items()]
    rows += [{"metric": f"cost_{data['currency']}", "key": "all", "value": data["cost"]},
             {"metric": "requests", "key": "all", "value": data["requests"]},
             {"metric": "errors", "key": "all", "value": data["errors"]}]
    rows += [{"metric": "tokens", "key": k, "value": v} for k, v in data["tokens"].items()]
    rows += [{"metric": f"top_{dim}_cost", "key": r["key"], "value": r["cost"]}
             for dim, top in data["top"].items() for r in top]
    return rows, ("metric", "key", "value")


# -- files ------------------------------------------------------------------------------------------------

def _write(path: Path | None, data: dict[str, Any], rows: Any, zone: tzinfo) -> None:
    if path is None:
        return
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = C.dump_json(data) + "\n"
    elif suffix == ".csv":
        text = C.write_csv(*rows())
    else:
        text = render_html(data, zone)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        C.fail(f"cannot write {path}: {exc.strerror or exc}")
    typer.echo(f"wrote {path}", err=True)


def _svg_chart(days: list[str], values: list[float], ccy: str) -> str:
    """A self-contained bar chart of daily cost: no scripts, no network assets."""
    width, height, pad = 720, 220, 40
    n = max(1, len(values))
    top = max(values, default=0) or 1.0
    bar = (width - 2 * pad) / n
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="daily cost in {html.escape(ccy)}">',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#888"/>',
             f'<text x="{pad}" y="{pad - 12}" font-size="12">max {top:.6g} {html.escape(ccy)}/day</text>']
    for i, (day, value) in enumerate(zip(days, values, strict=True)):
        h = (height - 2 * pad) * value / top
        x = pad + i * bar
        parts.append(f'<rect x="{x + 1:.1f}" y="{height - pad - h:.1f}" width="{max(bar - 2, 1):.1f}" '
                     f'height="{h:.1f}" fill="#4e79a7"><title>{html.escape(day)}: {value:.6g}</title></rect>')
    if days:
        parts.append(f'<text x="{pad}" y="{height - pad + 16}" font-size="11">{html.escape(days[0])}</text>')
        parts.append(f'<text x="{width - pad}" y="{height - pad + 16}" font-size="11" text-anchor="end">'
                     f'{html.escape(days[-1])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _html_table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(data: dict[str, Any], zone: tzinfo) -> str:
    """One HTML file with inline CSS and SVG; opens offline."""
    if "by" not in data:  # a Prometheus report: its rows as one table
        rows, cols = _prom_rows(data)
        body = _html_table(list(cols), [[C.jsonable(r[c]) for c in cols] for r in rows])
        return f"<!doctype html><meta charset='utf-8'><title>LLM usage</title><h1>LLM usage</h1>{body}\n"
    ccy = data["currency"]
    daily = data["daily"]
    chart = _svg_chart([d["period"] for d in daily], [float(d["cost"]) for d in daily], ccy)
    sections = [f"<h1>LLM usage</h1><p>{html.escape(_period_text(data, zone))}; costs in {html.escape(ccy)}</p>",
                _html_table(["", ""], [list(x) for x in _totals_lines(data["totals"], ccy)]),
                "<h2>Insights</h2>", _html_table(["", ""], [list(x) for x in _insights(data)]),
                "<h2>Daily cost</h2>", chart]
    headers = ["calls", "errors", "input tokens", "output tokens", f"cost {ccy}", "unpriced"]
    for dim in DIMENSIONS:
        cells = [[r["key"], r["requests"], r["errors"], r["input_tokens"], r["output_tokens"],
                  C.fmt_money(r["cost"]), r["unpriced_requests"]] for r in data["by"][dim]]
        sections += [f"<h2>By {dim}</h2>", _html_table([dim, *headers], cells)]
    style = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;"
             "margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>LLM usage</title><style>{style}</style>"
            f"</head><body>{''.join(sections)}</body></html>\n")



# -- Prometheus queries -----------------------------------------------------------------------------------

def _promql(url: str, expr: str, at: float | None) -> list[dict[str, Any]]:
    params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
    full = f"{url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(full, timeout=30) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:300]
        C.fail(f"Prometheus at {url} rejected {expr!r}: HTTP {exc.code} {detail}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        C.fail(f"cannot query Prometheus at {url}: {getattr(exc, 'reason', exc)}")
    if body.get("status") != "success":
        C.fail(f"Prometheus at {url}: {body.get('error', body)}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _value(sample: dict[str, Any]) -> Decimal:
    try:
        value = Decimal(sample["value"][1])
    except (InvalidOperation, KeyError, IndexError):
        return Decimal(0)
    return value if value.is_finite() else Decimal(0)


def prometheus_report(url: str, convert: CostConverter, *, since: float | None, until: float | None, now: float,
                      top: int) -> dict[str, Any]:
    """Headline figures by PromQL. Costs per currency are converted here, so top-N ranks one currency."""
    at = until if until is not None else now
    if since is not None:
        seconds = max(1, int(at - since))

        def over(metric: str) -> str:
            return f"increase({metric}[{seconds}s])"
        window = f"increase over {seconds}s"
    else:

        def over(metric: str) -> str:
            return metric
        window = "counter totals"

    def by(labels: str, metric: str) -> list[dict[str, Any]]:
        return _promql(url, f"sum by ({labels}) ({over(metric)})", at)

    cost_by_ccy = {s["metric"].get("currency", "unknown"): _value(s) for s in by("currency", "llm_usage_cost_total")}
    status = {s["metric"].get("status", "unknown"): _value(s) for s in by("status", "llm_usage_requests_total")}
    tokens = {s["metric"].get("token_type", "unknown"): _value(s) for s in by("token_type", "llm_usage_tokens_total")}
    requests = sum(status.values(), Decimal(0))
    total = Decimal(0)
    unconverted: dict[str, Decimal] = {}
    for ccy, amount in cost_by_ccy.items():
        converted = convert(amount, ccy)
        if converted is None:
            unconverted[ccy] = amount
        else:
            total += converted
    tops: dict[str, list[dict[str, Any]]] = {}
    for dim in ("user", "anchor", "function"):
        sums: dict[str, Decimal] = defaultdict(Decimal)
        for s in by(f"{dim}, currency", "llm_usage_cost_total"):
            converted = convert(_value(s), s["metric"].get("currency", "unknown"))
            sums[s["metric"].get(dim, "unknown")] += converted if converted is not None else Decimal(0)
        ranked = sorted(sums.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        tops[dim] = [{"key": k, "cost": v} for k, v in ranked]
    errors = status.get("error", Decimal(0))
    return {
        "source": "prometheus", "url": url, "window": window, "since": since, "until": until, "time": at,
        "currency": convert.currency, "cost_by_currency": cost_by_ccy, "cost": total, "unconverted": unconverted,
        "requests": requests, "requests_by_status": status, "errors": errors,
        "error_rate": float(errors / requests) if requests else None, "tokens": tokens, "top": tops,
    }
