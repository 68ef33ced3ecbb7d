# SPDX-License-Identifier: Apache-2.0
"""Hourly billing for self-hosted models (a GPU box costs the same whether it answers or idles).

A model's meter starts at its first priced call (or an explicit :meth:`HourlyBilling.start_model`)
and runs until :meth:`HourlyBilling.stop_model` or :meth:`HourlyBilling.stop_all` (call it at
exit). Start/stop may repeat; runtime is the sum of the intervals. Cost is
``runtime_seconds x per_hour / 3600``, exact in ``Decimal``. The clock is injectable
(a callable returning epoch seconds) so tests and replays control time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal

from .models import HourlyPrice

__all__ = ["HourlyBilling"]

_SECONDS_PER_HOUR = Decimal(3600)


def _seconds(value: float) -> Decimal:
    # repr gives the shortest decimal that round-trips, so 0.1 s is Decimal("0.1").
    return Decimal(repr(float(value)))


@dataclass(slots=True)
class _Meter:
    price: HourlyPrice
    accrued_seconds: Decimal = Decimal(0)
    started_at: float | None = None


class HourlyBilling:
    """Runtime meters for the models configured under ``pricing.hourly``."""

    def __init__(self, prices: Iterable[HourlyPrice], clock: Callable[[], float] = time.time,
                 default_currency: str = "CNY") -> None:
        self._clock = clock
        self._default_currency = default_currency.upper()
        self._lock = threading.Lock()
        self._meters: dict[str, _Meter] = {}
        self._by_key: dict[tuple[str | None, str], str] = {}
        for price in prices:
            name = price.model
            self._meters[name] = _Meter(price=price)
            self._by_key[(price.provider, name.lower())] = name

    @property
    def configured(self) -> bool:
        """Whether any model is billed by the hour (most set-ups: none, and pricing skips this)."""
        return bool(self._meters)

    def find(self, provider: str | None, model: str) -> HourlyPrice | None:
        """The hourly price for ``model`` (provider-specific first, then provider-agnostic)."""
        name = self._resolve(provider, model)
        return self._meters[name].price if name is not None else None

    def _resolve(self, provider: str | None, model: str) -> str | None:
        low = model.lower()
        if provider is not None:
            hit = self._by_key.get((provider.lower(), low))
            if hit is not None:
                return hit
        return self._by_key.get((None, low))

    def currency(self, model: str) -> str:
        meter = self._meters[self._require(model)]
        return meter.price.currency or self._default_currency

    def _require(self, model: str) -> str:
        if model in self._meters:
            return model
        low = model.lower()
        for (_, key), name in self._by_key.items():
            if key == low:
                return name
        raise KeyError(f"no hourly price configured for model {model!r}")

    def start_model(self, model: str, now: float | None = None) -> None:
        """Start the runtime meter (no-op if it is already running)."""
        name = self._require(model)
        with self._lock:
            meter = self._meters[name]
            if meter.started_at is None:
                meter.started_at = self._clock() if now is None else now

    def touch(self, provider: str | None, model: str, now: float | None = None) -> HourlyPrice | None:
        """Called for every call: starts the meter on the model's first call. Returns its price."""
        name = self._resolve(provider, model)
        if name is None:
            return None
        self.start_model(name, now)
        return self._meters[name].price

    def stop_model(self, model: str, now: float | None = None) -> None:
        """Stop the meter, keeping the accrued runtime (no-op if it is not running)."""
        name = self._require(model)
        with self._lock:
            meter = self._meters[name]
            if meter.started_at is not None:
                end = self._clock() if now is None else now
                meter.accrued_seconds += _seconds(max(0.0, end - meter.started_at))
                meter.started_at = None

    def stop_all(self, now: float | None = None) -> None:
        """Stop every running meter (at process exit)."""
        end = self._clock() if now is None else now
        for name in list(self._meters):
            self.stop_model(name, end)

    def running_since(self) -> dict[str, float]:
        """When each running meter started."""
        with self._lock:
            return {name: m.started_at for name, m in self._meters.items() if m.started_at is not None}

    def running(self, model: str) -> bool:
        return self._meters[self._require(model)].started_at is not None

    def runtime_seconds(self, model: str, now: float | None = None) -> Decimal:
        name = self._require(model)
        with self._lock:
            meter = self._meters[name]
            total = meter.accrued_seconds
            if meter.started_at is not None:
                at = self._clock() if now is None else now
                total += _seconds(max(0.0, at - meter.started_at))
            return total

    def accrued_cost(self, now: float | None = None) -> dict[str, Decimal]:
        """Cost so far per model (in each model's currency), including a running interval up to ``now``."""
        result: dict[str, Decimal] = {}
        for name, meter in list(self._meters.items()):
            seconds = self.runtime_seconds(name, now)
            result[name] = seconds * meter.price.per_hour / _SECONDS_PER_HOUR
        return result
