# SPDX-License-Identifier: Apache-2.0
"""What the UsageRecord of a replayed call must say, worked out from the recorded response alone.

Usage::

    expected = expect(interaction)                  # tokens, usage source, response model, status
    cost = expected_cost(entry, tokens, params)     # hand arithmetic over a catalog entry

Nothing here calls into ``otel_llm_usage`` except the catalog lookup the brief allows
(:func:`price_entry`): the token counts come from this module's own reading of the JSON
or SSE body, and the cost is ``tokens x price / 1e6`` written out below, following the
billing rules the README states (cached input at the cache price, reasoning billed once
as output, embeddings input-only, the whole call at the tier its input length falls in,
a hybrid model's thinking price when the call ran in thinking mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from otel_llm_usage.pricing import PriceEntry, load_catalog

from .cassettes import Interaction

__all__ = ["Expected", "Tokens", "expect", "expected_cost", "price_entry", "provider_of"]

MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Tokens:
    input: int
    output: int
    cached: int = 0
    reasoning: int = 0


@dataclass(frozen=True)
class Expected:
    provider: str
    operation: str  # chat | embeddings
    request_model: str
    usage_source: str  # reported | estimated | none
    tokens: Tokens | None  # None unless reported
    response_model: str | None  # None when the body names no model
    error: bool
    error_code: str | None  # DashScope's returned ``code``; raised errors are named by the SDK's exception
    produced_text: bool  # the response carried some output, so an estimate must not be zero


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _detail(usage: dict[str, Any], group: str, name: str) -> int:
    details = usage.get(group)
    return _int(details.get(name)) if isinstance(details, dict) else 0


def _chat_tokens(usage: dict[str, Any]) -> Tokens:
    return Tokens(_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")),
                  _detail(usage, "prompt_tokens_details", "cached_tokens"),
                  _detail(usage, "completion_tokens_details", "reasoning_tokens"))


def _io_tokens(usage: dict[str, Any]) -> Tokens:
    """Responses API and DashScope native usage: ``input_tokens`` / ``output_tokens``."""
    cached = _detail(usage, "input_tokens_details", "cached_tokens") or _detail(
        usage, "prompt_tokens_details", "cached_tokens")
    return Tokens(_int(usage.get("input_tokens")), _int(usage.get("output_tokens")), cached,
                  _detail(usage, "output_tokens_details", "reasoning_tokens"))


def _last(items: list[Any]) -> Any:
    return items[-1] if items else None


def provider_of(interaction: Interaction) -> str:
    return "dashscope" if "dashscope" in interaction.host else "openai"


def operation_of(interaction: Interaction) -> str:
    return "embeddings" if "embedding" in interaction.path else "chat"


def _has_text(value: Any) -> bool:
    """Any non-empty string under the keys that carry generated text or tool arguments."""
    if isinstance(value, dict):
        return any((k in ("content", "text", "delta", "arguments") and isinstance(v, str) and v)
                   or _has_text(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_text(v) for v in value)
    return False


def _reported(interaction: Interaction) -> tuple[Tokens | None, str | None, bool]:
    """(usage, response model, any output) from the body, by endpoint shape."""
    path = interaction.path
    if interaction.is_sse:
        payloads = [data for _, data in interaction.events()]
        produced = _has_text(payloads)
        if path.endswith("/responses"):
            responses = [p["response"] for p in payloads if isinstance(p.get("response"), dict)]
            with_usage = [r for r in responses if r.get("usage")]
            model = _last([r.get("model") for r in responses if r.get("model")])
            return (_io_tokens(with_usage[-1]["usage"]) if with_usage else None), model, produced
        with_usage = [p for p in payloads if p.get("usage")]
        model = _last([p.get("model") for p in payloads if p.get("model")])
        if not with_usage:
            return None, model, produced
        usage = with_usage[-1]["usage"]  # DashScope streams report usage so far in every event: the last wins
        return (_chat_tokens(usage) if "prompt_tokens" in usage else _io_tokens(usage)), model, produced
    body = interaction.json()
    usage = body.get("usage") if isinstance(body, dict) else None
    model = body.get("model") if isinstance(body, dict) else None
    produced = _has_text(body.get("choices") or body.get("output") or [])
    if not isinstance(usage, dict):
        return None, model, produced
    if operation_of(interaction) == "embeddings":
        # OpenAI reports prompt_tokens (+ total); DashScope native reports only total_tokens.
        return Tokens(_int(usage.get("prompt_tokens", usage.get("total_tokens"))), 0), model, True
    if "prompt_tokens" in usage:
        return _chat_tokens(usage), model, produced
    return _io_tokens(usage), model, produced


def expect(interaction: Interaction) -> Expected:
    request_model = str(interaction.request_json.get("model"))
    error_code = None
    if not interaction.ok:
        body = interaction.json()
        if provider_of(interaction) == "dashscope" and isinstance(body, dict):
            error_code = body.get("code")
        return Expected(provider_of(interaction), operation_of(interaction), request_model, "none", None, None,
                        True, error_code, False)
    tokens, model, produced = _reported(interaction)
    return Expected(provider_of(interaction), operation_of(interaction), request_model,
                    "reported" if tokens is not None else "estimated", tokens, model, False, None, produced)


def price_entry(provider: str, server_address: str, *models: str | None) -> PriceEntry | None:
    """The bundled catalog's entry for the first of ``models`` it knows (request model first)."""
    catalog = load_catalog()
    for model in models:
        if model:
            entry = catalog.lookup(provider, model, server_address)
            if entry is not None:
                return entry
    return None


def _thinking(tokens: Tokens, request_params: dict[str, Any]) -> bool:
    flag = request_params.get("enable_thinking")
    if isinstance(flag, bool):
        return flag
    return tokens.reasoning > 0


def expected_cost(entry: PriceEntry | None, tokens: Tokens, request_params: dict[str, Any]) -> Decimal | None:
    """``None`` (unpriced) without an entry; otherwise the call's cost in ``entry.currency``."""
    if entry is None:
        return None
    if entry.volume is not None:
        raise NotImplementedError(f"{entry.model}: volume-tiered prices are not worked out by hand here")
    rates: Any = entry
    if entry.tiers:
        bounded = [t for t in entry.tiers if t.max_input_tokens is None or tokens.input <= t.max_input_tokens]
        rates = bounded[0] if bounded else entry.tiers[-1]
    input_price = rates.input or Decimal(0)
    if entry.kind == "embedding":
        return tokens.input * input_price / MILLION
    if rates.cached_input is not None:
        cached_price = rates.cached_input
    elif entry.cached_input_ratio is not None:
        cached_price = input_price * entry.cached_input_ratio
    else:
        cached_price = input_price
    output_price = rates.output or Decimal(0)
    if rates.thinking_output is not None and _thinking(tokens, request_params):
        output_price = rates.thinking_output
    uncached = tokens.input - tokens.cached
    return (uncached * input_price + tokens.cached * cached_price + tokens.output * output_price) / MILLION
