# SPDX-License-Identifier: Apache-2.0
"""The price catalog: bundled ``data/*.yaml`` plus config overrides, and the hot-path lookup.

Lookup runs on every LLM call, so it is a dict hit for exact ids and aliases; only on a
miss does it try patterns and name normalisation, and every answer (including "unknown")
is memoised per ``(provider, region, model)``.

Resolution order for ``lookup(provider, model, server_address)``:

1. The provider is canonicalised: ``azure.ai.openai`` prices as ``openai``; a known
   ``server_address`` host (``dashscope.aliyuncs.com``, ``api.deepseek.com`` ...) wins over
   the reported provider, because OpenAI-compatible clients report ``openai`` whatever host
   they talk to. Unknown hosts stay as they are (config entries may name them).
2. DashScope region, from the host: ``dashscope-intl`` -> ``intl`` (Singapore),
   ``cn-hongkong.dashscope.aliyuncs.com`` -> ``hk``, ``dashscope-us.aliyuncs.com`` -> ``us``,
   ``<workspace>.<region-id>.maas.aliyuncs.com`` -> the region of that id, anything else ``cn``
   (Beijing). Moonshot's from the host too: ``api.moonshot.ai`` -> ``intl`` (USD), anything else
   ``cn`` (CNY). A region with no price data leaves the call unpriced, never priced as another region.
3. Config entries first (exact id/alias, then patterns), then user catalog files
   (``pricing.catalog_files``), then bundled entries. Config entries with no ``provider`` match
   any provider.
4. Still nothing: retry with a normalised name (``openai/gpt-4o`` -> ``gpt-4o``, a trailing
   date snapshot ``-2024-08-06``/``-0613``/``-250115`` or ``-latest`` removed).
5. :meth:`PriceCatalog.resolve` only: a host that is neither known nor mapped (an OpenAI-compatible
   gateway the instrumentation reports by its hostname) is priced by the exact model id or alias
   when exactly one catalog has it, or several at the same price (``inferred``); when catalogs
   disagree it stays unpriced and the candidates are returned for the caller to name.
   ``provider_hosts`` in config maps such a host to a provider and so wins over this.

A config entry naming a model the bundle already has is merged over it: metadata fields
(aliases, patterns, currency, batch discount, cache ratios) are inherited unless given, but
if the override gives any price (input, output, cached_input, cache_write, thinking_output,
tiers, volume) the bundled prices are replaced as a whole, so a new input price is never
paired with a stale bundled cached price (time windows count as prices; the bundled read_on and
cited describe the bundled figures and are dropped with them). A brand-new config entry needs
``input`` and, for chat models, ``output``; its currency defaults to the reporting currency.

Catalog files (bundled ``data/*.yaml`` and user ``catalog_files``) share one schema: file-level
``source``, ``read_on``, ``provider``, ``currency``, optional ``region``, ``note`` and ``defaults``,
and ``models``, a list of :class:`~otel_llm_usage.pricing.models.PriceEntry`. Entries default their
``cited`` and ``read_on`` to the file's ``source`` and ``read_on``. Errors name ``file:line: key``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from .catalog_files import (
    BUNDLED_FILES,
    CatalogError,
    CatalogFile,
    bundled_catalogs,
    load_bundled,
    load_catalog_file,
    parse_catalog,
)
from .hosts import NAMED_PROVIDERS, canonical_provider, dashscope_region, price_region
from .models import REGIONS, PriceEntry, PricingSettings

__all__ = [
    "BUNDLED_FILES",
    "CatalogError",
    "CatalogFile",
    "PriceCatalog",
    "Resolution",
    "bundled_catalogs",
    "canonical_provider",
    "dashscope_region",
    "display_price",
    "load_bundled",
    "load_catalog",
    "load_catalog_file",
    "parse_catalog",
]

_SNAPSHOT_SUFFIX = re.compile(r"(?:-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{6}|\d{4}|latest))$")
_MEMO_LIMIT = 4096
_PRICE_FIELDS = frozenset(
    {"input", "output", "cached_input", "cache_write", "thinking_output", "tiers", "volume", "time_windows"}
)


def _compile_pattern(pattern: str) -> re.Pattern[str]:
    if pattern.startswith("re:"):
        return re.compile(pattern[3:], re.IGNORECASE)
    return re.compile(fnmatch.translate(pattern.lower()))


@dataclass(frozen=True, slots=True)
class Resolution:
    """How a call is priced: the entry, whether it was found by model name alone, or the catalogs that
    price the name differently (then ``entry`` is ``None``)."""

    entry: PriceEntry | None
    inferred: bool = False
    candidates: tuple[PriceEntry, ...] = ()

    @property
    def price_source(self) -> str | None:
        entry = self.entry
        if entry is None:
            return None
        if self.inferred:
            return f"inferred:{entry.provider}" + (f":{entry.region}" if entry.region else "")
        return entry.source or "config"


_UNRESOLVED = Resolution(None)
# What must be equal for two catalogs' entries of one name to price every call alike.
_PRICE_SHAPE = {"currency", "kind", "input", "output", "cached_input", "cache_write", "thinking_output",
                "tiers", "volume", "time_windows", "batch_discount", "cached_input_ratio", "cache_write_ratio"}


def _same_prices(a: PriceEntry, b: PriceEntry) -> bool:
    return a.model_dump(include=_PRICE_SHAPE) == b.model_dump(include=_PRICE_SHAPE)


_Key = tuple[str | None, str | None, str]  # (provider, region, lower-cased name)


class _Index:
    """Exact-name dict plus ordered pattern list for one set of entries."""

    def __init__(self, entries: Iterable[PriceEntry]) -> None:
        self.exact: dict[_Key, PriceEntry] = {}
        self.patterns: list[tuple[str | None, str | None, re.Pattern[str], PriceEntry]] = []
        for entry in entries:
            for name in (entry.model, *entry.aliases):
                # First definition wins, so a file can list a specific snapshot before a family.
                self.exact.setdefault((entry.provider, entry.region, name.lower()), entry)
            for pattern in entry.patterns:
                self.patterns.append((entry.provider, entry.region, _compile_pattern(pattern), entry))

    def find(self, provider: str, region: str | None, name: str) -> PriceEntry | None:
        keys = ((provider, region, name), (provider, None, name), (None, region, name), (None, None, name))
        for key in keys:
            hit = self.exact.get(key)
            if hit is not None:
                return hit
        for p_provider, p_region, regex, entry in self.patterns:
            if p_provider not in (None, provider) or p_region not in (None, region):
                continue
            if regex.fullmatch(name):
                return entry
        return None


class PriceCatalog:
    """Bundled prices, user catalog files over them, config overrides on top; see the module docstring."""

    def __init__(self, bundled: Sequence[PriceEntry] | None = None, overrides: Sequence[PriceEntry] = (),
                 default_currency: str = "CNY", catalogs: Sequence[CatalogFile] = ()) -> None:
        bundled_files = bundled_catalogs() if bundled is None else ()
        #: Every catalog file in use, user files first (they take precedence).
        self.catalogs: tuple[CatalogFile, ...] = (*catalogs, *bundled_files)
        self._bundled = tuple(load_bundled() if bundled is None else bundled)
        self._bundled_index = _Index(self._bundled)
        self._user = tuple(e for catalog in catalogs for e in catalog.entries)
        self._user_index = _Index(self._user)
        self._overrides = tuple(self._merge_overrides(overrides, default_currency.upper()))
        self._config_index = _Index(self._overrides)
        # Memo by the caller's raw arguments, and by the normalised (provider, region, model).
        self._memo: dict[tuple[str | None, str, str | None, str | None], PriceEntry | None] = {}
        self._resolved: dict[_Key, PriceEntry | None] = {}
        self._resolutions: dict[tuple[str | None, str, str | None, str | None], Resolution] = {}
        self._by_name: dict[str, list[PriceEntry]] | None = None
        self._named = NAMED_PROVIDERS | {e.provider for e in (*self._bundled, *self._user, *self._overrides)
                                          if e.provider}

    @classmethod
    def from_settings(cls, settings: PricingSettings | None = None) -> PriceCatalog:
        settings = settings or PricingSettings()
        catalogs = [c for path in settings.catalog_files for c in load_catalog_file(path)]
        return cls(overrides=settings.models, default_currency=settings.currency, catalogs=catalogs)

    def catalog_of(self, entry: PriceEntry) -> CatalogFile | None:
        """The catalog file an entry comes from (``None`` for config entries)."""
        return next((c for c in self.catalogs if c.key == entry.source), None)

    # -- construction ---------------------------------------------------------------

    def _merge_overrides(self, overrides: Sequence[PriceEntry], default_currency: str) -> list[PriceEntry]:
        merged: list[PriceEntry] = []
        for position, override in enumerate(overrides):
            updates = override.model_dump(exclude_unset=True)
            updates.pop("source", None)
            bases = self._bases_for(override)
            label = f"pricing.models[{position}] ({override.provider or '*'}/{override.model})"
            if not bases:
                data = {**updates, "source": "config"}
                data.setdefault("currency", default_currency)
                entry = PriceEntry.model_validate(data)
                if not entry.is_priced:
                    raise ValueError(f"{label}: a new model needs an input price (and output for chat)")
                merged.append(entry)
                continue
            for base in bases:
                data = base.model_dump()
                if _PRICE_FIELDS & updates.keys():
                    # Prices are replaced as a unit: a new input price must not be paired with the
                    # bundled cached or tier prices. Metadata (aliases, patterns, currency,
                    # batch_discount, cache ratios) is still inherited.
                    for name in _PRICE_FIELDS:
                        data[name] = [] if name in ("tiers", "time_windows") else None
                    data["read_on"] = data["cited"] = None
                data.update(updates)
                data["source"] = "config"
                data["verified"] = updates.get("verified", True)
                try:
                    merged.append(PriceEntry.model_validate(data))
                except ValidationError as exc:
                    raise ValueError(f"{label}: {exc}") from exc
        return merged

    def _bases_for(self, override: PriceEntry) -> list[PriceEntry]:
        if override.provider is None:
            return []
        provider = canonical_provider(override.provider)
        name = override.model.lower()
        regions: tuple[str | None, ...] = (override.region,) if override.region else (None, *REGIONS)
        bases: list[PriceEntry] = []
        for region in regions:
            key = (provider, region, name)
            hit = self._user_index.exact.get(key) or self._bundled_index.exact.get(key)
            if hit is not None and hit not in bases:
                bases.append(hit)
        return bases

    # -- lookup ---------------------------------------------------------------------

    def lookup(self, provider: str | None, model: str | None, server_address: str | None = None, *,
               region: str | None = None) -> PriceEntry | None:
        """The price entry for a call, or ``None`` when the model is unknown. O(1) when memoised.

        ``region`` ("cn", "intl", "hk", "us") overrides the DashScope or Moonshot region taken from
        ``server_address`` (for gateways whose hostname says nothing about the region).
        """
        if not model:
            return None
        raw = (provider, model, server_address, region)
        try:
            return self._memo[raw]  # the hot path: one dict hit per call
        except KeyError:
            pass
        canon = canonical_provider(provider, server_address)
        # Only regional providers price by region; the region argument, when a known one, beats the host.
        from_host = price_region(canon, server_address)
        region = None if from_host is None else (region if region in REGIONS else from_host)
        key: _Key = (canon, region, model.strip().lower())
        if key in self._resolved:
            result = self._resolved[key]
        else:
            result = self._resolve(canon, region, key[2])
            self._resolved[key] = result
        if len(self._memo) >= _MEMO_LIMIT:
            # Arbitrary model strings / hosts must not grow memory without bound.
            self._memo.clear()
            self._resolved.clear()
        self._memo[raw] = result
        return result

    def resolve(self, provider: str | None, model: str | None, server_address: str | None = None, *,
                region: str | None = None) -> Resolution:
        """:meth:`lookup`, then, for a host neither known nor mapped, the model name alone (step 5 of the
        module docstring). Memoised like :meth:`lookup`."""
        if not model:
            return _UNRESOLVED
        raw = (provider, model, server_address, region)
        hit = self._resolutions.get(raw)
        if hit is not None:
            return hit
        entry = self.lookup(provider, model, server_address, region=region)
        if entry is not None:
            result = Resolution(entry)
        elif canonical_provider(provider, server_address) in self._named:
            result = _UNRESOLVED
        else:
            result = self._infer(model.strip().lower(), region)
        if len(self._resolutions) >= _MEMO_LIMIT:
            self._resolutions.clear()
        self._resolutions[raw] = result
        return result

    def _infer(self, name: str, region: str | None) -> Resolution:
        if self._by_name is None:
            # One entry per catalog (provider, region) and name, in precedence order; built on the
            # first gateway call only.
            by_name: dict[str, list[PriceEntry]] = {}
            for entry in self.entries():
                if entry.provider is None:
                    continue  # provider-less config entries already match every host in lookup()
                for alias in (entry.model, *entry.aliases):
                    found = by_name.setdefault(alias.lower(), [])
                    if all((e.provider, e.region) != (entry.provider, entry.region) for e in found):
                        found.append(entry)
            self._by_name = by_name
        candidates = [e for e in self._by_name.get(name, ()) if region is None or e.region in (None, region)]
        if not candidates:
            return _UNRESOLVED
        if all(_same_prices(candidates[0], other) for other in candidates[1:]):
            return Resolution(candidates[0], inferred=True)
        return Resolution(None, candidates=tuple(candidates))

    def _resolve(self, provider: str, region: str | None, name: str) -> PriceEntry | None:
        for candidate in self._candidates(name):
            for index in (self._config_index, self._user_index, self._bundled_index):
                hit = index.find(provider, region, candidate)
                if hit is not None:
                    return hit
        return None

    @staticmethod
    def _candidates(name: str) -> list[str]:
        names = [name]
        if "/" in name:
            names.append(name.rsplit("/", 1)[1])
        for current in list(names):
            stripped = current
            # Strip repeatedly: "qwen-plus-2025-07-28" and "gpt-4-0125-preview" style ids.
            for _ in range(2):
                new = _SNAPSHOT_SUFFIX.sub("", stripped)
                if new == stripped or not new:
                    break
                stripped = new
                names.append(stripped)
        return list(dict.fromkeys(names))

    # -- listing --------------------------------------------------------------------

    def entries(self) -> list[PriceEntry]:
        """Every effective entry: config entries, then user-catalog and bundled entries not replaced by an
        entry before them (same provider, region and model id)."""
        return list(self._effective())

    def _effective(self) -> Iterator[PriceEntry]:
        replaced: set[tuple[str | None, str | None, str]] = set()
        for layer in (self._overrides, self._user, self._bundled):
            added = set()
            for entry in layer:
                key = (entry.provider, entry.region, entry.model.lower())
                if key not in replaced:
                    added.add(key)
                    yield entry
            replaced |= added

    def search(self, text: str | None = None, provider: str | None = None) -> list[PriceEntry]:
        """Entries whose id/alias contains ``text`` or whose patterns match it (optionally one provider)."""
        canon = canonical_provider(provider) if provider else None
        needle = (text or "").strip().lower()
        found: list[PriceEntry] = []
        for entry in self.entries():
            if canon is not None and entry.provider not in (None, canon):
                continue
            if needle:
                names = [entry.model.lower(), *(a.lower() for a in entry.aliases)]
                if not any(needle in n for n in names) and not any(
                    _compile_pattern(p).fullmatch(needle) for p in entry.patterns
                ):
                    continue
            found.append(entry)
        return found


def load_catalog(settings: PricingSettings | None = None) -> PriceCatalog:
    """The catalog for ``settings``: cached bundled data (parsed once) plus its overrides."""
    return PriceCatalog.from_settings(settings)


def display_price(entry: PriceEntry, field: str) -> Decimal | None:
    """The headline per-1M price for tables: the flat price or the first tier's (ratios applied)."""
    source: Any = entry
    if entry.tiers:
        source = entry.tiers[0]
    elif entry.volume is not None and entry.input is None:
        source = entry.volume.tiers[0]
    value = getattr(source, field)
    ratio = {"cached_input": entry.cached_input_ratio, "cache_write": entry.cache_write_ratio}.get(field)
    if value is None and ratio is not None and source.input is not None:
        value = source.input * ratio
    return value if isinstance(value, Decimal) else None
