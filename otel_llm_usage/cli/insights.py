# SPDX-License-Identifier: Apache-2.0
"""``otel-llm-usage insights``: what-if repricing, savings suggestions and a forecast from the ledger."""

from __future__ import annotations

import json
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["insights"]


def _swap(text: str) -> tuple[str, str]:
    a, sep, b = text.partition("=")
    if not sep or not a.strip() or not b.strip():
        raise typer.BadParameter(f"{text!r}: use FROM=TO, e.g. qwen-max=qwen-plus")
    return a.strip(), b.strip()


def _since(text: str | None, tz: str) -> float | None:
    if text is None:
        return None
    from zoneinfo import ZoneInfo

    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: use an ISO date like 2026-11-01") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=ZoneInfo(tz))).timestamp()


def insights(
    config: Annotated[Path | None, typer.Option("--config", help="Config file (pricing, budgets, ledger).")] = None,
    ledger: Annotated[str | None, typer.Option("--ledger", help="Ledger URL; overrides the config's.")] = None,
    since: Annotated[str | None, typer.Option(help="Start (ISO date/time), inclusive.")] = None,
    until: Annotated[str | None, typer.Option(help="End (ISO date/time), exclusive.")] = None,
    what_if: Annotated[list[str] | None, typer.Option("--what-if", help="Reprice FROM=TO, repeatable.")] = None,
    function: Annotated[str | None, typer.Option(help="Only this function.")] = None,
    anchor: Annotated[str | None, typer.Option(help="Only this anchor.")] = None,
    user: Annotated[str | None, typer.Option(help="Only this user.")] = None,
    tz: Annotated[str, typer.Option(help="Time zone for days and months.")] = "UTC",
    monthly_budget: Annotated[str | None, typer.Option(help="Monthly budget in the reporting currency "
                                                            "(default: the config's month budget).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
    output: Annotated[Path | None, typer.Option("--output", help="Write .json or .html (with charts).")] = None,
) -> None:
    """Reprice recorded usage, suggest savings with their computed amounts, and forecast month-end spend."""
    from ..config import ConfigError, load_config
    from ..ledger import RecordQuery, open_ledger
    from ..pricing import load_catalog
    from ..pricing.stage import CostConverter
    from ..tooling.insights import compute_insights
    from ..tooling.insights_report import render_html

    try:
        cfg = load_config(config, env={}) if config else load_config()
        url = ledger or cfg.ledger
        records_store, counters = open_ledger(url)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    swaps = [_swap(s) for s in what_if or []]
    try:
        records = records_store.query(RecordQuery(since=_since(since, tz), until=_since(until, tz),
                                                  function=function, anchor=anchor, user=user))
    finally:
        records_store.close()
        counters.close()
    catalog = load_catalog(cfg.pricing)
    # Like `report`: a cost in a currency without a configured rate is left out, not a crash.
    convert = CostConverter(cfg.pricing.currency, cfg.pricing.exchange_rates)
    budget = Decimal(monthly_budget) if monthly_budget else next(
        (b.limit.cost for b in cfg.budgets if b.window == "month" and b.per is None and b.limit.cost), None)
    result = compute_insights(records, catalog, convert, currency=cfg.pricing.currency,
                              now=time.time(), tz=tz, what_if=swaps, monthly_budget=budget)
    if output is not None:
        text = render_html(result) if output.suffix.lower() in (".html", ".htm") else \
            json.dumps(result.to_json(), indent=2)
        output.write_text(text, encoding="utf-8")
    if fmt == "json":
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    _print(result)


def _print(result: object) -> None:
    from ..tooling.insights import Insights

    assert isinstance(result, Insights)
    console = Console()
    console.print(f"[bold]{result.records}[/] records, total cost {result.total_cost} {result.currency}")
    if result.what_if:
        t = Table("function", "from", "to", "calls", "current", "what-if", "saving", title="What if")
        for r in result.what_if:
            t.add_row(r.function, r.from_model, r.to_model, str(r.calls), str(r.current_cost), str(r.what_if_cost),
                      str(r.saving))
        console.print(t)
    t = Table("kind", "subject", "saving", "why", title="Suggestions")
    for s in result.suggestions:
        t.add_row(s.kind, s.subject, str(s.saving) if s.saving is not None else "-", s.message)
    console.print(t if result.suggestions else "No suggestion: nothing in this period looks like a saving.")
    f = result.forecast
    if f is not None:
        console.print(f"Forecast {f.month}: {f.month_to_date} to date; month end {f.month_end_by_average} "
                      f"(7-day average), {f.month_end_by_trend} (trend)"
                      + (f"; budget {f.budget} runs out on {f.budget_exhausted_on}" if f.budget_exhausted_on else ""))
