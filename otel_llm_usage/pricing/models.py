# SPDX-License-Identifier: Apache-2.0
"""Pydantic models for prices: one catalog entry and the ``pricing:`` config section.

The same :class:`PriceEntry` shape is used by the bundled YAML catalog and by user
overrides in config, so a user can copy an entry out of ``otel-llm-usage prices --format
json`` into their config and edit it. Money is ``Decimal`` throughout: YAML floats are
converted through their shortest ``repr`` so ``0.1`` becomes ``Decimal("0.1")``, never
``0.1000000000000000055511151231257827``.

All prices are per 1,000,000 tokens in the entry's currency. Every model uses
``extra="forbid"`` so a typo in config (``cahced_input``) fails at start-up instead of
silently pricing at the wrong rate.
"""

from __future__ import annotations

import datetime as _dt
import re
import zoneinfo
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from .._zones import Zone

__all__ = [
    "REGIONS",
    "HourlyPrice",
    "PriceEntry",
    "PriceTier",
    "PricingSettings",
    "TimeWindow",
    "VolumePricing",
    "VolumeTier",
]

# DashScope deployments, each billed by its own price list: cn (Beijing, CNY), intl (Singapore),
# hk (Hong Kong) and us (Virginia).
Region = Literal["cn", "intl", "hk", "us"]
REGIONS: tuple[Region, ...] = ("cn", "intl", "hk", "us")
Kind = Literal["chat", "embedding"]


def _to_decimal(value: Any) -> Any:
    """Coerce YAML/JSON numbers to ``Decimal`` as written (``repr`` of a float is its shortest form)."""
    if value is None or isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise ValueError("a price must be a number, not a boolean")
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, (int, str)):
        try:
            return Decimal(str(value).strip())
        except InvalidOperation as exc:
            raise ValueError(f"not a number: {value!r}") from exc
    return value


def _non_negative(value: Decimal | None, name: str) -> None:
    if value is not None and (not value.is_finite() or value < 0):
        raise ValueError(f"{name} must be a finite, non-negative number (got {value})")


def _checked_amount(value: Decimal) -> Decimal:
    _non_negative(value, "the amount")
    return value


# A non-negative Decimal read exactly from YAML/JSON (a multiplier, an hourly price).
_Amount = Annotated[Decimal, BeforeValidator(_to_decimal), AfterValidator(_checked_amount)]


class _Prices(BaseModel):
    """The per-1M-token price fields shared by entries and tiers."""

    model_config = ConfigDict(extra="forbid")

    input: Decimal | None = None
    output: Decimal | None = None
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    # Output price when a hybrid model runs in thinking mode (applies to ALL output
    # tokens of that call, answer included: that is how Alibaba bills hybrid Qwen3).
    thinking_output: Decimal | None = None

    @field_validator("input", "output", "cached_input", "cache_write", "thinking_output", mode="before")
    @classmethod
    def _decimal(cls, value: Any) -> Any:
        return _to_decimal(value)

    @model_validator(mode="after")
    def _check_non_negative(self) -> _Prices:
        for name in ("input", "output", "cached_input", "cache_write", "thinking_output"):
            _non_negative(getattr(self, name), name)
        return self


class PriceTier(_Prices):
    """One request-length tier: applies when the call's input tokens are ``<= max_input_tokens`` and
    its output tokens ``<= max_output_tokens`` (both inclusive; ``null`` = unbounded).

    Tiers are tried in order and the first that admits the call prices all of it (input and
    output). An output band (GLM-4.5+, doubao-seed: answers of at most 200 tokens bill lower) is
    therefore listed before the longer-answer tier of the same input range.
    """

    max_input_tokens: int | None = Field(default=None, ge=1)
    max_output_tokens: int | None = Field(default=None, ge=1)


