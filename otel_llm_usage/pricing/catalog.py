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
2. DashScope region: ``server_address`` containing ``dashscope-intl`` selects the
   international (Singapore, USD) entries, anything else the China (Beijing, CNY) ones.
3. Config entries first (exact id/alias, then patterns), then bundled entries (exact, then
   patterns). Config entries with no ``provider`` match any provider.
4. Still nothing: retry with a normalised name (``openai/gpt-4o`` -> ``gpt-4o``, a trailing
   date snapshot ``-2024-08-06``/``-0613``/``-250115`` or ``-latest`` removed).

A config entry naming a model the bundle already has is merged over it: metadata fields
(aliases, patterns, currency, batch discount, cache ratios) are inherited unless given, but
if the override gives any price (input, output, cached_input, cache_write, thinking_output,
tiers, volume) the bundled prices are replaced as a whole, so a new input price is never
paired with a stale bundled cached price. A brand-new config entry needs
``input`` and, for chat models, ``output``; its currency defaults to the reporting currency.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import functools
import importlib.resources
import re
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .models import PriceEntry, PricingSettings, Region

__all__ = [
    "BUNDLED_FILES",
    "PriceCatalog",
    "canonical_provider",
    "dashscope_region",
    "display_price",
    "load_bundled",
    "load_catalog",
]

BUNDLED_FILES = (
    "openai.yaml",
    "dashscope-cn.yaml",
    "dashscope-intl.yaml",
    "deepseek.yaml",
    "zhipu.yaml",
    "volcengine.yaml",
)

_PROVIDER_ALIASES = {
    "openai": "openai",
    "azure.ai.openai": "openai",
    "az.ai.openai": "openai",
    "azure": "openai",
    "azure_openai": "openai",
    "azure-openai": "openai",
    "dashscope": "dashscope",
    "alibaba": "dashscope",
    "aliyun": "dashscope",
    "bailian": "dashscope",
    "deepseek": "deepseek",
    "zhipu": "zhipu",
    "zhipuai": "zhipu",
    "bigmodel": "zhipu",
    "volcengine": "volcengine",
    "volcano": "volcengine",
    "doubao": "volcengine",
    "ark": "volcengine",
}

# Host suffixes of the providers' own endpoints (checked with endswith on the hostname).
_HOST_PROVIDERS = (
    ("dashscope-intl.aliyuncs.com", "dashscope"),
    ("dashscope.aliyuncs.com", "dashscope"),
    ("api.openai.com", "openai"),
    ("openai.azure.com", "openai"),
    ("cognitiveservices.azure.com", "openai"),
    ("api.deepseek.com", "deepseek"),
    ("bigmodel.cn", "zhipu"),
    ("volces.com", "volcengine"),
)

# Trailing snapshot markers: -2024-08-06, -20240806, -0613, -250115, -latest.
_SNAPSHOT_SUFFIX = re.compile(r"(?:-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{6}|\d{4}|latest))$")
_MEMO_LIMIT = 4096
_PRICE_FIELDS = frozenset(
    {"input", "output", "cached_input", "cache_write", "thinking_output", "tiers", "volume"}
)


def _hostname(server_address: str | None) -> str:
    if not server_address:
        return ""
    host = server_address.strip().lower()
    if "://" in host:
        host = host.split("://", 1)[1]
    host = host.split("/", 1)[0]
    return host.rsplit("@", 1)[-1].split(":", 1)[0]


def canonical_provider(provider: str | None, server_address: str | None = None) -> str:
    """The catalog provider for what the instrumentation reported (see module docstring)."""
    host = _hostname(server_address)
    for suffix, name in _HOST_PROVIDERS:
        if host == suffix or host.endswith("." + suffix):
            return name
    raw = (provider or "").strip().lower()
    if raw in _PROVIDER_ALIASES:
        return _PROVIDER_ALIASES[raw]
    if "." in raw:
        # The instrumentation uses the hostname for unknown compatible endpoints.
        for suffix, name in _HOST_PROVIDERS:
            if raw.endswith(suffix):
                return name
    return raw or "unknown"


def dashscope_region(server_address: str | None) -> Region:
    return "intl" if "dashscope-intl" in (server_address or "").lower() else "cn"


def _compile_pattern(pattern: str) -> re.Pattern[str]:
    if pattern.startswith("re:"):
        return re.compile(pattern[3:], re.IGNORECASE)
    return re.compile(fnmatch.translate(pattern.lower()))


