# SPDX-License-Identifier: Apache-2.0
"""``otel-llm-usage budget status``: every budget instance, how full it is, and when it runs out.

    otel-llm-usage budget status --config otel-llm-usage.yaml           # exit 2 if any budget is exceeded
    otel-llm-usage budget status --format json | jq '.[] | select(.state != "ok")'

Usage comes from the ledger's counter store (the numbers enforcement uses). Which instances
exist is discovered, because counters cannot be listed through the fixed ledger interface:
a budget without ``per:`` has the one instance ``all``; a ``per:`` budget has one instance per
distinct value among the ledger records in its current window that match it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import Decimal

import typer
from rich.progress_bar import ProgressBar
from rich.table import Table

from ..budgets.config import BudgetConfig
from ..budgets.engine import BudgetEngine
from ..budgets.plan import matches, scope_of
from ..budgets.status import BudgetStatus
from ..budgets.windows import current_window
from ..config import Config
from ..ledger import CounterStore, RecordQuery, RecordStore
from ..pricing.stage import CostConverter
from . import _common as C

__all__ = ["EXIT_EXCEEDED", "budget_app", "budget_status"]

EXIT_EXCEEDED = 2

budget_app = typer.Typer(help="Budget instances from the config and the ledger.", no_args_is_help=True,
                         add_completion=False)


@budget_app.callback()
def _group() -> None:
    """Budgets: usage, limits and time to exhaustion."""


def _engine(cfg: Config, counters: CounterStore, now: float) -> BudgetEngine:
    convert = CostConverter(cfg.pricing.currency, cfg.pricing.exchange_rates)

    def to_reporting(amount: Decimal, currency: str) -> Decimal:
        value = convert(amount, currency)
        if value is None:
            raise ValueError(f"no exchange rate for {currency}")
        return value

    # Read-only use: no refresh thread (start() is not called) and no cost estimates.
    return BudgetEngine(cfg.budgets, counters, currency=cfg.pricing.currency, to_reporting=to_reporting,
                        estimate_cost=lambda record, tokens: None, clock=lambda: now,
                        max_instances=cfg.attribution.max_label_values)


def _discover(engine: BudgetEngine, budgets: Sequence[BudgetConfig], store: RecordStore, now: float) -> None:
    starts = {b.name: current_window(b.window, b.timezone, now).start for b in budgets if b.per is not None}
    records = store.query(RecordQuery(since=min(starts.values()))) if starts else []
    for budget in budgets:
        if budget.per is None:
            # BudgetEngine learns instances from calls; remember() is how it is told about one it has not seen.
            engine.planner.remember(budget, "all")
            continue
        for rec in records:
            if rec.timestamp >= starts[budget.name] and matches(budget, rec):
                engine.planner.remember(budget, scope_of(budget, rec))


def budget_status(cfg: Config, store: RecordStore, counters: CounterStore, now: float | None = None
                  ) -> list[BudgetStatus]:
    """``BudgetEngine.status()`` rows for every discovered instance, most utilized first."""
    now = time.time() if now is None else now
    engine = _engine(cfg, counters, now)
    _discover(engine, cfg.budgets, store, now)
    rows = engine.status()
    return sorted(rows, key=lambda r: (-r["utilization"], r["budget"], r["scope"], r["unit"]))


def _bar(row: BudgetStatus) -> ProgressBar:
    style = {"exceeded": "red", "warn": "yellow"}.get(row["state"], "green")
    limit = float(row["limit"])
    return ProgressBar(total=limit, completed=min(float(row["used"]), limit), width=24, complete_style=style,
                       finished_style=style)


def _table(rows: list[BudgetStatus]) -> None:
    table = Table(title="Budgets", title_justify="left")
    for name in ("budget", "scope", "window", "used / limit", "", "%", "state", "exhausted in", "action"):
        table.add_column(name, justify="right" if name in ("used / limit", "%") else "left")
    for r in rows:
        money = r["unit"] != "tokens"
        used = C.fmt_money(Decimal(r["used"])) if money else f"{r['used']:,}"
        limit = f"{r['limit']:f}" if money else f"{r['limit']:,}"
        secs = r["seconds_to_exhaustion"]
        left = "exhausted" if secs == 0 else ("-" if secs is None else C.fmt_duration(secs))
        table.add_row(r["budget"], r["scope"], r["window"], f"{used} / {limit} {r['unit']}", _bar(r),
                      f"{r['utilization']:.0%}", r["state"], left, r["action"])
    C.console().print(table)


_CSV_COLUMNS = ("budget", "scope", "window", "unit", "used", "limit", "utilization", "in_flight", "state",
                "seconds_to_exhaustion", "window_start", "window_end", "action")


@budget_app.command("status")
def status(
    config: C.ConfigOption = None,
    ledger: C.LedgerOption = None,
    fmt: C.FormatOption = C.OutputFormat.table,
) -> None:
    """Used / limit per budget instance with time to exhaustion at the current rate; exit 2 if any is exceeded."""
    cfg = C.load(config, ledger)
    if not cfg.budgets:
        typer.echo("no budgets configured (add a budgets: section to the config)", err=True)
        return
    with C.open_stores(cfg) as (store, counters):
        rows = budget_status(cfg, store, counters)
    C.emit(rows, fmt, table=lambda: _table(rows), csv_rows=lambda: (rows, _CSV_COLUMNS))
    exceeded = [f"{r['budget']}[{r['scope']}]" for r in rows if r["state"] == "exceeded"]
    if exceeded:
        typer.echo(f"exceeded: {', '.join(dict.fromkeys(exceeded))}", err=True)
        raise typer.Exit(EXIT_EXCEEDED)
