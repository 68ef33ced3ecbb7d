# SPDX-License-Identifier: Apache-2.0
"""Exact usage for the idioms real code writes (issue 19).

Every test here drives the real SDK over HTTP to the loopback server and asserts the exact
tokens the server reported, one record per call, and the span: a stream iterated straight out
of ``create()`` in a ``for`` loop, a stream kept in a variable, ``with``, early ``break``, an
exception inside the loop, a direct ``client.post`` on an LLM path (what litellm does), methods
bound before ``instrument()``, and attribution across ``loop.run_in_executor``.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

import dashscope
import openai
import pytest
from openai.resources.chat.completions import Completions as ChatCompletions
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from otel_llm_usage import usage_context
from tests.conftest import Otel, close_otel, make_otel

MODEL = "gpt-4o-mini"
MSG = [{"role": "user", "content": "one two three four"}]
# The server reports exactly these counts (its scenario header overrides its own word count).
INPUT, OUTPUT = 21, 6
EXACT = f"prompt_tokens={INPUT};words={OUTPUT}"


def client(otel: Otel) -> openai.OpenAI:
    return openai.OpenAI(base_url=otel.server.openai_base_url, api_key="sk-test-secret", max_retries=0)


def aclient(otel: Otel) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=otel.server.openai_base_url, api_key="sk-test-secret", max_retries=0)


def sdk_has(owner: Any, name: str) -> Any:
    """Skip a case the installed openai does not offer (the oldest supported SDK lacks some)."""
    return pytest.mark.skipif(not hasattr(owner, name), reason=f"openai {openai.__version__} has no {name}")


NEEDS_RESPONSES = sdk_has(openai.OpenAI, "responses")
NEEDS_CHAT_STREAM = sdk_has(ChatCompletions, "stream")


def headers(text: str = EXACT) -> dict[str, Any]:
    return {"extra_headers": {"X-Loopback-Scenario": text}}


def options(text: str = EXACT) -> Any:
    """The same scenario as request options of a direct ``client.post``."""
    return {"headers": {"X-Loopback-Scenario": text}}


def settle(otel: Otel) -> Any:
    """The one record of the test, after abandoned streams were collected."""
    gc.collect()
    records = otel.records()
    assert len(records) == 1, records
    return records[0]


def assert_exact(otel: Otel, rec: Any, inp: int = INPUT, out: int = OUTPUT) -> None:
    assert (rec.usage_source, rec.tokens.input_tokens, rec.tokens.output_tokens) == ("reported", inp, out)
    (span,) = otel.spans()
    assert span.attributes["gen_ai.usage.input_tokens"] == inp
    assert span.attributes["gen_ai.usage.output_tokens"] == out
    assert "llm_usage.stream.abandoned" not in span.attributes
    assert otel.value("llm_usage_tokens_total", token_type="input") == inp
    assert otel.value("llm_usage_tokens_total", token_type="output") == out


# --- the plain `for` loop over a stream straight out of create() ------------------------------

def _chat_for(otel: Otel) -> str:
    text = ""
    for chunk in client(otel).chat.completions.create(model=MODEL, messages=MSG, stream=True, **headers()):
        time.sleep(0.02)  # a UI does a little work per chunk
        text += chunk.choices[0].delta.content or ""
    return text


def _responses_for(otel: Otel) -> str:
    text = ""
    for event in client(otel).responses.create(model=MODEL, input="one two three four", stream=True,
                                               **headers()):
        time.sleep(0.005)
        if event.type == "response.output_text.delta":
            text += event.delta
    return text


def _legacy_for(otel: Otel) -> str:
    text = ""
    for chunk in client(otel).completions.create(model="gpt-3.5-turbo-instruct", prompt="one two", stream=True,
                                                 **headers()):
        time.sleep(0.01)
        text += chunk.choices[0].text
    return text


@pytest.mark.parametrize("drive", [_chat_for, pytest.param(_responses_for, marks=NEEDS_RESPONSES), _legacy_for],
                         ids=["chat", "responses", "legacy"])
def test_stream_iterated_straight_from_create_is_not_abandoned(otel: Otel, drive: Callable[[Otel], str]) -> None:
    text = drive(otel)
    assert len(text.split()) == OUTPUT  # the caller got every word
    rec = settle(otel)
    assert_exact(otel, rec)
    assert rec.ttft_s is not None and rec.ttft_s > 0
    assert otel.spans()[0].attributes["gen_ai.response.time_to_first_chunk"] > 0


# --- every other idiom, exact tokens each ---------------------------------------------------------

def _kept_in_variable(otel: Otel) -> None:
    stream = client(otel).chat.completions.create(model=MODEL, messages=MSG, stream=True, **headers())
    for _chunk in stream:
        time.sleep(0.005)


def _with_block(otel: Otel) -> None:
    with client(otel).chat.completions.create(model=MODEL, messages=MSG, stream=True, **headers()) as stream:
        for _chunk in stream:
            pass


def _next_by_hand(otel: Otel) -> None:
    stream = client(otel).chat.completions.create(model=MODEL, messages=MSG, stream=True, **headers())
    while True:
        try:
            next(stream)
        except StopIteration:
            break


def _list_of_stream(otel: Otel) -> None:
    chunks = list(client(otel).chat.completions.create(model=MODEL, messages=MSG, stream=True, **headers()))
    assert len(chunks) == OUTPUT + 1  # words + the finish chunk; the injected usage chunk stays hidden


def _stream_helper(otel: Otel) -> None:
    with client(otel).chat.completions.stream(model=MODEL, messages=MSG, **headers()) as stream:
        for _event in stream:
            pass


def _with_raw_response(otel: Otel) -> None:
    raw = client(otel).chat.completions.with_raw_response.create(model=MODEL, messages=MSG, stream=True,
                                                                 **headers())
    for _chunk in raw.parse():
        pass


@pytest.mark.parametrize("drive", [_kept_in_variable, _with_block, _next_by_hand, _list_of_stream,
                                   pytest.param(_stream_helper, marks=NEEDS_CHAT_STREAM), _with_raw_response])
def test_every_consuming_idiom_records_exact_usage(otel: Otel, drive: Callable[[Otel], None]) -> None:
    drive(otel)
    assert_exact(otel, settle(otel))


def test_async_for_straight_from_create(otel: Otel) -> None:
    async def go() -> None:
        async with aclient(otel) as c:
            async for _chunk in await c.chat.completions.create(model=MODEL, messages=MSG, stream=True,
                                                                **headers()):
                await asyncio.sleep(0.005)

    asyncio.run(go())
    assert_exact(otel, settle(otel))


def test_break_early_is_abandoned_with_an_estimate(otel: Otel) -> None:
    for i, _chunk in enumerate(client(otel).chat.completions.create(model=MODEL, messages=MSG, stream=True,
                                                                    **headers("words=40"))):
        if i == 2:
            break
    rec = settle(otel)
    assert rec.usage_source == "estimated"
    assert rec.tokens.input_tokens >= 1 and 1 <= rec.tokens.output_tokens < 40
    assert otel.spans()[0].attributes["llm_usage.stream.abandoned"] is True


def test_raise_inside_for_loop_is_abandoned(otel: Otel) -> None:
    with pytest.raises(KeyError):
        for _chunk in client(otel).chat.completions.create(model=MODEL, messages=MSG, stream=True,
                                                           **headers("words=40")):
            raise KeyError("caller bug")
    rec = settle(otel)
    assert rec.usage_source == "estimated" and rec.tokens.output_tokens >= 1
    assert otel.spans()[0].attributes["llm_usage.stream.abandoned"] is True


def test_raise_inside_with_block_sets_error_type(otel: Otel) -> None:
    with pytest.raises(KeyError), \
            client(otel).chat.completions.create(model=MODEL, messages=MSG, stream=True,
                                                 **headers("words=40")) as stream:
        for _chunk in stream:
            raise KeyError("caller bug")
    rec = settle(otel)
    assert (rec.status, rec.error_type, rec.usage_source) == ("error", "KeyError", "estimated")
    (span,) = otel.spans()
    assert span.attributes["error.type"] == "KeyError"
    assert span.attributes["llm_usage.stream.abandoned"] is True


def test_iterator_taken_then_dropped_unread_is_abandoned(otel: Otel) -> None:
    stream = client(otel).chat.completions.create(model=MODEL, messages=MSG, stream=True, **headers())
    it = iter(stream)
    del stream, it
    rec = settle(otel)
    assert rec.usage_source == "estimated"
    assert otel.spans()[0].attributes["llm_usage.stream.abandoned"] is True


# --- DashScope classic streams in a `for` loop --------------------------------------------------

@pytest.mark.parametrize("incremental", [True, False])
def test_dashscope_generation_stream_in_a_for_loop(ds: Otel, incremental: bool) -> None:
    # Non-stream then stream: the cumulative output must be 6 + 6 (the issue measured 600 of 1000).
    dashscope.Generation.call(model="qwen-plus", prompt="one two three four",
                              headers={"X-Loopback-Scenario": EXACT})
    for _chunk in dashscope.Generation.call(model="qwen-plus", prompt="one two three four", stream=True,
                                            incremental_output=incremental,
                                            headers={"X-Loopback-Scenario": EXACT}):
        time.sleep(0.005)
    gc.collect()
    records = ds.records()
    assert [(r.usage_source, r.tokens.input_tokens, r.tokens.output_tokens) for r in records] == \
        [("reported", INPUT, OUTPUT)] * 2
    assert ds.value("llm_usage_tokens_total", token_type="output") == 2 * OUTPUT
    assert all("llm_usage.stream.abandoned" not in s.attributes for s in ds.spans())


def test_dashscope_openai_protocol_stream_carries_response_model(otel: Otel) -> None:
    otel.server.default_scenario = EXACT  # the 2.x client takes no per-call headers
    c = dashscope.Client(api_key="sk-test-secret", base_url=otel.server.url + "/compatible-mode/v1",
                         max_retries=0, protocol="openai")
    for _chunk in c.chat.completions.create(model="qwen-plus", messages=MSG, stream=True):
        pass
    rec = settle(otel)
    assert rec.response_model == "qwen-plus"
    assert otel.spans()[0].attributes["gen_ai.response.model"] == "qwen-plus"
    assert (rec.usage_source, rec.tokens.input_tokens, rec.tokens.output_tokens) == ("reported", INPUT, OUTPUT)


# --- a stream cut after the provider accepted the request ------------------------------------------

@NEEDS_RESPONSES
def test_responses_stream_cut_after_created_is_estimated_not_zero(otel: Otel) -> None:
    with pytest.raises(openai.APIError):
        for _event in client(otel).responses.create(model=MODEL, input="one two three four", stream=True,
                                                    **headers("truncate_after=1")):
            pass
    rec = settle(otel)
    assert rec.status == "error"
    assert rec.usage_source == "estimated" and rec.tokens.input_tokens >= 1
    assert rec.cost is not None and rec.cost > 0


# --- requests that bypass the resource methods --------------------------------------------------

def test_direct_client_post_on_llm_paths_is_recorded_once(otel: Otel) -> None:
    """What litellm >= 1.108.14 does: ``client.post("/chat/completions", ...)`` with its own body."""
    c = client(otel)
    body = {"model": MODEL, "messages": MSG}
    completion = c.post("/chat/completions", body=body, cast_to=ChatCompletion, options=options())
    assert completion.usage is not None and completion.usage.prompt_tokens == INPUT
    stream = c.post("/chat/completions", body={**body, "stream": True}, cast_to=ChatCompletion,
                    options=options(), stream=True, stream_cls=openai.Stream[ChatCompletionChunk])
    for _chunk in stream:
        pass
    embedding = c.post("/embeddings", body={"model": "text-embedding-3-small", "input": ["one two"]},
                       cast_to=CreateEmbeddingResponse, options=options("prompt_tokens=7"))
    assert embedding.usage.prompt_tokens == 7
    c.get("/models", cast_to=object)  # not an LLM call: no record
    gc.collect()
    records = otel.records()
    assert [(r.operation, r.streamed, r.usage_source, r.tokens.input_tokens, r.tokens.output_tokens)
            for r in records] == [("chat", False, "reported", INPUT, OUTPUT), ("chat", True, "reported", INPUT, OUTPUT),
                                  ("embeddings", False, "reported", 7, 0)]


def test_methods_bound_before_instrument_are_recorded(llm_server: Any) -> None:
    c = openai.OpenAI(base_url=llm_server.openai_base_url, api_key="sk-test-secret", max_retries=0)
    raw_create = c.chat.completions.with_raw_response.create  # cached on the client before instrument()
    create = c.chat.completions.create
    otel = make_otel(llm_server)
    try:
        raw_create(model=MODEL, messages=MSG, **headers()).parse()
        create(model=MODEL, messages=MSG, **headers())
        records = otel.records()
        assert [(r.usage_source, r.tokens.input_tokens, r.tokens.output_tokens) for r in records] == \
            [("reported", INPUT, OUTPUT)] * 2
    finally:
        close_otel(otel)


# --- attribution across the executor hop frameworks use ------------------------------------------

def test_attribution_survives_run_in_executor(otel: Otel) -> None:
    c = client(otel)

    async def go() -> None:
        with usage_context(function="live-reply", user="u-1", anchor="a-9"):
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, lambda: c.chat.completions.create(model=MODEL, messages=MSG,
                                                                               **headers()))

    asyncio.run(go())
    rec = settle(otel)
    assert (rec.function, rec.user, rec.anchor) == ("live-reply", "u-1", "a-9")


# --- an answer without usage still counts against a budget ---------------------------------------

def test_answer_without_usage_counts_its_output_against_the_budget(llm_server: Any) -> None:
    """Issue 21 item 3: without usage the output used to count as 0, so a 2,000-token block budget
    admitted 50 calls. The output is now estimated from the answer text itself."""
    import math

    from otel_llm_usage import BudgetExceeded
    from otel_llm_usage.config import Config

    config = Config.model_validate({"provider_hosts": {"127.0.0.1": "openai"}, "budgets": [
        {"name": "ci-job", "window": "total", "limit": {"tokens": 2000}, "action": "block"}]})
    otel = make_otel(llm_server, config)
    try:
        c = client(otel)
        answers: list[str] = []
        blocked = 0
        for _ in range(50):
            try:
                completion = c.chat.completions.create(model=MODEL, messages=MSG, max_tokens=600,
                                                       **headers("no_usage=1;words=400"))
            except BudgetExceeded:
                blocked += 1
                continue
            assert completion.usage is None
            answers.append(completion.choices[0].message.content or "")
        records = [r for r in otel.records() if r.status == "ok"]
        assert len(records) == len(answers) == 50 - blocked
        # The documented estimate, worked out here from what the caller received: ~4 Latin chars a token,
        # never past max_tokens (the loopback server ignores it; a provider would not bill past it).
        expected_out = [min(600, math.ceil(len(text) / 4)) for text in answers]
        assert [r.tokens.output_tokens for r in records] == expected_out
        assert all(r.usage_source == "estimated" for r in records)
        # The documented bound: usage ends at most one reservation (input estimate + max_tokens) past the limit.
        reservation = math.ceil(len(MSG[0]["content"]) / 4) + 600
        assert 2000 <= sum(r.tokens.total_tokens for r in records) <= 2000 + reservation
        assert blocked >= 45
    finally:
        close_otel(otel)
