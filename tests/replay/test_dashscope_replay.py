# SPDX-License-Identifier: Apache-2.0
"""Recorded DashScope traffic through the real ``dashscope`` SDK: the classic API and the 2.x clients.

Native recordings (``/api/v1/services/...``) go through ``Generation`` / ``AioGeneration``,
``MultiModalConversation`` / ``AioMultiModalConversation`` and ``TextEmbedding``, and, where
the 2.x client can send the very same body, through ``dashscope.Client`` / ``AsyncClient``.
Compatible-mode chat recordings also go through ``dashscope.Client(protocol="openai")``
(the ``openai`` SDK replays them in ``test_openai_replay``). Streams are consumed with a
plain ``for`` / ``async for``; streamed recordings are also replayed cut off after their first
event (the connection drops). The 2.x ``client.multimodal.chat`` fits none of the multimodal
recordings: it always sends ``result_format=message``, and they were recorded without it.
"""

from __future__ import annotations

from typing import Any

import dashscope
import httpx
import pytest

from .cassettes import Interaction, cut_after_first_event, load_all
from .conftest import require_cassettes
from .harness import API_KEY, Env, Surface, adrain, build_cases, drain, replay, snapshot

pytestmark = pytest.mark.slow

ROOT = require_cassettes()

_GENERATION = "/api/v1/services/aigc/text-generation/generation"
_MULTIMODAL = "/api/v1/services/aigc/multimodal-generation/generation"
_EMBEDDING = "/api/v1/services/embeddings/text-embedding/text-embedding"
_COMPATIBLE_CHAT = "/compatible-mode/v1/chat/completions"
# Every native recording fits a classic surface, so no skip list.
UNFITTED: dict[str, str] = {}


def _native(it: Interaction) -> bool:
    return it.path in (_GENERATION, _MULTIMODAL, _EMBEDDING)


def _parameters(it: Interaction) -> dict[str, Any]:
    params = it.request_json.get("parameters")
    return {k: v for k, v in (params or {}).items() if k != "stream"}


def _native_wire(it: Interaction) -> Any:
    body = dict(it.request_json)
    if "parameters" in body:
        body["parameters"] = _parameters(it)  # dashscope 2.0.2 sends stream only as X-DashScope-SSE
    return body


# --- classic API ------------------------------------------------------------------------------------------

def _classic_kwargs(it: Interaction) -> dict[str, Any]:
    body = it.request_json
    kwargs: dict[str, Any] = {"model": body["model"], **_parameters(it)}
    for key in ("prompt", "messages"):
        if key in (body.get("input") or {}):
            kwargs[key] = body["input"][key]
    if it.requested_stream:
        kwargs["stream"] = True
    return kwargs


def _generation(env: Env, it: Interaction) -> Any:
    return drain(dashscope.Generation.call(**_classic_kwargs(it)), it)


async def _aio_generation(env: Env, it: Interaction) -> Any:
    return await adrain(await dashscope.AioGeneration.call(**_classic_kwargs(it)), it)


def _multimodal(env: Env, it: Interaction) -> Any:
    return drain(dashscope.MultiModalConversation.call(**_classic_kwargs(it)), it)


async def _aio_multimodal(env: Env, it: Interaction) -> Any:
    return await adrain(await dashscope.AioMultiModalConversation.call(**_classic_kwargs(it)), it)


def _text_embedding(env: Env, it: Interaction) -> Any:
    body = it.request_json
    return snapshot(dashscope.TextEmbedding.call(model=body["model"], input=body["input"]["texts"],
                                                 **_parameters(it)))


async def _close_shared_session() -> None:
    await dashscope.close_shared_aio_session()  # the classic async API keeps one aiohttp session per loop


# --- 2.x clients ------------------------------------------------------------------------------------------

def _v2_base(env: Env, it: Interaction) -> tuple[str, str | None]:
    if it.path == _COMPATIBLE_CHAT:
        return env.url + "/compatible-mode/v1", "openai"
    return env.url + "/api/v1", None


def _v2_client(env: Env, it: Interaction) -> dashscope.Client:
    base, protocol = _v2_base(env, it)
    # A caller-supplied httpx client must carry the base URL itself: the chat resources pass theirs per
    # request, but embeddings send a bare path.
    return dashscope.Client(api_key=API_KEY, base_url=base, protocol=protocol, max_retries=0,
                            http_client=httpx.Client(base_url=base, verify=env.tls))