def _check_tiers(tiers: list[PriceTier]) -> None:
    """Reject orderings where a tier could never apply or a call would fall into the wrong band.

    Tiers sharing a ``max_input_tokens`` form one input band and must be adjacent; bands go up in
    input length (only the last unbounded); inside a band, output bounds go up and the band ends
    with an unbounded one (else a longer answer would be billed at the next band's prices).
    """
    bands: list[tuple[int | None, list[PriceTier]]] = []
    for tier in tiers:
        if bands and bands[-1][0] == tier.max_input_tokens:
            bands[-1][1].append(tier)
            continue
        if any(bound == tier.max_input_tokens for bound, _ in bands):
            raise ValueError(f"tiers with max_input_tokens {tier.max_input_tokens} must be listed together")
        if bands and (bands[-1][0] is None or (tier.max_input_tokens is not None
                                               and tier.max_input_tokens < bands[-1][0])):
            raise ValueError("only the last tier may be unbounded (max_input_tokens: null); "
                             "tiers must be in strictly increasing max_input_tokens order")
        bands.append((tier.max_input_tokens, [tier]))
    for bound, band in bands:
        outputs = [t.max_output_tokens for t in band]
        where = "max_input_tokens: null" if bound is None else f"max_input_tokens {bound}"
        if outputs[-1] is not None:
            raise ValueError(f"the last tier with {where} needs max_output_tokens: null, otherwise longer "
                             f"answers would be billed at another input band's prices")
        finite = [o for o in outputs[:-1] if o is not None]
        if len(finite) != len(outputs) - 1 or finite != sorted(set(finite)):
            raise ValueError(f"tiers with {where} must list max_output_tokens in strictly increasing order, "
                             f"the unbounded one last (the first tier that admits a call wins)")


_HOURS = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


class TimeWindow(BaseModel):
    """A time-of-day price window (DeepSeek off-peak): in ``timezone``, on ``weekdays`` (ISO, 1 = Monday),
    inside any of ``hours`` ("HH:MM-HH:MM", end exclusive, "24:00" allowed as an end), every token
    price of the call is multiplied by ``multiplier``. The call's own timestamp decides. ``dates``,
    when given, limits the window to those local calendar days: public holidays, which no weekday
    rule can express (a holiday calendar is published a year at a time, so it is data, not a rule)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    timezone: Zone
    weekdays: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 7])
    dates: list[_dt.date] = Field(default_factory=list)
    hours: list[str] = Field(min_length=1)
    multiplier: _Amount
    # (start, end) in minutes of the local day, parsed once from ``hours``.
    _spans: tuple[tuple[int, int], ...] = PrivateAttr(default=())
    _zone: zoneinfo.ZoneInfo | None = PrivateAttr(default=None)
    _days: frozenset[_dt.date] = PrivateAttr(default=frozenset())

    @field_validator("weekdays")
    @classmethod
    def _check_weekdays(cls, value: list[int]) -> list[int]:
        if not value or any(d < 1 or d > 7 for d in value) or len(set(value)) != len(value):
            raise ValueError("weekdays are distinct ISO day numbers 1 (Monday) .. 7 (Sunday)")
        return value

    @field_validator("dates", mode="before")
    @classmethod
    def _check_dates(cls, value: Any) -> Any:
        # A datetime is a date too: refuse it rather than drop its time of day without a word.
        if isinstance(value, list) and any(isinstance(d, _dt.datetime) for d in value):
            raise ValueError("dates are calendar days (YYYY-MM-DD), without a time of day")
        if isinstance(value, list) and len(set(map(str, value))) != len(value):
            raise ValueError("dates are listed once each")
        return value

    @model_validator(mode="after")
    def _parse_hours(self) -> TimeWindow:
        spans = []
        for text in self.hours:
            match = _HOURS.match(text.strip())
            if match is None:
                raise ValueError(f"hours entry {text!r} is not HH:MM-HH:MM")
            h1, m1, h2, m2 = (int(g) for g in match.groups())
            start, end = h1 * 60 + m1, h2 * 60 + m2
            if h1 > 23 or m1 > 59 or m2 > 59 or end > 24 * 60 or start >= end:
                raise ValueError(f"hours entry {text!r}: start must be before end within one day "
                                 f"(00:00-24:00; split a range that crosses midnight in two)")
            spans.append((start, end))
        self._spans = tuple(spans)
        self._zone = zoneinfo.ZoneInfo(self.timezone)
        self._days = frozenset(self.dates)
        return self

    def contains(self, at: _dt.datetime) -> bool:
        """Whether the aware datetime ``at`` falls inside this window."""
        local = at.astimezone(self._zone)
        if local.isoweekday() not in self.weekdays or (self.dates and local.date() not in self._days):
            return False
        # Whole seconds suffice: bounds are whole minutes and the end is exclusive.
        second = local.hour * 3600 + local.minute * 60 + local.second
        return any(start * 60 <= second < end * 60 for start, end in self._spans)


class VolumeTier(_Prices):
    """One cumulative-volume tier: applies while the period's cumulative tokens are ``<= up_to_tokens``."""

    up_to_tokens: int | None = Field(default=None, ge=1)


