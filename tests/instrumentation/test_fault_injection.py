# SPDX-License-Identifier: Apache-2.0
"""Differential fault injection: for every way the provider can misbehave, the instrumented client
returns or raises exactly what the plain client does, and exactly one record and span describe it.

Each case runs the same request twice against the loopback server — once uninstrumented, once
instrumented — and compares the outcomes (exception type and HTTP status, or the returned object /
every streamed chunk with random ids removed).
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import openai
import pytest
from opentelemetry.trace import StatusCode

from tests.conftest import close_otel, make_otel

MSG = [{"role": "user", "content": "one two three four"}]

NON_STREAM = [
    "status=400", "status=401", "status=403", "status=404", "status=429;retry_after=0", "status=500",
    "status=503", "reset_body=1", "malformed_json=1", "usage=null", "usage=negative", "usage=string",
    "usage=huge", "no_usage=1", "extra_fields=1", "unknown-model", "delay=1",
]
STREAM = ["truncate_after=2", "malformed_sse=1", "no_usage=1", "usage=huge", "status=500", "extra_fields=1",
          "delay=1"]


def _strip(value: Any) -> Any:
    """Drop what differs between two identical requests (generated ids and timestamps)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in ("id", "created", "created_at")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _outcome(fn) -> tuple[Any, ...]:
    try:
        result = fn()
    except Exception as exc:  # compare what the caller would see
        return ("raised", type(exc).__qualname__, getattr(exc, "status_code", None))
    if isinstance(result, list):
        return ("chunks", [_strip(c.model_dump()) for c in result])
    return ("returned", type(result).__qualname__, _strip(result.model_dump()))


def _call(server, scenario: str, *, stream: bool, mode: str):
    # "unknown-model" asks for a model no catalog prices; every other case is a server scenario.
    model = "a-model-nobody-prices" if scenario == "unknown-model" else "gpt-4o-mini"
    headers = {} if scenario == "unknown-model" else {"X-Loopback-Scenario": scenario}
    kwargs = dict(model=model, messages=MSG, extra_headers=headers)
    timeout = 0.4  # shorter than delay=1: the timeout cases must time out in both runs

    def sync():
        c = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-x", max_retries=0, timeout=timeout)
        if stream:
            return list(c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
        return c.chat.completions.create(**kwargs)

    async def run_async():
        async with openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="sk-x", max_retries=0,
                                      timeout=timeout) as c:
            if stream:
                s = await c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
                return [chunk async for chunk in s]
            return await c.chat.completions.create(**kwargs)

    return sync if mode == "sync" else (lambda: asyncio.run(run_async()))


CASES = [pytest.param(s, False, id=f"json-{s}") for s in NON_STREAM] + \
        [pytest.param(s, True, id=f"stream-{s}") for s in STREAM]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("scenario", "stream"), CASES)
def test_instrumented_outcome_equals_plain_outcome(llm_server, scenario, stream, mode):
    llm_server.clear()
    plain = _outcome(_call(llm_server, scenario, stream=stream, mode=mode))
    otel = make_otel(llm_server)
    try:
        instrumented = _outcome(_call(llm_server, scenario, stream=stream, mode=mode))
        gc.collect()
        assert instrumented == plain
        (record,) = otel.records()
        (span,) = otel.spans()
        failed = plain[0] == "raised"
        assert (record.status == "error") is failed
        assert (span.status.status_code is StatusCode.ERROR) is failed
        if failed:
            assert record.error_type == plain[1] == span.attributes["error.type"]
        assert otel.value("llm_usage_requests_total", status=record.status) == 1
        assert 0 <= record.tokens.input_tokens < 10**9 and 0 <= record.tokens.output_tokens < 10**9
        if scenario == "unknown-model":
            assert record.cost is None
            assert otel.value("llm_pricing_unpriced_requests_total", model="a-model-nobody-prices") == 1
        if record.status == "ok" and record.cost is not None:
            assert otel.value("llm_usage_cost_total") == pytest.approx(float(record.cost))
    finally:
        close_otel(otel)
