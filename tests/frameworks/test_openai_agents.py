# SPDX-License-Identifier: Apache-2.0
"""openai-agents: Runner.run, run_sync and run_streamed over its default Responses API model.

The agent resolves its model by name through an ``OpenAIProvider`` pointed at the loopback server,
as the default provider would against api.openai.com; tracing export is off. With a function tool
(the server's ``tool_call`` scenario) one run is two LLM calls: the call, then the answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from otel_llm_usage.testing import LoopbackLLMServer

from .conftest import CHAT_MODEL, SNAPSHOT, Matrix, assert_recorded, plain, reply_text, require, scenario

agents = require("agents", "openai-agents")

pytestmark = pytest.mark.slow

PROMPT_TOKENS, WORDS = 17, 3
TEXT = reply_text(WORDS)


@agents.function_tool
def forecast(city: str) -> str:
    """Tomorrow's weather in a city."""
    return "sunny"


def agent(with_tool: bool) -> Any:
    return agents.Agent(name="assistant", instructions="Answer briefly.", model=CHAT_MODEL,
                        tools=[forecast] if with_tool else [])


def run_config(server: LoopbackLLMServer) -> Any:
    provider = agents.OpenAIProvider(base_url=server.openai_base_url, api_key="sk-test")
    return agents.RunConfig(model_provider=provider, tracing_disabled=True)


def result_view(result: Any) -> dict[str, Any]:
    return {
        "final_output": result.final_output,
        "items": [(type(item).__name__, plain(item.raw_item)) for item in result.new_items],
        "responses": [(plain(r.output), plain(r.usage)) for r in result.raw_responses],
        "usage": plain(result.context_wrapper.usage),
    }


def event_view(event: Any) -> Any:
    if event.type == "raw_response_event":
        return event.type, plain(event.data)
    if event.type == "run_item_stream_event":
        return event.type, event.name, plain(event.item.raw_item)
    return event.type, event.new_agent.name


def _run_sync(server: LoopbackLLMServer, with_tool: bool) -> Callable[[], Any]:
    return lambda: result_view(agents.Runner.run_sync(agent(with_tool), "one two", run_config=run_config(server)))


def _run(server: LoopbackLLMServer, with_tool: bool) -> Callable[[], Any]:
    async def call() -> Any:
        return result_view(await agents.Runner.run(agent(with_tool), "one two", run_config=run_config(server)))

    return call


def _run_streamed(server: LoopbackLLMServer, with_tool: bool) -> Callable[[], Any]:
    async def call() -> Any:
        streamed = agents.Runner.run_streamed(agent(with_tool), "one two", run_config=run_config(server))
        events = [event_view(event) async for event in streamed.stream_events()]
        return {**result_view(streamed), "events": events}

    return call


@pytest.mark.parametrize(("factory", "streamed"), [
    pytest.param(_run_sync, False, id="run_sync"),
    pytest.param(_run, False, id="run"),
    pytest.param(_run_streamed, True, id="run_streamed"),
])
@pytest.mark.parametrize(("with_tool", "calls"), [
    pytest.param(False, 1, id="answer"),
    pytest.param(True, 2, id="tool-then-answer"),
])
def test_runner(matrix: Matrix, factory: Any, streamed: bool, with_tool: bool, calls: int) -> None:
    served = scenario(PROMPT_TOKENS, WORDS, SNAPSHOT, tool_call=int(with_tool))
    outcome = matrix.compare(factory(matrix.server, with_tool), scenario=served)

    assert outcome.on == outcome.off
    assert outcome.on["final_output"] == TEXT
    usage = outcome.on["usage"]
    assert (usage["requests"], usage["input_tokens"], usage["output_tokens"]) == (
        calls, calls * PROMPT_TOKENS, calls * WORDS)
    if with_tool:
        assert [kind for kind, _ in outcome.on["items"]] == ["ToolCallItem", "ToolCallOutputItem", "MessageOutputItem"]
    assert_recorded(outcome, calls=calls, provider="openai", operation="chat", request_model=CHAT_MODEL,
                    response_model=SNAPSHOT, input_tokens=PROMPT_TOKENS, output_tokens=WORDS, streamed=streamed)
