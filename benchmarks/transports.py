# SPDX-License-Identifier: Apache-2.0
"""In-process transports that answer the real SDKs with canned, usage-bearing bodies.

The point is to measure microseconds of instrumentation overhead without a
socket in the way: the SDK still builds the request, parses JSON / SSE and
builds its pydantic models exactly as it would against the real service.

* OpenAI (httpx2 stack of ``openai`` 3.x): :func:`openai_client` plugs an
  ``httpx2.MockTransport`` into ``http_client=``.
* DashScope classic API (``requests``): :func:`mount_dashscope` mounts a
  :class:`CannedDashScopeAdapter` on the SDK's shared ``requests.Session`` for
  the real endpoint prefix, so nothing leaves the process.

Every body is rendered once at import: the handler only picks one, so the
transport costs the same for every variant.
"""

from __future__ import annotations

import io
import json
from typing import Any

from requests import Response
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

__all__ = [
    "CHAT_MODEL",
    "DASHSCOPE_BASE",
    "DASHSCOPE_MODEL",
    "EMBED_MODEL",
    "OPENAI_BASE",
    "CannedDashScopeAdapter",
    "dashscope_stream_body",
    "mount_dashscope",
    "openai_async_client",
    "openai_client",
    "openai_stream_body",
]

# Real hostnames so every instrumentation resolves the provider (and price region) as in production;
# the mock transports make sure no packet is ever sent there.
OPENAI_BASE = "https://api.openai.com/v1"
DASHSCOPE_BASE = "https://dashscope.aliyuncs.com/api/v1"
CHAT_MODEL = "gpt-4o-mini"
EMBED_MODEL = "text-embedding-3-small"
DASHSCOPE_MODEL = "qwen-plus"
# Header a client sets (via ``default_headers``) to pick how many content chunks a stream carries.
CHUNKS_HEADER = "x-bench-chunks"

_USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 100,
    "total_tokens": 112,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                  "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
}
_BASE = {"id": "chatcmpl-bench", "created": 1_700_000_000, "model": CHAT_MODEL + "-2024-07-18",
         "system_fingerprint": "fp_bench"}

CHAT_BODY = json.dumps({
    **_BASE,
    "object": "chat.completion",
    "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "lorem " * 99 + "lorem", "refusal": None}}],
    "usage": _USAGE,
}).encode()

EMBED_BODY = json.dumps({
    "object": "list",
    "model": EMBED_MODEL,
    "data": [{"object": "embedding", "index": 0, "embedding": [0.001 * i for i in range(64)]}],
    "usage": {"prompt_tokens": 8, "total_tokens": 8},
}).encode()


