# SPDX-License-Identifier: Apache-2.0
"""Convert other public price catalogs into this package's catalog schema (offline, on request).

``otel-llm-usage prices import`` drives these; nothing here runs inside an instrumented app and
nothing is fetched: genai-prices is read from the installed package, LiteLLM's
``model_prices_and_context_window.json`` from a file the user downloaded. ::

    docs = from_genai_prices(["openai"], at=now, read_on=today)
    docs = from_litellm(json.loads(text, parse_float=Decimal), read_on=today, cited="LiteLLM file of 2026-11-30")
    print(dump_catalogs(docs))             # YAML in the bundled schema, one document per catalog
    rows = diff_catalogs(docs, PriceCatalog())

Each document validates with :func:`otel_llm_usage.pricing.catalog.parse_catalog`. Prices are per
1M tokens; genai-prices and LiteLLM quote USD, so every converted catalog is in USD (LiteLLM's
``dashscope`` prices and genai-prices' ``moonshotai`` ones are the international endpoints' and get
``region: intl``).

How the shapes map:

* genai-prices tiers ("all tokens at the tier price once input exceeds ``start``") and LiteLLM's
  ``*_above_<N>k_tokens`` keys become request-length tiers whose bounds are those thresholds
  (inclusive below, so ``start: 200000`` gives ``max_input_tokens: 200000``).
* genai-prices dated prices: the one in force at ``at``. Its time-of-day prices (DeepSeek's) become
  ``time_windows`` in UTC when they are a constant multiple of the standard price; otherwise they
  are left out and the entry's note says so.
* Units this schema has no place for (audio, image, per-request fees) are left out, noted.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml

from .catalog import PriceCatalog, display_price
from .hosts import REGIONAL_PROVIDERS
from .models import PriceEntry

__all__ = [
    "GENAI_PRICES_PROVIDERS",
    "DiffRow",
    "diff_catalogs",
    "dump_catalogs",
    "from_genai_prices",
    "from_litellm",
    "genai_standard_price",
]

MILLION = Decimal(1_000_000)
# This package's provider name -> genai-prices provider id, where they differ or match.
GENAI_PRICES_PROVIDERS = {"openai": "openai", "deepseek": "deepseek", "zhipu": "zhipuai", "moonshot": "moonshotai"}
_FROM_GENAI = {v: k for k, v in GENAI_PRICES_PROVIDERS.items()}
# genai-prices ModelPrice attribute -> entry field.
_GENAI_FIELDS = {"input_mtok": "input", "output_mtok": "output", "cache_read_mtok": "cached_input",
                 "cache_write_mtok": "cache_write"}
# LiteLLM litellm_provider -> (provider, region) here.
_LITELLM_PROVIDERS: dict[str, tuple[str, str | None]] = {
    "openai": ("openai", None), "text-completion-openai": ("openai", None), "azure": ("openai", None),
    "dashscope": ("dashscope", "intl"), "deepseek": ("deepseek", None), "volcengine": ("volcengine", None),
    "moonshot": ("moonshot", "intl"), "zai": ("zhipu", None), "zhipuai": ("zhipu", None),
}
_LITELLM_FIELDS = {"input_cost_per_token": "input", "output_cost_per_token": "output",
                   "cache_read_input_token_cost": "cached_input", "cache_creation_input_token_cost": "cache_write"}
_LITELLM_KINDS = {"chat": "chat", "completion": "chat", "responses": "chat", "embedding": "embedding"}
_LITELLM_ABOVE = re.compile(r"^(?P<base>[a-z_]+?)_above_(?P<k>\d+)k_tokens$")
_PRICE_COLUMNS = ("input", "cached_input", "cache_write", "output")


def _tiers(base: Mapping[str, Decimal | None],
           steps: Mapping[str, Sequence[tuple[int, Decimal]]]) -> list[dict[str, Any]]:
    """Request-length tiers from per-field base prices and (threshold, price) steps, where a step applies
    to the whole request once its input exceeds the threshold."""
    bounds = sorted({threshold for field_steps in steps.values() for threshold, _ in field_steps})
    tiers = []
    for position, bound in enumerate([*bounds, None]):
        lower = bounds[position - 1] if position else None
        tier: dict[str, Any] = {"max_input_tokens": bound}
        for field, price in base.items():
            applicable = [p for threshold, p in steps.get(field, ()) if lower is not None and threshold <= lower]
            chosen = applicable[-1] if applicable else price
            if chosen is not None:
                tier[field] = chosen
        tiers.append(tier)
    return tiers


def _priced(fields: dict[str, Any], steps: Mapping[str, Sequence[tuple[int, Decimal]]]) -> dict[str, Any]:
    """``fields`` (flat prices) as flat entry fields or, when any price steps up with length, as tiers."""
    if not any(steps.values()):
        return {k: v for k, v in fields.items() if v is not None}
    return {"tiers": _tiers(fields, {k: sorted(v) for k, v in steps.items()})}


# --- genai-prices --------------------------------------------------------------------------


def _names(clause: Any) -> tuple[list[str], list[str], bool]:
    """(exact names, patterns, complete) of a genai-prices match clause; ``complete`` is False when
    part of it (an ``and``) cannot be written as names or patterns here."""
    kind = type(clause).__name__
    if kind == "ClauseEquals":
        return [clause.equals.lower()], [], True
    if kind == "ClauseStartsWith":
        return [], [glob_escape(clause.starts_with.lower()) + "*"], True
    if kind == "ClauseEndsWith":
        return [], ["*" + glob_escape(clause.ends_with.lower())], True
    if kind == "ClauseContains":
        return [], ["*" + glob_escape(clause.contains.lower()) + "*"], True
    if kind == "ClauseRegex":
        return [], [f"re:.*(?:{clause.regex}).*"], True  # theirs is re.search, ours fullmatch
    if kind == "ClauseOr":
        names: list[str] = []
        patterns: list[str] = []
        complete = True
        for part in clause.or_:
            n, p, c = _names(part)
            names += n
            patterns += p
            complete = complete and c
        return names, patterns, complete
    return [], [], False


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _is_time_of_day(constraint: Any) -> bool:
    return type(constraint).__name__ == "TimeOfDateConstraint"


def genai_standard_price(info: Any, at: _dt.datetime) -> Any:
    """The genai-prices ``ModelPrice`` of ``info`` in force at ``at``, time-of-day prices aside (the
    price outside every time-of-day interval)."""
    prices = info.prices
    if not isinstance(prices, list):
        return prices
    for conditional in reversed(prices):
        constraint = conditional.constraint
        if constraint is None or (not _is_time_of_day(constraint) and constraint.active(at)):
            return conditional.prices
    return prices[0].prices


def _genai_fields(price: Any) -> tuple[dict[str, Decimal | None], dict[str, list[tuple[int, Decimal]]], list[str]]:
    base: dict[str, Decimal | None] = {}
    steps: dict[str, list[tuple[int, Decimal]]] = {}
    ignored = []
    for key, value in vars(price).items():
        if value is None or key.startswith("_"):
            continue
        field = _GENAI_FIELDS.get(key)
        if field is None:
            ignored.append(key)
            continue
        if isinstance(value, Decimal):
            base[field] = value
        else:  # TieredPrices: base plus tiers starting above a token count
            base[field] = value.base
            steps[field] = [(tier.start, tier.price) for tier in value.tiers]
    return base, steps, ignored


def _genai_windows(info: Any, standard: Any) -> tuple[list[dict[str, Any]], str | None]:
    """Time-of-day prices as UTC windows with a multiplier, or ([], why not)."""
    if not isinstance(info.prices, list):
        return [], None
    windows: list[dict[str, Any]] = []
    base, _, _ = _genai_fields(standard)
    for conditional in info.prices:
        constraint = conditional.constraint
        if not _is_time_of_day(constraint):
            continue
        other, other_steps, _ = _genai_fields(conditional.prices)
        ratios = {theirs / price for f, price in base.items() if price and (theirs := other.get(f)) is not None}
        same_fields = {f for f, v in base.items() if v} == {f for f, v in other.items() if v}
        if len(ratios) != 1 or other_steps or not same_fields:
            return [], "its time-of-day prices are not a constant multiple of the standard price: not converted"
        start, end = constraint.start_time, constraint.end_time
        hours = ([f"{start:%H:%M}-{end:%H:%M}"] if start < end
                 else [f"{start:%H:%M}-24:00", *([f"00:00-{end:%H:%M}"] if end.hour or end.minute else [])])
        windows.append({"name": f"genai-prices-{len(windows) + 1}", "timezone": "UTC", "hours": hours,
                        "multiplier": ratios.pop().normalize()})
    return windows, None


def _genai_entry(info: Any, at: _dt.datetime) -> dict[str, Any] | None:
    standard = genai_standard_price(info, at)
    base, steps, ignored = _genai_fields(standard)
    if base.get("input") is None:
        return None  # image-, audio- or request-priced only: nothing this schema prices
    names, patterns, complete = _names(info.match)
    entry: dict[str, Any] = {"model": info.id}
    aliases = [n for n in dict.fromkeys(names) if n != info.id.lower()]
    if aliases:
        entry["aliases"] = aliases
    if patterns:
        entry["patterns"] = patterns
    if base.get("output") is None:
        entry["kind"] = "embedding"
    entry.update(_priced(dict(base), steps))
    notes = []
    windows, why_not = _genai_windows(info, standard)
    if windows:
        entry["time_windows"] = windows
    if why_not:
        notes.append(why_not)
    if ignored:
        notes.append("not converted: " + ", ".join(sorted(ignored)))
    if not complete:
        notes.append("part of genai-prices' name matching could not be converted")
    if info.deprecated:
        notes.append("deprecated according to genai-prices")
    if notes:
        entry["note"] = "; ".join(notes)
    return entry


def from_genai_prices(providers: Iterable[str] = (), *, at: _dt.datetime, read_on: _dt.date) -> list[dict[str, Any]]:
    """Catalog documents from the installed genai-prices data: the ``providers`` named (this package's
    names or genai-prices ids; ``all`` for every one), else those this package bundles a catalog for."""
    from genai_prices import data  # optional dependency: ImportError tells the caller to install it

    version = importlib.metadata.version("genai-prices")
    wanted = {p.strip().lower() for p in providers}
    docs = []
    for provider in data.providers:
        ours = _FROM_GENAI.get(provider.id, provider.id)
        chosen = (ours in wanted or provider.id in wanted or "all" in wanted) if wanted else provider.id in _FROM_GENAI
        if not chosen:
            continue
        models = [e for e in (_genai_entry(info, at) for info in provider.models) if e is not None]
        urls = ", ".join(provider.pricing_urls or ())
        doc: dict[str, Any] = {
            "source": f"genai-prices {version}, provider {provider.id}" + (f" ({urls})" if urls else ""),
            "read_on": read_on, "provider": ours, "currency": "USD",
            "note": f"Converted by otel-llm-usage prices import from genai-prices {version}, prices in force "
                    f"on {at.date().isoformat()}.",
            "models": models,
        }
        if ours in REGIONAL_PROVIDERS:
            doc["region"] = "intl"  # genai-prices quotes the international (USD) list of a regional provider
        docs.append(doc)
    return docs


# --- LiteLLM ----------------------------------------------------------------------------------


def _per_million(value: Any) -> Decimal | None:
    """A per-token USD figure as per 1M tokens; ``None`` for anything that is not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        # A float's repr is its shortest round-trip form: 1.5e-07 -> Decimal("1.5E-7"), not binary noise.
        number = value if isinstance(value, Decimal) else Decimal(repr(value) if isinstance(value, float)
                                                                  else str(value))
    except InvalidOperation:
        return None
    return (number * MILLION).normalize() if number.is_finite() else None


