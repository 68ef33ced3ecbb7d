# SPDX-License-Identifier: Apache-2.0
"""How a test asks the loopback server to misbehave (a :class:`Scenario`, sent in a header), and
the filler replies it makes: fixed words, never the request's content."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

__all__ = ["SCENARIO_HEADER", "RecordedRequest", "Scenario", "ScenarioError", "UsageNumber", "count_words",
           "fake_vector", "filler_words", "iter_texts", "stream_pieces"]

SCENARIO_HEADER = "X-Loopback-Scenario"

# Headers that may carry credentials; they never reach the request log so a
# test's fake key (or a real one, by accident) is not retained.
_CREDENTIAL_HEADERS = frozenset({"authorization", "api-key", "x-api-key"})

_FILLER = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")

#: A value substituted for a token count; normally ``int`` but the malformed
#: usage scenarios turn it into strings or absurd numbers.
UsageNumber = Callable[[int], Any]


class ScenarioError(ValueError):
    """A scenario string could not be parsed (unknown key or bad value)."""


@dataclass(frozen=True)
class Scenario:
    """How the server should misbehave (or behave) for one request.

    Parsed from ``key=value;key=value``; every key is optional.
    """

    words: int = 5
    prompt_tokens: int | None = None
    cached: int = 0
    reasoning: int = 0
    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    chunk_delay: float = 0.0
    truncate_after: int | None = None
    no_usage: bool = False
    usage: str | None = None
    malformed_json: bool = False
    malformed_sse: bool = False
    model: str | None = None
    sse_error: bool = False
    reset_body: bool = False  # non-stream: send half of a JSON body, then drop the connection
    extra_fields: bool = False  # add unknown fields to responses, as a newer API version would
    # Responses API: when the request offers function tools and carries no tool result yet, call the
    # first tool instead of answering, so agent loops (call, run the tool, answer) can be driven.
    tool_call: bool = False
    source: str = field(default="", compare=False)

    _USAGE_VARIANTS: ClassVar[tuple[str, ...]] = ("null", "negative", "string", "huge")

    @classmethod
    def parse(cls, text: str | None) -> Scenario:
        text = (text or "").strip()
        known = {f.name: f for f in fields(cls) if f.name != "source"}
        values: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in text.split(";"))):
            key, sep, raw = item.partition("=")
            key, raw = key.strip(), raw.strip()
            if not sep or key not in known:
                known_keys = ", ".join(sorted(known))
                raise ScenarioError(
                    f"unknown loopback scenario key {key!r} in {text!r}; known keys: {known_keys}"
                )
            values[key] = _convert(key, raw, _KINDS.get(key, str))
        if values.get("usage") not in (None, *cls._USAGE_VARIANTS):
            raise ScenarioError(f"usage must be one of {cls._USAGE_VARIANTS}, got {values['usage']!r}")
        if values.get("status") is not None and not 400 <= values["status"] <= 599:
            raise ScenarioError(f"status must be an HTTP error code (400-599), got {values['status']}")
        return cls(source=text, **values)

    # -- token arithmetic shared by every provider ---------------------------

    def input_tokens(self, counted: int) -> int:
        """Input tokens: the override, else the word count (never 0, like real
        tokenizers which always emit something), and never below ``cached``."""
        base = self.prompt_tokens if self.prompt_tokens is not None else max(counted, 1)
        return max(base, self.cached)

    def output_tokens(self, visible: int | None = None) -> int:
        """Output tokens: visible pieces (default ``words``) plus reasoning,
        because OpenAI bills reasoning inside completion_tokens."""
        return (self.words if visible is None else visible) + self.reasoning

    def number(self, value: int) -> Any:
        """Render one token count, honouring the malformed ``usage=`` variants."""
        if self.usage == "negative":
            return -value if value else -1
        if self.usage == "string":
            return str(value)
        if self.usage == "huge":
            return 10**15
        return value

    def attach_usage(self, body: dict[str, Any], key: str, build: Callable[[UsageNumber], Any]) -> None:
        """Set ``body[key]`` to the usage built by ``build``, or leave it out
        (``no_usage``) or null it (``usage=null``)."""
        if self.no_usage:
            return
        body[key] = None if self.usage == "null" else build(self.number)


# Value types of the non-string scenario keys (annotations are strings under
# ``from __future__ import annotations``, so they are listed explicitly).
_KINDS: dict[str, type] = {
    "words": int,
    "prompt_tokens": int,
    "cached": int,
    "reasoning": int,
    "status": int,
    "truncate_after": int,
    "delay": float,
    "chunk_delay": float,
    "no_usage": bool,
    "malformed_json": bool,
    "malformed_sse": bool,
    "sse_error": bool,
    "reset_body": bool,
    "extra_fields": bool,
    "tool_call": bool,
}


def _convert(key: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is int:
            value: Any = int(raw)
        elif kind is float:
            value = float(raw)
        else:
            return raw
    except ValueError:
        raise ScenarioError(f"loopback scenario key {key!r} has invalid value {raw!r}") from None
    if value < 0:
        raise ScenarioError(f"loopback scenario key {key!r} must not be negative, got {raw!r}")
    return value


def filler_words(count: int) -> list[str]:
    """``count`` deterministic filler words."""
    return [_FILLER[i % len(_FILLER)] for i in range(count)]


def stream_pieces(words: Sequence[str]) -> list[str]:
    """Split words into stream deltas whose concatenation is ``" ".join(words)``."""
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def count_words(texts: Iterable[str | None]) -> int:
    """The server's deterministic "tokenizer": whitespace-separated words."""
    return sum(len(t.split()) for t in texts if isinstance(t, str))


def iter_texts(value: Any, keys: Sequence[str]) -> Iterator[str]:
    """Every piece of prompt text in a request structure.

    Walks strings, lists, and the members named by ``keys`` of dicts (so
    image URLs and other non-text parts are skipped). A flat list of ints is
    a pre-tokenized prompt and counts one word per token id."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            yield " ".join("t" for _ in value)
            return
        for item in value:
            yield from iter_texts(item, keys)
    elif isinstance(value, dict):
        for key in keys:
            if key in value:
                yield from iter_texts(value[key], keys)


def fake_vector(index: int, dims: int) -> list[float]:
    """A deterministic, input-independent embedding vector."""
    return [round(((index + 1) * (d + 1)) % 7 / 7.0, 4) for d in range(dims)]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    scenario: Scenario | None


# Turns (status, message) into a provider-shaped JSON error body.
