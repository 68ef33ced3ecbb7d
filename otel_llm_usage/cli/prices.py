# SPDX-License-Identifier: Apache-2.0
"""``otel-llm-usage prices``: look up catalog prices and estimate the cost of a call.

``prices [MODEL] [--provider P] [--format table|json]`` lists matching entries and
``prices estimate MODEL --input N --output M ...`` prices one hypothetical call. Both forms
work because the group defaults to the ``list`` command whenever the first argument is not a
sub-command name (see :class:`_DefaultListGroup`).
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from ..pricing.catalog import PriceCatalog, canonical_provider, display_price
from ..pricing.compute import compute_cost
from ..pricing.models import PriceEntry, PricingSettings
from ..pricing.stage import convert_currency
from ..usage import TokenUsage

__all__ = ["prices_app"]

_KNOWN_PROVIDERS = ("openai", "dashscope", "deepseek", "zhipu", "volcengine")
_INTL_HOST = "dashscope-intl.aliyuncs.com"
_CN_HOST = "dashscope.aliyuncs.com"


class _DefaultListGroup(typer.core.TyperGroup):
    """Route ``prices``, ``prices MODEL`` and ``prices --provider X`` to the ``list`` command."""

    # ``ctx`` is typed Any: typer has vendored click in some releases, so the Context class varies.
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        help_names = set(self.get_help_option_names(ctx))
        if not args or (args[0] not in self.commands and args[0] not in help_names):
            args = ["list", *args]
        return super().parse_args(ctx, args)


prices_app = typer.Typer(
    cls=_DefaultListGroup,
    help="Show catalog prices (per 1M tokens) and estimate the cost of a call.",
    no_args_is_help=False,
    add_completion=False,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", envvar="OTEL_LLM_USAGE_CONFIG",
                 help="YAML config file; its pricing: section is used."),
]
ProviderOption = Annotated[str | None,
                           typer.Option("--provider", "-p", help="Provider, e.g. openai, dashscope.")]
FormatOption = Annotated[str, typer.Option("--format", "-f", help="table or json.")]


def _load_settings(path: Path | None) -> PricingSettings:
    """Minimal loader for the ``pricing:`` section (the full config loader may replace this)."""
    if path is None:
        return PricingSettings()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"cannot read config {path}: {exc}", param_hint="--config") from exc
    section = raw.get("pricing") if isinstance(raw, dict) else None
    try:
        return PricingSettings.model_validate(section or {})
    except ValueError as exc:
        raise typer.BadParameter(f"invalid pricing section in {path}: {exc}", param_hint="--config") from exc


def _fmt(value: Decimal | None) -> str:
    """Plain decimal text (no exponent); long conversion results are cut to 10 decimal places."""
    if value is None:
        return "-"
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -10:
        value = value.quantize(Decimal("1e-10"))
    text = format(value.normalize(), "f")
    return text


def _entry_json(entry: PriceEntry) -> dict[str, Any]:
    data: dict[str, Any] = entry.model_dump(mode="json", exclude_none=True)
    for key in ("aliases", "patterns", "tiers"):
        if not data.get(key):
            data.pop(key, None)
    return data


def _tier_text(entry: PriceEntry) -> str:
    if entry.tiers:
        bounds = [f"<={t.max_input_tokens}" if t.max_input_tokens else "rest" for t in entry.tiers]
        return f"{len(entry.tiers)} by input ({', '.join(bounds)})"
    if entry.volume is not None:
        return f"{len(entry.volume.tiers)} by volume/{entry.volume.period}"
    return ""


def _console() -> Console:
    # A fixed, generous width when not on a terminal so piped/tested output is not wrapped.
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _find(catalog: PriceCatalog, model: str, provider: str | None, region: str | None) -> PriceEntry | None:
    host = _INTL_HOST if region == "intl" else (_CN_HOST if region == "cn" else None)
    if provider:
        return catalog.lookup(provider, model, host if canonical_provider(provider) == "dashscope" else None)
    for name in _KNOWN_PROVIDERS:
        entry = catalog.lookup(name, model, host if name == "dashscope" else None)
        if entry is not None:
            return entry
    # Config entries for other providers (hostnames) or any provider.
    for entry in catalog.search(model):
        if entry.model.lower() == model.lower() or model.lower() in (a.lower() for a in entry.aliases):
            return entry
    return None


@prices_app.command("list")
def list_prices(
    model: Annotated[str | None, typer.Argument(help="Model id, alias or part of one.")] = None,
    provider: ProviderOption = None,
    output_format: FormatOption = "table",
    config: ConfigOption = None,
) -> None:
    """List catalog entries (prices per 1M tokens in each entry's currency)."""
    settings = _load_settings(config)
    catalog = PriceCatalog.from_settings(settings)
    entries = catalog.search(model, provider)
    if not entries and model:
        # A dated snapshot or -latest id is not a substring of the entry id: resolve it.
        hit = _find(catalog, model, provider, None)
        entries = [hit] if hit is not None else []
    if output_format == "json":
        typer.echo(json.dumps([_entry_json(e) for e in entries], indent=2, ensure_ascii=False))
        return
    if output_format != "table":
        raise typer.BadParameter("use table or json", param_hint="--format")
    if not entries:
        typer.echo(f"no catalog entry matches {model!r}" if model else "the catalog is empty")
        raise typer.Exit(code=1)
    table = Table(title="LLM prices per 1M tokens", show_lines=False)
    for column in ("provider", "model", "region", "ccy", "input", "cached", "output", "thinking out",
                   "tiers", "verified", "source"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        table.add_row(
            entry.provider or "*", entry.model, entry.region or "", entry.currency or settings.currency,
            _fmt(display_price(entry, "input")), _fmt(display_price(entry, "cached_input")),
            _fmt(display_price(entry, "output")), _fmt(display_price(entry, "thinking_output")),
            _tier_text(entry), "yes" if entry.verified else "NO", entry.source or "",
        )
    _console().print(table)


@prices_app.command("estimate")
def estimate(
    model: Annotated[str, typer.Argument(help="Model id as sent to the API.")],
    input_tokens: Annotated[int, typer.Option("--input", "-i", min=0, help="Input tokens (all).")] = 0,
    output_tokens: Annotated[int, typer.Option("--output", "-o", min=0, help="Output tokens (all).")] = 0,
    cached: Annotated[int, typer.Option("--cached", min=0, help="Of the input, cache hits.")] = 0,
    cache_write: Annotated[int, typer.Option("--cache-write", min=0, help="Of the input, cache writes.")] = 0,
    reasoning: Annotated[int, typer.Option("--reasoning", min=0, help="Of the output, reasoning.")] = 0,
    provider: ProviderOption = None,
    region: Annotated[str | None, typer.Option("--region", help="DashScope region: cn or intl.")] = None,
    thinking: Annotated[bool | None, typer.Option("--thinking/--no-thinking",
                                                  help="Hybrid models: thinking mode on/off.")] = None,
    batch: Annotated[bool, typer.Option("--batch", help="Price as a batch call.")] = False,
    output_format: FormatOption = "table",
    config: ConfigOption = None,
) -> None:
    """Estimate one call's cost, in the model's currency and in the reporting currency."""
    if region not in (None, "cn", "intl"):
        raise typer.BadParameter("use cn or intl", param_hint="--region")
    settings = _load_settings(config)
    catalog = PriceCatalog.from_settings(settings)
    entry = _find(catalog, model, provider, region)
    if entry is None:
        typer.echo(f"no price for {model!r}" + (f" (provider {provider})" if provider else ""), err=True)
        raise typer.Exit(code=1)
    tokens = TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens, cached_input_tokens=cached,
                        cache_write_tokens=cache_write, reasoning_tokens=reasoning).clamp()
    params: dict[str, Any] = {"batch": batch}
    if thinking is not None:
        params["enable_thinking"] = thinking
    cost = compute_cost(entry, tokens, params)
    currency = entry.currency or settings.currency
    reporting: Decimal | None = None
    problem: str | None = None
    try:
        reporting = convert_currency(cost, currency, settings.currency, reporting_currency=settings.currency,
                                     exchange_rates=settings.exchange_rates)
    except ValueError as exc:
        problem = str(exc)

    if output_format == "json":
        typer.echo(json.dumps({
            "provider": entry.provider, "model": entry.model, "region": entry.region,
            "source": entry.source, "verified": entry.verified,
            "cost": _fmt(cost), "currency": currency,
            "reporting_cost": _fmt(reporting) if reporting is not None else None,
            "reporting_currency": settings.currency, "error": problem,
        }, indent=2))
        return
    where = f"{entry.provider}/{entry.model}" + (f" [{entry.region}]" if entry.region else "")
    typer.echo(f"model: {where}  (source {entry.source}{'' if entry.verified else ', UNVERIFIED'})")
    typer.echo(f"cost: {_fmt(cost)} {currency}")
    if reporting is not None:
        typer.echo(f"reporting: {_fmt(reporting)} {settings.currency}")
    else:
        typer.echo(f"reporting: unavailable ({problem})")
