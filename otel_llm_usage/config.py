# SPDX-License-Identifier: Apache-2.0
"""One configuration model for the library, the CLI and the rule generator.

Loaded from YAML (``OTEL_LLM_USAGE_CONFIG``, else ``./otel-llm-usage.yaml`` if
present) with ``OTEL_LLM_USAGE_*`` environment overrides for scalar keys, when
the instrumentor starts — never at import. Any invalid value raises
:class:`ConfigError` naming the file, line and key::

    otel-llm-usage.yaml:7: budgets[0].window: Input should be 'hour', 'day', ...
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ._names import ATTRIBUTION_LABELS
from ._yamlpos import dotted as _dotted
from ._yamlpos import duplicate_keys
from ._yamlpos import line_of as _line_of
from .budgets.config import BudgetConfig
from .errors import ConfigError
from .ledger.urls import ledger_url_problem
from .pricing.models import PricingSettings

__all__ = ["AttributionSettings", "Config", "ConfigError", "load_config"]

ENV_CONFIG = "OTEL_LLM_USAGE_CONFIG"
DEFAULT_CONFIG_FILE = "otel-llm-usage.yaml"
ENV_PREFIX = "OTEL_LLM_USAGE_"

_METRIC_LABEL_CHOICES = (*ATTRIBUTION_LABELS,)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AttributionSettings(_Strict):
    metric_labels: tuple[str, ...] = ATTRIBUTION_LABELS
    max_label_values: int = Field(1000, ge=1, le=1_000_000)
    max_label_length: int = Field(128, ge=8, le=4096)
    hash_users: bool = False
    hash_key: str | None = None
    # Carry the submitter's attribution into ThreadPoolExecutor tasks (loop.run_in_executor).
    propagate_to_threads: bool = True

    @field_validator("metric_labels", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(p.strip() for p in v.split(",") if p.strip())
        return v

    @field_validator("metric_labels")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [x for x in v if x not in _METRIC_LABEL_CHOICES]
        if bad:
            raise ValueError(f"unknown label(s) {bad}; choose from {list(_METRIC_LABEL_CHOICES)}")
        return v

    @model_validator(mode="after")
    def _keyed_hash(self) -> AttributionSettings:
        # An HMAC with an empty key is a plain hash: anyone holding a user id could recompute it.
        if self.hash_users and not self.hash_key:
            raise ValueError("hash_users: true needs hash_key (a secret; or OTEL_LLM_USAGE_HASH_KEY): "
                             "without a key anyone can recompute the hashed ids from the raw ones")
        return self


class LeaseSettings(_Strict):
    """Budget admission from local leases on a shared ledger (SQLite, Redis): see ``ledger/leases.py``."""

    enabled: bool = True
    share: float = Field(0.02, gt=0, le=1)  # of what remains of a budget, per lease
    ttl: float = Field(5.0, gt=0)  # seconds between re-sizing a lease (or handing an unused one back)
    low_water: float = Field(0.5, gt=0, lt=1)  # refill when the free part falls below this of the grant
    flush_interval: float = Field(0.2, gt=0)  # seconds between writes of settled usage to the store


class Config(_Strict):
    capture_content: bool = False
    capture_content_max_chars: int = Field(4096, ge=0)
    stream_include_usage: bool = True
    attribution: AttributionSettings = AttributionSettings()
    pricing: PricingSettings = PricingSettings()
    budgets: tuple[BudgetConfig, ...] = ()
    budget_check_interval: float = Field(60.0, gt=0)
    budget_leases: LeaseSettings = LeaseSettings()
    ledger: str = "memory://"
    # Per-call records older than this are purged (at start-up and daily); budget counters expire on their own.
    retention_days: float = Field(90.0, gt=0)
    # Extra endpoint → provider mappings for gateways and proxies, e.g. {"llm-gw.internal": openai}.
    provider_hosts: dict[str, str] = Field(default_factory=dict)
    # Where the file came from, for error messages and the CLI; not a user key.
    source: str | None = Field(None, exclude=True)

    @field_validator("ledger")
    @classmethod
    def _ledger_url(cls, v: str) -> str:
        problem = ledger_url_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v

    @field_validator("budgets")
    @classmethod
    def _unique_names(cls, v: tuple[BudgetConfig, ...]) -> tuple[BudgetConfig, ...]:
        seen: set[str] = set()
        for b in v:
            if b.name in seen:
                raise ValueError(f"duplicate budget name {b.name!r}")
            seen.add(b.name)
        return v


# Scalar keys that make sense as environment overrides: env suffix -> path.
_ENV_KEYS: dict[str, tuple[str, ...]] = {
    "CAPTURE_CONTENT": ("capture_content",),
    "CAPTURE_CONTENT_MAX_CHARS": ("capture_content_max_chars",),
    "STREAM_INCLUDE_USAGE": ("stream_include_usage",),
    "LEDGER": ("ledger",),
    "RETENTION_DAYS": ("retention_days",),
    "BUDGET_CHECK_INTERVAL": ("budget_check_interval",),
    "BUDGET_LEASES": ("budget_leases", "enabled"),
    "METRIC_LABELS": ("attribution", "metric_labels"),
    "MAX_LABEL_VALUES": ("attribution", "max_label_values"),
    "HASH_USERS": ("attribution", "hash_users"),
    "PROPAGATE_TO_THREADS": ("attribution", "propagate_to_threads"),
    "HASH_KEY": ("attribution", "hash_key"),
    "CURRENCY": ("pricing", "currency"),
}


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Load the config file (if any) and apply environment overrides."""
    env = os.environ if env is None else env
    if path is None:
        path = env.get(ENV_CONFIG) or (DEFAULT_CONFIG_FILE if Path(DEFAULT_CONFIG_FILE).is_file() else None)
    data: dict[str, Any] = {}
    root: yaml.Node | None = None
    source = None
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read config file: {exc.strerror or exc}") from None
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{source}:{mark.line + 1}" if mark is not None else source
            raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
        duplicates = duplicate_keys(root)
        if duplicates:
            # yaml.safe_load keeps the last of two equal keys: a second `budgets:` would drop the first.
            raise ConfigError("invalid otel-llm-usage configuration\n  " + "\n  ".join(
                f"{source}:{line}: {key}: duplicate key (first given on line {first})"
                for line, key, first in duplicates))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}:1: the config file must be a mapping of sections")
        data = loaded

    env_sources: dict[tuple[str, ...], str] = {}
    for suffix, key_path in _ENV_KEYS.items():
        name = ENV_PREFIX + suffix
        if name in env:
            target = data
            for part in key_path[:-1]:
                target = target.setdefault(part, {}) if isinstance(target.get(part, {}), dict) else {}
            target[key_path[-1]] = env[name]
            env_sources[key_path] = name
    try:
        config = Config.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, root, env_sources)) from None
    return _with_catalog_files(config, root)


