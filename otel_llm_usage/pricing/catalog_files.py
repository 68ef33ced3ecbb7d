# SPDX-License-Identifier: Apache-2.0
"""Catalog files, bundled ``data/*.yaml`` and the user's ``catalog_files``: one schema, parsed with
``file:line`` errors, and the bundled set in its order."""

from __future__ import annotations

import datetime as _dt
import functools
import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .._yamlpos import dotted, line_of
from .models import PriceEntry

__all__ = ["BUNDLED_FILES", "CatalogError", "CatalogFile", "bundled_catalogs", "load_bundled", "load_catalog_file",
           "parse_catalog"]

# Listed first, in this order; any other data/*.yaml catalog follows in name order.
BUNDLED_FILES = (
    "openai.yaml",
    "dashscope-cn.yaml",
    "dashscope-intl.yaml",
    "deepseek.yaml",
    "zhipu.yaml",
    "volcengine.yaml",
)
# data/ files that are not catalogs (the cross-check's explained differences live beside the data).
_NOT_CATALOGS = frozenset({"genai-prices-differences.yaml"})


class _CatalogFile(BaseModel):
    """The shape of one catalog file (bundled ``data/*.yaml`` or a user ``catalog_files`` entry)."""

    model_config = ConfigDict(extra="forbid")

    source: str
    read_on: _dt.date
    provider: str
    currency: str
    region: str | None = None
    note: str | None = None
    defaults: dict[str, Any] = Field(default_factory=dict)
    models: list[dict[str, Any]]


class CatalogError(ValueError):
    """A catalog file that cannot be used; the message has one ``file:line: key: problem`` per line."""


@dataclass(frozen=True, slots=True)
class CatalogFile:
    """One loaded catalog: its file, what it prices, how old its figures are, and its entries."""

    name: str  # file name (bundled) or path as configured (user)
    origin: str  # "bundled" or "catalog" (a user file)
    provider: str
    region: str | None
    currency: str
    file_read_on: _dt.date
    source: str  # the file's own ``source`` text
    key: str  # what its entries carry as ``source`` (and records as ``price_source``)
    entries: tuple[PriceEntry, ...]
    note: str | None = None

    def read_on(self, today: _dt.date) -> _dt.date:
        """The oldest read date of the entries still on sale at ``today``: a catalog is as stale as its
        stalest current price (retired models keep their last price, which no longer changes)."""
        dates = [e.read_on for e in self.entries
                 if e.read_on is not None and (e.retired_on is None or e.retired_on > today)]
        return min(dates, default=self.file_read_on)

    def age_days(self, today: _dt.date) -> int:
        return (today - self.read_on(today)).days


def _error_lines(exc: ValidationError, where: str, root: yaml.Node | None,
                 prefix: tuple[Any, ...] = ()) -> list[str]:
    out = []
    for err in exc.errors():
        loc = (*prefix, *err["loc"])
        out.append(f"{where}:{line_of(root, loc) or 1}: {dotted(loc)}: {err['msg']}")
    return out


def _documents(where: str, text: str) -> list[tuple[yaml.Node, Any]]:
    try:
        roots = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise CatalogError(f"{where}:{line}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    pairs = [(root, doc) for root, doc in zip(roots, docs, strict=True) if doc is not None]
    if not pairs:
        raise CatalogError(f"{where}:1: no catalog in the file")
    return pairs


def parse_catalog(name: str, text: str, *, origin: str = "bundled",
                  where: str | None = None) -> tuple[CatalogFile, ...]:
    """Every catalog in ``text`` (one per YAML document), validated; errors as ``file:line: key: problem``."""
    where = where or name
    pairs = _documents(where, text)
    catalogs = []
    for position, (root, raw) in enumerate(pairs):
        if not isinstance(raw, dict):
            raise CatalogError(f"{where}:{root.start_mark.line + 1}: a catalog is a mapping with source, read_on, "
                               f"provider, currency and models")
        try:
            header = _CatalogFile.model_validate(raw)
        except ValidationError as exc:
            raise CatalogError("\n".join(_error_lines(exc, where, root))) from None
        label = name if len(pairs) == 1 else f"{name}[{position}]"
        key = f"{origin}:{label}@{header.read_on.isoformat()}"
        entries, errors = _parse_entries(header, key, where, root)
        if errors:
            raise CatalogError("\n".join(errors))
        catalogs.append(CatalogFile(name=label, origin=origin, provider=header.provider.strip().lower(),
                                    region=header.region, currency=header.currency.strip().upper(),
                                    file_read_on=header.read_on, source=header.source, key=key,
                                    entries=tuple(entries), note=header.note))
    return tuple(catalogs)


def _parse_entries(header: _CatalogFile, key: str, where: str, root: yaml.Node) -> tuple[list[PriceEntry], list[str]]:
    entries: list[PriceEntry] = []
    errors: list[str] = []
    seen: dict[tuple[str | None, str | None, str], int] = {}
    for index, item in enumerate(header.models):
        data = {**header.defaults, **item}
        data.setdefault("provider", header.provider)
        data.setdefault("currency", header.currency)
        data.setdefault("read_on", header.read_on)
        data.setdefault("cited", header.source)
        if header.region is not None:
            data.setdefault("region", header.region)
        data["source"] = key
        try:
            entry = PriceEntry.model_validate(data)
        except ValidationError as exc:
            errors += _error_lines(exc, where, root, ("models", index))
            continue
        for alias in (entry.model, *entry.aliases):
            name_key = (entry.provider, entry.region, alias.lower())
            if name_key in seen:
                line = line_of(root, ("models", index))
                errors.append(f"{where}:{line}: models[{index}]: {alias!r} is already priced by "
                              f"models[{seen[name_key]}]")
            seen.setdefault(name_key, index)
        entries.append(entry)
    return entries, errors


def _bundled_names(root: Any) -> list[str]:
    present = {p.name for p in root.iterdir() if p.name.endswith(".yaml") and p.name not in _NOT_CATALOGS}
    return [n for n in BUNDLED_FILES if n in present] + sorted(present - set(BUNDLED_FILES))


@functools.lru_cache(maxsize=1)
def bundled_catalogs() -> tuple[CatalogFile, ...]:
    """Parse the bundled catalogs once per process (``importlib.resources``: works from a wheel)."""
    root = importlib.resources.files("otel_llm_usage.pricing").joinpath("data")
    out: list[CatalogFile] = []
    for name in _bundled_names(root):
        out.extend(parse_catalog(name, root.joinpath(name).read_text(encoding="utf-8")))
    return tuple(out)


def load_bundled() -> tuple[PriceEntry, ...]:
    """Every bundled entry, catalog by catalog."""
    return tuple(e for catalog in bundled_catalogs() for e in catalog.entries)


def load_catalog_file(path: str | os.PathLike[str]) -> tuple[CatalogFile, ...]:
    """A user catalog file (parsed again only when it changes on disk)."""
    shown = os.fspath(path)
    try:
        stat = Path(shown).stat()
    except OSError as exc:
        raise CatalogError(f"{shown}: cannot read catalog file: {exc.strerror or exc}") from None
    return _load_file(str(Path(shown).resolve()), stat.st_mtime_ns, stat.st_size, shown)


@functools.lru_cache(maxsize=64)
def _load_file(resolved: str, mtime_ns: int, size: int, shown: str) -> tuple[CatalogFile, ...]:
    try:
        text = Path(resolved).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{shown}: cannot read catalog file: {exc}") from None
    return parse_catalog(Path(shown).name, text, origin="catalog", where=shown)
