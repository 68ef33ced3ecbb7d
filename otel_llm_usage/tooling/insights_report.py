# SPDX-License-Identifier: Apache-2.0
"""Render :class:`~otel_llm_usage.tooling.insights.Insights` as a self-contained HTML page.

Charts are drawn with matplotlib (extra ``[insights]``) into inline SVG, so
the file opens offline and can be mailed or attached to a CI run.
"""

from __future__ import annotations

import html
import io
from decimal import Decimal
from typing import Any

from .insights import Insights

__all__ = ["render_html"]


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog so it can sit inside HTML


def _charts(ins: Insights) -> list[tuple[str, str]]:
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display here, and never one in CI
        import matplotlib.pyplot as plt
    except ImportError:
        return [("Charts", "<p>Install <code>otel-llm-usage[insights]</code> (matplotlib) for charts.</p>")]
    charts = []
    days = list(ins.daily_cost_by_model)
    models = sorted({m for by_model in ins.daily_cost_by_model.values() for m in by_model})
    if days:
        fig, ax = plt.subplots(figsize=(8, 3.2))
        bottom = [0.0] * len(days)
        for model in models:
            values = [float(ins.daily_cost_by_model[d].get(model, Decimal(0))) for d in days]
            ax.bar(days, values, bottom=bottom, label=model)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_ylabel(ins.currency)
        ax.set_title("Daily cost by model")
        ax.legend(fontsize="small")
        ax.tick_params(axis="x", labelrotation=45, labelsize="small")
        charts.append(("Daily cost by model", _svg(fig)))
        plt.close(fig)
    if ins.cost_by_function:
        fig, ax = plt.subplots(figsize=(8, 0.4 * len(ins.cost_by_function) + 1))
        names = list(ins.cost_by_function)[::-1]
        ax.barh(names, [float(ins.cost_by_function[n]) for n in names])
        ax.set_xlabel(ins.currency)
        ax.set_title("Cost by function")
        charts.append(("Cost by function", _svg(fig)))
        plt.close(fig)
    return charts


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(ins: Insights) -> str:
    parts = [f"<h1>LLM cost insights</h1><p>{ins.records} records, total {ins.total_cost} {ins.currency}</p>"]
    if ins.forecast is not None:
        f = ins.forecast
        parts.append("<h2>Forecast</h2>" + _table(
            ["month", "to date", "daily average", "month end (average)", "month end (trend)", "budget runs out"],
            [[f.month, f.month_to_date, f.daily_average, f.month_end_by_average, f.month_end_by_trend,
              f.budget_exhausted_on or "-"]]))
    if ins.what_if:
        parts.append("<h2>What if</h2>" + _table(
            ["function", "from", "to", "calls", "current", "what-if", "saving"],
            [[r.function, r.from_model, r.to_model, r.calls, r.current_cost, r.what_if_cost, r.saving]
             for r in ins.what_if]))
    parts.append("<h2>Suggestions</h2>" + (_table(
        ["kind", "subject", "saving", "detail"],
        [[s.kind, s.subject, s.saving if s.saving is not None else "-", s.message] for s in ins.suggestions])
        if ins.suggestions else "<p>No suggestion: nothing in this period looks like a saving.</p>"))
    for title, svg in _charts(ins):
        parts.append(f"<h2>{html.escape(title)}</h2>{svg}")
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>LLM cost insights</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
