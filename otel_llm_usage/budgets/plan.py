# SPDX-License-Identifier: Apache-2.0
"""Which budget instances a call counts against, and under which counter keys. Pure: no store.

A budget *instance* is a budget and a scope (``per: user`` makes one per user). For each call
identity (provider, model, function, user, session, anchor) the :class:`Planner` works out once per
window which instances match, their counter keys and their limits in integer form, so that the
admission before a call and the settlement after it do no matching or string building.

Counter keys (the layout every store keeps; see ``ledger/redis.py`` for Redis)::

    {<budget>|<scope>}|<bucket>              usage in one bucket of the window
    {<budget>|<scope>}|inflight              reservations of rolling and total windows
    {<budget>|<scope>}|<bucket>|inflight     reservations of a calendar window (expire with it)

The hash tag ``{...}`` puts every key of one instance in one Redis Cluster slot, so each counter
script (several keys) runs on one node; the other stores ignore the braces.
"""

from __future__ import annotations

import fnmatch
import threading
from dataclasses import dataclass

from .. import _names as N
from .._bounded import BoundedDict
from ..ledger.base import Limit, to_nanos
from ..usage import UsageRecord
from .config import BudgetConfig
from .windows import Window, current_window

__all__ = ["Admission", "Plan", "Planner", "matches", "scope_of"]


def matches(budget: BudgetConfig, record: UsageRecord) -> bool:
    m = budget.match
    if m.provider is not None and m.provider != record.provider:
        return False
    if m.model is not None and not fnmatch.fnmatchcase(record.model, m.model):
        return False
    return ((m.function is None or m.function == record.function) and (m.user is None or m.user == record.user)
            and (m.session is None or m.session == record.session)
            and (m.anchor is None or m.anchor == record.anchor))


def scope_of(budget: BudgetConfig, record: UsageRecord) -> str:
    per = budget.per
    if per is None:
        return "all"
    value = {"model": record.model, "function": record.function, "user": record.user,
             "session": record.session, "anchor": record.anchor, "provider": record.provider}.get(per)
    return str(value) if value else N.UNKNOWN


@dataclass(frozen=True, slots=True)
class Admission:
    """One budget instance a call counts against, with its counter keys for the current window."""

    budget: BudgetConfig
    scope: str
    window: Window
    used_keys: list[str]
    bucket: str
    inflight_key: str
    limit: Limit


@dataclass(frozen=True, slots=True)
class Plan:
    """The instances a call identity matches while ``valid_from <= now < valid_until``: ``gating``
    must admit it before it is sent (every action but ``alert``), ``matched`` (all of them, in
    config order) settle it."""

    valid_from: float
    valid_until: float
    gating: list[Admission]
    matched: list[Admission]


class Planner:
    """Plans per call identity and window, and the instances seen so far (for status and gauges)."""

    def __init__(self, budgets: tuple[BudgetConfig, ...], *, max_instances: int = 1000) -> None:
        self.budgets = budgets
        self.max_instances = max_instances
        self._instances: dict[tuple[str, str], BudgetConfig] = {}
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], Window] = {}
        self._limits: dict[str, Limit] = {}
        self._keys: BoundedDict[tuple[str, str, str, str], tuple[list[str], str, str]] = BoundedDict()
        self._plans: BoundedDict[tuple[str | None, ...], Plan] = BoundedDict()

    def plan(self, record: UsageRecord, now: float) -> Plan:
        """The instances this call counts against. Runs before and after every call: matching (model
        globs), scoping and key building happen once per call identity and window."""
        identity = (record.provider, record.model, record.function, record.user, record.session, record.anchor)
        plan = self._plans.get(identity)
        if plan is not None and plan.valid_from <= now < plan.valid_until:
            return plan
        matched: list[Admission] = []
        valid_from, valid_until = float("-inf"), float("inf")
        for budget in self.budgets:
            if not matches(budget, record):
                continue
            scope = scope_of(budget, record)
            self.remember(budget, scope)
            window = self.window(budget, now)
            valid_from, valid_until = max(valid_from, window.start), min(valid_until, window.end)
            matched.append(self.admission(budget, scope, window))
        return self._plans.put(identity, Plan(valid_from, valid_until,
                                              [a for a in matched if a.budget.action != "alert"], matched))

    def admission(self, budget: BudgetConfig, scope: str, window: Window) -> Admission:
        used_keys, bucket, inflight_key = self.keys(budget, scope, window)
        return Admission(budget, scope, window, used_keys, bucket, inflight_key, self.limit(budget))

    def window(self, budget: BudgetConfig, now: float) -> Window:
        """The budget's current window, computed once per window rather than once per call."""
        key = (budget.window, budget.timezone)
        window = self._windows.get(key)
        if window is None or not window.start <= now < window.end:
            window = current_window(budget.window, budget.timezone, now)
            self._windows[key] = window
        return window

    def keys(self, budget: BudgetConfig, scope: str, window: Window) -> tuple[list[str], str, str]:
        """(bucket keys of the window, the current bucket's key, the in-flight key): see the module."""
        cache_key = (budget.name, scope, window.id, window.current_bucket)
        keys = self._keys.get(cache_key)
        if keys is None:
            base = f"{{{budget.name}|{scope}}}"
            # In-flight reservations of a calendar window live and expire with that window (its TTL
            # ends at the window's end, however often it is refreshed), so one that was never
            # released (a lost reply, a killed process) stops holding headroom when the window
            # ends. Rolling windows keep one key: their buckets change while calls are in flight.
            inflight = f"{base}|inflight" if window.kind in ("rolling", "total") else \
                f"{base}|{window.current_bucket}|inflight"
            keys = self._keys.put(cache_key, ([f"{base}|{b}" for b in window.bucket_ids],
                                              f"{base}|{window.current_bucket}", inflight))
        return keys

    def limit(self, budget: BudgetConfig) -> Limit:
        limit = self._limits.get(budget.name)
        if limit is None:  # converted once: the Decimal work is per budget, not per call
            lim = budget.limit
            limit = self._limits[budget.name] = Limit(to_nanos(lim.cost) if lim.cost is not None else None,
                                                      lim.tokens)
        return limit

    def remember(self, budget: BudgetConfig, scope: str) -> None:
        """Make an instance known to status and gauges (at most ``max_instances`` scoped ones)."""
        key = (budget.name, scope)
        if key not in self._instances:
            with self._lock:
                if len(self._instances) < self.max_instances or budget.per is None:
                    self._instances[key] = budget

    def instances(self) -> list[tuple[str, BudgetConfig]]:
        """(scope, budget) of every known instance."""
        with self._lock:
            return [(scope, budget) for (_, scope), budget in self._instances.items()]

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
