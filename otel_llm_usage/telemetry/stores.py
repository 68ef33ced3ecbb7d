# SPDX-License-Identifier: Apache-2.0
"""Metrics about the budget stores and budgets, read from them when a reader collects."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from .. import _names as N

__all__ = ["LeaseAdmissions", "StoreHealth", "register_budget_gauges", "register_lease_metrics",
           "register_store_metrics"]


@runtime_checkable
class StoreHealth(Protocol):
    """What :class:`~otel_llm_usage.ledger.resilient.FailOpenCounterStore` exposes for its metrics."""

    backend: str
    degraded_by_op: Mapping[str, int]

    @property
    def degraded(self) -> bool: ...


def register_store_metrics(meter: Meter, store: object) -> None:
    """``llm_usage_store_degraded_operations_total{store,operation}`` and ``llm_usage_store_up{store}``
    for a fail-open counter store; nothing for a store that cannot fail (memory).

    Both are read from the store's own counts at collection time, so the hot path pays nothing and
    the totals are exact (the on_degraded callback would cost a metric add per local answer)."""
    if not isinstance(store, StoreHealth):
        return
    health = store

    def degraded_ops(options: CallbackOptions) -> list[Observation]:
        return [Observation(n, {"store": health.backend, "operation": op})
                for op, n in list(health.degraded_by_op.items())]

    def up(options: CallbackOptions) -> list[Observation]:
        return [Observation(0 if health.degraded else 1, {"store": health.backend})]

    meter.create_observable_counter(
        N.METRIC_STORE_DEGRADED_OPS, [degraded_ops],
        description="Budget counter operations answered locally because the shared store failed.")
    meter.create_observable_gauge(
        N.METRIC_STORE_UP, [up],
        description="1 while the shared budget counter store answers, 0 while budgets run on local counts.")


def register_budget_gauges(meter: Meter, refresh: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
    """``llm_budget_limit`` / ``_used`` / ``_utilization`` per budget instance and unit, from the rows
    ``refresh()`` re-reads when they are collected."""
    def observe(field: str) -> Callable[[CallbackOptions], list[Observation]]:
        def callback(options: CallbackOptions) -> list[Observation]:
            return [Observation(float(s[field]), {"budget": s["budget"], "scope": s["scope"],
                                                  "window": s["window"], "unit": s["unit"]})
                    for s in refresh()]
        return callback

    meter.create_observable_gauge(N.METRIC_BUDGET_LIMIT, [observe("limit")], description="Budget limit.")
    meter.create_observable_gauge(N.METRIC_BUDGET_USED, [observe("used")],
                                  description="Usage in the budget's current window.")
    meter.create_observable_gauge(N.METRIC_BUDGET_UTILIZATION, [observe("utilization")],
                                  description="used / limit (1 = exhausted).")


@runtime_checkable
class LeaseAdmissions(Protocol):
    """What a leased counter store exposes for its metrics."""

    backend: str

    def admissions(self) -> dict[str, int]: ...


def register_lease_metrics(meter: Meter, store: object) -> None:
    """``llm_usage_budget_admissions_total{store,path}`` for a leased store (nothing otherwise): how
    budget checks were answered: ``local`` (from the lease), ``store`` (the calling thread waited for
    the store), ``thread`` (an event loop handed the wait to a worker thread), ``refused_locally``."""
    if not isinstance(store, LeaseAdmissions):
        return
    leased = store

    def observe(options: CallbackOptions) -> list[Observation]:
        return [Observation(n, {"store": leased.backend, "path": path}) for path, n in leased.admissions().items()]

    meter.create_observable_counter(N.METRIC_BUDGET_ADMISSIONS, [observe],
                                    description="Budget admission checks on a leased store, by how they were answered.")
