# SPDX-License-Identifier: Apache-2.0
"""Pure, ``Decimal``-exact cost of one call from a :class:`PriceEntry` and its token counts.

Rules (prices are per 1,000,000 tokens in the entry's currency):

* Token buckets follow :mod:`otel_llm_usage.usage`: ``input_tokens`` includes cached and
  cache-write tokens, ``output_tokens`` includes reasoning tokens. Each token is billed
  exactly once: uncached input at ``input``, cached input at ``cached_input`` (else
  ``input x cached_input_ratio``, else ``input``), cache writes at ``cache_write`` (else
  ``input x cache_write_ratio``, else ``input``), all output (reasoning included) at the
  output price.
* Hybrid models (an entry or tier with ``thinking_output``) bill *all* output at the
  thinking price when the call ran in thinking mode. Thinking mode is
  ``request_params["enable_thinking"]`` when present (DashScope/Qwen), else
  ``request_params["thinking"]["type"]`` (Doubao/GLM style), else ``reasoning_tokens > 0``.
* Embeddings bill input only.
* Request-length tiers (Qwen ``0<Token<=128K`` ...): the WHOLE call is billed at the first
  tier, in the order listed, whose ``max_input_tokens`` is ``>=`` the call's ``input_tokens``
  and whose ``max_output_tokens`` is ``>=`` its ``output_tokens`` (boundaries inclusive, ``None``
  unbounded; output bands such as "answers of at most 200 tokens" come first in their input band).
  Tier bounds are stored as plain token counts, exactly as the provider states them; the bundled
  data reads Alibaba's "K" as 1,000 tokens (128K = 128,000). Input longer than every bounded
  tier uses the last input band.
* Time windows (DeepSeek off-peak): when the call's time ``at`` falls in one of the entry's
  ``time_windows`` (in the window's time zone), every token price of the selected tier is
  multiplied by the first matching window's ``multiplier``; outside every window, or when the
  time is not known (``at=None``), the entry's own prices apply. The caller passes ``at``: this
  module reads no clock.
* ``request_params["batch"]`` true and the entry has ``batch_discount`` d: cost x (1 - d).
* A free entry (every price zero) costs exactly ``Decimal(0)``.

No rounding is applied: results carry as many digits as the arithmetic needs (computed in
a 50-digit context) so sums of many small calls stay exact; round only for display.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol, TypeVar

from ..usage import TokenUsage
from .models import PriceEntry, PriceTier, TimeWindow

__all__ = [
    "DECIMAL_CONTEXT",
    "MILLION",
    "Buckets",
    "Rates",
    "active_window",
    "apply_batch",
    "compute_cost",
    "flat_rates",
    "has_cache_price",
    "is_batch",
    "linear_cost",
    "price_buckets",
    "rates_for",
    "split_tokens",
    "thinking_mode",
]

MILLION = Decimal(1_000_000)
ZERO = Decimal(0)
DECIMAL_CONTEXT = decimal.Context(prec=50, rounding=decimal.ROUND_HALF_EVEN)
_TRUE_STRINGS = {"1", "true", "yes", "on", "enabled", "enable"}
_FALSE_STRINGS = {"0", "false", "no", "off", "disabled", "disable", "none", ""}


@dataclass(frozen=True, slots=True)
class Rates:
    """Resolved per-1M prices for one call, after tier selection; ``None`` = not separately priced."""

    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write: Decimal
    thinking_output: Decimal | None


@dataclass(frozen=True, slots=True)
class Buckets:
    """Disjoint token counts; their sum is the call's total."""

    uncached_input: int
    cached_input: int
    cache_write: int
    output: int


def split_tokens(tokens: TokenUsage) -> Buckets:
    """Disjoint buckets from a (possibly inconsistent) :class:`TokenUsage`, without mutating it."""
    inp = max(0, int(tokens.input_tokens))
    cached = min(max(0, int(tokens.cached_input_tokens)), inp)
    write = min(max(0, int(tokens.cache_write_tokens)), inp - cached)
    out = max(0, int(tokens.output_tokens))
    return Buckets(uncached_input=inp - cached - write, cached_input=cached, cache_write=write, output=out)


