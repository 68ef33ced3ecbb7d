# SPDX-License-Identifier: Apache-2.0
"""Attribution precedence: explicit per-call > innermost context > outer context > baggage."""

from __future__ import annotations

import asyncio

import openai
from opentelemetry import baggage, context

from otel_llm_usage import track, usage_context
from otel_llm_usage.attribution import Attribution, current_attribution


def test_nested_contexts_override_only_what_they_set():
    with usage_context(function="feed", user="u1", anchor="a1"):
        with usage_context(user="u2", session="s9"):
            assert current_attribution() == Attribution("feed", "u2", "s9", "a1")
        assert current_attribution() == Attribution("feed", "u1", None, "a1")
    assert current_attribution() == Attribution()


def test_baggage_is_the_weakest_source():
    ctx = baggage.set_baggage("user.id", "from-upstream")
    ctx = baggage.set_baggage("llm_usage.anchor", "anchor-up", ctx)
    token = context.attach(ctx)
    try:
        assert current_attribution() == Attribution(user="from-upstream", anchor="anchor-up")
        with usage_context(user="local"):
            assert current_attribution() == Attribution(user="local", anchor="anchor-up")
            assert current_attribution(Attribution(user="explicit")).user == "explicit"
    finally:
        context.detach(token)


def test_track_defaults_function_to_qualified_name_and_supports_async_and_generators():
    @track
    def plain():
        return current_attribution().function

    @track(anchor="a7")
    async def coro():
        await asyncio.sleep(0)
        return current_attribution()

    @track(function="gen-feature")
    def gen():
        yield current_attribution().function
        yield current_attribution().function

    assert plain() == "test_track_defaults_function_to_qualified_name_and_supports_async_and_generators.<locals>.plain"
    got = asyncio.run(coro())
    assert got.anchor == "a7" and got.function.endswith("coro")
    g = gen()
    assert next(g) == "gen-feature"
    assert current_attribution().function is None  # not leaked between resumptions
    assert next(g) == "gen-feature"


def test_concurrent_tasks_do_not_share_attribution():
    async def worker(n):
        with usage_context(user=f"u{n}"):
            await asyncio.sleep(0.01 * (3 - n))
            return current_attribution().user

    async def main():
        return await asyncio.gather(*(worker(i) for i in range(3)))

    assert asyncio.run(main()) == ["u0", "u1", "u2"]


def test_request_user_field_wins_over_context(otel):
    c = openai.OpenAI(base_url=otel.server.openai_base_url, api_key="sk-x", max_retries=0)
    with usage_context(user="ctx-user", function="f"):
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                  user="request-user")
    (rec,) = otel.records()
    assert rec.user == "request-user" and rec.function == "f"