def from_litellm(data: Mapping[str, Any], *, read_on: _dt.date, cited: str) -> list[dict[str, Any]]:
    """Catalog documents (one per provider and region) from LiteLLM's
    ``model_prices_and_context_window.json`` (per-token USD prices; parse it with ``parse_float=Decimal``
    to keep every digit). Modes other than chat, completion, responses and embedding are skipped."""
    groups: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    skipped: dict[str, int] = {}
    for key, spec in data.items():
        if key == "sample_spec" or not isinstance(spec, Mapping):
            continue
        kind = _LITELLM_KINDS.get(str(spec.get("mode", "chat")))
        litellm_provider = str(spec.get("litellm_provider") or "unknown")
        base = {field: _per_million(spec.get(name)) for name, field in _LITELLM_FIELDS.items()}
        if kind is None or base["input"] is None or (kind == "chat" and base["output"] is None):
            skipped[str(spec.get("mode"))] = skipped.get(str(spec.get("mode")), 0) + 1
            continue
        provider, region = _LITELLM_PROVIDERS.get(litellm_provider, (litellm_provider, None))
        steps: dict[str, list[tuple[int, Decimal]]] = {}
        for name, value in spec.items():
            match = _LITELLM_ABOVE.match(name)
            if match is None or match["base"] not in _LITELLM_FIELDS or (price := _per_million(value)) is None:
                continue
            steps.setdefault(_LITELLM_FIELDS[match["base"]], []).append((int(match["k"]) * 1000, price))
        model = key.split("/", 1)[1] if key.lower().startswith(litellm_provider.lower() + "/") else key
        entry: dict[str, Any] = {"model": model}
        if kind == "embedding":
            entry["kind"] = "embedding"
            base["output"] = None
        entry.update(_priced(base, steps))
        groups.setdefault((provider, region), []).append(entry)
    docs = []
    for (provider, region), models in groups.items():
        doc: dict[str, Any] = {"source": f"LiteLLM model_prices_and_context_window.json ({cited})",
                               "read_on": read_on, "provider": provider, "currency": "USD"}
        if region is not None:
            doc["region"] = region
        if skipped:
            doc["note"] = "Skipped entries of other modes: " + ", ".join(f"{m} {n}" for m, n in sorted(skipped.items()))
        doc["models"] = models
        docs.append(doc)
    return docs


