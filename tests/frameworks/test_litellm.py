# SPDX-License-Identifier: Apache-2.0
"""litellm: completion, acompletion, their streams, embedding and aembedding on the ``openai/`` route.

litellm drives the OpenAI SDK client with ``client.post("/chat/completions", ...)`` (and
``"/embeddings"`` unless an ``encoding_format`` is given), below the resource methods; these cases
assert what a caller is owed whichever layer the SDK call goes through.
"""

from __future__ import annotations

import os
from collections.abc import Callable
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

# Its model price map is otherwise fetched from the network at import time.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
litellm = require("litellm", "'litellm>=1.108.14'")

pytestmark = [
    pytest.mark.slow,
    # pydantic warns about litellm's own models (building them lazily, and its stream chunk builder
    # reading an instance attribute); neither comes from the calls tested here.
    pytest.mark.filterwarnings("ignore:Items? .* (is|are) using the `ReadOnly` qualifier:UserWarning"),
    pytest.mark.filterwarnings("ignore:Accessing the '[a-z_]+' attribute on the instance:DeprecationWarning"),
]

PROMPT_TOKENS, WORDS = 19, 5
SCENARIO = scenario(PROMPT_TOKENS, WORDS, SNAPSHOT)
TEXT = reply_text(WORDS)
MESSAGES = [{"role": "user", "content": "one two three"}]
INCLUDE_USAGE = {"stream_options": {"include_usage": True}}


def fresh_clients() -> None:
    litellm.in_memory_llm_clients_cache.flush_cache()


def endpoint(server: LoopbackLLMServer) -> dict[str, Any]:
    return {"api_base": server.openai_base_url, "api_key": "sk-test", "num_retries": 0}


def reply_view(response: Any) -> dict[str, Any]:
    usage = response.usage
    return {
        "response": plain(response),
        "text": response.choices[0].message.content,
        "usage": (usage.prompt_tokens, usage.completion_tokens),
    }


def chunks_view(chunks: list[Any]) -> dict[str, Any]:
    usage = [c.usage for c in chunks if getattr(c, "usage", None) is not None]
    return {
        "chunks": plain(chunks),
        "text": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
        "usage": [(u.prompt_tokens, u.completion_tokens) for u in usage],
    }


def _completion(server: LoopbackLLMServer, **kw: Any) -> Callable[[], Any]:
    return lambda: litellm.completion(model=f"openai/{CHAT_MODEL}", messages=MESSAGES, **endpoint(server), **kw)


def _acompletion(server: LoopbackLLMServer, **kw: Any) -> Callable[[], Any]:
    async def call() -> Any:
        return await litellm.acompletion(model=f"openai/{CHAT_MODEL}", messages=MESSAGES, **endpoint(server), **kw)

    return call


def _stream(server: LoopbackLLMServer, **kw: Any) -> Callable[[], Any]:
    return lambda: list(litellm.completion(model=f"openai/{CHAT_MODEL}", messages=MESSAGES, stream=True,
                                           **endpoint(server), **kw))


def _astream(server: LoopbackLLMServer, **kw: Any) -> Callable[[], Any]:
    async def call() -> Any:
        stream = await litellm.acompletion(model=f"openai/{CHAT_MODEL}", messages=MESSAGES, stream=True,
                                           **endpoint(server), **kw)
        return [chunk async for chunk in stream]

    return call


@pytest.mark.parametrize(("factory", "options", "streamed", "view", "reported"), [
    pytest.param(_completion, {}, False, reply_view, (PROMPT_TOKENS, WORDS), id="completion"),
    pytest.param(_acompletion, {}, False, reply_view, (PROMPT_TOKENS, WORDS), id="acompletion"),
    # Without stream_options litellm asks a non-OpenAI api_base for no usage, and the caller gets none.
    pytest.param(_stream, {}, True, chunks_view, [], id="stream"),
    pytest.param(_stream, INCLUDE_USAGE, True, chunks_view, [(PROMPT_TOKENS, WORDS)], id="stream-include_usage"),
    pytest.param(_astream, {}, True, chunks_view, [], id="astream"),
    pytest.param(_astream, INCLUDE_USAGE, True, chunks_view, [(PROMPT_TOKENS, WORDS)],
                 id="astream-include_usage"),
])
def test_completion(matrix: Matrix, factory: Any, options: dict[str, Any], streamed: bool,
                    view: Callable[[Any], Any], reported: Any) -> None:
    outcome = matrix.compare(factory(matrix.server, **options), scenario=SCENARIO, view=view, reset=fresh_clients)

    assert outcome.on == outcome.off
    assert (outcome.on["text"], outcome.on["usage"]) == (TEXT, reported)
    assert_recorded(outcome, calls=1, provider="openai", operation="chat", request_model=CHAT_MODEL,
                    response_model=SNAPSHOT, input_tokens=PROMPT_TOKENS, output_tokens=WORDS, streamed=streamed)


def _embedding(server: LoopbackLLMServer, **kw: Any) -> Callable[[], Any]:
    return lambda: litellm.embedding(model=f"openai/{EMBEDDING_MODEL}", input=["one two", "three"],
                                     **endpoint(server), **kw)


def _aembedding(server: LoopbackLLMServer, **kw: Any) -> Callable[[], Any]:
    async def call() -> Any:
        return await litellm.aembedding(model=f"openai/{EMBEDDING_MODEL}", input=["one two", "three"],
                                        **endpoint(server), **kw)

    return call


def embedding_view(response: Any) -> dict[str, Any]:
    return {
        "response": plain(response),
        "vectors": [item["embedding"] for item in response.data],
        "input_tokens": response.usage.prompt_tokens,
    }


@pytest.mark.parametrize("factory", [pytest.param(_embedding, id="embedding"),
                                     pytest.param(_aembedding, id="aembedding")])
@pytest.mark.parametrize("options", [
    pytest.param({}, id="default"),
    # With an encoding_format litellm calls client.embeddings.create instead of client.post.
    pytest.param({"encoding_format": "float"}, id="encoding_format"),
])
def test_embedding(matrix: Matrix, factory: Any, options: dict[str, Any]) -> None:
    outcome = matrix.compare(factory(matrix.server, **options), scenario=scenario(PROMPT_TOKENS),
                             view=embedding_view, reset=fresh_clients)

    assert outcome.on == outcome.off
    assert outcome.on["vectors"] == [pytest.approx(fake_vector(i, EMBEDDING_DIMENSIONS), rel=1e-6) for i in (0, 1)]
    assert outcome.on["input_tokens"] == PROMPT_TOKENS
    assert_recorded(outcome, calls=1, provider="openai", operation="embeddings", request_model=EMBEDDING_MODEL,
                    response_model=EMBEDDING_MODEL, input_tokens=PROMPT_TOKENS, output_tokens=0, streamed=False)
