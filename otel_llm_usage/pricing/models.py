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

from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "HourlyPrice",
    "PriceEntry",
    "PriceTier",
    "PricingSettings",
    "VolumePricing",
    "VolumeTier",
]

Region = Literal["cn", "intl"]
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
    """One request-length tier: applies when the request's input tokens are ``<= max_input_tokens``.

    ``max_input_tokens: null`` means unbounded (the last tier). The whole request
    (input and output) is billed at the tier its input length falls into.
    """

    max_input_tokens: int | None = Field(default=None, ge=1)


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
    region: Region | None = None  # DashScope: cn (Beijing, CNY) or intl (Singapore, USD)
    kind: Kind = "chat"
    tiers: list[PriceTier] = Field(default_factory=list)
    volume: VolumePricing | None = None
    # Fraction taken off the whole call when request_params["batch"] is true (0.5 = half price).
    batch_discount: Decimal | None = None
    # Used where no absolute cached_input/cache_write is given (also inside tiers):
    # cached price = applicable input price x ratio. Alibaba states its cache prices this way.
    cached_input_ratio: Decimal | None = None
    cache_write_ratio: Decimal | None = None
    verified: bool = True
    note: str | None = None
    # Filled by the catalog: "config", "bundled:<file>@<read_on>" or "genai-prices".
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
        if self.tiers:
            if self.input is not None or self.output is not None:
                raise ValueError("give either flat input/output prices or tiers, not both")
            bounds = [t.max_input_tokens for t in self.tiers]
            if any(b is None for b in bounds[:-1]):
                raise ValueError("only the last tier may be unbounded (max_input_tokens: null)")
            finite = [b for b in bounds if b is not None]
            if finite != sorted(finite) or len(set(finite)) != len(finite):
                raise ValueError("tiers must be in strictly increasing max_input_tokens order")
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
    per_hour: Decimal
    note: str | None = None

    @field_validator("per_hour", mode="before")
    @classmethod
    def _decimal(cls, value: Any) -> Any:
        return _to_decimal(value)

    @field_validator("per_hour")
    @classmethod
    def _check(cls, value: Decimal) -> Decimal:
        _non_negative(value, "per_hour")
        return value



class PricingSettings(BaseModel):
    """The ``pricing:`` section of the config file."""

    model_config = ConfigDict(extra="forbid")

    currency: str = "CNY"  # reporting currency for budgets and reports
    # 1 <code> = rate x <currency>; e.g. {USD: 7.1} with currency CNY. Fixed, never fetched.
    exchange_rates: dict[str, Decimal] = Field(default_factory=dict)
    models: list[PriceEntry] = Field(default_factory=list)
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