# --- output -------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Prices as plain numbers (``2.5``, ``0.000125``), never floats' binary noise or quoted strings."""


def _represent_decimal(dumper: yaml.SafeDumper, value: Decimal) -> yaml.Node:
    text = format(value.normalize(), "f")
    if value == value.to_integral_value():
        return dumper.represent_scalar("tag:yaml.org,2002:int", text.split(".")[0])
    return dumper.represent_scalar("tag:yaml.org,2002:float", text)


_Dumper.add_representer(Decimal, _represent_decimal)


def dump_catalogs(docs: Sequence[Mapping[str, Any]]) -> str:
    """YAML in the bundled schema; several catalogs become several documents of one stream."""
    header = "# Converted by `otel-llm-usage prices import`; load it with pricing.catalog_files.\n"
    return header + yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)


# --- diff ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DiffRow:
    """One difference between an imported and a bundled entry (``field`` "new" = not bundled)."""

    provider: str
    region: str | None
    model: str
    field: str
    bundled: str | None
    imported: str | None


def _text(value: Decimal | None) -> str | None:
    return None if value is None else format(value.normalize(), "f")


def diff_catalogs(docs: Sequence[Mapping[str, Any]], catalog: PriceCatalog) -> list[DiffRow]:
    """How the imported catalogs differ from the bundled entries with the same provider, region and
    exact model id or alias: the first tier's input, cached input, cache write and output prices,
    the currency, or not bundled at all."""
    bundled: dict[tuple[str | None, str | None, str], PriceEntry] = {}
    for entry in catalog.entries():
        for name in (entry.model, *entry.aliases):
            bundled.setdefault((entry.provider, entry.region, name.lower()), entry)
    rows = []
    for doc in docs:
        provider, region = str(doc["provider"]), doc.get("region")
        for item in doc["models"]:
            imported = PriceEntry.model_validate({"provider": provider, "currency": doc["currency"],
                                                  "region": region, **item})
            theirs = next((bundled[k] for name in (imported.model, *imported.aliases)
                           if (k := (provider, region, name.lower())) in bundled), None)
            if theirs is None:
                rows.append(DiffRow(provider, region, imported.model, "new", None, "not bundled"))
                continue
            if theirs.currency != imported.currency:
                rows.append(DiffRow(provider, region, imported.model, "currency", theirs.currency, imported.currency))
                continue
            for column in _PRICE_COLUMNS:
                ours, new = _text(display_price(theirs, column)), _text(display_price(imported, column))
                if ours != new:
                    rows.append(DiffRow(provider, region, imported.model, column, ours, new))
    return rows
