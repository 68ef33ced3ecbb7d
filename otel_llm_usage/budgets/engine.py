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

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from .._blocking import WouldBlock, may_wait
from .._bounded import BoundedDict, BoundedSet
from ..errors import BudgetExceeded
from ..ledger.base import Amount, CounterStore, to_nanos
from ..runtime.pipeline import CallIntent, PreCallStage
from ..usage import TokenUsage, UsageRecord
from .bypass import bypassed
from .config import BudgetConfig
from .events import BudgetEvent, EventLevel
from .notify import Events, primary_unit
from .plan import Admission, Planner
from .status import BudgetStatus, Refresher, status_rows, write_exit_report

__all__ = ["BudgetEngine"]

logger = logging.getLogger("otel_llm_usage.budgets")


@dataclass(slots=True)
class _Reservation:
    budget: BudgetConfig
    scope: str
    bucket: str
    inflight_key: str
    amount: Amount
    ttl_s: int | None


@dataclass(frozen=True, slots=True)
class _Crossing:
    """A threshold one settlement passed, for this process the first time."""

    adm: Admission
    used: Amount
    level: EventLevel
    threshold: float
    mark: str


class BudgetEngine(PreCallStage):
    """Admission before a call (a pre-call stage) and settlement after it (a pipeline stage).

    ``settle_pending`` settles records whose settlement is still queued (the pipeline's deferred
    stages): a refusal or a status read happens only after it, so neither sees stale usage."""

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
        settle_pending: Callable[[], object] | None = None,
        clock: Callable[[], float] = time.time,
        default_output_reservation: int = 1024,
        max_instances: int = 1000,
    ) -> None:
        self.budgets = budgets
        self.store = store
        self.currency = currency
        self.planner = Planner(budgets, max_instances=max_instances)
        self.events = Events(currency, on_event)
        self.refresher = Refresher(self._settled_status)
        self._to_reporting = to_reporting
        self._estimate_cost = estimate_cost
        self._flat_rates = flat_rates
        # (provider, model, server) -> reporting-currency nanos per 1M (input, output) tokens, or
        # None when the price depends on more than token counts (tiers...): see _reservation.
        self._rate_cache: BoundedDict[tuple[str, str, str | None], tuple[int, int] | None] = BoundedDict()
        self._on_exit = on_exit
        self._clock = clock
        self.settle_pending = settle_pending
        self.default_output_reservation = default_output_reservation
        self._marked: BoundedSet[str] = BoundedSet()  # warn-once marks this process has asked the store about
        self._unconvertible: set[str] = set()
        # Reservations of calls admitted and not settled yet, by record id: kept here, not on the record.
        self._held: dict[str, list[_Reservation]] = {}
        # Thresholds a record crossed while it was settled on an event loop, by record id: the store's
        # warn-once mark and the host's callbacks wait for the worker thread (see ``process``).
        self._crossed: dict[str, list[_Crossing]] = {}

    @property
    def callbacks(self) -> list[Callable[[BudgetEvent], None]]:
        return self.events.callbacks

    @property
    def wants_pre_call(self) -> bool:
        return any(b.action != "alert" for b in self.budgets)

    # -- before the call ---------------------------------------------------------
    def before_call(self, intent: CallIntent) -> str | None:
        if bypassed() or not self.budgets:
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
        for adm in self.planner.plan(record, now).gating:
            if not self.store.counts_locally and not may_wait():
                raise WouldBlock("admission on a shared store")  # the async call awaits it on a thread
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
                self._held.setdefault(record.record_id, []).append(
                    _Reservation(budget, scope, adm.bucket, adm.inflight_key, reservation, adm.window.ttl_s))
                continue
            event = self.events.fire(budget, scope, adm.window, used + inflight, _REFUSAL[budget.action])
            if budget.action == "downgrade":
                new_model = budget.downgrade_to
                continue
            self._release(record)
            if budget.action == "exit" and self._on_exit is not None:
                self._on_exit(budget, event)  # does not return when it terminates the process
            unit, used_v, limit_v = primary_unit(budget, used + inflight, self.currency)
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
        return self._rate_cache.put(key, nanos)

    def _release(self, record: UsageRecord) -> None:
        for r in self._held.pop(record.record_id, ()):
            self.store.settle(r.bucket, r.inflight_key, r.amount, Amount(), r.ttl_s)

    # -- after the call ------------------------------------------------------------
    def process(self, record: UsageRecord) -> None:
        """Settle the record's reservations and fire the thresholds it crosses.

        Where waiting is not allowed (the pipeline's slices on an event loop) a store that would
        wait for I/O raises ``WouldBlock`` before anything is counted; a store that counts locally
        settles, and the thresholds crossed (a store round trip for the warn-once mark, then the
        host's callbacks) are kept and ``WouldBlock`` raised after: the pipeline runs this stage
        again for the record on its worker thread, which fires them."""
        crossed = self._crossed.pop(record.record_id, None)
        if crossed is not None:
            self._fire(crossed)
            return
        on_loop = not may_wait()
        if on_loop and not self.store.counts_locally:
            raise WouldBlock("settlement on a shared store")
        crossings: list[_Crossing] = []
        self._settle_record(record, crossings)
        if not crossings:
            return
        if on_loop:
            self._crossed[record.record_id] = crossings
            raise WouldBlock("budget thresholds crossed")
        self._fire(crossings)

    def _settle_record(self, record: UsageRecord, crossings: list[_Crossing]) -> None:
        if record.status == "blocked" or not self.budgets:
            self._release(record)
            return
        actual = self._actual(record)
        reserved = {(r.budget.name, r.scope): r for r in self._held.pop(record.record_id, ())}
        now = record.submitted_at if record.submitted_at is not None else self._clock()
        matched = iter(self.planner.plan(record, now).matched)
        adm = next(matched, None)
        for budget in self.budgets:
            if adm is not None and adm.budget is budget:
                self._settle(adm, reserved.get((budget.name, adm.scope)), actual, crossings)
                adm = next(matched, None)
                continue
            # The model may have been downgraded away from this budget's glob: still settle what was held.
            held = next((r for (name, _), r in reserved.items() if name == budget.name), None)
            if held is not None:
                self.planner.remember(budget, held.scope)
                self._settle(self.planner.admission(budget, held.scope, self.planner.window(budget, now)), held,
                             actual, crossings)

    def _settle(self, adm: Admission, held: _Reservation | None, actual: Amount,
                crossings: list[_Crossing]) -> None:
        """Count ``actual`` (releasing ``held``, the call's reservation) and note the thresholds it crosses.

        One round trip (Redis) or transaction (SQLite) for the settlement and the new total; none
        at all with leases, which count here and write in the background."""
        inflight_key, reserved = (held.inflight_key, held.amount) if held is not None else (adm.inflight_key, _NONE)
        used, _ = self.store.settle_and_read(adm.bucket, inflight_key, reserved, actual, adm.window.ttl_s,
                                             adm.used_keys)
        self._thresholds(adm, used, crossings)

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

    def _thresholds(self, adm: Admission, used: Amount, crossings: list[_Crossing]) -> None:
        budget, scope, window = adm.budget, adm.scope, adm.window
        util = _utilization(adm, used)
        levels: list[tuple[float, EventLevel]] = [(t, "warn") for t in budget.warn_at if util >= t]
        if util >= 1:
            levels.append((1.0, "exceeded"))
        for threshold, level in levels:
            mark = f"{budget.name}|{scope}|{window.id}|{level}|{threshold}"
            if self._marked.first(mark):  # else asked the store once already: not news
                crossings.append(_Crossing(adm, used, level, threshold, mark))

    def _fire(self, crossings: list[_Crossing]) -> None:
        for c in crossings:
            window = c.adm.window
            if self.store.mark_once(c.mark, window.ttl_s):
                self.events.fire(c.adm.budget, c.adm.scope, window, c.used, c.level, c.threshold)

    # -- status, refresh, exit report ----------------------------------------------
    def status(self) -> list[BudgetStatus]:
        return status_rows(self.planner, self.store, self.currency, self._clock())

    def _settled_status(self) -> list[BudgetStatus]:
        if self.settle_pending is not None:
            self.settle_pending()
        return self.status()

    def refresh(self) -> list[BudgetStatus]:
        """Settle what is queued, then re-read every known instance: the rows the budget gauges report
        (the last good ones if that fails)."""
        return self.refresher.refresh()

    def start(self, interval_s: float) -> None:
        if self.budgets:
            self.refresher.start(interval_s)

    def after_fork_in_child(self) -> None:
        """Only the forking thread survives a fork: new locks, no refresh thread (``start`` makes one)."""
        self.planner.after_fork_in_child()
        self._crossed.clear()  # their records were the parent's to finish
        self.events.after_fork_in_child()
        self.refresher.after_fork_in_child()

    def close(self) -> None:
        self.refresher.close()

    def write_report(self, path: str | os.PathLike[str], event: BudgetEvent, extra: dict[str, object]) -> None:
        write_exit_report(path, event, self.status(), self._clock(), dict(extra))


def _utilization(adm: Admission, used: Amount) -> float:
    limit = adm.limit
    utils = []
    if limit.cost_nanos:
        utils.append(used.cost_nanos / limit.cost_nanos)
    if limit.tokens:
        utils.append(used.tokens / limit.tokens)
    return max(utils, default=0.0)


_NONE = Amount()
_REFUSAL: dict[str, EventLevel] = {"block": "blocked", "downgrade": "downgraded", "exit": "exit"}