class _CatalogFile(BaseModel):
    """The shape of one bundled ``data/*.yaml`` file."""

    model_config = ConfigDict(extra="forbid")

    source: str
    read_on: str
    provider: str
    currency: str
    region: Region | None = None
    note: str | None = None
    defaults: dict[str, Any] = Field(default_factory=dict)
    models: list[dict[str, Any]]


def _parse_file(name: str, text: str) -> list[PriceEntry]:
    raw = yaml.safe_load(text)
    if isinstance(raw, dict) and isinstance(raw.get("read_on"), _dt.date):
        raw["read_on"] = raw["read_on"].isoformat()
    header = _CatalogFile.model_validate(raw)
    entries = []
    for item in header.models:
        data = {**header.defaults, **item}
        data.setdefault("provider", header.provider)
        data.setdefault("currency", header.currency)
        if header.region is not None:
            data.setdefault("region", header.region)
        data["source"] = f"bundled:{name}@{header.read_on}"
        try:
            entries.append(PriceEntry.model_validate(data))
        except ValidationError as exc:
            raise ValueError(f"bundled price file {name}, model {item.get('model')!r}: {exc}") from exc
    return entries


@functools.lru_cache(maxsize=1)
def load_bundled() -> tuple[PriceEntry, ...]:
    """Parse the bundled catalog once per process (``importlib.resources``: works from a wheel)."""
    root = importlib.resources.files("otel_llm_usage.pricing").joinpath("data")
    entries: list[PriceEntry] = []
    for name in BUNDLED_FILES:
        entries.extend(_parse_file(name, root.joinpath(name).read_text(encoding="utf-8")))
    return tuple(entries)


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
    """Bundled prices with config overrides on top; see the module docstring for lookup rules."""

    def __init__(self, bundled: Sequence[PriceEntry] | None = None, overrides: Sequence[PriceEntry] = (),
                 default_currency: str = "CNY") -> None:
        self._bundled = tuple(load_bundled() if bundled is None else bundled)
        self._bundled_index = _Index(self._bundled)
        self._overrides = tuple(self._merge_overrides(overrides, default_currency.upper()))
        self._config_index = _Index(self._overrides)
        # Memo by the caller's raw arguments, and by the normalised (provider, region, model).
        self._memo: dict[tuple[str | None, str, str | None, str | None], PriceEntry | None] = {}
        self._resolved: dict[_Key, PriceEntry | None] = {}

    @classmethod
    def from_settings(cls, settings: PricingSettings | None = None) -> PriceCatalog:
        settings = settings or PricingSettings()
        return cls(overrides=settings.models, default_currency=settings.currency)

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
                        data[name] = [] if name == "tiers" else None
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
        regions: tuple[str | None, ...] = (override.region,) if override.region else (None, "cn", "intl")
        bases: list[PriceEntry] = []
        for region in regions:
            hit = self._bundled_index.exact.get((provider, region, name))
            if hit is not None and hit not in bases:
                bases.append(hit)
        return bases

    # -- lookup ---------------------------------------------------------------------

    def lookup(self, provider: str | None, model: str | None, server_address: str | None = None, *,
               region: str | None = None) -> PriceEntry | None:
        """The price entry for a call, or ``None`` when the model is unknown. O(1) when memoised.

        ``region`` ("cn"/"intl") overrides the DashScope region taken from ``server_address``
        (for gateways whose hostname says nothing about the region).
        """
        if not model:
            return None
        raw = (provider, model, server_address, region)
        try:
            return self._memo[raw]  # the hot path: one dict hit per call
        except KeyError:
            pass
        canon = canonical_provider(provider, server_address)
        if canon == "dashscope":
            region = region if region in ("cn", "intl") else dashscope_region(server_address)
        else:
            region = None
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

    def _resolve(self, provider: str, region: str | None, name: str) -> PriceEntry | None:
        for candidate in self._candidates(name):
            for index in (self._config_index, self._bundled_index):
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
        """Every effective entry: config entries, then bundled entries no config entry replaces."""
        replaced = {(e.provider, e.region, e.model.lower()) for e in self._overrides}
        return [*self._overrides,
                *(e for e in self._bundled if (e.provider, e.region, e.model.lower()) not in replaced)]

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
