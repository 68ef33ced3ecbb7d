# SPDX-License-Identifier: Apache-2.0
"""``otel-llm-usage estimate``: offline token count and cost of a prompt, before sending it.

    otel-llm-usage estimate "总结一下今天直播间的热门话题" --model qwen-plus
    otel-llm-usage estimate --file prompt.txt --model gpt-4o --output 800

How tokens are counted, and why:

* Qwen models (``qwen*``) with the ``dashscope`` SDK installed: its bundled Qwen tokenizer
  (``dashscope.get_tokenizer``), which reads a vocabulary file shipped in the wheel: exact, offline.
* Everything else: the package's documented heuristic (:func:`otel_llm_usage.usage.estimate_tokens`,
  ~4 Latin characters or ~1.5 CJK characters per token, rounded up). ``tiktoken`` would be exact
  for OpenAI models but downloads its BPE files on first use, so an offline tool cannot rely on it.

The output always names the method. The cost is the catalog price of the input (plus ``--output``
tokens, if given) in the model's currency and in the reporting currency.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer

from ..pricing.catalog import PriceCatalog
from ..pricing.compute import compute_cost
from ..usage import TokenUsage, count_text, estimate_tokens
from . import _common as C
from .amounts import AmountError, parse_amount

# One lookup for `prices estimate` and this command: a model id, alias or snapshot across providers.
from .prices import _find as find_price_entry

__all__ = ["HEURISTIC", "count_tokens", "estimate"]

HEURISTIC = "heuristic (~4 chars/token Latin, ~1.5 CJK)"


def count_tokens(text: str, model: str) -> tuple[int, str]:
    """(tokens, method) for ``text`` as ``model`` would see it."""
    if model.lower().startswith("qwen"):
        try:
            import dashscope

            tokenizer = dashscope.get_tokenizer(model.lower())
            return len(tokenizer.encode(text)), "dashscope Qwen tokenizer (exact, offline)"
        except ImportError:
            pass
        except Exception as exc:
            return estimate_tokens(*count_text(text)), f"{HEURISTIC}; Qwen tokenizer failed: {exc}"
    return estimate_tokens(*count_text(text)), HEURISTIC


def estimate(
    text: Annotated[str | None, typer.Argument(help="The prompt text (or use --file).")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Model id, e.g. qwen-plus, gpt-4o.")] = "",
    file: Annotated[Path | None, typer.Option("--file", help="Read the prompt from this file (UTF-8).")] = None,
    output_tokens: Annotated[str | None, typer.Option("--output", help="Expected output tokens (e.g. 800, 2K) "
                                                                       "to add to the cost.")] = None,
    provider: Annotated[str | None, typer.Option("--provider", "-p", help="Provider, if the model id is "
                                                                          "ambiguous.")] = None,
    config: C.ConfigOption = None,
    fmt: C.FormatOption = C.OutputFormat.table,
) -> None:
    """Estimate a prompt's tokens and cost offline (Qwen tokenizer when available, else a stated heuristic)."""
    if not model:
        C.fail("--model is required", 2)
    if (text is None) == (file is None):
        C.fail("give the prompt as TEXT or --file, not both and not neither", 2)
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            C.fail(f"cannot read {file}: {exc}", 2)
    assert text is not None
    try:
        out = parse_amount(output_tokens) if output_tokens is not None else 0
    except AmountError as exc:
        C.fail(f"--output: {exc}", 2)
    cfg = C.load(config, None, durable=False)
    tokens, method = count_tokens(text, model)
    entry = find_price_entry(PriceCatalog.from_settings(cfg.pricing), model, provider, None)
    data: dict[str, Any] = {"model": model, "input_tokens": tokens, "output_tokens": out, "method": method,
                            "characters": len(text), "price_entry": None, "cost": None, "currency": None,
                            "reporting_cost": None, "reporting_currency": cfg.pricing.currency}
    if entry is not None and entry.is_priced:
        cost = compute_cost(entry, TokenUsage(input_tokens=tokens, output_tokens=out), {})
        currency = entry.currency or cfg.pricing.currency
        data.update(price_entry=f"{entry.provider}/{entry.model}", cost=cost, currency=currency,
                    reporting_cost=C.converter(cfg)(cost, currency))
    C.emit(data, fmt, table=lambda: _show(data), csv_rows=lambda: ([data], tuple(data)))
    if entry is None:
        raise typer.Exit(1)


def _show(data: dict[str, Any]) -> None:
    typer.echo(f"model: {data['model']}" + (f" (price: {data['price_entry']})" if data["price_entry"] else ""))
    typer.echo(f"input tokens: {data['input_tokens']:,} ({data['characters']:,} characters)")
    typer.echo(f"method: {data['method']}")
    if data["output_tokens"]:
        typer.echo(f"output tokens (given): {data['output_tokens']:,}")
    if data["cost"] is None:
        typer.echo(f"cost: unknown (no catalog price for {data['model']!r}; see `otel-llm-usage prices`)")
        return
    reporting = data["reporting_cost"]
    typer.echo(f"cost: {C.fmt_money(data['cost'], 8)} {data['currency']}"
               + (f" = {C.fmt_money(reporting, 8)} {data['reporting_currency']}"
                  if isinstance(reporting, Decimal) and data["currency"] != data["reporting_currency"] else "")
               + ("" if data["output_tokens"] else " (input only; add --output N for the answer)"))