class VolumePricing(BaseModel):
    """Cumulative (volume) pricing over a billing period, as an alternative tier basis."""

    model_config = ConfigDict(extra="forbid")

    period: Literal["hour", "day", "month", "total"] = "month"
    # Fixed UTC offset in hours used to find period boundaries (e.g. 8 for Asia/Shanghai).
    utc_offset_hours: float = 0.0
    tiers: list[VolumeTier] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_tiers(self) -> VolumePricing:
        bounds = [t.up_to_tokens for t in self.tiers]
        if any(b is None for b in bounds[:-1]):
            raise ValueError("only the last volume tier may be unbounded (up_to_tokens: null)")
        finite = [b for b in bounds if b is not None]
        if finite != sorted(finite) or len(set(finite)) != len(finite):
            raise ValueError("volume tiers must be in strictly increasing up_to_tokens order")
        for tier in self.tiers:
            if tier.input is None or tier.output is None:
                raise ValueError("every volume tier needs input and output prices")
        return self


class _ProviderCurrency(BaseModel):
    """Normalizes the provider (lower case) and currency (upper case) spellings users write."""

    @field_validator("currency", check_fields=False)
    @classmethod
    def _upper_currency(cls, value: str | None) -> str | None:
        return value.strip().upper() if value else value

    @field_validator("provider", check_fields=False)
    @classmethod
    def _lower_provider(cls, value: str | None) -> str | None:
        return value.strip().lower() if value else value


