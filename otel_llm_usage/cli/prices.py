# SPDX-License-Identifier: Apache-2.0
"""``otel-llm-usage prices``: look up catalog prices, estimate a call, see and update the catalogs.

``prices [MODEL] [--provider P] [--format table|json]`` lists matching entries,
``prices estimate MODEL --input N --output M [--at ISO8601] ...`` prices one hypothetical call,
``prices catalogs`` shows every catalog in use with its read date and age, and
``prices import --from-genai-prices | --from-litellm FILE [--diff] [--out FILE]`` converts another
public catalog into this package's schema (load the result with ``pricing.catalog_files``). The
group defaults to the ``list`` command whenever the first argument is not a sub-command name (see
:class:`_DefaultListGroup`).
"""

from __future__ import annotations

import datetime as _dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ..config import load_config
from ..errors import ConfigError
from ..pricing.catalog import PriceCatalog, canonical_provider, display_price
from ..pricing.compute import active_window, compute_cost
from ..pricing.freshness import STALE_AFTER_DAYS, catalog_rows
from ..pricing.models import REGIONS, PriceEntry, PricingSettings
from ..pricing.stage import convert_currency
from ..usage import TokenUsage

__all__ = ["prices_app"]

_KNOWN_PROVIDERS = ("openai", "dashscope", "deepseek", "zhipu", "volcengine", "moonshot")


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
    """The ``pricing:`` section of the config file (through the full loader: catalog files are resolved
    against the file's directory and validated with ``file:line`` errors)."""
    if path is None:
        return PricingSettings()
    try:
        return load_config(path).pricing
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from exc


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
    parts = []
    if entry.tiers:
        bounds = []
        for t in entry.tiers:
            text = f"<={t.max_input_tokens}" if t.max_input_tokens else "rest"
            bounds.append(text + (f" out<={t.max_output_tokens}" if t.max_output_tokens else ""))
        parts.append(f"{len(entry.tiers)} by length ({', '.join(bounds)})")
    if entry.volume is not None:
        parts.append(f"{len(entry.volume.tiers)} by volume/{entry.volume.period}")
    if entry.time_windows:
        parts.append("time: " + ", ".join(f"{w.name} x{w.multiplier}" for w in entry.time_windows))
    return "; ".join(parts)


def _console() -> Console:
    # A fixed, generous width when not on a terminal so piped/tested output is not wrapped.
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _find(catalog: PriceCatalog, model: str, provider: str | None, region: str | None) -> PriceEntry | None:
    if provider:
        return catalog.lookup(provider, model, region=region if canonical_provider(provider) == "dashscope" else None)
    for name in _KNOWN_PROVIDERS:
        entry = catalog.lookup(name, model, region=region if name == "dashscope" else None)
        if entry is not None:
            return entry
    # Config entries for other providers (hostnames) or any provider. The known providers were asked
    # above: one of theirs found here would be another region's price (qwen-max in cn for --region hk).
    for entry in catalog.search(model):
        if entry.provider in _KNOWN_PROVIDERS:
            continue
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
    region: Annotated[str | None, typer.Option("--region", help="DashScope region: cn, intl, hk or us.")] = None,
    at: Annotated[str | None, typer.Option("--at", help="The call's time, ISO 8601 with a UTC offset "
                                                        "(e.g. 2026-12-02T10:00+08:00), for time-of-day prices; "
                                                        "default: the base price.")] = None,
    thinking: Annotated[bool | None, typer.Option("--thinking/--no-thinking",
                                                  help="Hybrid models: thinking mode on/off.")] = None,
    batch: Annotated[bool, typer.Option("--batch", help="Price as a batch call.")] = False,
    output_format: FormatOption = "table",
    config: ConfigOption = None,
) -> None:
    """Estimate one call's cost, in the model's currency and in the reporting currency."""
    if region is not None and region not in REGIONS:
        raise typer.BadParameter(f"use one of {', '.join(REGIONS)}", param_hint="--region")
    moment = _parse_at(at)
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
    cost = compute_cost(entry, tokens, params, at=moment)
    window = active_window(entry, moment)
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
            "at": moment.isoformat() if moment is not None else None,
            "time_window": window.name if window is not None else None,
            "reporting_cost": _fmt(reporting) if reporting is not None else None,
            "reporting_currency": settings.currency, "error": problem,
        }, indent=2))
        return
    where = f"{entry.provider}/{entry.model}" + (f" [{entry.region}]" if entry.region else "")
    typer.echo(f"model: {where}  (source {entry.source}{'' if entry.verified else ', UNVERIFIED'})")
    typer.echo(f"cost: {_fmt(cost)} {currency}"
               + (f"  (at {moment.isoformat()}: {window.name}, x{window.multiplier})" if moment and window else ""))
    if reporting is not None:
        typer.echo(f"reporting: {_fmt(reporting)} {settings.currency}")
    else:
        typer.echo(f"reporting: unavailable ({problem})")


def _parse_at(text: str | None) -> _dt.datetime | None:
    if text is None:
        return None
    try:
        moment = _dt.datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise typer.BadParameter(f"not an ISO 8601 time: {text!r}", param_hint="--at") from exc
    if moment.tzinfo is None:
        raise typer.BadParameter("give a UTC offset (e.g. 2026-12-02T10:00+08:00 or ...Z): the hour of day "
                                 "decides time-of-day prices", param_hint="--at")
    return moment


