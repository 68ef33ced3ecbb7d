# SPDX-License-Identifier: Apache-2.0
"""The one normalized record every call becomes, and the pure helpers that build it.

Token accounting convention (the one OpenAI and DashScope report):
``input_tokens`` *includes* ``cached_input_tokens`` and ``cache_write_tokens``;
``output_tokens`` *includes* ``reasoning_tokens``. Totals are therefore
``input_tokens + output_tokens`` and never count a cached or reasoning token twice.
:func:`billable_breakdown` splits them into disjoint buckets for counters.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel

__all__ = [
    "RecordStatus",
    "TokenUsage",
    "UsageRecord",
    "UsageSource",
    "billable_breakdown",
    "estimate_tokens",
    "fields_of",
    "read_field",
    "safe_int",
]

#: ``blocked``: refused by a budget before it was sent.
RecordStatus = Literal["ok", "error", "blocked"]
#: Where the tokens came from: the provider's report, our estimate (no usage arrived), nothing
#: billed (refused), or a :func:`~otel_llm_usage.record_usage` call.
UsageSource = Literal["reported", "estimated", "none", "manual"]

# A single response never legitimately reports more than this; larger values are
# treated as corrupt rather than allowed to blow a budget or a counter.
MAX_TOKENS_PER_CALL = 10**9

# CJK ideographs and punctuation, Hangul, compatibility ideographs: ~1.5 characters a token.
_NOT_CJK = re.compile("[^\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff]+")


def read_field(obj: Any, *path: str) -> Any:
    """Read ``obj.a.b`` or ``obj["a"]["b"]`` (SDK models, dicts, DashScope DictMixins).

    Runs for every response and streamed chunk, so it avoids ``getattr`` misses on
    pydantic models (each one raises and catches an exception inside pydantic):
    their fields live in ``__dict__`` and unknown API fields in ``__pydantic_extra__``.
    """
    cur = obj
    for key in path:
        if cur is None:
            return None
        if isinstance(cur, dict):
            cur = cur.get(key)
            continue
        fields = getattr(cur, "__dict__", None)
        if fields is not None and key in fields:
            cur = fields[key]
        elif isinstance(cur, BaseModel):
            extra = cur.__pydantic_extra__
            cur = extra.get(key) if extra else None
        elif isinstance(cur, Mapping):
            cur = cur.get(key)
        else:
            cur = getattr(cur, key, None)
    return cur


def safe_int(value: Any) -> int | None:
    """Coerce a provider-reported count; ``None`` when it is absent or not a sane count."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value.lstrip("-").isdecimal():  # what int() reads; isdigit() also passes "²"
            return None
        value = int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = int(value)
    if not isinstance(value, int):
        return None
    if value < 0 or value > MAX_TOKENS_PER_CALL:
        return None
    return value


@dataclass(slots=True)
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    # Extra modality counts (image/audio) kept for pricing; already inside input/output.
    details: dict[str, int] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def clamp(self) -> TokenUsage:
        """Make the parts consistent with the whole (providers sometimes disagree with themselves)."""
        self.cached_input_tokens = min(self.cached_input_tokens, self.input_tokens)
        self.cache_write_tokens = min(self.cache_write_tokens, self.input_tokens - self.cached_input_tokens)
        self.reasoning_tokens = min(self.reasoning_tokens, self.output_tokens)
        return self


