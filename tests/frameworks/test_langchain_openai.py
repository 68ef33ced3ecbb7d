# SPDX-License-Identifier: Apache-2.0
"""langchain-openai: ChatOpenAI (Chat Completions and Responses API) and OpenAIEmbeddings."""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import reduce
from typing import Any

import pytest

from otel_llm_usage.testing import LoopbackLLMServer
from otel_llm_usage.testing.openai_api import EMBEDDING_DIMENSIONS
from otel_llm_usage.testing.scenarios import fake_vector

from .conftest import (
    CHAT_MODEL,
    EMBEDDING_MODEL,
    SNAPSHOT,
    Matrix,
    assert_recorded,
    plain,
    reply_text,
    require,
    scenario,
)

langchain_openai = require("langchain_openai", "langchain-openai")
from langchain_core.messages import AIMessageChunk  # noqa: E402  (after the requirement check)

pytestmark = pytest.mark.slow

PROMPT_TOKENS, WORDS = 13, 4
SCENARIO = scenario(PROMPT_TOKENS, WORDS, SNAPSHOT)
TEXT = reply_text(WORDS)
PROMPT = "one two three"


def chat(server: LoopbackLLMServer, **kw: Any) -> Any:
    return langchain_openai.ChatOpenAI(model=CHAT_MODEL, base_url=server.openai_base_url, api_key="sk-test",
                                       max_retries=0, **kw)


def embeddings(server: LoopbackLLMServer) -> Any:
    # Without the context-length check it sends text, not tiktoken ids (whose encoding it would download).
    return langchain_openai.OpenAIEmbeddings(model=EMBEDDING_MODEL, base_url=server.openai_base_url,
                                             api_key="sk-test", max_retries=0, check_embedding_ctx_length=False)


def view(result: Any) -> dict[str, Any]:
    """Messages and chunks as the caller sees them, plus each answer's text and framework-reported usage."""
    messages = result if isinstance(result, list) else [result]
    chunks = [m for m in messages if isinstance(m, AIMessageChunk)]
    answers = [reduce(operator.add, chunks)] if chunks else messages
    return {"messages": plain(messages), "answers": [(a.text, _usage(a.usage_metadata)) for a in answers]}


def _usage(metadata: Any) -> tuple[int, int] | None:
    return None if metadata is None else (metadata["input_tokens"], metadata["output_tokens"])


def _invoke(server: LoopbackLLMServer, **kw: Any) -> Callable[[], Any]:
    return lambda: chat(server, **kw).invoke(PROMPT)


def _stream(server: LoopbackLLMServer, **kw: Any) -> Callable[[], Any]:
    return lambda: list(chat(server, **kw).stream(PROMPT))


def _ainvoke(server: LoopbackLLMServer, **kw: Any) -> Callable[[], Any]:
    async def call() -> Any:
        return await chat(server, **kw).ainvoke(PROMPT)

    return call


def _astream(server: LoopbackLLMServer, **kw: Any) -> Callable[[], Any]:
    async def call() -> Any:
        return [chunk async for chunk in chat(server, **kw).astream(PROMPT)]

    return call


def _batch(server: LoopbackLLMServer, **kw: Any) -> Callable[[], Any]:
    return lambda: chat(server, **kw).batch([PROMPT, PROMPT])


REPORTED = (PROMPT_TOKENS, WORDS)
RESPONSES = {"use_responses_api": True}
# With a base_url of its own, ChatOpenAI streams Chat Completions without asking for usage (stream_usage
# unset): the caller sees none, and the plugin's own request for it must stay invisible.
CHAT_CASES = [
    # (call factory, ChatOpenAI options, LLM calls, streamed, usage the framework reports per answer)
    pytest.param(_invoke, {}, 1, False, REPORTED, id="invoke"),
    pytest.param(_stream, {}, 1, True, None, id="stream"),
    pytest.param(_stream, {"stream_usage": True}, 1, True, REPORTED, id="stream-stream_usage"),
    pytest.param(_ainvoke, {}, 1, False, REPORTED, id="ainvoke"),
    pytest.param(_astream, {}, 1, True, None, id="astream"),
    pytest.param(_astream, {"stream_usage": True}, 1, True, REPORTED, id="astream-stream_usage"),
    pytest.param(_batch, {}, 2, False, REPORTED, id="batch"),
    pytest.param(_invoke, RESPONSES, 1, False, REPORTED, id="responses-invoke"),
    pytest.param(_stream, RESPONSES, 1, True, REPORTED, id="responses-stream"),
    pytest.param(_ainvoke, RESPONSES, 1, False, REPORTED, id="responses-ainvoke"),
    pytest.param(_astream, RESPONSES, 1, True, REPORTED, id="responses-astream"),
]


@pytest.mark.parametrize(("factory", "options", "calls", "streamed", "reported"), CHAT_CASES)
def test_chat_openai(matrix: Matrix, factory: Any, options: dict[str, Any], calls: int, streamed: bool,
                     reported: tuple[int, int] | None) -> None:
    outcome = matrix.compare(factory(matrix.server, **options), scenario=SCENARIO, view=view)

    assert outcome.on == outcome.off
    assert outcome.on["answers"] == [(TEXT, reported)] * calls
    assert_recorded(outcome, calls=calls, provider="openai", operation="chat", request_model=CHAT_MODEL,
                    response_model=SNAPSHOT, input_tokens=PROMPT_TOKENS, output_tokens=WORDS, streamed=streamed)


def _embed_documents(server: LoopbackLLMServer) -> Callable[[], Any]:
    return lambda: embeddings(server).embed_documents(["one two", "three"])


def _embed_query(server: LoopbackLLMServer) -> Callable[[], Any]:
    return lambda: [embeddings(server).embed_query("one two")]


def _aembed_documents(server: LoopbackLLMServer) -> Callable[[], Any]:
    async def call() -> Any:
        return await embeddings(server).aembed_documents(["one two", "three"])

    return call


def _aembed_query(server: LoopbackLLMServer) -> Callable[[], Any]:
    async def call() -> Any:
        return [await embeddings(server).aembed_query("one two")]

    return call


@pytest.mark.parametrize(("factory", "texts"), [
    pytest.param(_embed_documents, 2, id="embed_documents"),
    pytest.param(_embed_query, 1, id="embed_query"),
    pytest.param(_aembed_documents, 2, id="aembed_documents"),
    pytest.param(_aembed_query, 1, id="aembed_query"),
])
def test_openai_embeddings(matrix: Matrix, factory: Any, texts: int) -> None:
    # No model override: embeddings answer with the requested model's name.
    outcome = matrix.compare(factory(matrix.server), scenario=scenario(PROMPT_TOKENS))

    assert outcome.on == outcome.off
    # The vectors travel as base64 float32, hence the tolerance.
    assert outcome.on == [pytest.approx(fake_vector(i, EMBEDDING_DIMENSIONS), rel=1e-6) for i in range(texts)]
    assert_recorded(outcome, calls=1, provider="openai", operation="embeddings", request_model=EMBEDDING_MODEL,
                    response_model=EMBEDDING_MODEL, input_tokens=PROMPT_TOKENS, output_tokens=0, streamed=False)