class PriceEntry(_Prices, _ProviderCurrency):
    """One priced model: bundled (from ``data/*.yaml``) or from ``pricing.models`` in config.

    Config entries may be partial: fields left out are taken from the bundled entry with the
    same provider and model, if there is one (see :mod:`otel_llm_usage.pricing.catalog`).
    """

    provider: str | None = None  # None in config: matches any provider
    model: str
    aliases: list[str] = Field(default_factory=list)
    # Globs (``gpt-4o-20??-??-??``) or regexes prefixed ``re:``; matched against the lower-cased id.
    patterns: list[str] = Field(default_factory=list)
    currency: str | None = None
    region: Region | None = None  # DashScope: cn (Beijing, CNY), intl (Singapore), hk, us; Moonshot: cn, intl
    kind: Kind = "chat"
    tiers: list[PriceTier] = Field(default_factory=list)
    volume: VolumePricing | None = None
    # Fraction taken off the whole call when request_params["batch"] is true (0.5 = half price).
    batch_discount: Decimal | None = None
    # Used where no absolute cached_input/cache_write is given (also inside tiers):
    # cached price = applicable input price x ratio. Alibaba states its cache prices this way.
    cached_input_ratio: Decimal | None = None
    cache_write_ratio: Decimal | None = None
    # Time-of-day windows (first match multiplies every token price); outside them, the prices above.
    time_windows: list[TimeWindow] = Field(default_factory=list)
    verified: bool = True
    note: str | None = None
    # Where this entry's figures come from and when they were read (catalog files default both to
    # their file-level source and read_on).
    read_on: _dt.date | None = None
    cited: str | None = None
    # Retired models stay priced, so old ledgers still reprice; deprecated ones still answer.
    deprecated_on: _dt.date | None = None
    retired_on: _dt.date | None = None
    # Filled by the catalog: "config", "bundled:<file>@<read_on>", "catalog:<file>@<read_on>".
    source: str | None = None

    @field_validator("batch_discount", "cached_input_ratio", "cache_write_ratio", mode="before")
    @classmethod
    def _decimal_extra(cls, value: Any) -> Any:
        return _to_decimal(value)


    @model_validator(mode="after")
    def _check_entry(self) -> PriceEntry:
        if self.batch_discount is not None and not (0 <= self.batch_discount <= 1):
            raise ValueError("batch_discount is a fraction between 0 and 1 (0.5 = half price)")
        for name in ("cached_input_ratio", "cache_write_ratio"):
            _non_negative(getattr(self, name), name)
        if self.time_windows:
            if self.volume is not None:
                raise ValueError("time_windows cannot be combined with volume pricing")
            names = [w.name for w in self.time_windows]
            if len(set(names)) != len(names):
                raise ValueError("time window names must be distinct")
        if self.tiers:
            if self.input is not None or self.output is not None:
                raise ValueError("give either flat input/output prices or tiers, not both")
            _check_tiers(self.tiers)
            for tier in self.tiers:
                if tier.input is None or (tier.output is None and self.kind == "chat"):
                    raise ValueError("every tier needs an input price (and an output price for chat models)")
        return self

    @property
    def is_priced(self) -> bool:
        """Whether the entry has enough to price a call (config entries may be incomplete)."""
        if self.volume is not None or self.tiers:
            return True
        if self.input is None:
            return False
        return self.kind == "embedding" or self.output is not None

    @property
    def has_cache_price(self) -> bool:
        """Whether cache hits have their own price (else they bill at the full input price)."""
        if self.cached_input is not None or self.cached_input_ratio is not None:
            return True
        tiers: list[_Prices] = [*self.tiers, *(self.volume.tiers if self.volume is not None else [])]
        return bool(tiers) and all(t.cached_input is not None for t in tiers)

    @property
    def is_free(self) -> bool:
        """Every price is zero: the model costs exactly nothing (e.g. glm-4-flash)."""
        prices: list[Decimal | None] = [self.input, self.output, self.cached_input, self.cache_write,
                                        self.thinking_output]
        for tier in self.tiers:
            prices += [tier.input, tier.output, tier.cached_input, tier.cache_write, tier.thinking_output]
        if self.volume is not None:
            for vt in self.volume.tiers:
                prices += [vt.input, vt.output, vt.cached_input, vt.cache_write, vt.thinking_output]
        known = [p for p in prices if p is not None]
        return bool(known) and all(p == 0 for p in known) and self.is_priced


class HourlyPrice(_ProviderCurrency):
    """A self-hosted model billed per hour of runtime instead of per token."""

    model_config = ConfigDict(extra="forbid")

    provider: str | None = None  # None: any provider (self-hosted endpoints are often a hostname)
    model: str
    currency: str | None = None  # default: the reporting currency
    per_hour: _Amount
    note: str | None = None



class PricingSettings(BaseModel):
    """The ``pricing:`` section of the config file."""

    model_config = ConfigDict(extra="forbid")

    currency: str = "CNY"  # reporting currency for budgets and reports
    # 1 <code> = rate x <currency>; e.g. {USD: 7.1} with currency CNY. Fixed, never fetched.
    exchange_rates: dict[str, Decimal] = Field(default_factory=dict)
    models: list[PriceEntry] = Field(default_factory=list)
    # Catalog files in the bundled schema, loaded over the bundled catalogs (relative paths are read
    # from the config file's directory). Nothing is fetched: update them with `prices import`.
    catalog_files: list[str] = Field(default_factory=list)
    # Ask the optional ``genai-prices`` package for models the catalog does not know.
    fallback_genai_prices: bool = False
    hourly: list[HourlyPrice] = Field(default_factory=list)

    @field_validator("currency")
    @classmethod
    def _upper(cls, value: str) -> str:
        value = value.strip().upper()
        if not value:
            raise ValueError("currency must not be empty")
        return value

    @field_validator("exchange_rates", mode="before")
    @classmethod
    def _rates(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {str(k).strip().upper(): _to_decimal(v) for k, v in value.items()}

    @field_validator("exchange_rates")
    @classmethod
    def _positive(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        for code, rate in value.items():
            if not rate.is_finite() or rate <= 0:
                raise ValueError(f"exchange rate for {code} must be a positive number (got {rate})")
        return value