class _Fields:
    """``.get`` over an object of any other shape :func:`read_field` understands."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def get(self, key: str) -> Any:
        return read_field(self.obj, key)


_NO_FIELDS: dict[str, Any] = {}


def fields_of(obj: Any) -> Mapping[str, Any] | _Fields:
    """One object's fields for repeated ``.get``: dicts and pydantic models (every SDK response) as
    the dict they already hold, anything else through :func:`read_field`. Same values either way."""
    if obj is None:
        return _NO_FIELDS
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, BaseModel):
        extra = obj.__pydantic_extra__
        return {**extra, **obj.__dict__} if extra else obj.__dict__
    return _Fields(obj)


def _first_count(*values: Any) -> int | None:
    for value in values:
        if value is not None:
            count = safe_int(value)
            if count is not None:
                return count
    return None


# Usage that holds these alone (embeddings, chat without details) has no cached or reasoning parts.
_COUNT_FIELDS = frozenset({"prompt_tokens", "completion_tokens", "input_tokens", "output_tokens", "total_tokens"})


def normalize_usage(usage: Any) -> TokenUsage | None:
    """Normalize any OpenAI-style or DashScope-style usage object; ``None`` if nothing usable.

    Handles chat (``prompt_tokens``/``completion_tokens``), Responses API
    (``input_tokens``/``output_tokens``), DashScope (``input_tokens``/``output_tokens``),
    DeepSeek (``prompt_cache_hit_tokens``) and embeddings (``prompt_tokens`` + ``total_tokens``).
    """
    if usage is None:
        return None
    fields = fields_of(usage)
    get = fields.get
    inp = _first_count(get("prompt_tokens"), get("input_tokens"))
    out = _first_count(get("completion_tokens"), get("output_tokens"))
    total = safe_int(get("total_tokens"))
    if inp is None and out is None:
        if total is None:
            return None
        # Embedding-style usage reports only a total, and all of it is input.
        inp, out = total, 0
    inp = inp or 0
    out = out or 0
    if out == 0 and total is not None and total > inp and get("completion_tokens") is None \
            and get("output_tokens") is None:
        out = total - inp
    if type(fields) is dict and _COUNT_FIELDS.issuperset(fields):
        return TokenUsage(input_tokens=inp, output_tokens=out)  # no parts to read or clamp

    prompt = fields_of(get("prompt_tokens_details")).get
    inputs = fields_of(get("input_tokens_details")).get
    completion = fields_of(get("completion_tokens_details")).get
    outputs = fields_of(get("output_tokens_details")).get
    cached = _first_count(prompt("cached_tokens"), inputs("cached_tokens"), get("prompt_cache_hit_tokens"),
                          get("cached_tokens"))
    cache_write = _first_count(prompt("cache_creation_input_tokens"), inputs("cache_creation_input_tokens"),
                               get("cache_creation_input_tokens"))
    reasoning = _first_count(completion("reasoning_tokens"), outputs("reasoning_tokens"), get("reasoning_tokens"))
    details: dict[str, int] = {}
    for name in ("image_tokens", "audio_tokens", "video_tokens"):
        n = _first_count(inputs(name), prompt(name), get(name))
        if n:
            details[name] = n
    return TokenUsage(
        input_tokens=inp,
        output_tokens=out,
        cached_input_tokens=cached or 0,
        cache_write_tokens=cache_write or 0,
        reasoning_tokens=reasoning or 0,
        details=details,
    ).clamp()


def billable_breakdown(tokens: TokenUsage) -> dict[str, int]:
    """Disjoint token buckets: summing them gives the call's total, nothing counted twice."""
    return {
        "input": tokens.input_tokens - tokens.cached_input_tokens - tokens.cache_write_tokens,
        "cached_input": tokens.cached_input_tokens,
        "cache_write": tokens.cache_write_tokens,
        "output": tokens.output_tokens - tokens.reasoning_tokens,
        "reasoning": tokens.reasoning_tokens,
    }


def estimate_tokens(text_chars: int, cjk_chars: int = 0) -> int:
    """Documented heuristic when a provider reports no usage: ~4 Latin chars or ~1.5 CJK chars a token.

    It errs high on purpose (rounding up, minimum 1 for non-empty text): an
    estimate feeds budgets, where undercounting is the worse mistake.
    """
    if text_chars <= 0 and cjk_chars <= 0:
        return 0
    return max(1, math.ceil(text_chars / 4 + cjk_chars / 1.5))


def count_text(text: str) -> tuple[int, int]:
    """(non-CJK chars, CJK chars) of ``text``, for :func:`estimate_tokens`."""
    if text.isascii():  # the common case, answered in C without walking the string
        return len(text), 0
    # One regex pass in C: a loop over the characters in Python costs ~40 ns each, which for a
    # long Chinese prompt (the estimate runs before every budgeted call) is ~100 µs per call.
    cjk = len(_NOT_CJK.sub("", text))
    return len(text) - cjk, cjk


def new_record_id() -> str:
    """32 hex chars, time-ordered like a UUIDv7: ledgers append in key order instead of scattering
    inserts across their primary-key index (random ids halve SQLite's ingest rate)."""
    # ``random`` rather than ``os.urandom``: no system call per record, and Python reseeds it in a
    # forked child, so two processes do not produce the same sequence. Ids need uniqueness, not secrecy.
    return f"{time.time_ns() // 1000:014x}{random.getrandbits(72):018x}"


@dataclass(slots=True)
class UsageRecord:
    """One LLM call (or one manual record), as every pipeline stage sees it."""

    provider: str
    operation: str
    request_model: str | None
    response_model: str | None = None
    tokens: TokenUsage = field(default_factory=TokenUsage)
    usage_source: UsageSource = "reported"
    duration_s: float = 0.0
    ttft_s: float | None = None
    status: RecordStatus = "ok"
    error_type: str | None = None
    function: str | None = None
    user: str | None = None
    session: str | None = None
    anchor: str | None = None
    streamed: bool = False
    server_address: str | None = None
    server_port: int | None = None
    response_id: str | None = None
    finish_reasons: tuple[str, ...] = ()
    timestamp: float = field(default_factory=time.time)
    record_id: str = field(default_factory=lambda: new_record_id())
    # Filled by the pricing stage; ``cost is None`` means "unpriced", never "free".
    cost: Decimal | None = None
    currency: str | None = None
    price_source: str | None = None
    priced: bool = False  # set once pricing ran, so a record is never priced twice
    # When the record entered the pipeline, on the budget clock: settlement runs later, off the
    # calling thread, but charges the window the call ended in. Never persisted.
    submitted_at: float | None = field(default=None, repr=False, compare=False)
    # Request facts pricing may need (e.g. enable_thinking, region) — never content.
    request_params: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str:
        """The model label: what the caller asked for, else what answered."""
        return self.request_model or self.response_model or "unknown"
