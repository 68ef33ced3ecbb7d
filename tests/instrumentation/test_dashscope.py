# SPDX-License-Identifier: Apache-2.0
"""DashScope: the real SDK (classic API and the 2.x client) over HTTP to the loopback server.

The loopback "tokenizer" counts whitespace-separated words: PROMPT is 4 input
tokens and replies are ``words`` (default 5) output tokens. Each case asserts
the span, the UsageRecord(s) and the Prometheus counters from a real scrape.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import dashscope
import openai
import pytest
from dashscope.v2 import errors as v2_errors
from opentelemetry.trace import SpanKind, StatusCode

from otel_llm_usage import usage_context
from otel_llm_usage.config import Config
from otel_llm_usage.instrumentation.dashscope import DashScopeAdapter, server_from_url
from tests.conftest import close_otel, make_otel

MODEL = "qwen-plus"
PROMPT = "one two three four"
MSGS = [{"role": "user", "content": PROMPT}]
EMBED_INPUT = ["one two", "three four"]
ATTRIBUTION = ("live-reply", "u-42", "s-1", "a-7")
IMAGE_MSGS = [{"role": "user", "content": [{"image": "https://example.invalid/cat.png"},
                                           {"text": "one two"}]}]  # 100 image tokens + 2 text tokens


def scenario(text: str) -> dict[str, Any]:
    return {"headers": {"X-Loopback-Scenario": text}}


def client(server: Any, **kw: Any) -> dashscope.Client:
    return dashscope.Client(api_key="sk-test-secret", base_url=server.dashscope_base_url, max_retries=0, **kw)


def run_async(fn: Callable[[], Any]) -> Any:
    async def go() -> Any:
        try:
            return await fn()
        finally:
            await dashscope.close_shared_aio_session()

    return asyncio.run(go())


async def adrain(stream: Any) -> list[Any]:
    return [chunk async for chunk in stream]


def v2_async(server: Any, call: Callable[[Any], Any]) -> Any:
    async def go() -> Any:
        async with dashscope.AsyncClient(api_key="sk-test-secret", base_url=server.dashscope_base_url,
                                         max_retries=0) as c:
            return await call(c)

    return asyncio.run(go())


# --- every surface ----------------------------------------------------------------------------

def _gen(**kw: Any) -> Any:
    return dashscope.Generation.call(model=MODEL, prompt=PROMPT, **kw)


def _gen_stream(**kw: Any) -> Any:
    return list(dashscope.Generation.call(model=MODEL, prompt=PROMPT, stream=True, **kw))


async def _agen() -> Any:
    return await dashscope.AioGeneration.call(model=MODEL, messages=MSGS, result_format="message")


async def _agen_stream(incremental: bool) -> Any:
    return await adrain(await dashscope.AioGeneration.call(model=MODEL, messages=MSGS, stream=True,
                                                           incremental_output=incremental))


def _mm(**kw: Any) -> Any:
    return dashscope.MultiModalConversation.call(model="qwen-vl-plus", messages=IMAGE_MSGS, **kw)


async def _amm_stream() -> Any:
    return await adrain(await dashscope.AioMultiModalConversation.call(
        model="qwen-vl-plus", messages=IMAGE_MSGS, stream=True, incremental_output=True))


CLASSIC = [
    pytest.param(lambda: _gen(), "chat", MODEL, 4, 5, False, id="generation"),
    pytest.param(lambda: _gen(messages=MSGS, result_format="message"), "chat", MODEL, 8, 5, False,
                 id="generation-messages"),
    pytest.param(lambda: _gen_stream(), "chat", MODEL, 4, 5, True, id="generation-stream-default"),
    pytest.param(lambda: _gen_stream(incremental_output=True), "chat", MODEL, 4, 5, True,
                 id="generation-stream-incremental"),
    pytest.param(lambda: _gen_stream(incremental_output=False), "chat", MODEL, 4, 5, True,
                 id="generation-stream-cumulative"),
    pytest.param(lambda: run_async(_agen), "chat", MODEL, 4, 5, False, id="aio-generation"),
    pytest.param(lambda: run_async(lambda: _agen_stream(True)), "chat", MODEL, 4, 5, True,
                 id="aio-generation-stream-incremental"),
    pytest.param(lambda: run_async(lambda: _agen_stream(False)), "chat", MODEL, 4, 5, True,
                 id="aio-generation-stream-cumulative"),
    pytest.param(lambda: _mm(), "chat", "qwen-vl-plus", 102, 5, False, id="multimodal"),
    pytest.param(lambda: list(_mm(stream=True, incremental_output=False)), "chat", "qwen-vl-plus", 102, 5,
                 True, id="multimodal-stream"),
    pytest.param(lambda: run_async(_amm_stream), "chat", "qwen-vl-plus", 102, 5, True,
                 id="aio-multimodal-stream"),
    pytest.param(lambda: dashscope.TextEmbedding.call(model="text-embedding-v3", input=EMBED_INPUT),
                 "embeddings", "text-embedding-v3", 4, 0, False, id="text-embedding"),
]


def _assert_one_call(otel: Any, operation: str, model: str, inp: int, out: int, streamed: bool) -> None:
    (record,) = otel.records()
    assert (record.provider, record.operation, record.request_model) == ("dashscope", operation, model)
    assert (record.status, record.usage_source, record.streamed) == ("ok", "reported", streamed)
    assert (record.tokens.input_tokens, record.tokens.output_tokens) == (inp, out)
    assert (record.function, record.user, record.session, record.anchor) == ATTRIBUTION
    assert record.server_address == "127.0.0.1"
    assert isinstance(record.response_id, str)
    if operation == "chat":
        assert record.finish_reasons == ("stop",)  # the mid-stream "null" reasons are not reasons

    (span,) = otel.spans()
    assert span.name == f"{operation} {model}"
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is not StatusCode.ERROR
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.provider.name"] == "dashscope"
    assert attrs["gen_ai.operation.name"] == operation
    assert attrs["gen_ai.request.model"] == model
    assert attrs["gen_ai.usage.input_tokens"] == inp
    if operation == "embeddings":
        assert "gen_ai.usage.output_tokens" not in attrs  # semconv's embeddings span counts input only
    else:
        assert attrs["gen_ai.usage.output_tokens"] == out
    assert attrs["server.address"] == "127.0.0.1"
    assert isinstance(attrs["server.port"], int)
    assert attrs["user.id"] == "u-42"
    if streamed:
        assert attrs["gen_ai.request.stream"] is True
        assert isinstance(attrs["gen_ai.response.time_to_first_chunk"], float)
    assert not any("one two" in str(v) for v in attrs.values()), "no prompt text in spans"

    labels = {"provider": "dashscope", "model": model, "function": "live-reply", "user": "u-42"}
    assert otel.value("llm_usage_requests_total", status="ok", **labels) == 1
    assert otel.value("llm_usage_tokens_total", token_type="input", **labels) == inp
    assert otel.value("llm_usage_tokens_total", **labels) == inp + out
    assert otel.value("gen_ai_client_operation_duration_seconds_count", gen_ai_provider_name="dashscope") == 1


@pytest.mark.parametrize(("call", "operation", "model", "inp", "out", "streamed"), CLASSIC)
def test_classic_surface(ds, call, operation, model, inp, out, streamed):
    with usage_context(function="live-reply", user="u-42", session="s-1", anchor="a-7"):
        result = call()
    assert result
    _assert_one_call(ds, operation, model, inp, out, streamed)


V2 = [
    pytest.param(lambda c: c.chat.completions.create(model=MODEL, messages=MSGS), "chat", MODEL, 4, 5,
                 id="chat"),
    pytest.param(lambda c: c.multimodal.chat.create(model="qwen-vl-plus", messages=IMAGE_MSGS), "chat",
                 "qwen-vl-plus", 102, 5, id="multimodal-chat"),
    pytest.param(lambda c: c.embeddings.create(model="text-embedding-v3", input=EMBED_INPUT),
                 "embeddings", "text-embedding-v3", 4, 0, id="embeddings"),
]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("call", "operation", "model", "inp", "out"), V2)
def test_v2_client_surface(otel, mode, call, operation, model, inp, out):
    with usage_context(function="live-reply", user="u-42", session="s-1", anchor="a-7"):
        if mode == "sync":
            with client(otel.server) as c:
                result = call(c)
        else:
            async def acall(c: Any) -> Any:
                return await call(c)

            result = v2_async(otel.server, acall)
    assert result
    _assert_one_call(otel, operation, model, inp, out, False)


@pytest.mark.parametrize("surface", ["classic", "v2-sync", "v2-async"])
def test_embedding_dimension_asked_for_reaches_the_span(ds, surface):
    if surface == "classic":
        result = dashscope.TextEmbedding.call(model="text-embedding-v3", input=EMBED_INPUT, dimension=512)
    elif surface == "v2-sync":
        with client(ds.server) as c:
            result = c.embeddings.create(model="text-embedding-v3", input=EMBED_INPUT, dimension=512)
    else:
        result = v2_async(ds.server, lambda c: c.embeddings.create(model="text-embedding-v3", input=EMBED_INPUT,
                                                                     dimension=512))
    assert result
    (record,) = ds.records()
    assert (record.usage_source, record.tokens.input_tokens, record.tokens.output_tokens) == ("reported", 4, 0)
    # dashscope-cn.yaml: text-embedding-v3, CNY 0.5 per million input tokens.
    assert (record.cost, record.currency) == (Decimal("0.5") * 4 / 10**6, "CNY")
    (span,) = ds.spans()
    assert span.attributes["gen_ai.embeddings.dimension.count"] == 512
    assert span.attributes["llm_usage.cost"] == pytest.approx(0.000002)


# --- applications: one record per model --------------------------------------------------------

def _app_classic(otel: Any) -> Any:
    return dashscope.Application.call(app_id="app-123", prompt=PROMPT)


def _app_classic_stream(otel: Any) -> Any:
    stream = dashscope.Application.call(app_id="app-123", prompt=PROMPT, stream=True, incremental_output=True)
    return list(stream)


def _app_v2(otel: Any) -> Any:
    with client(otel.server) as c:
        return c.apps.completions.create(app_id="app-123", prompt=PROMPT)


def _app_v2_async(otel: Any) -> Any:
    return v2_async(otel.server, lambda c: c.apps.completions.create(app_id="app-123", prompt=PROMPT))


@pytest.mark.parametrize("call", [_app_classic, _app_classic_stream, _app_v2, _app_v2_async],
                         ids=["classic", "classic-stream", "v2", "v2-async"])
def test_application_reports_one_record_per_model(ds, call):
    with usage_context(function="agent", user="u-1"):
        assert call(ds)
    records = sorted(ds.records(), key=lambda r: r.model)
    assert [(r.model, r.tokens.input_tokens, r.tokens.output_tokens) for r in records] == [
        ("qwen-plus", 4, 5),  # the generating model (its output grows while streaming)
        ("qwen-turbo", 4, 1),  # the router step
    ]
    assert len({r.record_id for r in records}) == 2
    for r in records:
        assert (r.operation, r.provider, r.status) == ("invoke_agent", "dashscope", "ok")
        assert r.usage_source == "reported"
        assert (r.function, r.user, r.request_model) == ("agent", "u-1", None)
        assert r.duration_s == records[0].duration_s and r.cost is not None
    (span,) = ds.spans()
    assert span.name == "invoke_agent"
    assert span.attributes["gen_ai.usage.input_tokens"] == 8
    assert span.attributes["gen_ai.usage.output_tokens"] == 6
    assert span.attributes["llm_usage.cost"] == pytest.approx(float(sum(r.cost for r in records)))
    for model, total in (("qwen-plus", 9), ("qwen-turbo", 5)):
        assert ds.value("llm_usage_requests_total", provider="dashscope", model=model, status="ok") == 1
        assert ds.value("llm_usage_tokens_total", provider="dashscope", model=model) == total


# --- returned and raised errors --------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["sync", "async"])
def test_returned_error_is_recorded_and_response_returned_unchanged(ds, mode):
    if mode == "sync":
        response = _gen(**scenario("status=429"))
    else:
        response = run_async(lambda: dashscope.AioGeneration.call(model=MODEL, prompt=PROMPT,
                                                                  **scenario("status=429")))
    assert response.status_code == 429
    assert response.code == "Throttling.RateQuota"
    assert response.output is None
    (rec,) = ds.records()
    assert (rec.status, rec.error_type, rec.usage_source) == ("error", "Throttling.RateQuota", "none")
    (span,) = ds.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "Throttling.RateQuota"
    assert "loopback scenario" not in str(dict(span.attributes)) + str(span.status.description)
    assert ds.value("llm_usage_requests_total", provider="dashscope", status="error",
                    error_type="Throttling.RateQuota") == 1
    assert ds.value("llm_usage_requests_total", status="ok") == 0


def test_error_frame_mid_stream_is_recorded_as_error(ds):
    chunks = _gen_stream(incremental_output=True, **scenario("sse_error=1"))
    assert [c.status_code for c in chunks] == [200, 400]  # the caller still sees the SDK's error frame
    (rec,) = ds.records()
    assert (rec.status, rec.error_type) == ("error", "InternalError")
    assert rec.tokens.input_tokens == 4  # usage up to the failure, as reported in the first frame
    assert ds.value("llm_usage_requests_total", status="error", error_type="InternalError") == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_v2_raised_error_is_reraised_unchanged_and_recorded(otel, mode):
    otel.server.push_scenario("status=429")
    with pytest.raises(v2_errors.RateLimitError):
        if mode == "sync":
            with client(otel.server) as c:
                c.chat.completions.create(model=MODEL, messages=MSGS)
        else:
            v2_async(otel.server, lambda c: c.chat.completions.create(model=MODEL, messages=MSGS))
    (rec,) = otel.records()
    assert (rec.status, rec.error_type, rec.usage_source) == ("error", "RateLimitError", "none")
    assert otel.value("llm_usage_requests_total", provider="dashscope", status="error",
                      error_type="RateLimitError") == 1


def test_v2_returned_error_without_raise_on_error(otel):
    otel.server.push_scenario("status=429")
    with client(otel.server, raise_on_error=False) as c:
        result = c.chat.completions.create(model=MODEL, messages=MSGS)
    assert result.is_error and result.code == "Throttling.RateQuota"
    (rec,) = otel.records()
    assert (rec.status, rec.error_type) == ("error", "Throttling.RateQuota")


# --- usage shapes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("incremental", [True, False])
def test_cumulative_stream_usage_is_not_summed(ds, incremental):
    chunks = _gen_stream(incremental_output=incremental, **scenario("words=7"))
    assert len(chunks) == 8  # every chunk carries usage so far: summing would give 4*8 in / 1+..+7 out
    (rec,) = ds.records()
    assert (rec.tokens.input_tokens, rec.tokens.output_tokens) == (4, 7)
    assert rec.finish_reasons == ("stop",)
    assert rec.request_params["incremental_output"] is incremental


def test_cached_and_reasoning_tokens(ds):
    _gen_stream(enable_thinking=True, **scenario("cached=2;reasoning=3"))
    (rec,) = ds.records()
    t = rec.tokens
    assert (t.input_tokens, t.cached_input_tokens, t.output_tokens, t.reasoning_tokens) == (4, 2, 8, 3)
    assert rec.request_params["enable_thinking"] is True
    # Disjoint counter buckets: 4 input = 2 uncached + 2 cached; 8 output = 5 visible + 3 reasoning.
    buckets = {kind: ds.value("llm_usage_tokens_total", provider="dashscope", token_type=kind)
               for kind in ("input", "cached_input", "output", "reasoning")}
    assert buckets == {"input": 2, "cached_input": 2, "output": 5, "reasoning": 3}
    attrs = ds.spans()[0].attributes
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 2
    assert attrs["gen_ai.usage.reasoning.output_tokens"] == 3


def test_image_tokens_are_kept_for_pricing(ds):
    _mm()
    (rec,) = ds.records()
    assert rec.tokens.input_tokens == 102
    assert rec.tokens.details == {"image_tokens": 100}


@pytest.mark.parametrize("stream", [False, True])
def test_missing_usage_is_estimated_never_zero(ds, stream):
    # The SDK turns absent usage into zeros; that must not become a free call.
    result = _gen_stream(**scenario("no_usage=1")) if stream else _gen(**scenario("no_usage=1"))
    assert result
    (rec,) = ds.records()
    assert rec.usage_source == "estimated"
    assert rec.tokens.input_tokens >= 1 and rec.tokens.output_tokens >= 1


def test_positional_arguments(ds):
    dashscope.Generation.call(MODEL, PROMPT)
    (rec,) = ds.records()
    assert (rec.request_model, rec.tokens.input_tokens) == (MODEL, 4)


# --- streams the caller abandons ----------------------------------------------------------------

@pytest.mark.parametrize(("extra", "source"), [("", "reported"), (";no_usage=1", "estimated")])
def test_abandoned_stream_is_finalized_once(ds, extra, source):
    stream = dashscope.Generation.call(model=MODEL, prompt=PROMPT, stream=True, incremental_output=True,
                                       **scenario("words=20" + extra))
    next(stream)
    next(stream)
    assert ds.records() == []
    del stream
    gc.collect()
    (rec,) = ds.records()
    assert rec.status == "ok" and rec.usage_source == source
    assert rec.tokens.output_tokens >= 1
    (span,) = ds.spans()
    assert span.attributes["llm_usage.stream.abandoned"] is True


def test_async_stream_closed_early(ds):
    async def go() -> None:
        stream = await dashscope.AioGeneration.call(model=MODEL, prompt=PROMPT, stream=True,
                                                    **scenario("words=20"))
        await stream.__anext__()
        await stream.aclose()

    run_async(go)
    gc.collect()
    assert len(ds.records()) == 1 and len(ds.spans()) == 1


def _v2_stream_iter(c: Any) -> Any:
    return list(c.chat.completions.create(model=MODEL, messages=MSGS, stream=True))


def _v2_stream_text(c: Any) -> Any:
    return list(c.chat.completions.create(model=MODEL, messages=MSGS, stream=True).text_stream)


def _v2_stream_final(c: Any) -> Any:
    return c.chat.completions.create(model=MODEL, messages=MSGS, stream=True).get_final_message()


@pytest.mark.parametrize("consume", [_v2_stream_iter, _v2_stream_text, _v2_stream_final],
                         ids=["iterate", "text_stream", "get_final_message"])
def test_v2_stream_records_reported_usage_whichever_helper_reads_it(otel, consume):
    with client(otel.server) as c:
        assert consume(c)
    (rec,) = otel.records()
    assert (rec.usage_source, rec.streamed, rec.status) == ("reported", True, "ok")
    assert (rec.tokens.input_tokens, rec.tokens.output_tokens) == (4, 5)
    assert rec.ttft_s is not None


def test_v2_async_stream_records_reported_usage(otel):
    async def consume(c: Any) -> Any:
        stream = await c.chat.completions.create(model=MODEL, messages=MSGS, stream=True)
        return [chunk async for chunk in stream]

    assert v2_async(otel.server, consume)
    (rec,) = otel.records()
    assert (rec.usage_source, rec.tokens.input_tokens, rec.tokens.output_tokens) == ("reported", 4, 5)


def test_v2_app_stream_reports_one_record_per_model(otel):
    with client(otel.server) as c:
        assert list(c.apps.completions.create(app_id="app-123", prompt=PROMPT, stream=True))
    records = otel.records()
    assert sorted(r.model for r in records) == ["qwen-plus", "qwen-turbo"]
    assert all(r.usage_source == "reported" and r.operation == "invoke_agent" for r in records)


# --- endpoints, regions, OpenAI-compatible mode, uninstrument ---------------------------------------

def test_server_address_follows_the_base_url_actually_used():
    adapter = DashScopeAdapter()
    intl = adapter.request_info(dashscope.Generation, (), {
        "model": MODEL, "prompt": PROMPT, "base_address": "https://dashscope-intl.aliyuncs.com/api/v1"})
    assert (intl.server_address, intl.server_port) == ("dashscope-intl.aliyuncs.com", 443)
    assert intl.provider == "dashscope"
    saved = dashscope.base_http_api_url
    try:
        dashscope.base_http_api_url = "https://dashscope.aliyuncs.com/api/v1"
        cn = adapter.request_info(dashscope.Generation, (MODEL,), {"prompt": PROMPT})
    finally:
        dashscope.base_http_api_url = saved
    assert (cn.server_address, cn.request_model) == ("dashscope.aliyuncs.com", MODEL)
    with dashscope.Client(api_key="sk-x", base_url="https://dashscope-intl.aliyuncs.com/api/v1") as c:
        v2 = adapter.request_info(c.chat.completions, (), {"model": MODEL, "messages": MSGS})
    assert v2.server_address == "dashscope-intl.aliyuncs.com"
    assert server_from_url("http://127.0.0.1:8000/api/v1") == ("127.0.0.1", 8000)
    assert server_from_url("not a url") == (None, None)


def test_openai_client_in_compatible_mode_is_dashscope(llm_server):
    llm_server.clear()
    o = make_otel(llm_server, Config())
    try:
        c = openai.OpenAI(base_url=llm_server.url + "/compatible-mode/v1", api_key="sk-test-secret",
                          max_retries=0)
        c.chat.completions.create(model=MODEL, messages=MSGS)
        (rec,) = o.records()
        assert rec.provider == "dashscope" and rec.tokens.input_tokens == 4
        (span,) = o.spans()
        assert span.attributes["gen_ai.provider.name"] == "dashscope"
        assert o.value("llm_usage_requests_total", provider="dashscope", status="ok") == 1
    finally:
        close_otel(o)


def test_uninstrument_restores_classmethods(llm_server):
    from dashscope.v2.resources.chat.completions import Completions

    owners = [(dashscope.Generation, "call"), (dashscope.AioGeneration, "call"),
              (dashscope.Application, "call"), (Completions, "create")]
    originals = [vars(owner)[name] for owner, name in owners]
    o = make_otel(llm_server)
    assert all(vars(owner)[name] is not fn for (owner, name), fn in zip(owners, originals, strict=True))
    close_otel(o)
    assert all(vars(owner)[name] is fn for (owner, name), fn in zip(owners, originals, strict=True))
    assert isinstance(vars(dashscope.Generation)["call"], classmethod)


def test_no_prompt_or_key_in_dashscope_telemetry(ds, caplog):
    import logging

    secret, key = "the-anchors-private-notes-9931", "sk-dashscope-DO-NOT-LEAK"
    caplog.set_level(logging.DEBUG, logger="otel_llm_usage")
    msgs = [{"role": "user", "content": secret}]
    dashscope.Generation.call(model=MODEL, messages=msgs, api_key=key, result_format="message")
    list(dashscope.Generation.call(model=MODEL, messages=msgs, api_key=key, stream=True, incremental_output=True))
    dashscope.Generation.call(model=MODEL, messages=msgs, api_key=key, **scenario("status=429"))
    with dashscope.Client(api_key=key, base_url=ds.server.dashscope_base_url, max_retries=0) as c:
        c.chat.completions.create(model=MODEL, messages=msgs)
    assert len(ds.records()) == 4
    blobs = [ds.scrape(), *(r.getMessage() for r in caplog.records if r.name.startswith("otel_llm_usage"))]
    for span in ds.spans():
        blobs.append(repr(dict(span.attributes or {})))
        blobs.extend(repr(e.attributes) for e in span.events)
    blobs.extend(repr(r) for r in ds.records())
    text = "\n".join(blobs)
    assert secret not in text and key not in text


def test_without_dashscope_the_instrumentor_loads_and_openai_works(llm_server):
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['dashscope'] = None  # as if the [dashscope] extra were not installed\n"
        "import openai\n"
        "from otel_llm_usage.config import Config\n"
        "from otel_llm_usage.instrumentor import LLMUsageInstrumentor\n"
        "i = LLMUsageInstrumentor(); i.instrument(config=Config())\n"
        f"c = openai.OpenAI(base_url='{llm_server.openai_base_url}', api_key='x', max_retries=0)\n"
        "c.chat.completions.create(model='gpt-4o-mini', messages=[{'role': 'user', 'content': 'hi'}])\n"
        "print(len(i.runtime.records()), sorted({m for _, m, _ in i._patched if m == 'call'}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "[]"]  # the call was recorded; no DashScope method was patched
