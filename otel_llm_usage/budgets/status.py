# SPDX-License-Identifier: Apache-2.0
"""Where every known budget instance stands: status rows, their periodic refresh, the exit report."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypedDict

from .._guard import internal_error
from ..ledger.base import CounterStore, from_nanos
from .events import BudgetEvent
from .notify import units
from .plan import Planner

__all__ = ["BudgetStatus", "Refresher", "status_rows", "write_exit_report"]


class BudgetStatus(TypedDict):
    """One row of :func:`otel_llm_usage.get_budget_status`: one instance, one unit."""

    budget: str
    scope: str
    window: str
    unit: str  # the reporting currency or "tokens"
    used: Decimal | int
    limit: Decimal | int
    utilization: float
    in_flight: Decimal | int
    window_start: float
    window_end: float | None  # None: a total window never ends
    action: str
    state: Literal["ok", "warn", "exceeded"]
    seconds_to_exhaustion: float | None  # at the window's average rate so far; None: not spending


def status_rows(planner: Planner, store: CounterStore, currency: str, now: float) -> list[BudgetStatus]:
    out: list[BudgetStatus] = []
    for scope, budget in planner.instances():
        window = planner.window(budget, now)
        used_keys, _, inflight_key = planner.keys(budget, scope, window)
        used, inflight = store.read(used_keys, inflight_key)
        for unit, used_v, limit_v in units(budget, used, currency):
            util = float(used_v) / float(limit_v)
            elapsed = window.elapsed(now)
            rate = float(used_v) / elapsed if elapsed > 0 else 0.0
            remaining = float(limit_v) - float(used_v)
            out.append(BudgetStatus(
                budget=budget.name, scope=scope, window=budget.window, unit=unit,
                used=used_v, limit=limit_v, utilization=util,
                in_flight=from_nanos(inflight.cost_nanos) if unit != "tokens" else inflight.tokens,
                window_start=window.start, window_end=window.end if window.end != float("inf") else None,
                action=budget.action,
                state="exceeded" if util >= 1 else ("warn" if budget.warn_at and util >= budget.warn_at[0] else "ok"),
                seconds_to_exhaustion=(remaining / rate if rate > 0 and remaining > 0 else
                                       (0.0 if remaining <= 0 else None)),
            ))
    return out


class Refresher:
    """Keeps the rows the budget gauges report fresh: re-read on every metric collection and every
    ``interval_s`` on a thread of its own (window roll-over, rolling decay, other processes' usage)."""

    def __init__(self, read: Callable[[], list[BudgetStatus]]) -> None:
        self._read = read
        self.rows: list[BudgetStatus] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> list[BudgetStatus]:
        try:
            self.rows = self._read()
        except Exception as exc:
            internal_error("budget_refresh", exc)
        return self.rows

    def start(self, interval_s: float) -> None:
        if self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="otel-llm-usage-budgets", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def after_fork_in_child(self) -> None:
        """The thread did not survive the fork: ``start`` makes a new one."""
        self._stop = threading.Event()
        self._thread = None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def write_exit_report(path: str | os.PathLike[str], event: BudgetEvent, rows: list[BudgetStatus], now: float,
                      extra: dict[str, Any]) -> None:
    """The report ``action: exit`` leaves behind: why, when, every budget, and what the caller adds."""
    report = {"reason": asdict(event), "time": now, "budgets": rows, **extra}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, default=str, indent=2), encoding="utf-8")
