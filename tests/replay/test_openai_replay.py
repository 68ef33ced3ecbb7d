# SPDX-License-Identifier: Apache-2.0
"""Recorded OpenAI (and DashScope compatible-mode) traffic through the real ``openai`` SDK.

Every chat, Responses and embeddings interaction is replayed through ``create``,
``with_raw_response`` and ``with_streaming_response``; streamed chat and Responses
recordings also through the ``chat.completions.stream()`` / ``responses.stream()``
helpers; each sync and async. Streams are consumed the way most callers write it, a plain
``for`` / ``async for`` over the stream. Call arguments are the recorded request body.
Streamed recordings are also replayed cut off after their first event (the connection drops),
through ``create``. No recording calls ``/v1/completions``, so legacy completions have no case here.
"""

from __future__ import annotations

import inspect
from typing import Any

import openai
import pytest

from .cassettes import Interaction, cut_after_first_event, load_all
from .conftest import require_cassettes
from .harness import API_KEY, Env, Surface, adrain, asettle, build_cases, drain, replay, settle, snapshot

pytestmark = pytest.mark.slow

ROOT = require_cassettes()

# Recordings under these paths are this module's; none is left without a surface, so no skip list.
_PATHS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings")
UNFITTED: dict[str, str] = {}


def _ours(it: Interaction) -> bool:
    return it.path.endswith(_PATHS) and it.method == "POST"


def _base_url(env: Env, it: Interaction) -> str:
    # Compatible-mode recordings keep their path prefix: the plugin names the provider from it.
    return env.url + ("/compatible-mode/v1" if it.path.startswith("/compatible-mode/") else "/v1")


def _client(env: Env, it: Interaction) -> openai.OpenAI:
    return openai.OpenAI(base_url=_base_url(env, it), api_key=API_KEY, max_retries=0,
                         http_client=openai.DefaultHttpxClient(verify=env.tls))


def _aclient(env: Env, it: Interaction) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=_base_url(env, it), api_key=API_KEY, max_retries=0,
                              http_client=openai.DefaultAsyncHttpxClient(verify=env.tls))


def _resource(client: Any, it: Interaction) -> Any:
    if it.path.endswith("/chat/completions"):
        return client.chat.completions
    return client.responses if it.path.endswith("/responses") else client.embeddings


def _wire(it: Interaction) -> Any:
    body = dict(it.request_json)
    if it.path.endswith("/embeddings"):
        # openai >= 1.62 asks for base64 (and decodes it) unless the caller picks a format; older
        # recorders did not send the field.
        body.setdefault("encoding_format", "base64")
    return body


def _without_stream(it: Interaction) -> dict[str, Any]:
    return {k: v for k, v in it.request_json.items() if k != "stream"}  # the helpers set it themselves


# --- surfaces ----------------------------------------------------------------------------------------------

def _create(env: Env, it: Interaction) -> Any:
    with _client(env, it) as c:
        return drain(_resource(c, it).create(**it.request_json), it)


async def _acreate(env: Env, it: Interaction) -> Any:
    async with _aclient(env, it) as c:
        return await adrain(await _resource(c, it).create(**it.request_json), it)


def _headers(response: Any) -> list[tuple[str, str]]:
    return list(response.headers.multi_items())


def _raw(env: Env, it: Interaction) -> Any:
    with _client(env, it) as c:
        raw = _resource(c, it).with_raw_response.create(**it.request_json)
        return {"status": raw.status_code, "headers": _headers(raw), "parsed": drain(raw.parse(), it)}


async def _araw(env: Env, it: Interaction) -> Any:
    async with _aclient(env, it) as c:
        raw = await _resource(c, it).with_raw_response.create(**it.request_json)
        parsed = raw.parse()
        if inspect.isawaitable(parsed):
            parsed = await parsed
        return {"status": raw.status_code, "headers": _headers(raw), "parsed": await adrain(parsed, it)}


def _streaming(env: Env, it: Interaction) -> Any:
    with _client(env, it) as c, _resource(c, it).with_streaming_response.create(**it.request_json) as r:
        return {"status": r.status_code, "headers": _headers(r), "parsed": drain(r.parse(), it)}


async def _astreaming(env: Env, it: Interaction) -> Any:
    async with _aclient(env, it) as c, _resource(c, it).with_streaming_response.create(**it.request_json) as r:
        return {"status": r.status_code, "headers": _headers(r), "parsed": await adrain(await r.parse(), it)}


def _chat_helper(env: Env, it: Interaction) -> Any:
    with _client(env, it) as c, c.chat.completions.stream(**_without_stream(it)) as s:
        events = [snapshot(event) for event in s]
        return {"events": events, "final": settle(s.get_final_completion)}


async def _achat_helper(env: Env, it: Interaction) -> Any:
    async with _aclient(env, it) as c, c.chat.completions.stream(**_without_stream(it)) as s:
        events = [snapshot(event) async for event in s]
        return {"events": events, "final": await asettle(s.get_final_completion)}


def _responses_helper(env: Env, it: Interaction) -> Any:
    with _client(env, it) as c, c.responses.stream(**_without_stream(it)) as s:
        events = [snapshot(event) for event in s]
        return {"events": events, "final": settle(s.get_final_response)}


async def _aresponses_helper(env: Env, it: Interaction) -> Any:
    async with _aclient(env, it) as c, c.responses.stream(**_without_stream(it)) as s:
        events = [snapshot(event) async for event in s]
        return {"events": events, "final": await asettle(s.get_final_response)}


def _is_chat(it: Interaction) -> bool:
    return it.path.endswith("/chat/completions")


SURFACES = [
    Surface("create", _ours, _create, _acreate, _wire, injects=_is_chat),
    Surface("with_raw_response", _ours, _raw, _araw, _wire, injects=_is_chat),
    Surface("with_streaming_response", _ours, _streaming, _astreaming, _wire, injects=_is_chat),
    Surface("chat.completions.stream", lambda it: _ours(it) and _is_chat(it) and it.requested_stream,
            _chat_helper, _achat_helper, _wire, injects=_is_chat),
    Surface("responses.stream", lambda it: _ours(it) and it.path.endswith("/responses") and it.requested_stream,
            _responses_helper, _aresponses_helper, _wire),
]

# Each streamed recording once more, broken off after its first event, through plain create.
_CUT = [cut_after_first_event(it) for it in load_all(ROOT) if _ours(it) and it.is_sse and it.ok]
CASES = [*build_cases((it for it in load_all(ROOT) if _ours(it)), SURFACES, UNFITTED),
         *build_cases(_CUT, SURFACES[:1], None)]


@pytest.mark.parametrize(("surface", "mode", "interaction"), CASES)
def test_replayed_openai_call(replay_env: Env, surface: Surface, mode: str, interaction: Interaction) -> None:
    problems = replay(replay_env, surface, mode, interaction)
    assert not problems, "\n".join(problems)
