# SPDX-License-Identifier: Apache-2.0
"""The pricing stage of the pipeline: puts cost, currency and price source on each record.

It runs synchronously on the hot path (the next call's budget check must see this call's
cost), so it only does a memoised lookup and a little ``Decimal`` arithmetic, and it never
raises: an odd record is logged at debug level and left unpriced (``cost is None``).

``cost is None`` always means "unpriced", never "free": a free model gets ``Decimal(0)``.
An unknown model logs one warning per (provider, model) for the life of the stage and calls
``on_unpriced(record)`` for every such call (the telemetry stage counts them).

The call's time for time-of-day prices is ``record.timestamp``, the wall-clock time the call
started. A call through a gateway host nobody mapped is priced by model name when the catalogs
agree (``price_source`` ``inferred:<provider>``); when they disagree it stays unpriced and one
warning names the candidates and the ``provider_hosts`` key that settles it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, NamedTuple

from .._bounded import BoundedDict, BoundedSet
from ..usage import TokenUsage, UsageRecord
from .catalog import PriceCatalog, Resolution, canonical_provider, display_price
from .compute import DECIMAL_CONTEXT, compute_cost, has_cache_price, is_batch, linear_cost
from .hosts import price_region
from .hourly import HourlyBilling
from .models import PriceEntry, PricingSettings
from .volume import VolumeMeter

__all__ = ["CostConverter", "PricingStage", "convert_currency"]

logger = logging.getLogger("otel_llm_usage.pricing")


class _Priced(NamedTuple):
    cost_of: Callable[[TokenUsage], Decimal]
    currency: str
    price_source: str | None
    cache_priced: bool
    batch_discounted: bool


def _region(params: dict[str, Any]) -> str | None:
    """The region a request names (``request_params["region"]``), which selects the catalog it is priced from."""
    region = params.get("region")
    return region if isinstance(region, str) else None


def _quick_key(record: UsageRecord, params: dict[str, Any]) -> tuple[str | None, ...]:
    return record.provider, record.request_model, record.response_model, record.server_address, _region(params)


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


class CostConverter:
    """Record cost → reporting currency with fixed config rates; ``None`` when no rate is known."""

    def __init__(self, currency: str, exchange_rates: Mapping[str, Decimal] | None = None) -> None:
        self.currency = currency.upper()
        self.rates = dict(exchange_rates or {})

    def __call__(self, amount: Decimal, currency: str) -> Decimal | None:
        try:
            return convert_currency(amount, currency, self.currency, reporting_currency=self.currency,
                                    exchange_rates=self.rates)
        except ValueError:
            return None



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
        self._warned: BoundedSet[tuple[str, ...]] = BoundedSet()
        #: ``source`` keys of the catalogs that priced at least one call (the freshness gauge's in_use).
        self.used_catalogs: set[str] = set()
        self._volume: dict[tuple[str | None, str | None, str], VolumeMeter] = {}
        self._lock = threading.Lock()
        self._rate_pairs: dict[tuple[str, str], tuple[Decimal, Decimal] | None] = {}
        #: (provider, request model, response model, host, region) -> how its calls were priced, for
        #: entries whose cost is the tokens' alone (see ``_quick``)
        self._priced: BoundedDict[tuple[str | None, ...], _Priced] = BoundedDict(4096)

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
            logger.debug("could not price record %s", record.record_id, exc_info=True)
            record.cost = None
            record.currency = None
            record.price_source = None

    # -- internals ------------------------------------------------------------------

    def _process(self, record: UsageRecord) -> None:
        if self._quick(record):
            return
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

        resolution = self._resolve(record, names, params)
        entry = resolution.entry
        if entry is None:
            if resolution.candidates:
                self._ambiguous(record, resolution.candidates)
                return
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
            cost = compute_cost(entry, tokens, params, at=record.timestamp)
        record.cost = cost
        record.currency = currency
        record.price_source = resolution.price_source
        source = entry.source
        if source is not None and source not in self.used_catalogs:
            with self._lock:
                self.used_catalogs.add(source)
        if record.status != "blocked" and not self.hourly.configured:
            cost_of = linear_cost(entry)
            if cost_of is not None:
                self._priced.put(_quick_key(record, params), _Priced(cost_of, currency, resolution.price_source,
                                                                     has_cache_price(entry),
                                                                     entry.batch_discount is not None))
        if tokens.cached_input_tokens > 0 and not has_cache_price(entry):
            self._once(("nocache", str(entry.provider), entry.model), logging.INFO,
                       "%s/%s has no cache-hit price in its catalog: its cached input tokens are billed at the "
                       "full input price", str(entry.provider), entry.model)

    def _quick(self, record: UsageRecord) -> bool:
        """Price ``record`` as the last call of its model and host was, when that entry's cost is the
        tokens' alone; ``False`` for anything else (the full path decides). The span of every call
        waits for its price: resolving names, hourly meters and the general arithmetic again each time
        cost the calling thread ~15 us of a ~140 us instrumented embedding call, measured."""
        params = record.request_params
        priced = self._priced.get(_quick_key(record, params)) if isinstance(params, dict) else None
        tokens = record.tokens
        if priced is None or record.status == "blocked" or type(tokens) is not TokenUsage or \
                (tokens.cached_input_tokens > 0 and not priced.cache_priced) or \
                (priced.batch_discounted and is_batch(params)):
            return False
        record.cost = priced.cost_of(tokens)
        record.currency = priced.currency
        record.price_source = priced.price_source
        return True

    def _resolve(self, record: UsageRecord, names: list[str], params: dict[str, Any]) -> Resolution:
        region = _region(params)
        ambiguous: Resolution | None = None
        for name in names:
            resolution = self.catalog.resolve(record.provider, name, record.server_address, region=region)
            if resolution.entry is not None:
                return resolution
            ambiguous = ambiguous or (resolution if resolution.candidates else None)
        return ambiguous or Resolution(None)

    def entry_for(self, record: UsageRecord) -> PriceEntry | None:
        """The entry that prices ``record`` (lookup, then gateway inference), for estimates before the call."""
        names = [n for n in dict.fromkeys((record.request_model, record.response_model)) if n]
        params = record.request_params if isinstance(record.request_params, dict) else {}
        return self._resolve(record, names, params).entry

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

    def _once(self, key: tuple[str, ...], level: int, message: str, *args: Any) -> None:
        """Log ``message`` the first time ``key`` is seen (bounded against arbitrary model strings)."""
        if key in self._warned:
            return
        with self._lock:
            first = self._warned.first(key)
        if first:
            logger.log(level, message, *args)

    def _ambiguous(self, record: UsageRecord, candidates: tuple[PriceEntry, ...]) -> None:
        host = record.server_address or str(record.provider)
        listed = ", ".join(
            f"{e.provider}" + (f"/{e.region}" if e.region else "")
            + f" ({display_price(e, 'input')}/{display_price(e, 'output')} {e.currency} per 1M)" for e in candidates)
        choice = candidates[0].provider
        self._once(("ambiguous", host, record.model), logging.WARNING,
                   "model %s on host %s is priced differently by %d catalogs: %s; its calls are recorded with "
                   "cost unknown. Say which provider serves this host with provider_hosts in the config, "
                   "e.g. provider_hosts: {%s: %s}", record.model, host, len(candidates), listed,
                   json.dumps(host), choice)
        self._notify_unpriced(record)

    def _unpriced(self, record: UsageRecord) -> None:
        self._once((str(record.provider), record.model), logging.WARNING,
                   "no price for provider=%s model=%s: its calls are recorded with cost unknown; "
                   "add it under pricing.models in the config", str(record.provider), record.model)
        self._notify_unpriced(record)

    def _notify_unpriced(self, record: UsageRecord) -> None:
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
        from .importers import GENAI_PRICES_PROVIDERS

        provider = canonical_provider(record.provider, record.server_address)
        if price_region(provider, record.server_address) not in (None, "intl"):
            return False  # genai-prices quotes the international lists; other regions bill their own prices
        provider = GENAI_PRICES_PROVIDERS.get(provider, provider)
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