def _v2_aclient(env: Env, it: Interaction) -> dashscope.AsyncClient:
    base, protocol = _v2_base(env, it)
    return dashscope.AsyncClient(api_key=API_KEY, base_url=base, protocol=protocol, max_retries=0,
                                 http_client=httpx.AsyncClient(base_url=base, verify=env.tls))


def _v2_chat_kwargs(it: Interaction) -> dict[str, Any]:
    body = it.request_json
    if it.path == _COMPATIBLE_CHAT:
        extra = {k: v for k, v in body.items() if k not in ("model", "messages", "stream", "stream_options")}
        messages = body["messages"]
    else:
        # The native protocol always sends result_format=message (and incremental_output for streams).
        extra = {k: v for k, v in _parameters(it).items() if k != "result_format"}
        messages = body["input"]["messages"]
    return {"model": body["model"], "messages": messages, "stream": it.requested_stream, "parameters": extra or None}


def _v2_chat(env: Env, it: Interaction) -> Any:
    with _v2_client(env, it) as c:
        return drain(c.chat.completions.create(**_v2_chat_kwargs(it)), it)


async def _v2_achat(env: Env, it: Interaction) -> Any:
    async with _v2_aclient(env, it) as c:
        return await adrain(await c.chat.completions.create(**_v2_chat_kwargs(it)), it)


def _v2_embedding_kwargs(it: Interaction) -> dict[str, Any]:
    body = it.request_json
    return {"model": body["model"], "input": body["input"]["texts"], "parameters": _parameters(it) or None}


def _v2_embeddings(env: Env, it: Interaction) -> Any:
    with _v2_client(env, it) as c:
        return snapshot(c.embeddings.create(**_v2_embedding_kwargs(it)))


async def _v2_aembeddings(env: Env, it: Interaction) -> Any:
    async with _v2_aclient(env, it) as c:
        return snapshot(await c.embeddings.create(**_v2_embedding_kwargs(it)))


def _v2_native_chat_fits(it: Interaction) -> bool:
    """The 2.x native protocol can only send messages with result_format=message, and streams
    only with incremental_output=true."""
    params = it.request_json.get("parameters") or {}
    return (it.path == _GENERATION and "messages" in (it.request_json.get("input") or {})
            and params.get("result_format") == "message"
            and (not it.requested_stream or params.get("incremental_output") is True))


def _v2_openai_chat_fits(it: Interaction) -> bool:
    # The 2.x OpenAI protocol always asks for usage in streams, so only such recordings fit.
    body = it.request_json
    return it.path == _COMPATIBLE_CHAT and (
        not it.requested_stream or body.get("stream_options") == {"include_usage": True})


SURFACES = [
    Surface("Generation.call", lambda it: it.path == _GENERATION, _generation, _aio_generation, _native_wire,
            after_async=_close_shared_session),
    Surface("MultiModalConversation.call", lambda it: it.path == _MULTIMODAL, _multimodal, _aio_multimodal,
            _native_wire, after_async=_close_shared_session),
    Surface("TextEmbedding.call", lambda it: it.path == _EMBEDDING, _text_embedding, None, _native_wire),
    Surface("Client.chat.completions", _v2_native_chat_fits, _v2_chat, _v2_achat, _native_wire),
    Surface("Client.embeddings", lambda it: it.path == _EMBEDDING, _v2_embeddings, _v2_aembeddings, _native_wire),
    Surface("Client(protocol=openai).chat.completions", _v2_openai_chat_fits, _v2_chat, _v2_achat,
            lambda it: it.request_json),
]

# Compatible-mode chat recordings that the 2.x client cannot send are not unfitted: the openai SDK
# replays every one of them (test_openai_replay).
_CUT = [cut_after_first_event(it) for it in load_all(ROOT)
        if (_native(it) or it.path == _COMPATIBLE_CHAT) and it.is_sse and it.ok]
CASES = [*build_cases((it for it in load_all(ROOT) if _native(it)), SURFACES, UNFITTED),
         *build_cases((it for it in load_all(ROOT) if it.path == _COMPATIBLE_CHAT), SURFACES, None),
         *build_cases(_CUT, SURFACES, None)]


@pytest.mark.parametrize(("surface", "mode", "interaction"), CASES)
def test_replayed_dashscope_call(replay_env: Env, surface: Surface, mode: str, interaction: Interaction) -> None:
    problems = replay(replay_env, surface, mode, interaction)
    assert not problems, "\n".join(problems)
