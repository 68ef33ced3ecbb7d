# SPDX-License-Identifier: Apache-2.0
"""langchain-community ChatTongyi over the classic DashScope ``Generation`` API.

ChatTongyi streams only when built with ``streaming=True`` (it declares ``streaming=False``
explicitly otherwise, which langchain-core reads as "streaming disabled" and answers ``stream()``
with one ``invoke()``). Its async methods run the blocking SDK call, and each streamed chunk's read,
in ``loop.run_in_executor``: attribution must survive that hop too.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Iterator
from functools import reduce
from typing import Any

import dashscope
import pytest

from .conftest import Matrix, assert_recorded, plain, reply_text, require, scenario

with warnings.catch_warnings():
    # The package announces its own sunset on import.
    warnings.simplefilter("ignore", DeprecationWarning)
    tongyi = require("langchain_community.chat_models.tongyi", "langchain-community")
from langchain_core.messages import AIMessageChunk  # after the requirement check: it comes with the framework

pytestmark = pytest.mark.slow

MODEL = "qwen-plus"
PROMPT_TOKENS, WORDS = 23, 4
SCENARIO = scenario(PROMPT_TOKENS, WORDS)
TEXT = reply_text(WORDS)


@pytest.fixture
def dashscope_at_loopback(matrix: Matrix) -> Iterator[Matrix]:
    """ChatTongyi reaches the SDK's module-level endpoint; point it at the server, then restore it."""
    saved = dashscope.base_http_api_url
    dashscope.base_http_api_url = matrix.server.dashscope_base_url
    yield matrix
    dashscope.base_http_api_url = saved


def chat(streaming: bool) -> Any:
    return tongyi.ChatTongyi(model=MODEL, api_key="sk-test", max_retries=1, streaming=streaming)


def view(result: Any) -> dict[str, Any]:
    """The messages or chunks as the caller sees them, and the answer's text and reported usage."""
    messages = result if isinstance(result, list) else [result]
    chunks = [m for m in messages if isinstance(m, AIMessageChunk)]
    answer = reduce(operator.add, chunks) if chunks else messages[0]
    usage = answer.response_metadata.get("token_usage") or {}
    return {
        "messages": plain(messages),
        "answer": (answer.text, usage.get("input_tokens"), usage.get("output_tokens")),
    }


def _invoke() -> Callable[[], Any]:
    return lambda: chat(streaming=False).invoke("one two")


def _stream() -> Callable[[], Any]:
    return lambda: list(chat(streaming=True).stream("one two"))


def _ainvoke() -> Callable[[], Any]:
    async def call() -> Any:
        return await chat(streaming=False).ainvoke("one two")

    return call


def _astream() -> Callable[[], Any]:
    async def call() -> Any:
        return [chunk async for chunk in chat(streaming=True).astream("one two")]

    return call


@pytest.mark.parametrize(("factory", "streamed"), [
    pytest.param(_invoke, False, id="invoke"),
    pytest.param(_stream, True, id="stream"),
    pytest.param(_ainvoke, False, id="ainvoke"),
    pytest.param(_astream, True, id="astream"),
])
def test_chat_tongyi(dashscope_at_loopback: Matrix, factory: Any, streamed: bool) -> None:
    outcome = dashscope_at_loopback.compare(factory(), scenario=SCENARIO, view=view)

    assert outcome.on == outcome.off
    assert outcome.on["answer"] == (TEXT, PROMPT_TOKENS, WORDS)
    # The native protocol names no answering model, so there is none to record.
    assert_recorded(outcome, calls=1, provider="dashscope", operation="chat", request_model=MODEL,
                    response_model=None, input_tokens=PROMPT_TOKENS, output_tokens=WORDS, streamed=streamed)
