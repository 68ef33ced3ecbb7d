# SPDX-License-Identifier: Apache-2.0
"""Errors, streams the caller abandons, injected usage chunks, retries, uninstrument."""

from __future__ import annotations

import asyncio
import gc
import socket
import threading

import openai
import pytest
from opentelemetry.trace import StatusCode

from otel_llm_usage.instrumentor import LLMUsageInstrumentor
from tests.conftest import close_otel, make_otel

MODEL = "gpt-4o-mini"
MSG = [{"role": "user", "content": "one two three four"}]


def client(server, **kw):
    return openai.OpenAI(base_url=server.openai_base_url, api_key="sk-test-secret", max_retries=0, **kw)


def aclient(server, **kw):
    return openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="sk-test-secret", max_retries=0, **kw)


def scenario(text):
    return {"extra_headers": {"X-Loopback-Scenario": text}}


def _text(chunks):
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def _estimate(text):
    """The documented estimate (about 4 Latin or 1.5 CJK characters per token, rounded up)."""
    import math

    cjk = sum(1 for ch in text if "\u4e00" <= ch <= "\u9fff")
    return max(1, math.ceil((len(text) - cjk) / 4 + cjk / 1.5))


def test_a_sampled_out_call_is_still_priced_budgeted_and_counted(llm_server):
    """Its span is not recorded, so nothing prices it on the calling thread: the pipeline must."""
    from decimal import Decimal

    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    from otel_llm_usage.config import Config
    from otel_llm_usage.pricing import compute_cost

    config = Config.model_validate({
        "provider_hosts": {"127.0.0.1": "openai"}, "pricing": {"exchange_rates": {"USD": "7"}},
        "budgets": [{"name": "team", "window": "day", "limit": {"cost": 1000}, "action": "block"}]})
    otel = make_otel(llm_server, config, sampler=ALWAYS_OFF)
    try:
        client(llm_server).chat.completions.create(model=MODEL, messages=MSG)
        assert otel.spans() == []
        [rec] = otel.records()
        runtime = otel.instrumentor.runtime
        entry = runtime.pricer.stage.catalog.lookup("openai", MODEL)
        assert rec.tokens.total_tokens > 0
        assert rec.cost == compute_cost(entry, rec.tokens, {}) and rec.cost > 0 and rec.currency == "USD"
        assert otel.value("llm_usage_cost_total", currency="USD") == pytest.approx(float(rec.cost))
        [status] = [s for s in runtime.budgets.status() if s["unit"] != "tokens"]
        assert status["used"] == pytest.approx(rec.cost * Decimal(7), abs=Decimal("1e-9"))
    finally:
        close_otel(otel)


# --- streaming usage injection ---------------------------------------------------

def test_injected_usage_chunk_is_hidden_and_exact(otel):
    chunks = list(client(otel.server).chat.completions.create(
        model=MODEL, messages=MSG, stream=True, **scenario("words=7;cached=2;reasoning=3")))
    assert all(ch.choices for ch in chunks), "the usage-only chunk we asked for must not reach the caller"
    assert all(ch.usage is None for ch in chunks)
    (req,) = otel.server.requests
    assert req.json["stream_options"] == {"include_usage": True}
    (rec,) = otel.records()
    assert (rec.tokens.input_tokens, rec.tokens.output_tokens) == (4, 10)
    assert (rec.tokens.cached_input_tokens, rec.tokens.reasoning_tokens) == (2, 3)
    # Disjoint counter buckets: 4 input = 2 uncached + 2 cached; 10 output = 7 visible + 3 reasoning.
    assert otel.value("llm_usage_tokens_total", token_type="input") == 2
    assert otel.value("llm_usage_tokens_total", token_type="cached_input") == 2
    assert otel.value("llm_usage_tokens_total", token_type="output") == 7
    assert otel.value("llm_usage_tokens_total", token_type="reasoning") == 3
    (span,) = otel.spans()
    assert span.attributes["gen_ai.usage.cache_read.input_tokens"] == 2
    assert span.attributes["gen_ai.usage.reasoning.output_tokens"] == 3