def _parse_date(text: str | None, option: str) -> _dt.date:
    if text is None:
        return _dt.date.today()
    try:
        return _dt.date.fromisoformat(text.strip())
    except ValueError as exc:
        raise typer.BadParameter(f"not a date (YYYY-MM-DD): {text!r}", param_hint=option) from exc


@prices_app.command("catalogs")
def catalogs(
    output_format: FormatOption = "table",
    config: ConfigOption = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="Count ages up to this date (YYYY-MM-DD); "
                                                              "default: today.")] = None,
) -> None:
    """List every price catalog in use: file, provider, region, currency, read date, age, entries."""
    today = _parse_date(as_of, "--as-of")
    rows = catalog_rows(PriceCatalog.from_settings(_load_settings(config)), today)
    for row in rows:
        row.pop("in_use")  # only a running process knows which catalogs priced its calls
    if output_format == "json":
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if output_format != "table":
        raise typer.BadParameter("use table or json", param_hint="--format")
    table = Table(title=f"Price catalogs (ages on {today.isoformat()}; stale after {STALE_AFTER_DAYS} days)")
    for column in ("catalog", "origin", "provider", "region", "ccy", "read on", "age (days)", "entries", "stale"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["catalog"], row["origin"], row["provider"], row["region"] or "", row["currency"],
                      row["read_on"], str(row["age_days"]), str(row["entries"]), "STALE" if row["stale"] else "")
    _console().print(table)


@prices_app.command("import")
def import_prices(
    from_genai_prices: Annotated[bool, typer.Option("--from-genai-prices",
                                                    help="Convert the installed genai-prices package's data.")] = False,
    from_litellm: Annotated[Path | None, typer.Option("--from-litellm", metavar="FILE",
                                                      help="Convert LiteLLM's model_prices_and_context_window.json "
                                                           "(a local file; nothing is downloaded).")] = None,
    providers: Annotated[list[str] | None, typer.Option("--provider", "-p",
                                                        help="Only this provider (repeatable). Default: genai-prices: "
                                                             "the providers bundled here (all: every one); "
                                                             "LiteLLM: all.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the YAML here (default: stdout).")] = None,
    diff: Annotated[bool, typer.Option("--diff", help="Show how the imported prices differ from the bundled ones "
                                                      "(instead of the YAML on stdout).")] = False,
    read_on: Annotated[str | None, typer.Option("--read-on", help="read_on of the written catalogs "
                                                                  "(YYYY-MM-DD; default today).")] = None,
    at: Annotated[str | None, typer.Option("--at", help="genai-prices: take the prices in force at this time "
                                                        "(ISO 8601 with offset; default now).")] = None,
    output_format: FormatOption = "table",
) -> None:
    """Convert another public catalog into this package's catalog schema (offline)."""
    from ..pricing import importers

    if from_genai_prices == (from_litellm is not None):
        raise typer.BadParameter("give exactly one of --from-genai-prices and --from-litellm FILE")
    day = _parse_date(read_on, "--read-on")
    wanted = [p.strip().lower() for p in providers or ()]
    if from_litellm is not None:
        try:
            data = json.loads(from_litellm.read_text(encoding="utf-8"), parse_float=Decimal)
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"cannot read {from_litellm}: {exc}", param_hint="--from-litellm") from exc
        if not isinstance(data, dict):
            raise typer.BadParameter(f"{from_litellm}: expected an object of model -> prices",
                                     param_hint="--from-litellm")
        docs = importers.from_litellm(data, read_on=day, cited=f"file {from_litellm.name}")
        docs = [d for d in docs if not wanted or d["provider"] in wanted]
    else:
        moment = _parse_at(at) or _dt.datetime.now(_dt.timezone.utc)
        try:
            docs = importers.from_genai_prices(wanted, at=moment, read_on=day)
        except ImportError as exc:
            raise typer.BadParameter("genai-prices is not installed (pip install genai-prices)",
                                     param_hint="--from-genai-prices") from exc
    if not docs:
        typer.echo("nothing to import (no matching provider)", err=True)
        raise typer.Exit(code=1)
    text = importers.dump_catalogs(docs)
    if out is not None:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {sum(len(d['models']) for d in docs)} entries in {len(docs)} catalog(s) to {out}", err=True)
    elif not diff:
        typer.echo(text, nl=False)
    if diff:
        _show_diff(importers.diff_catalogs(docs, PriceCatalog()), output_format)


def _show_diff(rows: list[Any], output_format: str) -> None:
    if output_format == "json":
        typer.echo(json.dumps([{"provider": r.provider, "region": r.region, "model": r.model, "field": r.field,
                                "bundled": r.bundled, "imported": r.imported} for r in rows], indent=2))
        return
    changed = [r for r in rows if r.field != "new"]
    table = Table(title=f"Imported vs bundled: {len(changed)} differences, "
                        f"{len(rows) - len(changed)} models not bundled")
    for column in ("provider", "region", "model", "field", "bundled", "imported"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r.provider, r.region or "", r.model, r.field, r.bundled or "", r.imported or "")
    _console().print(table)
