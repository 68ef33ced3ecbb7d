# SPDX-License-Identifier: Apache-2.0
"""The pricing stage of the pipeline: puts cost, currency and price source on each record.

It runs synchronously on the hot path (the next call's budget check must see this call's
cost), so it only does a memoised lookup and a little ``Decimal`` arithmetic, and it never
raises: an odd record is logged at debug level and left unpriced (``cost is None``).

``cost is None`` always means "unpriced", never "free": a free model gets ``Decimal(0)``.
An unknown model logs one warning per (provider, model) for the life of the stage and calls
``on_unpriced(record)`` for every such call (the telemetry stage counts them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from ..usage import TokenUsage, UsageRecord
from .catalog import PriceCatalog, canonical_provider, dashscope_region
from .compute import DECIMAL_CONTEXT, compute_cost
from .hourly import HourlyBilling
from .models import PriceEntry, PricingSettings
from .volume import VolumeMeter

__all__ = ["PricingStage", "convert_currency"]

logger = logging.getLogger("otel_llm_usage.pricing")

_MAX_WARNED = 10_000  # bound the "already warned" set against arbitrary model strings


def _rate_pair(from_ccy: str, to_ccy: str, reporting_currency: str,
               exchange_rates: dict[str, Decimal]) -> tuple[Decimal, Decimal] | None:
    """(rate of ``from_ccy``, rate of ``to_ccy``) in the reporting currency, ``None`` for no conversion.

    Raises ``ValueError`` naming the missing rate."""
    src, dst, base = from_ccy.strip().upper(), to_ccy.strip().upper(), reporting_currency.strip().upper()
    if src == dst:
        return None

    def rate(code: str) -> Decimal:
        if code == base:
            return Decimal(1)
        value = exchange_rates.get(code)
        if value is None:
            raise ValueError(
                f"no exchange rate for {code}: add pricing.exchange_rates.{code} "
                f"(how many {base} one {code} is worth) to convert {src} to {dst}"
            )
        return value

    return rate(src), rate(dst)


def _apply(amount: Decimal, pair: tuple[Decimal, Decimal] | None) -> Decimal:
    if pair is None:
        return amount
    return DECIMAL_CONTEXT.divide(DECIMAL_CONTEXT.multiply(amount, pair[0]), pair[1])


def convert_currency(amount: Decimal, from_ccy: str, to_ccy: str, *, reporting_currency: str,
                     exchange_rates: dict[str, Decimal]) -> Decimal:
    """Convert with fixed rates quoted against the reporting currency (1 X = rate x reporting).

    Raises ``ValueError`` naming the missing rate.
    """
    return _apply(amount, _rate_pair(from_ccy, to_ccy, reporting_currency, exchange_rates))


class PricingStage:
    """Prices :class:`UsageRecord` objects in place."""

    def __init__(self, catalog: PriceCatalog | None = None, settings: PricingSettings | None = None, *,
                 on_unpriced: Callable[[UsageRecord], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings or PricingSettings()
        self.catalog = catalog or PriceCatalog.from_settings(self.settings)
        self.hourly = HourlyBilling(self.settings.hourly, clock=clock,
                                    default_currency=self.settings.currency)
        self._on_unpriced = on_unpriced
        self._clock = clock
        self._warned: set[tuple[str, str]] = set()
        self._volume: dict[tuple[str | None, str | None, str], VolumeMeter] = {}
        self._lock = threading.Lock()
        self._rate_pairs: dict[tuple[str, str], tuple[Decimal, Decimal] | None] = {}

    # -- public API -----------------------------------------------------------------

    def convert(self, amount: Decimal, from_ccy: str, to_ccy: str) -> Decimal:
        """Convert between currencies with the configured fixed rates."""
        key = (from_ccy, to_ccy)
        try:
            pair = self._rate_pairs[key]
        except KeyError:  # budgets convert every call's cost: resolve a currency pair once
            pair = _rate_pair(from_ccy, to_ccy, self.settings.currency, self.settings.exchange_rates)
            if len(self._rate_pairs) < 256:
                self._rate_pairs[key] = pair
        return _apply(amount, pair)

    def to_reporting(self, amount: Decimal, currency: str) -> Decimal:
        return self.convert(amount, currency, self.settings.currency)

    def process(self, record: UsageRecord) -> None:
        """Set ``record.cost``/``currency``/``price_source``. Never raises."""
        try:
            self._process(record)
        except Exception:
            logger.debug("could not price record %s", getattr(record, "record_id", "?"), exc_info=True)
            record.cost = None
            record.currency = None
            record.price_source = None

    # -- internals ------------------------------------------------------------------

    def _process(self, record: UsageRecord) -> None:
        record.cost = None
        record.currency = None
        record.price_source = None
        names = [n for n in dict.fromkeys((record.request_model, record.response_model)) if n]
        params: dict[str, Any] = record.request_params if isinstance(record.request_params, dict) else {}
        tokens = record.tokens
        if not isinstance(tokens, TokenUsage):
            raise TypeError(f"record.tokens is {type(tokens).__name__}, not TokenUsage")

        for name in names if self.hourly.configured else ():
            hourly = self.hourly.touch(record.provider, name)
            if hourly is not None:
                # Runtime is billed by the hour meter; the call itself adds nothing.
                record.cost = Decimal(0)
                record.currency = hourly.currency or self.settings.currency
                record.price_source = "config:hourly"
                return

        region = params.get("region")
        entry = None
        for name in names:
            entry = self.catalog.lookup(record.provider, name, record.server_address,
                                        region=region if isinstance(region, str) else None)
            if entry is not None:
                break

        if entry is None:
            if self.settings.fallback_genai_prices and self._price_with_genai_prices(record, names, tokens):
                return
            self._unpriced(record)
            return

        currency = entry.currency or self.settings.currency
        if record.status == "blocked":
            cost = Decimal(0)  # never sent, so never billed
        elif entry.volume is not None and not entry.tiers and entry.input is None:
            cost = self._volume_meter(record, entry).charge(tokens, params)
        else:
            cost = compute_cost(entry, tokens, params)
        record.cost = cost
        record.currency = currency
        record.price_source = entry.source or "config"

    def _volume_meter(self, record: UsageRecord, entry: PriceEntry) -> VolumeMeter:
        key = (entry.provider or canonical_provider(record.provider, record.server_address),
               entry.region, entry.model.lower())
        meter = self._volume.get(key)
        if meter is None:
            with self._lock:
                meter = self._volume.get(key)
                if meter is None:
                    meter = VolumeMeter(entry, clock=self._clock)
                    self._volume[key] = meter
        return meter

    def _unpriced(self, record: UsageRecord) -> None:
        key = (str(record.provider), record.model)
        if key not in self._warned:
            with self._lock:
                if key not in self._warned:
                    if len(self._warned) >= _MAX_WARNED:
                        self._warned.clear()
                    self._warned.add(key)
                    logger.warning(
                        "no price for provider=%s model=%s: its calls are recorded with cost unknown; "
                        "add it under pricing.models in the config",
                        key[0], key[1],
                    )
        if self._on_unpriced is not None:
            try:
                self._on_unpriced(record)
            except Exception:
                logger.debug("on_unpriced callback failed", exc_info=True)

    def _price_with_genai_prices(self, record: UsageRecord, names: list[str], tokens: TokenUsage) -> bool:
        """Optional last resort: the ``genai-prices`` package, if installed. Prices in USD."""
        try:
            import genai_prices  # optional dependency
        except ImportError:
            return False
        provider = canonical_provider(record.provider, record.server_address)
        if provider == "dashscope" and dashscope_region(record.server_address) == "cn":
            return False  # genai-prices quotes USD list prices; China-region calls bill in CNY
        usage = genai_prices.Usage(
            input_tokens=tokens.input_tokens,
            output_tokens=tokens.output_tokens,
            cache_read_tokens=tokens.cached_input_tokens,
            cache_write_tokens=tokens.cache_write_tokens,
        )
        for name in names:
            try:
                price = genai_prices.calc_price(usage, model_ref=name, provider_id=provider)
            except Exception:
                continue
            record.cost = Decimal(str(price.total_price))
            record.currency = "USD"
            record.price_source = "genai-prices"
            return True
        return False
