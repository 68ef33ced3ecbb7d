# SPDX-License-Identifier: Apache-2.0
"""The loopback server must satisfy the real openai and dashscope SDKs."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import dashscope
import openai
import pydantic
import pytest
import requests

from otel_llm_usage.testing import LoopbackLLMServer, Scenario, ScenarioError

HEADER = "X-Loopback-Scenario"
USER = [{"role": "user", "content": "three little words"}]


class Answer(pydantic.BaseModel):
    name: str
    count: int
    ok: bool


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackLLMServer]:
    with LoopbackLLMServer() as srv:
        yield srv


@pytest.fixture()
def client(server: LoopbackLLMServer) -> openai.OpenAI:
    server.clear()
    return openai.OpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0)


@pytest.fixture()
def ds(server: LoopbackLLMServer) -> Iterator[None]:
    """Point the classic dashscope SDK at the server, restoring globals after."""
    server.clear()
    saved = dashscope.base_http_api_url, dashscope.api_key
    dashscope.base_http_api_url, dashscope.api_key = server.dashscope_base_url, "sk-test"
    yield
    dashscope.base_http_api_url, dashscope.api_key = saved


def _post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


# -- scenarios ---------------------------------------------------------------


def test_scenario_parsing() -> None:
    s = Scenario.parse("words=3; cached=2;no_usage=1;delay=0.5")
    assert (s.words, s.cached, s.no_usage, s.delay) == (3, 2, True, 0.5)
    assert Scenario.parse("").words == 5
    for bad in ("wrods=3", "words=x", "usage=weird", "status=200"):
        with pytest.raises(ScenarioError):
            Scenario.parse(bad)


def test_unknown_scenario_key_is_http_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="wrods"):
        client.chat.completions.create(model="m", messages=USER, extra_headers={HEADER: "wrods=2"})


# -- OpenAI ------------------------------------------------------------------


def test_chat_json_counts_and_request_log(client: openai.OpenAI, server: LoopbackLLMServer) -> None:
    r = client.chat.completions.create(
        model="gpt-4o", messages=USER, extra_headers={HEADER: "words=4;cached=2;reasoning=3"}
    )
    assert r.choices[0].message.content == "lorem ipsum dolor sit"
    assert r.model == "gpt-4o"
    u = r.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (3, 7, 10)
    assert u.prompt_tokens_details.cached_tokens == 2
    assert u.completion_tokens_details.reasoning_tokens == 3
    (logged,) = server.requests
    assert logged.path == "/v1/chat/completions" and logged.json["messages"] == USER
    assert "authorization" not in {k.lower() for k in logged.headers}
    assert logged.scenario.cached == 2


def test_chat_stream_with_and_without_include_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    *body, last = chunks
    assert last.choices == [] and last.usage.prompt_tokens == 3 and last.usage.completion_tokens == 5
    assert all(c.usage is None for c in body)
    assert body[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in body) == "lorem ipsum dolor sit amet"
    assert body[-1].choices[0].finish_reason == "stop"

    plain = list(client.chat.completions.create(model="gpt-4o", messages=USER, stream=True))
    assert all(c.usage is None and c.choices for c in plain)

    quiet = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={HEADER: "no_usage=1"},
        )
    )
    assert all(c.choices for c in quiet)


def test_chat_parse_and_stream_helpers(client: openai.OpenAI) -> None:
    parsed = client.chat.completions.parse(model="gpt-4o", messages=USER, response_format=Answer)
    assert parsed.choices[0].message.parsed == Answer(name="x", count=1, ok=True)
    with client.chat.completions.stream(
        model="gpt-4o", messages=USER, response_format=Answer, stream_options={"include_usage": True}
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed.count == 1
    assert final.usage.prompt_tokens == 3


def test_responses_create_stream_parse(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model="gpt-4o", input="one two", instructions="three", extra_headers={HEADER: "cached=1"}
    )
    assert r.output_text == "lorem ipsum dolor sit amet"
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (3, 5, 8)
    assert r.usage.input_tokens_details.cached_tokens == 1

    events = list(client.responses.create(model="gpt-4o", input="one", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.usage.output_tokens == 5

    assert client.responses.parse(model="gpt-4o", input="x", text_format=Answer).output_parsed.ok is True
    with client.responses.stream(model="gpt-4o", input="x", text_format=Answer) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.output_parsed.name == "x" and json.loads(text)["count"] == 1
    assert final.usage.input_tokens == 1


def test_embeddings_and_legacy_completions(client: openai.OpenAI) -> None:
    e = client.embeddings.create(model="text-embedding-3-small", input=["a b", "c"])  # SDK asks for base64
    assert len(e.data) == 2 and len(e.data[0].embedding) == 8
    assert (e.usage.prompt_tokens, e.usage.total_tokens) == (3, 3)
    single = client.embeddings.create(model="text-embedding-3-small", input="a b", encoding_format="float")
    assert single.data[0].embedding == pytest.approx(e.data[0].embedding, abs=1e-6)

    c = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="x y", extra_headers={HEADER: "words=2"}
    )
    assert c.choices[0].text == "lorem ipsum" and c.usage.total_tokens == 4
    chunks = list(
        client.completions.create(
            model="gpt-3.5-turbo-instruct", prompt="x y", stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5


def test_openai_errors_and_broken_streams(client: openai.OpenAI, server: LoopbackLLMServer) -> None:
    server.push_scenario("status=429;retry_after=0")
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="m", messages=USER)
    assert info.value.response.headers["retry-after"] == "0"
    assert info.value.body["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="m", input="x", extra_headers={HEADER: "status=503"})
    with pytest.raises(openai.APIConnectionError):
        for _ in client.chat.completions.create(
            model="m", messages=USER, stream=True, extra_headers={HEADER: "truncate_after=2"}
        ):
            pass
    with pytest.raises(ValueError):  # json.JSONDecodeError from the SSE decoder
        list(
            client.chat.completions.create(
                model="m", messages=USER, stream=True, extra_headers={HEADER: "malformed_sse=1"}
            )
        )
    with pytest.raises(ValueError):  # openai 3.x lets the JSONDecodeError through
        client.chat.completions.create(model="m", messages=USER, extra_headers={HEADER: "malformed_json=1"})
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_usage_variants_and_defaults(client: openai.OpenAI, server: LoopbackLLMServer) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=USER, extra_headers={HEADER: "usage=string"}
    )
    assert json.loads(raw.text)["usage"]["prompt_tokens"] == "3"
    assert (
        client.chat.completions.create(model="m", messages=USER, extra_headers={HEADER: "usage=null"}).usage
        is None
    )
    status, _, body = _post(
        server.openai_base_url + "/chat/completions", {"model": "m", "messages": USER}, {HEADER: "usage=huge"}
    )
    assert status == 200 and json.loads(body)["usage"]["total_tokens"] == 10**15
    server.default_scenario = "prompt_tokens=40;model=snapshot-1"
    try:
        r = client.chat.completions.create(model="m", messages=USER)
    finally:
        server.default_scenario = None
    assert r.usage.prompt_tokens == 40 and r.model == "snapshot-1"


def test_azure_compatible_mode_and_async(server: LoopbackLLMServer) -> None:
    az = openai.AzureOpenAI(azure_endpoint=server.url, api_key="k", api_version="2024-10-21", max_retries=0)
    r = az.chat.completions.create(model="my-deployment", messages=USER)
    assert r.model == "my-deployment"
    assert server.requests[-1].query == {"api-version": "2024-10-21"}
    assert "api-key" not in {k.lower() for k in server.requests[-1].headers}
    compat = openai.OpenAI(base_url=server.url + "/compatible-mode/v1", api_key="k", max_retries=0)
    assert compat.chat.completions.create(model="qwen-plus", messages=USER).usage.total_tokens == 8

    async def run() -> int:
        async with openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0) as client:
            stream = await client.chat.completions.create(
                model="m", messages=USER, stream=True, stream_options={"include_usage": True}
            )
            chunks = [c async for c in stream]
            return chunks[-1].usage.total_tokens

    assert asyncio.run(run()) == 8


# -- DashScope classic SDK ---------------------------------------------------


def test_generation_call_text_and_message(ds: None, server: LoopbackLLMServer) -> None:
    r = dashscope.Generation.call(model="qwen-plus", prompt="three little words")
    assert r.status_code == 200 and r.output.text == "lorem ipsum dolor sit amet"
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (3, 5, 8)
    server.push_scenario("cached=2;reasoning=1")
    r = dashscope.Generation.call(model="qwen-plus", messages=USER, result_format="message")
    assert r.output.choices[0].message.content == "lorem ipsum dolor sit amet"
    assert r.usage["prompt_tokens_details"] == {"cached_tokens": 2}
    assert r.usage["output_tokens_details"] == {"reasoning_tokens": 1} and r.usage.output_tokens == 6
    assert server.requests[-1].path == "/api/v1/services/aigc/text-generation/generation"


def test_generation_stream_incremental_and_cumulative(ds: None, server: LoopbackLLMServer) -> None:
    inc = list(dashscope.Generation.call(model="qwen-plus", prompt="x", stream=True, incremental_output=True))
    assert "".join(c.output.text for c in inc) == "lorem ipsum dolor sit amet"
    assert [c.usage.output_tokens for c in inc] == [1, 2, 3, 4, 5, 5]
    assert [c.output.finish_reason for c in inc][-2:] == ["null", "stop"]
    full = list(dashscope.Generation.call(model="qwen-plus", prompt="x", stream=True))
    assert [c.output.text for c in full][:2] == ["lorem", "lorem ipsum"]
    assert full[-1].output.text == "lorem ipsum dolor sit amet" and full[-1].usage.total_tokens == 6
    assert server.requests[-1].headers["X-DashScope-SSE"] == "enable"


def test_dashscope_errors_are_returned(ds: None, server: LoopbackLLMServer) -> None:
    server.push_scenario("status=429")
    r = dashscope.Generation.call(model="qwen-plus", prompt="x")
    assert (r.status_code, r.code) == (429, "Throttling.RateQuota") and r.output is None
    server.push_scenario("sse_error=1")
    frames = list(dashscope.Generation.call(model="qwen-plus", prompt="x", stream=True))
    assert frames[0].status_code == 200 and frames[-1].code == "InternalError"
    server.push_scenario("truncate_after=2")
    with pytest.raises(requests.exceptions.ChunkedEncodingError):  # the classic SDK rides on requests
        list(dashscope.Generation.call(model="qwen-plus", prompt="x", stream=True))


def test_multimodal_embedding_application(ds: None, server: LoopbackLLMServer) -> None:
    content = [{"image": "https://example.com/a.png"}, {"text": "what is this"}]
    r = dashscope.MultiModalConversation.call(
        model="qwen-vl-plus", messages=[{"role": "user", "content": content}]
    )
    assert r.output.choices[0].message.content == [{"text": "lorem ipsum dolor sit amet"}]
    assert r.usage["input_tokens_details"] == {"image_tokens": 100, "text_tokens": 3}
    assert r.usage.input_tokens == 103

    e = dashscope.TextEmbedding.call(model="text-embedding-v3", input=["a b", "c"])
    assert [x["text_index"] for x in e.output["embeddings"]] == [0, 1] and e.usage["total_tokens"] == 3

    a = dashscope.Application.call(app_id="app-1", prompt="hi there")
    assert a.output.text == "lorem ipsum dolor sit amet" and a.output.session_id
    assert [(m.model_id, m.input_tokens, m.output_tokens) for m in a.usage.models] == [
        ("qwen-plus", 2, 5),
        ("qwen-turbo", 2, 1),
    ]
    assert server.requests[-1].path == "/api/v1/apps/app-1/completion"
    chunks = list(dashscope.Application.call(app_id="app-1", prompt="hi", stream=True))
    assert [c.usage.models[0].output_tokens for c in chunks] == [1, 2, 3, 4, 5, 5]


def test_aio_generation(ds: None) -> None:
    async def run() -> tuple[int, int]:
        try:
            r = await dashscope.AioGeneration.call(model="qwen-plus", prompt="x y")
            stream = await dashscope.AioGeneration.call(model="qwen-plus", prompt="x y", stream=True)
            last = [c async for c in stream][-1]
            return r.usage.total_tokens, last.usage.output_tokens
        finally:
            await dashscope.close_shared_aio_session()

    assert asyncio.run(run()) == (7, 5)


# -- DashScope 2.x Client ----------------------------------------------------


def test_dashscope_client(server: LoopbackLLMServer) -> None:
    with dashscope.Client(api_key="sk-test", base_url=server.dashscope_base_url, max_retries=0) as client:
        r = client.chat.completions.create(model="qwen-plus", messages=USER)
        assert r.output_text == "lorem ipsum dolor sit amet" and r.usage.total_tokens == 8
        chunks = list(client.chat.completions.create(model="qwen-plus", messages=USER, stream=True))
        assert "".join(c.delta.content or "" for c in chunks) == "lorem ipsum dolor sit amet"
        assert chunks[-1].usage.output_tokens == 5
        mm = client.multimodal.chat.create(
            model="qwen-vl-plus",
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image", "url": "https://e/x.png"}, {"type": "text", "text": "hi"}],
                }
            ],
        )
        assert mm.usage.input_tokens == 101
        assert client.embeddings.create(model="text-embedding-v3", input="a b").usage.total_tokens == 2
        app = client.apps.completions.create(app_id="app-1", prompt="a")
        assert [m.model_id for m in app.usage.models] == ["qwen-plus", "qwen-turbo"]
        server.push_scenario("status=429")
        with pytest.raises(dashscope.v2.errors.RateLimitError):
            client.chat.completions.create(model="qwen-plus", messages=USER)
        server.push_scenario("sse_error=1")
        with pytest.raises(dashscope.v2.errors.InternalServerError):
            list(client.chat.completions.create(model="qwen-plus", messages=USER, stream=True))

    async def run() -> int:
        async with dashscope.AsyncClient(
            api_key="sk-test", base_url=server.dashscope_base_url, max_retries=0
        ) as aclient:
            r = await aclient.chat.completions.create(model="qwen-plus", messages=USER)
            return r.usage.output_tokens

    assert asyncio.run(run()) == 5


def test_raw_http_routes(server: LoopbackLLMServer) -> None:
    status, _, body = _post(server.url + "/api/v1/services/nothing/here", {})
    assert status == 404 and set(json.loads(body)) == {"request_id", "code", "message"}
    status, _, body = _post(server.url + "/nope", {})
    assert status == 404 and "error" in json.loads(body)
    status, headers, body = _post(
        server.dashscope_base_url + "/services/aigc/text-generation/generation",
        {"model": "qwen-plus", "input": {"prompt": "secret prompt text"}},
        {"Accept": "text/event-stream", HEADER: "words=1"},
    )
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    assert body.decode().startswith("id:1\nevent:result\n:HTTP_STATUS/200\ndata:{")
    assert b"secret" not in body


def test_responses_tool_call_scenario(client: openai.OpenAI) -> None:
    tools = [{"type": "function", "name": "lookup", "strict": True,
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                             "required": ["city", "days"], "additionalProperties": False}}]
    scenario = {HEADER: "tool_call=1;words=2"}
    r = client.responses.create(model="gpt-4o", input="one two", tools=tools, extra_headers=scenario)
    (call,) = r.output
    assert (call.type, call.name, json.loads(call.arguments)) == ("function_call", "lookup", {"city": "x", "days": 1})
    assert (r.usage.input_tokens, r.usage.output_tokens) == (2, 2)

    with client.responses.stream(model="gpt-4o", input="one two", tools=tools, extra_headers=scenario) as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.function_call_arguments.delta")
        final = stream.get_final_response()
    (streamed,) = final.output
    assert streamed.type == "function_call" and deltas == streamed.arguments == call.arguments

    answered = [{"role": "user", "content": "one two"}, call.model_dump(exclude_none=True),
                {"type": "function_call_output", "call_id": call.call_id, "output": "three"}]
    done = client.responses.create(model="gpt-4o", input=answered, tools=tools, extra_headers=scenario)
    assert done.output_text == "lorem ipsum" and done.usage.input_tokens == 3
    # Without the scenario key, tools are ignored as before.
    assert client.responses.create(model="gpt-4o", input="one", tools=tools).output[0].type == "message"