def _with_catalog_files(config: Config, root: yaml.Node | None) -> Config:
    """Resolve ``pricing.catalog_files`` against the config file's directory and validate each file now,
    so a bad price fails at start-up naming both the config line and the catalog's ``file:line``."""
    from .pricing.catalog import CatalogError, load_catalog_file

    files = config.pricing.catalog_files
    if not files:
        return config
    base = Path(config.source).parent if config.source else Path.cwd()
    resolved = [str(p if (p := Path(f).expanduser()).is_absolute() else base / p) for f in files]
    problems = []
    for index, path in enumerate(resolved):
        try:
            load_catalog_file(path)
        except CatalogError as exc:
            line = _line_of(root, ("pricing", "catalog_files", index))
            where = f"{config.source}:{line}" if config.source and line else (config.source or "<defaults>")
            problems.append(f"{where}: pricing.catalog_files[{index}]: " + str(exc).replace("\n", "\n    "))
    if problems:
        raise ConfigError("invalid otel-llm-usage configuration\n  " + "\n  ".join(problems))
    pricing = config.pricing.model_copy(update={"catalog_files": resolved})
    return config.model_copy(update={"pricing": pricing})


def _describe(
    exc: ValidationError,
    source: str | None,
    root: yaml.Node | None,
    env_sources: Mapping[tuple[str, ...], str],
) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = _dotted(err["loc"])
        env_name = next((n for p, n in env_sources.items() if loc[: len(p)] == p), None)
        if env_name is not None:
            where = f"environment variable {env_name}"
        else:
            line = _line_of(root, err["loc"])
            where = f"{source}:{line}" if source and line else (source or "<defaults>")
        lines.append(f"{where}: {key}: {err['msg']}")
    return "invalid otel-llm-usage configuration\n  " + "\n  ".join(lines)
