# SPDX-License-Identifier: Apache-2.0
"""Every OpenAI surface, sync and async, through the real SDK to the loopback server.

Each case asserts the span (name, kind, attribute names and types), the one
UsageRecord, and the Prometheus counters read from a real exposition scrape.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import openai
import pydantic
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from otel_llm_usage import usage_context

MODEL = "gpt-4o-mini"
MSG = [{"role": "user", "content": "one two three four"}]  # 4 words = 4 prompt tokens on the loopback server


class Answer(pydantic.BaseModel):
    text: str


def _sync_client(server: Any, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base_url, api_key="sk-test-secret", max_retries=0, **kw)


def _async_client(server: Any, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="sk-test-secret", max_retries=0, **kw)


def _has(path: str) -> bool:
    obj: Any = openai.OpenAI(api_key="x", base_url="http://127.0.0.1:9")
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    return True


# Each surface: (sync call, async call, operation, expected input tokens, expected output tokens).
def _chat(c: Any) -> Any:
    return c.chat.completions.create(model=MODEL, messages=MSG)


async def _achat(c: Any) -> Any:
    return await c.chat.completions.create(model=MODEL, messages=MSG)


def _chat_stream(c: Any) -> Any:
    return list(c.chat.completions.create(model=MODEL, messages=MSG, stream=True))


async def _achat_stream(c: Any) -> Any:
    return [ch async for ch in await c.chat.completions.create(model=MODEL, messages=MSG, stream=True)]


def _parse(c: Any) -> Any:
    return c.chat.completions.parse(model=MODEL, messages=MSG, response_format=Answer)


async def _aparse(c: Any) -> Any:
    return await c.chat.completions.parse(model=MODEL, messages=MSG, response_format=Answer)


def _stream_helper(c: Any) -> Any:
    with c.chat.completions.stream(model=MODEL, messages=MSG) as s:
        for _ in s:
            pass
        return s.get_final_completion()


async def _astream_helper(c: Any) -> Any:
    async with c.chat.completions.stream(model=MODEL, messages=MSG) as s:
        async for _ in s:
            pass
        return await s.get_final_completion()


def _beta_parse(c: Any) -> Any:
    return c.beta.chat.completions.parse(model=MODEL, messages=MSG, response_format=Answer)


async def _abeta_parse(c: Any) -> Any:
    return await c.beta.chat.completions.parse(model=MODEL, messages=MSG, response_format=Answer)


def _beta_stream(c: Any) -> Any:
    with c.beta.chat.completions.stream(model=MODEL, messages=MSG) as s:
        for _ in s:
            pass
        return s.get_final_completion()


async def _abeta_stream(c: Any) -> Any:
    async with c.beta.chat.completions.stream(model=MODEL, messages=MSG) as s:
        async for _ in s:
            pass
        return await s.get_final_completion()


def _responses(c: Any) -> Any:
    return c.responses.create(model=MODEL, input="one two three four")


async def _aresponses(c: Any) -> Any:
    return await c.responses.create(model=MODEL, input="one two three four")


def _responses_stream(c: Any) -> Any:
    return list(c.responses.create(model=MODEL, input="one two three four", stream=True))


async def _aresponses_stream(c: Any) -> Any:
    return [e async for e in await c.responses.create(model=MODEL, input="one two three four", stream=True)]


def _responses_parse(c: Any) -> Any:
    return c.responses.parse(model=MODEL, input="one two three four", text_format=Answer)


async def _aresponses_parse(c: Any) -> Any:
    return await c.responses.parse(model=MODEL, input="one two three four", text_format=Answer)


def _responses_helper(c: Any) -> Any:
    with c.responses.stream(model=MODEL, input="one two three four") as s:
        for _ in s:
            pass
        return s.get_final_response()


async def _aresponses_helper(c: Any) -> Any:
    async with c.responses.stream(model=MODEL, input="one two three four") as s:
        async for _ in s:
            pass
        return await s.get_final_response()


def _embeddings(c: Any) -> Any:
    return c.embeddings.create(model="text-embedding-3-small", input=["one two", "three four"])


async def _aembeddings(c: Any) -> Any:
    return await c.embeddings.create(model="text-embedding-3-small", input=["one two", "three four"])


def _legacy(c: Any) -> Any:
    return c.completions.create(model="gpt-3.5-turbo-instruct", prompt="one two three four")


async def _alegacy(c: Any) -> Any:
    return await c.completions.create(model="gpt-3.5-turbo-instruct", prompt="one two three four")


def _legacy_stream(c: Any) -> Any:
    return list(c.completions.create(model="gpt-3.5-turbo-instruct", prompt="one two three four", stream=True))


async def _alegacy_stream(c: Any) -> Any:
    s = await c.completions.create(model="gpt-3.5-turbo-instruct", prompt="one two three four", stream=True)
    return [ch async for ch in s]


def _raw(c: Any) -> Any:
    return c.chat.completions.with_raw_response.create(model=MODEL, messages=MSG).parse()


async def _araw(c: Any) -> Any:
    raw = await c.chat.completions.with_raw_response.create(model=MODEL, messages=MSG)
    return raw.parse()


def _raw_stream(c: Any) -> Any:
    raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=MSG, stream=True)
    return list(raw.parse())


async def _araw_stream(c: Any) -> Any:
    raw = await c.chat.completions.with_raw_response.create(model=MODEL, messages=MSG, stream=True)
    return [ch async for ch in raw.parse()]


def _streaming_response(c: Any) -> Any:
    with c.chat.completions.with_streaming_response.create(model=MODEL, messages=MSG) as resp:
        return resp.parse()


async def _astreaming_response(c: Any) -> Any:
    async with c.chat.completions.with_streaming_response.create(model=MODEL, messages=MSG) as resp:
        return await resp.parse()


def _streaming_response_stream(c: Any) -> Any:
    with c.chat.completions.with_streaming_response.create(model=MODEL, messages=MSG, stream=True) as resp:
        return list(resp.parse())


async def _astreaming_response_stream(c: Any) -> Any:
    async with c.chat.completions.with_streaming_response.create(model=MODEL, messages=MSG, stream=True) as resp:
        return [ch async for ch in await resp.parse()]


SURFACES = [
    pytest.param(_chat, _achat, "chat", MODEL, 4, 5, False, "chat.completions", id="chat"),
    pytest.param(_chat_stream, _achat_stream, "chat", MODEL, 4, 5, True, "chat.completions", id="chat-stream"),
    pytest.param(_parse, _aparse, "chat", MODEL, 4, None, False, "chat.completions.parse", id="chat-parse"),
    pytest.param(_stream_helper, _astream_helper, "chat", MODEL, 4, 5, True, "chat.completions.stream",
                 id="chat-stream-helper"),
    pytest.param(_beta_parse, _abeta_parse, "chat", MODEL, 4, None, False, "beta.chat.completions.parse",
                 id="beta-chat-parse"),
    pytest.param(_beta_stream, _abeta_stream, "chat", MODEL, 4, 5, True, "beta.chat.completions.stream",
                 id="beta-chat-stream-helper"),
    pytest.param(_responses, _aresponses, "chat", MODEL, 4, 5, False, "responses", id="responses"),
    pytest.param(_responses_stream, _aresponses_stream, "chat", MODEL, 4, 5, True, "responses",
                 id="responses-stream"),
    pytest.param(_responses_parse, _aresponses_parse, "chat", MODEL, 4, None, False, "responses.parse",
                 id="responses-parse"),
    pytest.param(_responses_helper, _aresponses_helper, "chat", MODEL, 4, 5, True, "responses.stream",
                 id="responses-stream-helper"),
    pytest.param(_embeddings, _aembeddings, "embeddings", "text-embedding-3-small", 4, 0, False, "embeddings",
                 id="embeddings"),
    pytest.param(_legacy, _alegacy, "text_completion", "gpt-3.5-turbo-instruct", 4, 5, False, "completions",
                 id="legacy-completions"),
    pytest.param(_legacy_stream, _alegacy_stream, "text_completion", "gpt-3.5-turbo-instruct", 4, 5, True,
                 "completions", id="legacy-completions-stream"),
    pytest.param(_raw, _araw, "chat", MODEL, 4, 5, False, "chat.completions", id="with-raw-response"),
    pytest.param(_raw_stream, _araw_stream, "chat", MODEL, 4, 5, True, "chat.completions",
                 id="with-raw-response-stream"),
    pytest.param(_streaming_response, _astreaming_response, "chat", MODEL, 4, 5, False, "chat.completions",
                 id="with-streaming-response"),
    pytest.param(_streaming_response_stream, _astreaming_response_stream, "chat", MODEL, 4, 5, True,
                 "chat.completions", id="with-streaming-response-stream"),
]


def run(mode: str, server: Any, sync_fn: Callable[[Any], Any], async_fn: Callable[[Any], Any]) -> Any:
    if mode == "sync":
        return sync_fn(_sync_client(server))

    async def go() -> Any:
        client = _async_client(server)
        try:
            return await async_fn(client)
        finally:
            await client.close()

    return asyncio.run(go())


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("sync_fn", "async_fn", "operation", "model", "inp", "out", "streamed", "surface"),
                         SURFACES)
def test_surface_records_span_record_and_counters(otel, mode, sync_fn, async_fn, operation, model, inp, out,
                                                   streamed, surface):
    if not _has(surface):
        pytest.skip(f"{surface} does not exist in openai {openai.__version__}")
    with usage_context(function="live-reply", user="u-42", session="s-1", anchor="anchor-7"):
        result = run(mode, otel.server, sync_fn, async_fn)
    assert result is not None

    (record,) = otel.records()
    assert record.operation == operation
    assert record.request_model == model
    assert record.status == "ok"
    assert record.usage_source == "reported"
    assert record.streamed is streamed
    assert record.tokens.input_tokens == inp
    if out is not None:
        assert record.tokens.output_tokens == out
    assert (record.function, record.user, record.session, record.anchor) == ("live-reply", "u-42", "s-1", "anchor-7")
    assert record.server_address == "127.0.0.1"

    (span,) = otel.spans()
    assert span.name == f"{operation} {model}"
    assert span.kind is SpanKind.CLIENT
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.operation.name"] == operation
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == model
    assert isinstance(attrs["gen_ai.response.model"], str)
    assert attrs["gen_ai.usage.input_tokens"] == inp
    if operation == "embeddings":
        # Semconv's embeddings span has input tokens only; an embedding produces no output tokens.
        assert "gen_ai.usage.output_tokens" not in attrs
        assert "gen_ai.embeddings.dimension.count" not in attrs  # not asked for, and the plugin does not guess
    else:
        assert isinstance(attrs["gen_ai.usage.output_tokens"], int)
    assert attrs["server.address"] == "127.0.0.1"
    assert isinstance(attrs["server.port"], int)
    assert attrs["user.id"] == "u-42"
    assert attrs["llm_usage.function"] == "live-reply"
    assert attrs["llm_usage.anchor"] == "anchor-7"
    assert attrs["session.id"] == "s-1"
    assert span.status.status_code is not StatusCode.ERROR
    if streamed:
        assert attrs["gen_ai.request.stream"] is True
        assert isinstance(attrs["gen_ai.response.time_to_first_chunk"], float)

    labels = {"model": model, "function": "live-reply", "user": "u-42", "session": "s-1", "anchor": "anchor-7",
              "provider": "openai"}
    assert otel.value("llm_usage_requests_total", status="ok", **labels) == 1
    assert otel.value("llm_usage_tokens_total", token_type="input", **labels) == inp
    total_tokens = otel.value("llm_usage_tokens_total", **labels)
    assert total_tokens == record.tokens.total_tokens
    assert otel.value("gen_ai_client_operation_duration_seconds_count", gen_ai_operation_name=operation) == 1
    if streamed:
        assert otel.value("gen_ai_client_operation_time_to_first_chunk_seconds_count") == 1


# --- every surface: provider errors and streams the caller abandons ----------------------------

@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("sync_fn", "async_fn", "operation", "model", "inp", "out", "streamed", "surface"),
                         SURFACES)
def test_surface_provider_error_is_reraised_and_recorded(otel, mode, sync_fn, async_fn, operation, model, inp, out,
                                                         streamed, surface):
    if not _has(surface):
        pytest.skip(f"{surface} does not exist in openai {openai.__version__}")
    otel.server.push_scenario("status=500")
    with pytest.raises(openai.InternalServerError):
        run(mode, otel.server, sync_fn, async_fn)
    (record,) = otel.records()
    assert (record.status, record.error_type, record.operation) == ("error", "InternalServerError", operation)
    (span,) = otel.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "InternalServerError"
    assert otel.value("llm_usage_requests_total", status="error", error_type="InternalServerError") == 1


def _first(stream: Any, n: int = 1) -> Any:
    it = iter(stream)
    return [next(it) for _ in range(n)][-1]


ABANDONED = {
    "chat-stream": lambda c: _first(c.chat.completions.create(model=MODEL, messages=MSG, stream=True)),
    # The first five Responses events announce the response; the sixth carries the first text delta.
    "responses-stream": lambda c: _first(c.responses.create(model=MODEL, input="one two", stream=True), 6),
    "legacy-stream": lambda c: _first(c.completions.create(model="gpt-3.5-turbo-instruct", prompt="x y",
                                                          stream=True)),
    "raw-response-stream": lambda c: _first(
        c.chat.completions.with_raw_response.create(model=MODEL, messages=MSG, stream=True).parse()),
}


@pytest.mark.parametrize("name", list(ABANDONED))
def test_surface_abandoned_stream_records_once(otel, name):
    if name.startswith("responses") and not _has("responses"):
        pytest.skip(f"responses does not exist in openai {openai.__version__}")
    otel.server.default_scenario = "words=30"
    assert ABANDONED[name](_sync_client(otel.server)) is not None  # one chunk read, the rest never
    gc.collect()
    (record,) = otel.records()
    assert record.streamed and record.status == "ok"
    assert record.tokens.input_tokens > 0 and record.tokens.output_tokens > 0
    (span,) = otel.spans()
    assert span.attributes["llm_usage.stream.abandoned"] is True


def test_stream_helper_left_early_records_once(otel):
    if not _has("chat.completions.stream"):
        pytest.skip(f"chat.completions.stream does not exist in openai {openai.__version__}")
    with _sync_client(otel.server).chat.completions.stream(model=MODEL, messages=MSG) as s:
        next(iter(s))
    gc.collect()
    (record,) = otel.records()
    assert record.streamed and record.usage_source in ("reported", "estimated")
    assert len(otel.spans()) == 1


def test_async_stream_helper_left_early_records_once(otel):
    if not _has("chat.completions.stream"):
        pytest.skip(f"chat.completions.stream does not exist in openai {openai.__version__}")
    async def go():
        async with _async_client(otel.server) as c, c.chat.completions.stream(model=MODEL, messages=MSG) as s:
            async for _ in s:
                break

    asyncio.run(go())
    (record,) = otel.records()
    assert record.streamed
    assert len(otel.spans()) == 1


def test_responses_stream_helper_left_early_records_once(otel):
    if not _has("responses.stream"):
        pytest.skip(f"responses.stream does not exist in openai {openai.__version__}")
    with _sync_client(otel.server).responses.stream(model=MODEL, input="one two") as s:
        next(iter(s))
    (record,) = otel.records()
    assert record.streamed


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_embeddings_dimensions_asked_for_reach_the_span(otel, mode):
    def sync_fn(c: Any) -> Any:
        return c.embeddings.create(model="text-embedding-3-small", input="one two three", dimensions=256)

    async def async_fn(c: Any) -> Any:
        return await c.embeddings.create(model="text-embedding-3-small", input="one two three", dimensions=256)

    run(mode, otel.server, sync_fn, async_fn)
    (record,) = otel.records()
    assert (record.usage_source, record.tokens.input_tokens, record.tokens.output_tokens) == ("reported", 3, 0)
    # openai.yaml: text-embedding-3-small, USD 0.02 per million input tokens.
    assert (record.cost, record.currency) == (Decimal("0.02") * 3 / 10**6, "USD")
    (span,) = otel.spans()
    attrs = dict(span.attributes or {})
    assert attrs["llm_usage.cost"] == pytest.approx(0.00000006)
    assert attrs["gen_ai.embeddings.dimension.count"] == 256
    assert attrs["gen_ai.usage.input_tokens"] == 3
    assert "gen_ai.usage.output_tokens" not in attrs