def _flag(value: Any) -> bool | None:
    """Interpret a request flag loosely (bool, 0/1, "true"/"false"); ``None`` if undecidable."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE_STRINGS:
            return True
        if low in _FALSE_STRINGS:
            return False
    return None


def thinking_mode(tokens: TokenUsage, request_params: Mapping[str, Any] | None) -> bool:
    """Whether the call ran in thinking mode (see module docstring for the order of evidence)."""
    params = request_params or {}
    explicit = _flag(params.get("enable_thinking"))
    if explicit is not None:
        return explicit
    thinking = params.get("thinking")
    if isinstance(thinking, Mapping):
        kind = thinking.get("type")
        if isinstance(kind, str) and kind.lower() in ("enabled", "disabled"):
            return kind.lower() == "enabled"
    return tokens.reasoning_tokens > 0


def is_batch(request_params: Mapping[str, Any] | None) -> bool:
    return bool(_flag((request_params or {}).get("batch")))


class _Bounded(Protocol):
    @property
    def max_input_tokens(self) -> int | None: ...

    @property
    def max_output_tokens(self) -> int | None: ...


_T = TypeVar("_T", bound=_Bounded)


def _admits(tier: _Bounded, input_tokens: int, output_tokens: int) -> bool:
    bound_in, bound_out = tier.max_input_tokens, tier.max_output_tokens
    return (bound_in is None or input_tokens <= bound_in) and (bound_out is None or output_tokens <= bound_out)


def _select_tier(tiers: list[_T], input_tokens: int, output_tokens: int = 0) -> _T:
    """The first tier whose bounds admit the call (configured tiers and their compiled forms)."""
    for tier in tiers:
        if _admits(tier, input_tokens, output_tokens):
            return tier
    # Longer than every bounded tier: the provider would normally reject it; bill in the top input
    # band, at the output band the answer falls in (validation ends every band unbounded).
    top = tiers[-1].max_input_tokens
    for tier in tiers:
        if tier.max_input_tokens == top and _admits(tier, 0, output_tokens):
            return tier
    return tiers[-1]


def _aware(at: _dt.datetime | float) -> _dt.datetime:
    if isinstance(at, _dt.datetime):
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError("the call's time must carry a UTC offset (a naive datetime is ambiguous)")
        return at
    return _dt.datetime.fromtimestamp(float(at), _dt.timezone.utc)


def active_window(entry: PriceEntry, at: _dt.datetime | float | None) -> TimeWindow | None:
    """The first of ``entry.time_windows`` the call's time ``at`` (aware datetime or epoch seconds)
    falls in; ``None`` outside them all or when ``at`` is unknown."""
    if not entry.time_windows or at is None:
        return None
    moment = _aware(at)
    return next((w for w in entry.time_windows if w.contains(moment)), None)


def _derived(explicit: Decimal | None, ratio: Decimal | None, base: Decimal) -> Decimal:
    if explicit is not None:
        return explicit
    if ratio is not None:
        return DECIMAL_CONTEXT.multiply(base, ratio)
    return base


def rates_for(entry: PriceEntry, input_tokens: int, output_tokens: int = 0,
              at: _dt.datetime | float | None = None) -> Rates:
    """The per-1M prices that apply to a call of this length at time ``at`` (tier and window selection)."""
    window = active_window(entry, at)
    source = _select_tier(entry.tiers, input_tokens, output_tokens) if entry.tiers else entry
    return _rates_of(entry, source, None if window is None else window.multiplier)


def _rates_of(entry: PriceEntry, source: PriceEntry | PriceTier, multiplier: Decimal | None = None) -> Rates:
    inp = source.input if source.input is not None else ZERO
    out = source.output if source.output is not None else ZERO
    rates = Rates(
        input=inp,
        output=out,
        cached_input=_derived(source.cached_input, entry.cached_input_ratio, inp),
        cache_write=_derived(source.cache_write, entry.cache_write_ratio, inp),
        thinking_output=source.thinking_output,
    )
    if multiplier is None:
        return rates
    scale = functools.partial(DECIMAL_CONTEXT.multiply, multiplier)
    return Rates(input=scale(rates.input), output=scale(rates.output), cached_input=scale(rates.cached_input),
                 cache_write=scale(rates.cache_write),
                 thinking_output=None if rates.thinking_output is None else scale(rates.thinking_output))


def price_buckets(rates: Rates, buckets: Buckets, *, thinking: bool, embedding: bool = False) -> Decimal:
    """Cost of ``buckets`` at ``rates`` (no discounts)."""
    ctx = DECIMAL_CONTEXT
    if embedding:
        total_in = buckets.uncached_input + buckets.cached_input + buckets.cache_write
        return ctx.divide(ctx.multiply(Decimal(total_in), rates.input), MILLION)
    out_rate = rates.thinking_output if thinking and rates.thinking_output is not None else rates.output
    per_million = ctx.add(
        ctx.add(
            ctx.multiply(Decimal(buckets.uncached_input), rates.input),
            ctx.multiply(Decimal(buckets.cached_input), rates.cached_input),
        ),
        ctx.add(
            ctx.multiply(Decimal(buckets.cache_write), rates.cache_write),
            ctx.multiply(Decimal(buckets.output), out_rate),
        ),
    )
    return ctx.divide(per_million, MILLION)


def apply_batch(entry: PriceEntry, cost: Decimal, request_params: Mapping[str, Any] | None) -> Decimal:
    if entry.batch_discount is None or not is_batch(request_params):
        return cost
    return DECIMAL_CONTEXT.multiply(cost, DECIMAL_CONTEXT.subtract(Decimal(1), entry.batch_discount))


class _Linear:
    """One set of per-1M rates as integers over ``10**scale``: a call's cost is one integer sum.

    ``Decimal`` arithmetic in a 50-digit context is most of the cost of pricing a call. The integer
    form gives the very same ``Decimal`` (value *and* exponent, so stored strings do not change):
    ``price_buckets`` divides exactly by 1,000,000 and keeps the ideal exponent, the smallest of
    the rates'.
    """

    __slots__ = ("cached", "embedding", "ideal_exponent", "output", "scale", "uncached", "write")

    def __init__(self, rates: Rates, output: Decimal, embedding: bool) -> None:
        self.embedding = embedding
        values = [rates.input] if embedding else [rates.input, rates.cached_input, rates.cache_write, output]
        exponents = [int(v.as_tuple().exponent) for v in values]
        self.ideal_exponent = min(exponents)
        self.scale = max(0, -self.ideal_exponent)
        scaled = [int(v.scaleb(self.scale, DECIMAL_CONTEXT)) for v in values]
        self.uncached = scaled[0]
        self.cached, self.write, self.output = (scaled[0], scaled[0], 0) if embedding else scaled[1:]

    def cost(self, tokens: TokenUsage) -> Decimal:
        inp = max(0, int(tokens.input_tokens))
        cached = min(max(0, int(tokens.cached_input_tokens)), inp)
        write = min(max(0, int(tokens.cache_write_tokens)), inp - cached)
        total = (inp - cached - write) * self.uncached + cached * self.cached + write * self.write
        if not self.embedding:
            total += max(0, int(tokens.output_tokens)) * self.output
        exponent = -(self.scale + 6)
        if total == 0:
            exponent = self.ideal_exponent
        while exponent < self.ideal_exponent and total % 10 == 0:
            total //= 10
            exponent += 1
        return Decimal(f"{total}E{exponent}")


class _Tier:
    """One request-length tier (or the flat price), in one time window: its rates and their integer forms."""

    __slots__ = ("max_input_tokens", "max_output_tokens", "plain", "rates", "thinking")

    def __init__(self, entry: PriceEntry, source: PriceEntry | PriceTier, multiplier: Decimal | None) -> None:
        embedding = entry.kind == "embedding"
        tier = source if isinstance(source, PriceTier) else None
        self.max_input_tokens = tier.max_input_tokens if tier is not None else None
        self.max_output_tokens = tier.max_output_tokens if tier is not None else None
        self.rates = rates = _rates_of(entry, source, multiplier)
        self.plain = _Linear(rates, rates.output, embedding)
        self.thinking = None if rates.thinking_output is None else _Linear(rates, rates.thinking_output, embedding)


class _Compiled:
    """What ``compute_cost`` needs of an entry, worked out once: free, or its tiers (``None`` for
    volume-priced entries, which keep the general path), and the same tiers scaled for each time window."""

    __slots__ = ("cache_priced", "entry", "free", "tiers", "windows")

    def __init__(self, entry: PriceEntry) -> None:
        self.entry = entry  # holds id(entry), the cache key, against reuse
        self.free = entry.is_free
        self.cache_priced = entry.has_cache_price
        volume_only = entry.volume is not None and not entry.tiers and entry.input is None
        sources: list[PriceEntry | PriceTier] = [*entry.tiers] if entry.tiers else [entry]
        priced = not (self.free or volume_only)
        self.tiers = [_Tier(entry, s, None) for s in sources] if priced else None
        self.windows = [(w, [_Tier(entry, s, w.multiplier) for s in sources])
                        for w in entry.time_windows] if priced else []


_COMPILED: dict[int, _Compiled] = {}
_COMPILED_MAX = 4096


def _compiled(entry: PriceEntry) -> _Compiled:
    compiled = _COMPILED.get(id(entry))
    if compiled is None or compiled.entry is not entry:
        compiled = _Compiled(entry)
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.clear()
        _COMPILED[id(entry)] = compiled
    return compiled


def has_cache_price(entry: PriceEntry) -> bool:
    """:attr:`PriceEntry.has_cache_price`, worked out once per entry (pricing asks on every cached call)."""
    return _compiled(entry).cache_priced


def flat_rates(entry: PriceEntry) -> tuple[Decimal, Decimal] | None:
    """(input, output) prices per 1M tokens when every call costs ``tokens x rate`` (no tiers, volume
    tiers or thinking price; a batch discount is ignored, so batch calls get an upper bound), else
    ``None`` (also when the time of day changes the price). Budget reservations price their estimate
    with it instead of :func:`compute_cost`."""
    compiled = _compiled(entry)
    if compiled.free:
        return ZERO, ZERO
    if compiled.tiers is None or len(compiled.tiers) != 1 or compiled.tiers[0].thinking is not None \
            or compiled.windows:
        return None
    rates = compiled.tiers[0].rates
    return rates.input, ZERO if entry.kind == "embedding" else rates.output


def linear_cost(entry: PriceEntry) -> Callable[[TokenUsage], Decimal] | None:
    """``tokens -> cost``, the very :func:`compute_cost` of ``entry`` for any tokens and time and any
    request but a batch one (:func:`is_batch`; the entry's ``batch_discount`` applies to those), when
    nothing else changes it (one tier, no time windows or thinking price; not free); else ``None``."""
    compiled = _compiled(entry)
    tiers = compiled.tiers
    if compiled.free or tiers is None or len(tiers) != 1 or compiled.windows or tiers[0].thinking is not None:
        return None
    return tiers[0].plain.cost


def compute_cost(entry: PriceEntry, tokens: TokenUsage, request_params: Mapping[str, Any] | None = None, *,
                 at: _dt.datetime | float | None = None) -> Decimal:
    """Exact cost of one call in ``entry.currency``; ``at`` is the call's time (aware datetime or epoch
    seconds), needed only by entries with time windows (``None``: their base prices).

    Volume-tiered entries need period state and are priced by
    :class:`otel_llm_usage.pricing.volume.VolumeMeter`; here they are priced at their first
    (lowest-volume) tier, which is what a stateless caller (e.g. ``prices estimate``) can know.
    """
    compiled = _compiled(entry)
    if compiled.free:
        return Decimal(0)
    tiers = compiled.tiers
    if tiers is not None:
        if compiled.windows and at is not None:
            moment = _aware(at)
            tiers = next((scaled for window, scaled in compiled.windows if window.contains(moment)), tiers)
        tier = tiers[0] if len(tiers) == 1 else _select_tier(
            tiers, max(0, int(tokens.input_tokens)), max(0, int(tokens.output_tokens)))
        linear = tier.plain
        if tier.thinking is not None and thinking_mode(tokens, request_params):
            linear = tier.thinking
        return apply_batch(entry, linear.cost(tokens), request_params)
    return _first_volume_tier_cost(entry, tokens, request_params)


def _first_volume_tier_cost(entry: PriceEntry, tokens: TokenUsage, request_params: Mapping[str, Any] | None) -> Decimal:
    assert entry.volume is not None  # _Compiled leaves tiers unset only for volume-priced entries
    first = entry.volume.tiers[0]
    rates = Rates(
        input=first.input or ZERO,
        output=first.output or ZERO,
        cached_input=_derived(first.cached_input, entry.cached_input_ratio, first.input or ZERO),
        cache_write=_derived(first.cache_write, entry.cache_write_ratio, first.input or ZERO),
        thinking_output=first.thinking_output,
    )
    cost = price_buckets(rates, split_tokens(tokens), thinking=thinking_mode(tokens, request_params),
                         embedding=entry.kind == "embedding")
    return apply_batch(entry, cost, request_params)
