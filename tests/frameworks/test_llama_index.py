# SPDX-License-Identifier: Apache-2.0
"""llama-index-llms-openai: chat, complete and their stream and async forms.

It pins ``openai<3``, so scripts/test runs this module in a venv of its own (.venv-llamaindex)
with the newest openai 2.x; the main environment's openai 3.x cannot have it installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from otel_llm_usage.testing import LoopbackLLMServer

from .conftest import CHAT_MODEL, SNAPSHOT, Matrix, assert_recorded, plain, reply_text, require, scenario

llama_openai = require("llama_index.llms.openai", "llama-index-llms-openai 'openai<3' (a venv of its own)")
from llama_index.core.llms import ChatMessage  # noqa: E402  (after the requirement check)

pytestmark = pytest.mark.slow

PROMPT_TOKENS, WORDS = 29, 6
SCENARIO = scenario(PROMPT_TOKENS, WORDS, SNAPSHOT)
TEXT = reply_text(WORDS)
MESSAGES = [ChatMessage(role="user", content="one two three")]


def llm(server: LoopbackLLMServer, **kw: Any) -> Any:
    return llama_openai.OpenAI(model=CHAT_MODEL, api_base=server.openai_base_url, api_key="sk-test", max_retries=0,
                               **kw)


def view(result: Any) -> dict[str, Any]:
    """Responses (one, or each streamed delta) as the caller sees them, plus the final text and the
    usage llama-index reports (it copies the final usage into ``additional_kwargs``)."""
    responses = result if isinstance(result, list) else [result]
    last = responses[-1]
    text = last.message.content if hasattr(last, "message") else last.text
    kwargs = last.additional_kwargs
    return {
        "responses": plain(responses),
        "answer": (text, kwargs.get("prompt_tokens"), kwargs.get("completion_tokens")),
    }


def _chat(server: LoopbackLLMServer, **kw: Any) -> Callable[[], Any]:
    return lambda: llm(server, **kw).chat(MESSAGES)


def _complete(server: LoopbackLLMServer, **kw: Any) -> Callable[[], Any]:
    return lambda: llm(server, **kw).complete("one two three")


def _stream_chat(server: LoopbackLLMServer, **kw: Any) -> Callable[[], Any]:
    return lambda: list(llm(server, **kw).stream_chat(MESSAGES))


def _stream_complete(server: LoopbackLLMServer, **kw: Any) -> Callable[[], Any]:
    return lambda: list(llm(server, **kw).stream_complete("one two three"))


def _achat(server: LoopbackLLMServer, **kw: Any) -> Callable[[], Any]:
    async def call() -> Any:
        return await llm(server, **kw).achat(MESSAGES)

    return call


def _astream_chat(server: LoopbackLLMServer, **kw: Any) -> Callable[[], Any]:
    async def call() -> Any:
        return [response async for response in await llm(server, **kw).astream_chat(MESSAGES)]

    return call


REPORTED = (PROMPT_TOKENS, WORDS)
# Streams carry usage only when the caller asks for it: llama-index sends no stream_options of its own.
INCLUDE_USAGE = {"additional_kwargs": {"stream_options": {"include_usage": True}}}


@pytest.mark.parametrize(("factory", "options", "streamed", "reported"), [
    pytest.param(_chat, {}, False, REPORTED, id="chat"),
    pytest.param(_complete, {}, False, REPORTED, id="complete"),
    pytest.param(_stream_chat, {}, True, (None, None), id="stream_chat"),
    pytest.param(_stream_chat, INCLUDE_USAGE, True, REPORTED, id="stream_chat-include_usage"),
    pytest.param(_stream_complete, {}, True, (None, None), id="stream_complete"),
    pytest.param(_stream_complete, INCLUDE_USAGE, True, REPORTED, id="stream_complete-include_usage"),
    pytest.param(_achat, {}, False, REPORTED, id="achat"),
    pytest.param(_astream_chat, {}, True, (None, None), id="astream_chat"),
    pytest.param(_astream_chat, INCLUDE_USAGE, True, REPORTED, id="astream_chat-include_usage"),
])
def test_llama_index_openai(matrix: Matrix, factory: Any, options: dict[str, Any], streamed: bool,
                            reported: tuple[int | None, int | None]) -> None:
    outcome = matrix.compare(factory(matrix.server, **options), scenario=SCENARIO, view=view)

    assert outcome.on == outcome.off
    assert outcome.on["answer"] == (TEXT, *reported)
    assert_recorded(outcome, calls=1, provider="openai", operation="chat", request_model=CHAT_MODEL,
                    response_model=SNAPSHOT, input_tokens=PROMPT_TOKENS, output_tokens=WORDS, streamed=streamed)