def test_caller_requested_usage_chunk_is_delivered(otel):
    chunks = list(client(otel.server).chat.completions.create(
        model=MODEL, messages=MSG, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == 4
    (rec,) = otel.records()
    assert rec.usage_source == "reported"


def test_injection_can_be_disabled(llm_server):
    from otel_llm_usage.config import Config

    llm_server.clear()
    o = make_otel(llm_server, Config(stream_include_usage=False, provider_hosts={"127.0.0.1": "openai"}))
    try:
        chunks = list(client(llm_server).chat.completions.create(model=MODEL, messages=MSG, stream=True))
        assert "stream_options" not in llm_server.requests[0].json
        (rec,) = o.records()
        assert rec.usage_source == "estimated"
        assert (rec.tokens.input_tokens, rec.tokens.output_tokens) == (_estimate(MSG[0]["content"]),
                                                                       _estimate(_text(chunks)))
    finally:
        close_otel(o)


def test_missing_stream_usage_is_estimated_never_zero(otel):
    chunks = list(client(otel.server).chat.completions.create(
        model=MODEL, messages=MSG, stream=True, **scenario("no_usage=1;words=6")))
    # Within the text sample (8 chunks) the estimate is exact; past it, see the scaling test below.
    assert len(chunks) == 7
    (rec,) = otel.records()
    assert rec.usage_source == "estimated"
    assert rec.tokens.input_tokens == _estimate(MSG[0]["content"]) >= 1
    assert rec.tokens.output_tokens == _estimate(_text(chunks)) >= 1
    assert otel.spans()[0].attributes["llm_usage.usage_source"] == "estimated"


# --- provider errors -------------------------------------------------------------

@pytest.mark.parametrize(("status", "exc_type"), [
    (400, openai.BadRequestError), (401, openai.AuthenticationError),
    (429, openai.RateLimitError), (500, openai.InternalServerError),
])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_provider_error_is_reraised_unchanged_and_recorded(otel, status, exc_type, mode):
    kwargs = dict(model=MODEL, messages=MSG, **scenario(f"status={status}"))
    if mode == "sync":
        with pytest.raises(exc_type) as info:
            client(otel.server).chat.completions.create(**kwargs)
    else:
        async def go():
            async with aclient(otel.server) as c:
                await c.chat.completions.create(**kwargs)
        with pytest.raises(exc_type) as info:
            asyncio.run(go())
    assert info.value.status_code == status
    (rec,) = otel.records()
    assert rec.status == "error"
    assert rec.error_type == exc_type.__name__
    assert rec.usage_source == "none" and rec.tokens.total_tokens == 0
    (span,) = otel.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == exc_type.__name__
    assert otel.value("llm_usage_requests_total", status="error", error_type=exc_type.__name__) == 1
    assert otel.value("gen_ai_client_operation_duration_seconds_count", error_type=exc_type.__name__) == 1


def test_connection_refused_is_recorded(otel):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-x", max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        c.chat.completions.create(model=MODEL, messages=MSG)
    (rec,) = otel.records()
    assert rec.status == "error" and rec.error_type == "APIConnectionError"


def test_client_retries_make_one_record(otel):
    otel.server.push_scenario("status=429;retry_after=0")
    c = openai.OpenAI(base_url=otel.server.openai_base_url, api_key="sk-x", max_retries=2)
    c.chat.completions.create(model=MODEL, messages=MSG)
    assert len(otel.server.requests) == 2  # one refused attempt, one answer
    (rec,) = otel.records()
    assert rec.status == "ok" and rec.tokens.input_tokens == 4
    (span,) = otel.spans()
    assert span.attributes["http.request.resend_count"] == 1
    assert [(e.name, e.attributes["http.request.resend_count"]) for e in span.events] == [("retry", 1)]
    assert otel.value("llm_usage_requests_total") == 1


def test_truncated_stream_raises_like_the_sdk_and_records_once(otel):
    stream = client(otel.server).chat.completions.create(
        model=MODEL, messages=MSG, stream=True, **scenario("truncate_after=2;words=6"))
    with pytest.raises(Exception) as info:
        for _ in stream:
            pass
    (rec,) = otel.records()
    assert rec.status == "error"
    assert rec.error_type == type(info.value).__qualname__
    assert rec.usage_source == "estimated"  # two chunks of output reached the caller


# --- abandoned and early-closed streams --------------------------------------------

def test_abandoned_stream_is_finalized_by_gc(otel):
    stream = client(otel.server).chat.completions.create(model=MODEL, messages=MSG, stream=True,
                                                         **scenario("words=20"))
    next(iter(stream))
    next(iter(stream))
    assert otel.records() == []
    del stream
    gc.collect()
    (rec,) = otel.records()
    assert rec.usage_source == "estimated" and rec.tokens.output_tokens >= 1
    (span,) = otel.spans()
    assert span.attributes["llm_usage.stream.abandoned"] is True


def test_early_close_then_gc_records_once(otel):
    stream = client(otel.server).chat.completions.create(model=MODEL, messages=MSG, stream=True)
    next(iter(stream))
    stream.close()
    stream.close()
    del stream
    gc.collect()
    assert len(otel.records()) == 1
    assert len(otel.spans()) == 1


@pytest.mark.parametrize("read", [5, 60])
def test_abandoned_long_stream_estimate_scales_the_text_sample(otel, read):
    """Past a few chunks the proxy stops reading text when usage is due at the end; abandoned
    before it, the estimate must still track the output the caller actually received."""
    from otel_llm_usage.usage import count_text, estimate_tokens

    stream = client(otel.server).chat.completions.create(model=MODEL, messages=MSG, stream=True,
                                                         **scenario("words=100"))
    received = ""
    for _ in range(read):
        received += next(iter(stream)).choices[0].delta.content or ""
    del stream
    gc.collect()
    (rec,) = otel.records()
    assert rec.usage_source == "estimated"
    exact = estimate_tokens(*count_text(received))
    assert abs(rec.tokens.output_tokens - exact) <= max(2, exact // 5), (rec.tokens.output_tokens, exact)


def test_long_stream_keeps_finish_reason_and_reported_usage(otel):
    chunks = list(client(otel.server).chat.completions.create(model=MODEL, messages=MSG, stream=True,
                                                              **scenario("words=60")))
    assert sum(1 for c in chunks if c.choices) > 60
    (rec,) = otel.records()
    assert rec.usage_source == "reported" and rec.tokens.output_tokens == 60
    assert rec.finish_reasons == ("stop",)
    assert otel.spans()[0].attributes["gen_ai.response.finish_reasons"] == ("stop",)


def test_user_exception_inside_with_block_records_once(otel):
    with pytest.raises(KeyError), \
            client(otel.server).chat.completions.create(model=MODEL, messages=MSG, stream=True) as stream:
        for _ in stream:
            raise KeyError("caller bug")
    gc.collect()
    (rec,) = otel.records()
    # The call ended with the caller's exception (as the official GenAI instrumentation records it).
    assert (rec.status, rec.error_type) == ("error", "KeyError")
    assert otel.spans()[0].attributes["llm_usage.stream.abandoned"] is True


def test_async_stream_cancelled(otel):
    async def go():
        c = aclient(otel.server)
        stream = await c.chat.completions.create(model=MODEL, messages=MSG, stream=True,
                                                 **scenario("words=50;chunk_delay=0.05"))

        async def consume():
            async for _ in stream:
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.15)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await c.close()

    asyncio.run(go())
    gc.collect()
    (rec,) = otel.records()
    assert rec.error_type == "CancelledError"


def test_stream_consumed_in_another_thread(otel):
    stream = client(otel.server).chat.completions.create(model=MODEL, messages=MSG, stream=True)
    got = []
    t = threading.Thread(target=lambda: got.extend(stream))
    t.start()
    t.join()
    assert got
    (rec,) = otel.records()
    assert (rec.usage_source, rec.tokens.input_tokens, rec.tokens.output_tokens) == ("reported", 4, 5)


# --- uninstrument ------------------------------------------------------------------

def test_uninstrument_restores_every_method_and_cached_wrappers_pass_through(llm_server):
    from concurrent.futures import ThreadPoolExecutor

    from openai._base_client import AsyncAPIClient, BaseClient, SyncAPIClient

    patched = [(SyncAPIClient, "request"), (AsyncAPIClient, "request"), (BaseClient, "_build_request"),
               (ThreadPoolExecutor, "submit")]
    originals = {(cls, name): vars(cls)[name] for cls, name in patched}
    o = make_otel(llm_server)
    assert all(vars(cls)[name] is not fn for (cls, name), fn in originals.items())
    c = client(llm_server)
    cached_raw = c.chat.completions.with_raw_response  # holds a bound wrapper
    runtime = o.instrumentor.runtime
    close_otel(o)
    assert all(vars(cls)[name] is fn for (cls, name), fn in originals.items())
    cached_raw.create(model=MODEL, messages=MSG).parse()
    assert runtime.records() == []  # the stale wrapper passed straight through
    assert o.spans() == []
    # instrument → uninstrument → instrument works and records again
    o2 = make_otel(llm_server)
    try:
        c.chat.completions.create(model=MODEL, messages=MSG)
        assert len(o2.records()) == 1
    finally:
        close_otel(o2)
    assert LLMUsageInstrumentor().runtime is None


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_azure_client_is_attributed_to_azure(otel, mode):
    kwargs = dict(azure_endpoint=otel.server.url, api_version="2024-10-21", api_key="az-key", max_retries=0)
    if mode == "sync":
        openai.AzureOpenAI(**kwargs).chat.completions.create(model="my-gpt4o-deployment", messages=MSG)
    else:
        async def go():
            async with openai.AsyncAzureOpenAI(**kwargs) as c:
                await c.chat.completions.create(model="my-gpt4o-deployment", messages=MSG)
        asyncio.run(go())
    assert otel.server.requests[0].path == "/openai/deployments/my-gpt4o-deployment/chat/completions"
    (rec,) = otel.records()
    assert (rec.provider, rec.request_model, rec.tokens.input_tokens) == ("azure.ai.openai", "my-gpt4o-deployment", 4)
    assert otel.spans()[0].attributes["gen_ai.provider.name"] == "azure.ai.openai"
