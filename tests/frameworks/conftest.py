# SPDX-License-Identifier: Apache-2.0
"""The framework matrix: real agent/LLM frameworks driving the real SDKs against the loopback server.

Every case runs the same framework call twice, first uninstrumented, then instrumented inside
``usage_context(function=FUNCTION, user=USER)``, and compares what the caller sees. The server's
scenario fixes the usage it reports (``prompt_tokens``, ``words``) and the model that answers, so
expected token counts come from the scenario, never from the plugin.

    outcome = matrix.compare(lambda: ChatOpenAI(...).invoke("hi"), scenario=scenario(13, 4, SNAPSHOT))
    assert outcome.on == outcome.off
    assert_recorded(outcome, calls=1, request_model=CHAT_MODEL, input_tokens=13, output_tokens=4, ...)
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from pydantic import BaseModel

from otel_llm_usage import usage_context
from otel_llm_usage.testing import LoopbackLLMServer
from otel_llm_usage.testing.scenarios import filler_words
from otel_llm_usage.usage import UsageRecord

from ..conftest import IN_CI, close_otel, make_otel

FUNCTION = "framework-matrix"
USER = "u-frameworks"
CHAT_MODEL = "gpt-4o-mini"
SNAPSHOT = "gpt-4o-mini-2024-07-18"  # what answers CHAT_MODEL, as the real API names a dated snapshot
EMBEDDING_MODEL = "text-embedding-3-small"

# Per-call values the server or the framework makes up (ids, timestamps); everything else a caller
# can see must be identical with and without instrumentation.
VOLATILE_KEYS = frozenset({"id", "created", "created_at", "request_id", "item_id", "call_id", "response_id"})


def require(module: str, install: str) -> ModuleType:
    """Import a framework a test module needs: fail in CI (scripts/test installs it), skip elsewhere."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        message = f"{module} is not importable ({exc}); install it with: pip install {install}"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)
        raise AssertionError("unreachable") from exc


def scenario(prompt_tokens: int, words: int | None = None, model: str | None = None, **flags: int) -> str:
    """The loopback scenario that makes every call of a case report these counts and this model."""
    parts = {"prompt_tokens": prompt_tokens, "words": words, "model": model, **flags}
    return ";".join(f"{key}={value}" for key, value in parts.items() if value is not None)


def reply_text(words: int) -> str:
    """The server's reply of ``words`` filler words."""
    return " ".join(filler_words(words))


def plain(value: Any) -> Any:
    """What a caller can observe in a framework result, as plain data without the volatile keys."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@dataclass
class Outcome:
    off: Any  # the caller's view of the uninstrumented run
    on: Any  # the same call, instrumented
    records: list[UsageRecord]
    spans: list[ReadableSpan]
    calls: int  # LLM requests the server received during the instrumented run


class Matrix:
    def __init__(self, server: LoopbackLLMServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop

    def compare(self, call: Callable[[], Any], *, scenario: str, view: Callable[[Any], Any] = plain,
                reset: Callable[[], None] = lambda: None) -> Outcome:
        """Run ``call`` (a function, or an ``async`` function run on the session's loop) off, then on.

        The attribution context is entered inside the coroutine for async calls, as an async
        handler would, so what reaches the record is what the framework's own tasks and threads
        carry. ``reset`` runs before each run to drop SDK clients a framework caches process-wide:
        one made by the uninstrumented run would otherwise serve the instrumented one, which no
        application instrumented at startup ever sees."""
        self.server.default_scenario = scenario
        try:
            self.server.clear()
            reset()
            off = view(self._run(call))
            otel = make_otel(self.server)
            try:
                self.server.clear()
                reset()
                on = view(self._run(call))
                return Outcome(off, on, otel.records(), otel.spans(), len(self.server.requests))
            finally:
                close_otel(otel)
        finally:
            self.server.default_scenario = None
            self.server.clear()

    def _run(self, call: Callable[[], Any]) -> Any:
        # Sync entry points that drive a loop themselves (openai-agents' run_sync) take the thread's
        # default loop; any asyncio.run() since may have unset it.
        asyncio.set_event_loop(self.loop)
        if inspect.iscoroutinefunction(call):
            async def attributed() -> Any:
                with usage_context(function=FUNCTION, user=USER):
                    return await call()

            return self.loop.run_until_complete(attributed())
        with usage_context(function=FUNCTION, user=USER):
            return call()


@pytest.fixture(scope="session")
def framework_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for every async case, as an application has: frameworks cache async HTTP
    clients process-wide (langchain-openai, litellm), and those are bound to the loop that made them."""
    loop = asyncio.new_event_loop()
    yield loop
    asyncio.set_event_loop(None)
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture
def matrix(llm_server: LoopbackLLMServer, framework_loop: asyncio.AbstractEventLoop) -> Iterator[Matrix]:
    yield Matrix(llm_server, framework_loop)


def assert_recorded(
    outcome: Outcome,
    *,
    calls: int,
    provider: str,
    operation: str,
    request_model: str,
    response_model: str | None,
    input_tokens: int,
    output_tokens: int,
    streamed: bool,
) -> None:
    """Exactly one reported, attributed, ok record (and span) per LLM call, with the server's counts."""
    assert outcome.calls == calls, f"the framework made {outcome.calls} LLM requests, expected {calls}"
    assert len(outcome.records) == calls, f"{len(outcome.records)} usage records for {calls} LLM calls"
    for record in outcome.records:
        assert (record.provider, record.operation, record.status) == (provider, operation, "ok")
        assert record.usage_source == "reported"
        assert (record.tokens.input_tokens, record.tokens.output_tokens) == (input_tokens, output_tokens)
        assert record.request_model == request_model
        assert record.response_model == response_model
        assert record.streamed is streamed
        assert (record.function, record.user) == (FUNCTION, USER), "attribution lost on the way to the SDK"
    assert len(outcome.spans) == calls, f"{len(outcome.spans)} spans for {calls} LLM calls"
    for span in outcome.spans:
        attrs = dict(span.attributes or {})
        # Embeddings spans may leave output tokens out (semconv has none for them).
        assert (attrs.get("gen_ai.usage.input_tokens"), attrs.get("gen_ai.usage.output_tokens", 0)) == (
            input_tokens, output_tokens)
        assert attrs.get("gen_ai.request.model") == request_model