def openai_stream_body(chunks: int) -> bytes:
    """SSE body: ``chunks`` content chunks, a finish chunk, the usage chunk, ``[DONE]`` (OpenAI framing)."""
    frames = []
    base = {**_BASE, "object": "chat.completion.chunk"}
    for i in range(chunks):
        delta = {"role": "assistant", "content": "lorem "} if i == 0 else {"content": "lorem "}
        frames.append({**base, "usage": None,
                       "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]})
    frames.append({**base, "usage": None,
                   "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]})
    frames.append({**base, "choices": [], "usage": {**_USAGE, "completion_tokens": chunks,
                                                   "total_tokens": 12 + chunks}})
    text = "".join(f"data: {json.dumps(f)}\n\n" for f in frames) + "data: [DONE]\n\n"
    return text.encode()


_STREAM_BODIES: dict[str, bytes] = {}


def _openai_handler(request: Any) -> Any:
    """Route by path and by the ``stream`` flag; never parses the request body as JSON."""
    import httpx2

    path = request.url.path
    if path.endswith("/embeddings"):
        return httpx2.Response(200, content=EMBED_BODY, headers={"content-type": "application/json"})
    if b'"stream":true' in request.content.replace(b" ", b""):
        chunks = request.headers.get(CHUNKS_HEADER, "100")
        body = _STREAM_BODIES.get(chunks)
        if body is None:
            body = _STREAM_BODIES[chunks] = openai_stream_body(int(chunks))
        return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})
    return httpx2.Response(200, content=CHAT_BODY, headers={"content-type": "application/json"})


def openai_client(base_url: str | None = None, chunks: int = 100) -> Any:
    """A sync ``openai.OpenAI``; ``base_url=None`` means the in-process mock transport."""
    import httpx2
    import openai

    headers = {CHUNKS_HEADER: str(chunks)}
    if base_url is not None:
        return openai.OpenAI(api_key="bench", base_url=base_url, max_retries=0, default_headers=headers)
    http = httpx2.Client(transport=httpx2.MockTransport(_openai_handler))
    return openai.OpenAI(api_key="bench", base_url=OPENAI_BASE, http_client=http, max_retries=0,
                         default_headers=headers)


def openai_async_client(latency_s: float | None = None) -> Any:
    """An ``openai.AsyncOpenAI`` over the same mock transport (its handler is sync, which MockTransport allows).

    With ``latency_s``, every answer comes that long after the request, awaited on the event loop
    (``asyncio.sleep``) as a network wait would be, so concurrent calls interleave."""
    import httpx2
    import openai

    handler: Any = _openai_handler
    if latency_s is not None:
        import asyncio

        async def delayed(request: Any) -> Any:
            await asyncio.sleep(latency_s)
            return _openai_handler(request)

        handler = delayed

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return openai.AsyncOpenAI(api_key="bench", base_url=OPENAI_BASE, http_client=http, max_retries=0)


# -- DashScope -----------------------------------------------------------------

_DS_USAGE = {"input_tokens": 12, "output_tokens": 100, "total_tokens": 112}
DASHSCOPE_BODY = json.dumps({
    "request_id": "bench",
    "output": {"text": "lorem " * 99 + "lorem", "finish_reason": "stop"},
    "usage": _DS_USAGE,
}).encode()


def dashscope_stream_body(chunks: int) -> bytes:
    """DashScope SSE framing (``id:`` / ``event:result`` / ``:HTTP_STATUS/200`` / ``data:``), incremental
    output, cumulative usage on every frame as the service sends it."""
    out = []
    for i in range(1, chunks + 2):
        done = i == chunks + 1
        payload = {"request_id": "bench",
                   "output": {"text": "" if done else "lorem ", "finish_reason": "stop" if done else "null"},
                   "usage": {"input_tokens": 12, "output_tokens": min(i, chunks),
                             "total_tokens": 12 + min(i, chunks)}}
        out.append(f"id:{i}\nevent:result\n:HTTP_STATUS/200\ndata:{json.dumps(payload)}\n\n")
    return "".join(out).encode()


class CannedDashScopeAdapter(BaseAdapter):
    """A ``requests`` transport adapter answering DashScope generation calls from memory."""

    def __init__(self, chunks: int = 100) -> None:
        super().__init__()
        self.stream_body = dashscope_stream_body(chunks)

    def send(self, request: Any, stream: bool = False, timeout: Any = None, verify: Any = True,
             cert: Any = None, proxies: Any = None) -> Any:
        sse = request.headers.get("X-DashScope-SSE", "").lower() == "enable" or \
            "text/event-stream" in request.headers.get("Accept", "")
        response = Response()
        response.status_code = 200
        response.headers = CaseInsensitiveDict(
            {"content-type": "text/event-stream;charset=UTF-8" if sse else "application/json"})
        response.raw = io.BytesIO(self.stream_body if sse else DASHSCOPE_BODY)
        response.encoding = "utf-8"
        response.url = request.url
        response.request = request
        response.reason = "OK"
        return response

    def close(self) -> None:
        pass


def mount_dashscope(chunks: int = 100) -> None:
    """Route the DashScope SDK's shared session to the canned adapter for the real endpoint prefix."""
    import dashscope
    from dashscope.api_entities import http_request

    dashscope.api_key = "bench"
    dashscope.base_http_api_url = DASHSCOPE_BASE
    # requests picks the longest matching prefix, so this wins over the SDK's own "https://" adapter.
    http_request._get_shared_sync_session().mount(DASHSCOPE_BASE, CannedDashScopeAdapter(chunks))
