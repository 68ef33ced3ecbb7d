# SPDX-License-Identifier: Apache-2.0
"""Budget enforcement: pre-call reservations, post-call settlement, events and gauges.

Before a call, every matching budget whose action is ``block``, ``downgrade``
or ``exit`` tries to *reserve* the call's estimated cost and tokens in the
counter store (memory, SQLite or Redis — atomically, across processes; on a
shared store from this process's lease, see ``ledger/leases.py``, which keeps
the same bound). A reservation is admitted iff ``used + in-flight`` is still
below the limit; after the call it is settled to the actual usage.

Overshoot bound (documented in the README): when every in-flight call's
actual usage is within its reservation, the final usage of a window exceeds
the limit by at most the reservation of the last admitted call — whatever the
number of concurrent callers or processes. Reservations under-estimate only
when the request sets no ``max_tokens`` and the answer is longer than
``default_output_reservation``; that excess is the only other overshoot.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from .. import _names as N
from .._blocking import WouldBlock
from .._guard import internal_error
from ..errors import BudgetExceeded
from ..ledger.base import Amount, CounterStore, Limit, from_nanos, to_nanos
from ..pipeline import CallIntent
from ..telemetry import register_store_metrics
from ..usage import TokenUsage, UsageRecord
from .config import BudgetConfig
from .windows import Window, current_window

__all__ = ["BudgetEngine", "BudgetEvent", "budget_bypass"]

logger = logging.getLogger("otel_llm_usage.budgets")
_bypass: ContextVar[bool] = ContextVar("otel_llm_usage_budget_bypass", default=False)


@contextlib.contextmanager
def budget_bypass() -> Iterator[None]:
    """Calls inside this block are recorded but never blocked, downgraded or exited (admin work)."""
    token = _bypass.set(True)
    try:
        yield
    finally:
        _bypass.reset(token)


@dataclass(frozen=True, slots=True)
class BudgetEvent:
    budget: str
    scope: str
    level: str  # warn | exceeded | blocked | downgraded | exit
    window: str
    used: float
    limit: float
    unit: str
    threshold: float | None = None


@dataclass(frozen=True, slots=True)
class _Admission:
    """One budget a call counts against, with its counter keys for the current window."""

    budget: BudgetConfig
    scope: str
    window: Window
    used_keys: list[str]
    bucket: str
    inflight_key: str
    limit: Limit


@dataclass(frozen=True, slots=True)
class _Plan:
    """The budgets a call identity matches in the current windows: ``gating`` must admit it before
    it is sent (every action but ``alert``), ``matched`` (all of them, in config order) settle it."""

    valid_from: float
    valid_until: float
    gating: list[_Admission]
    matched: list[_Admission]


@dataclass(slots=True)
class _Reservation:
    budget: BudgetConfig
    scope: str
    bucket: str
    inflight_key: str
    amount: Amount
    ttl_s: int | None


class BudgetEngine:
    """A pipeline stage (settlement) and pre-call stage (admission) for the configured budgets."""

    def __init__(
        self,
        budgets: tuple[BudgetConfig, ...],
        store: CounterStore,
        *,
        currency: str,
        to_reporting: Callable[[Decimal, str], Decimal],
        estimate_cost: Callable[[UsageRecord, TokenUsage], tuple[Decimal, str] | None],
        flat_rates: Callable[[UsageRecord], tuple[Decimal, Decimal, str] | None] | None = None,
        on_event: Callable[[BudgetEvent], None] | None = None,
        on_exit: Callable[[BudgetConfig, BudgetEvent], None] | None = None,
        clock: Callable[[], float] = time.time,
        default_output_reservation: int = 1024,
        max_instances: int = 1000,
    ) -> None:
        self.budgets = budgets
        self.store = store
        self.currency = currency
        self._to_reporting = to_reporting
        self._estimate_cost = estimate_cost
        self._flat_rates = flat_rates
        # (provider, model, server) -> reporting-currency nanos per 1M (input, output) tokens, or
        # None when the price depends on more than token counts (tiers...): see _reservation.
        self._rate_cache: dict[tuple[str, str, str | None], tuple[int, int] | None] = {}
        self._on_event = on_event
        self._on_exit = on_exit
        self._clock = clock
        self.default_output_reservation = default_output_reservation
        self.max_instances = max_instances
        self.callbacks: list[Callable[[BudgetEvent], None]] = []
        self._instances: dict[tuple[str, str], BudgetConfig] = {}
        self._lock = threading.Lock()
        self._gauge_cache: list[dict[str, Any]] = []
        self._logged: set[tuple[str, str, str, str]] = set()
        self._marked: set[str] = set()  # warn-once marks this process has asked the store about
        self._unconvertible: set[str] = set()
        self._windows: dict[tuple[str, str], Window] = {}
        self._limits: dict[str, Limit] = {}
        self._key_cache: dict[tuple[str, str, str, str], tuple[list[str], str, str]] = {}
        # (budgets, {call identity: plan}): see _plan.
        self._plans: tuple[tuple[BudgetConfig, ...], dict[tuple[Any, ...], _Plan]] \
            = (budgets, {})
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Settles records whose settlement is still queued (the pipeline's deferred stages): a
        # refusal or a status read happens only after it, so neither sees stale usage.
        self.settle_pending: Callable[[], object] | None = None

    @property
    def wants_pre_call(self) -> bool:
        return any(b.action != "alert" for b in self.budgets)

    # -- matching --------------------------------------------------------------
    @staticmethod
    def matches(budget: BudgetConfig, record: UsageRecord) -> bool:
        m = budget.match
        if m.provider is not None and m.provider != record.provider:
            return False
        if m.model is not None and not fnmatch.fnmatchcase(record.model, m.model):
            return False
        return all(
            want is None or want == getattr(record, key)
            for key, want in (("function", m.function), ("user", m.user), ("session", m.session),
                              ("anchor", m.anchor))
        )

    @staticmethod
    def scope_of(budget: BudgetConfig, record: UsageRecord) -> str:
        if budget.per is None:
            return "all"
        value = record.model if budget.per == "model" else getattr(record, budget.per)
        return str(value) if value else N.UNKNOWN

    def _window(self, budget: BudgetConfig, now: float) -> Window:
        """The budget's current window, computed once per window rather than once per call."""
        key = (budget.window, budget.timezone)
        window = self._windows.get(key)
        if window is None or not window.start <= now < window.end:
            window = current_window(budget.window, budget.timezone, now)
            self._windows[key] = window
        return window

    def _keys(self, budget: BudgetConfig, scope: str, window: Window) -> tuple[list[str], str, str]:
        cache_key = (budget.name, scope, window.id, window.current_bucket)
        keys = self._key_cache.get(cache_key)
        if keys is None:  # built once per budget instance and window, not on every call
            # The hash tag ({...}) puts every key of one budget instance in one Redis Cluster slot, so
            # each counter script (several keys) runs on one node; other stores ignore the braces.
            base = f"{{{budget.name}|{scope}}}"
            # In-flight reservations of a calendar window live and expire with that window (its TTL
            # ends at the window's end, however often it is refreshed), so one that was never
            # released (a lost reply, a killed process) stops holding headroom when the window
            # ends. Rolling windows keep one key: their buckets change while calls are in flight.
            inflight = f"{base}|inflight" if window.kind in ("rolling", "total") else \
                f"{base}|{window.current_bucket}|inflight"
            keys = ([f"{base}|{b}" for b in window.bucket_ids], f"{base}|{window.current_bucket}", inflight)
            if len(self._key_cache) >= 10_000:
                self._key_cache.clear()
            self._key_cache[cache_key] = keys
        return keys

    def _limit(self, budget: BudgetConfig) -> Limit:
        limit = self._limits.get(budget.name)
        if limit is None:  # converted once: the Decimal work is per budget, not per call
            lim = budget.limit
            limit = self._limits[budget.name] = Limit(to_nanos(lim.cost) if lim.cost is not None else None,
                                                      lim.tokens)
        return limit

    def _remember(self, budget: BudgetConfig, scope: str) -> None:
        key = (budget.name, scope)
        if key not in self._instances:
            with self._lock:
                if len(self._instances) < self.max_instances or budget.per is None:
                    self._instances[key] = budget

    # -- before the call ---------------------------------------------------------
    def _plan(self, record: UsageRecord, now: float) -> _Plan:
        """The budgets this call counts against, and their keys, for the current windows.

        Runs before and after every call, so the matching (model globs), scoping and key building
        are done once per call identity and window rather than per call; the budgets are immutable."""
        budgets, plans = self._plans
        if budgets is not self.budgets:
            budgets, plans = self._plans = (self.budgets, {})
        identity = (record.provider, record.model, record.function, record.user, record.session, record.anchor)
        plan = plans.get(identity)
        if plan is not None and plan.valid_from <= now < plan.valid_until:
            return plan
        matched: list[_Admission] = []
        valid_from, valid_until = float("-inf"), float("inf")
        for budget in budgets:
            if not self.matches(budget, record):
                continue
            scope = self.scope_of(budget, record)
            self._remember(budget, scope)
            window = self._window(budget, now)
            valid_from, valid_until = max(valid_from, window.start), min(valid_until, window.end)
            matched.append(self._admission(budget, scope, window))
        if len(plans) >= 10_000:
            plans.clear()
        plan = plans[identity] = _Plan(valid_from, valid_until,
                                       [a for a in matched if a.budget.action != "alert"], matched)
        return plan

    def _admission(self, budget: BudgetConfig, scope: str, window: Window) -> _Admission:
        used_keys, bucket, inflight_key = self._keys(budget, scope, window)
        return _Admission(budget, scope, window, used_keys, bucket, inflight_key, self._limit(budget))

    def before_call(self, intent: CallIntent) -> str | None:
        if _bypass.get() or not self.budgets:
            return None
        record = intent.record
        now = self._clock()
        try:
            return self._admit(intent, record, now)
        except WouldBlock:
            self._release(record)  # the caller runs the whole check again where it may wait
            raise

    def _admit(self, intent: CallIntent, record: UsageRecord, now: float) -> str | None:
        reservation: Amount | None = None
        new_model: str | None = None
        for adm in self._plan(record, now).gating:
            budget = adm.budget
            if reservation is None or (budget.limit.cost is not None and not reservation.cost_nanos):
                # Pricing the estimate is the costly part: only budgets with a cost limit need it.
                reservation = self._reservation(intent, with_cost=budget.limit.cost is not None)
            admitted, used, inflight = self.store.try_reserve(adm.used_keys, adm.inflight_key, reservation,
                                                              adm.limit, adm.window.ttl_s)
            if not admitted and self.settle_pending is not None:
                # Finished calls may still hold reservations larger than their usage.
                self.settle_pending()
                admitted, used, inflight = self.store.try_reserve(adm.used_keys, adm.inflight_key, reservation,
                                                                  adm.limit, adm.window.ttl_s)
            scope = adm.scope
            if admitted:
                record.reservations.append(_Reservation(budget, scope, adm.bucket, adm.inflight_key, reservation,
                                                        adm.window.ttl_s))
                continue
            event = self._event(budget, scope, adm.window, used + inflight, level=_REFUSAL[budget.action])
            if budget.action == "downgrade":
                new_model = budget.downgrade_to
                continue
            self._release(record)
            if budget.action == "exit" and self._on_exit is not None:
                self._on_exit(budget, event)  # does not return when it terminates the process
            unit, used_v, limit_v = self._primary(budget, used + inflight)
            raise BudgetExceeded(budget.name, scope, used_v, limit_v, unit)
        return new_model

    def _reservation(self, intent: CallIntent, *, with_cost: bool) -> Amount:
        out = intent.max_output_tokens or self.default_output_reservation
        inp = intent.estimated_input_tokens
        if not with_cost:
            return Amount(0, inp + out)
        rates = self._nanos_per_million(intent.record)
        if rates is not None:  # most models: integer arithmetic, rounded up (an estimate errs high)
            return Amount(-(-(inp * rates[0] + out * rates[1]) // 1_000_000), inp + out)
        priced = self._estimate_cost(intent.record, TokenUsage(input_tokens=inp, output_tokens=out))
        return Amount(self._nanos(*priced) if priced is not None else 0, inp + out)

    def _nanos_per_million(self, record: UsageRecord) -> tuple[int, int] | None:
        key = (record.provider, record.model, record.server_address)
        try:
            return self._rate_cache[key]
        except KeyError:
            pass
        rates = self._flat_rates(record) if self._flat_rates is not None else None
        nanos = None if rates is None else (self._nanos(rates[0], rates[2]), self._nanos(rates[1], rates[2]))
        if len(self._rate_cache) >= 10_000:
            self._rate_cache.clear()
        self._rate_cache[key] = nanos
        return nanos

    def _release(self, record: UsageRecord) -> None:
        for r in record.reservations:
            self.store.settle(r.bucket, r.inflight_key, r.amount, Amount(), r.ttl_s)
        record.reservations.clear()

    # -- after the call ------------------------------------------------------------
    def process(self, record: UsageRecord) -> None:
        if record.status == "blocked" or not self.budgets:
            self._release(record)
            return
        actual = self._actual(record)
        reserved = {(r.budget.name, r.scope): r for r in record.reservations}
        record.reservations.clear()
        now = record.submitted_at if record.submitted_at is not None else self._clock()
        matched = iter(self._plan(record, now).matched)
        adm = next(matched, None)
        for budget in self.budgets:
            if adm is not None and adm.budget is budget:
                self._settle(adm, reserved.get((budget.name, adm.scope)), actual)
                adm = next(matched, None)
                continue
            # The model may have been downgraded away from this budget's glob: still settle what was held.
            held = next((r for (name, _), r in reserved.items() if name == budget.name), None)
            if held is not None:
                self._remember(budget, held.scope)
                self._settle(self._admission(budget, held.scope, self._window(budget, now)), held, actual)

    def _settle(self, adm: _Admission, held: _Reservation | None, actual: Amount) -> None:
        """Count ``actual`` (releasing ``held``, the call's reservation) and fire the thresholds it crosses.

        One round trip (Redis) or transaction (SQLite) for the settlement and the new total; none
        at all with leases, which count here and write in the background."""
        inflight_key, reserved = (held.inflight_key, held.amount) if held is not None else (adm.inflight_key, _NONE)
        used, _ = self.store.settle_and_read(adm.bucket, inflight_key, reserved, actual, adm.window.ttl_s,
                                             adm.used_keys)
        self._thresholds(adm.budget, adm.scope, adm.window, used)

    def _actual(self, record: UsageRecord) -> Amount:
        cost = 0
        if record.cost is not None and record.currency:
            cost = self._nanos(record.cost, record.currency)
        return Amount(cost, record.tokens.total_tokens)

    def _nanos(self, cost: Decimal, currency: str | None) -> int:
        if currency in self._unconvertible:
            return 0  # already warned; don't raise and catch on every call
        if currency and currency != self.currency:
            try:
                cost = self._to_reporting(cost, currency)
            except (ValueError, ArithmeticError):
                if currency not in self._unconvertible:
                    self._unconvertible.add(currency)
                    logger.warning("budgets: %s costs cannot be converted to %s; add pricing.exchange_rates.%s "
                                   "to the config. Until then they count as tokens only.",
                                   currency, self.currency, currency)
                return 0
        return to_nanos(cost)

    def _thresholds(self, budget: BudgetConfig, scope: str, window: Window, used: Amount) -> None:
        util = self._utilization(budget, used)
        levels = [(t, "warn") for t in budget.warn_at if util >= t]
        if util >= 1:
            levels.append((1.0, "exceeded"))
        for threshold, level in levels:
            mark = f"{budget.name}|{scope}|{window.id}|{level}|{threshold}"
            if mark in self._marked:
                continue  # asked the store once already: every later call past the threshold is not news
            if len(self._marked) >= 10_000:
                self._marked.clear()
            self._marked.add(mark)
            if self.store.mark_once(mark, window.ttl_s):
                self._event(budget, scope, window, used, level=level, threshold=threshold)

    def _utilization(self, budget: BudgetConfig, used: Amount) -> float:
        limit = self._limit(budget)
        utils = []
        if limit.cost_nanos:
            utils.append(used.cost_nanos / limit.cost_nanos)
        if limit.tokens:
            utils.append(used.tokens / limit.tokens)
        return max(utils, default=0.0)

    def _primary(self, budget: BudgetConfig, used: Amount) -> tuple[str, Any, Any]:
        """The unit that is closest to (or past) its limit, for messages."""
        lim = budget.limit
        if lim.cost is not None and (lim.tokens is None or used.cost_nanos / to_nanos(lim.cost)
                                     >= used.tokens / lim.tokens):
            return self.currency, from_nanos(used.cost_nanos), lim.cost
        return "tokens", used.tokens, lim.tokens

    def _event(self, budget: BudgetConfig, scope: str, window: Window, used: Amount, *, level: str,
               threshold: float | None = None) -> BudgetEvent:
        unit, used_v, limit_v = self._primary(budget, used)
        event = BudgetEvent(budget.name, scope, level, window.kind, float(used_v), float(limit_v), unit, threshold)
        # Every refusal is counted; only the first of each kind per window is logged at WARNING.
        first = (budget.name, scope, window.id, level) not in self._logged
        if first:
            with self._lock:
                if len(self._logged) > 10_000:
                    self._logged.clear()
                self._logged.add((budget.name, scope, window.id, level))
        log = logger.warning if first and level in ("exceeded", "blocked", "exit") else (
            logger.info if first else logger.debug)
        log("budget %s (%s) %s: %s of %s %s used", budget.name, scope, level, used_v, limit_v, unit)
        for fn in (self._on_event, *self.callbacks):
            if fn is None:
                continue
            try:
                fn(event)
            except Exception as exc:  # a user callback must not break the call that triggered it
                internal_error("budget_callback", exc)
        return event

    # -- status, gauges, periodic refresh ----------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        now = self._clock()
        with self._lock:
            instances = list(self._instances.items())
        out = []
        for (name, scope), budget in instances:
            window = self._window(budget, now)
            used_keys, _, inflight_key = self._keys(budget, scope, window)
            used, inflight = self.store.read(used_keys, inflight_key)
            for unit, used_v, limit_v in self._units(budget, used):
                util = float(used_v) / float(limit_v)
                elapsed = window.elapsed(now)
                rate = float(used_v) / elapsed if elapsed > 0 else 0.0
                remaining = float(limit_v) - float(used_v)
                out.append({
                    "budget": name, "scope": scope, "window": budget.window, "unit": unit,
                    "used": used_v, "limit": limit_v, "utilization": util,
                    "in_flight": from_nanos(inflight.cost_nanos) if unit != "tokens" else inflight.tokens,
                    "window_start": window.start, "window_end": window.end if window.end != float("inf") else None,
                    "action": budget.action,
                    "state": "exceeded" if util >= 1 else ("warn" if budget.warn_at and util >= budget.warn_at[0]
                                                            else "ok"),
                    "seconds_to_exhaustion": (remaining / rate if rate > 0 and remaining > 0 else
                                              (0.0 if remaining <= 0 else None)),
                })
        return out

    def _units(self, budget: BudgetConfig, used: Amount) -> list[tuple[str, Any, Any]]:
        out: list[tuple[str, Any, Any]] = []
        if budget.limit.cost is not None:
            out.append((self.currency, from_nanos(used.cost_nanos), budget.limit.cost))
        if budget.limit.tokens is not None:
            out.append(("tokens", used.tokens, budget.limit.tokens))
        return out

    def refresh(self) -> None:
        """Re-read every known instance (window roll-over, rolling decay, other processes' usage)."""
        try:
            if self.settle_pending is not None:
                self.settle_pending()
            self._gauge_cache = self.status()
        except Exception as exc:
            internal_error("budget_refresh", exc)

    def register_gauges(self, meter: Any) -> None:
        def observe(field: str) -> Callable[[CallbackOptions], list[Observation]]:
            def callback(options: CallbackOptions) -> list[Observation]:
                self.refresh()
                return [Observation(float(s[field]), {"budget": s["budget"], "scope": s["scope"],
                                                      "window": s["window"], "unit": s["unit"]})
                        for s in self._gauge_cache]
            return callback

        meter.create_observable_gauge(N.METRIC_BUDGET_LIMIT, [observe("limit")], description="Budget limit.")
        meter.create_observable_gauge(N.METRIC_BUDGET_USED, [observe("used")],
                                      description="Usage in the budget's current window.")
        meter.create_observable_gauge(N.METRIC_BUDGET_UTILIZATION, [observe("utilization")],
                                      description="used / limit (1 = exhausted).")
        register_store_metrics(meter, self.store)  # the health of the store these budgets count in

    def start(self, interval_s: float) -> None:
        if self._thread is not None or not self.budgets:
            return

        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="otel-llm-usage-budgets", daemon=True)
        self._thread.start()

    def after_fork_in_child(self) -> None:
        """Only the forking thread survives a fork: new lock, no refresh thread (``start`` makes one)."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def write_report(self, path: str | os.PathLike[str], event: BudgetEvent, extra: dict[str, Any]) -> None:
        report = {"reason": asdict(event), "time": self._clock(), "budgets": self.status(), **extra}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, default=str, indent=2), encoding="utf-8")


_NONE = Amount()
_REFUSAL = {"block": "blocked", "downgrade": "downgraded", "exit": "exit"}
