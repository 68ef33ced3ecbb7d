# SPDX-License-Identifier: Apache-2.0
"""DashScope native-protocol routes of the loopback server (under ``/api/v1``).

Endpoints, and which dashscope 2.0.2 callers use them:

* ``POST services/aigc/text-generation/generation`` - ``Generation`` /
  ``AioGeneration`` and ``Client().chat.completions`` (native protocol)
* ``POST services/aigc/multimodal-generation/generation`` -
  ``MultiModalConversation`` and ``Client().multimodal.chat`` (also
  ``chat.completions`` when messages carry media parts)
* ``POST services/embeddings/text-embedding/text-embedding`` -
  ``TextEmbedding`` and ``Client().embeddings``
* ``POST apps/{app_id}/completion`` - ``Application`` and
  ``Client().apps.completions``

Requests are ``{"model", "input": {...}, "parameters": {...}}``; replies are
``{"request_id", "output": {...}, "usage": {...}}``. Streaming is chosen by
the ``X-DashScope-SSE: enable`` / ``Accept: text/event-stream`` request
headers (``stream`` never appears in the body) and uses frames of the form
``id:N`` / ``event:result`` / ``:HTTP_STATUS/200`` / ``data:{json}``.
Streamed usage is cumulative: every frame reports the totals so far.

``Client(protocol="openai", base_url=<url>/compatible-mode/v1)`` uses the
OpenAI-compatible routes in :mod:`.openai_api` instead.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

from .scenarios import Scenario, UsageNumber, count_words, fake_vector, filler_words, iter_texts
from .server import Exchange, Route, SSEWriter, not_found

_PREFIX = "/api/v1"

# Provider error codes per HTTP status, as the real service labels them.
_CODES = {
    400: "InvalidParameter",
    401: "InvalidApiKey",
    403: "AccessDenied",
    404: "Model.NotExist",
    429: "Throttling.RateQuota",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}

# Where prompt text lives in a native ``input``.
_TEXT_KEYS = ("prompt", "messages", "history", "content", "text", "texts", "user", "bot")

IMAGE_TOKENS_PER_IMAGE = 100
EMBEDDING_DIMENSIONS = 8
# Application calls report per-model usage; by default a router step on the
# small model precedes generation on the large one.
APP_MODELS = ("qwen-plus", "qwen-turbo")


def _request_id() -> str:
    return str(uuid.uuid4())


def render_error(status: int, message: str) -> dict[str, Any]:
    code = _CODES.get(status, "InternalError" if status >= 500 else "InvalidParameter")
    return {"request_id": _request_id(), "code": code, "message": message}


def routes() -> list[Route]:
    endpoints: list[tuple[str, Callable[[Exchange], None]]] = [
        ("/services/aigc/text-generation/generation", text_generation),
        ("/services/aigc/multimodal-generation/generation", multimodal_generation),
        ("/services/embeddings/text-embedding/text-embedding", text_embedding),
        ("/apps/(?P<app_id>[^/]+)/completion", application),
    ]
    table = [Route("POST", re.compile(_PREFIX + path), handler, render_error) for path, handler in endpoints]
    # Anything else under the native prefix gets a DashScope-shaped 404.
    table.append(Route("*", re.compile(_PREFIX + "/.*"), not_found, render_error))
    return table


# -- shared helpers ----------------------------------------------------------


def _wants_stream(ex: Exchange) -> bool:
    return ex.header("X-DashScope-SSE").lower() == "enable" or "text/event-stream" in ex.header("Accept")


def _parameters(ex: Exchange) -> dict[str, Any]:
    params = ex.body.get("parameters")
    return params if isinstance(params, dict) else {}


def _input(ex: Exchange) -> Any:
    return ex.body.get("input") or {}


def _frame(event_id: int, payload: Any, event: str = "result", status: int = 200) -> str:
    return f"id:{event_id}\nevent:{event}\n:HTTP_STATUS/{status}\ndata:{json.dumps(payload)}\n\n"


def _token_usage(
    scenario: Scenario,
    prompt: int,
    output: int,
    extra: Callable[[UsageNumber], dict[str, Any]] | None = None,
) -> Callable[[UsageNumber], dict[str, Any]]:
    """Native usage: details appear only when non-zero, as the service does."""

    def build(n: UsageNumber) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "input_tokens": n(prompt),
            "output_tokens": n(output),
            "total_tokens": n(prompt + output),
        }
        if scenario.cached:
            usage["prompt_tokens_details"] = {"cached_tokens": n(scenario.cached)}
        if scenario.reasoning:
            usage["output_tokens_details"] = {"reasoning_tokens": n(scenario.reasoning)}
        if extra is not None:
            usage.update(extra(n))
        return usage

    return build


def _stream(
    ex: Exchange,
    words: list[str],
    render: Callable[[str, bool], dict[str, Any]],
    usage_at: Callable[[int], Callable[[UsageNumber], Any]],
) -> None:
    """Stream one frame per word, then a final ``stop`` frame.

    ``render(text, finished)`` builds ``output`` from the text this frame
    carries: only the new word with ``incremental_output`` true, otherwise
    the whole text so far. ``usage_at(k)`` is the cumulative usage after k
    words."""
    incremental = _parameters(ex).get("incremental_output") is True
    request_id = _request_id()
    writer: SSEWriter = ex.open_sse()
    sent: list[str] = []
    frames = [(w, False) for w in (" " + w if i else w for i, w in enumerate(words))] + [("", True)]
    for event_id, (piece, finished) in enumerate(frames, start=1):
        sent.append(piece)
        text = piece if incremental else "".join(sent)
        payload: dict[str, Any] = {"output": render(text, finished)}
        ex.scenario.attach_usage(payload, "usage", usage_at(len(sent) - (1 if finished else 0)))
        payload["request_id"] = request_id
        writer.send(_frame(event_id, payload))
        if event_id == 1 and ex.scenario.sse_error:
            error = {
                "request_id": request_id,
                "code": "InternalError",
                "message": "loopback scenario sse_error",
            }
            writer.send(_frame(event_id + 1, error, event="error", status=500))
            return


def _reply(ex: Exchange, output: dict[str, Any], usage: Callable[[UsageNumber], Any]) -> None:
    payload: dict[str, Any] = {"request_id": _request_id(), "output": output}
    ex.scenario.attach_usage(payload, "usage", usage)
    ex.send_json(payload)


# -- text generation ---------------------------------------------------------


def text_generation(ex: Exchange) -> None:
    scenario = ex.scenario
    words = filler_words(scenario.words)
    prompt = scenario.input_tokens(count_words(iter_texts(_input(ex), _TEXT_KEYS)))
    as_message = _parameters(ex).get("result_format") == "message"

    def render(text: str, finished: bool) -> dict[str, Any]:
        reason = "stop" if finished else "null"
        if as_message:
            message = {"role": "assistant", "content": text}
            return {"choices": [{"finish_reason": reason, "message": message}]}
        return {"text": text, "finish_reason": reason}

    def usage_at(k: int) -> Callable[[UsageNumber], Any]:
        return _token_usage(scenario, prompt, scenario.output_tokens(k))

    if _wants_stream(ex):
        _stream(ex, words, render, usage_at)
    else:
        _reply(ex, render(" ".join(words), True), usage_at(len(words)))


# -- multimodal generation ---------------------------------------------------


def _count_images(value: Any) -> int:
    if isinstance(value, list):
        return sum(_count_images(v) for v in value)
    if isinstance(value, dict):
        own = 1 if isinstance(value.get("image"), str) else 0
        return own + sum(_count_images(v) for k, v in value.items() if k in ("messages", "content"))
    return 0


def multimodal_generation(ex: Exchange) -> None:
    scenario = ex.scenario
    words = filler_words(scenario.words)
    text_tokens = scenario.input_tokens(count_words(iter_texts(_input(ex), _TEXT_KEYS)))
    image_tokens = IMAGE_TOKENS_PER_IMAGE * _count_images(_input(ex))

    def render(text: str, finished: bool) -> dict[str, Any]:
        message = {"role": "assistant", "content": [{"text": text}]}
        return {"choices": [{"finish_reason": "stop" if finished else "null", "message": message}]}

    def image_usage(n: UsageNumber) -> dict[str, Any]:
        return {
            "image_tokens": n(image_tokens),
            "input_tokens_details": {"image_tokens": n(image_tokens), "text_tokens": n(text_tokens)},
        }

    def usage_at(k: int) -> Callable[[UsageNumber], Any]:
        return _token_usage(scenario, text_tokens + image_tokens, scenario.output_tokens(k), image_usage)

    if _wants_stream(ex):
        _stream(ex, words, render, usage_at)
    else:
        _reply(ex, render(" ".join(words), True), usage_at(len(words)))


# -- text embedding ----------------------------------------------------------


def text_embedding(ex: Exchange) -> None:
    texts = _input(ex).get("texts") if isinstance(_input(ex), dict) else None
    texts = texts if isinstance(texts, list) else [texts]
    dims = _parameters(ex).get("dimension") or EMBEDDING_DIMENSIONS
    vectors = [{"text_index": i, "embedding": fake_vector(i, dims)} for i in range(len(texts))]
    tokens = ex.scenario.input_tokens(count_words(iter_texts(texts, _TEXT_KEYS)))
    _reply(ex, {"embeddings": vectors}, lambda n: {"total_tokens": n(tokens)})


# -- applications ------------------------------------------------------------


def application(ex: Exchange) -> None:
    scenario = ex.scenario
    words = filler_words(scenario.words)
    prompt = scenario.input_tokens(count_words(iter_texts(_input(ex), _TEXT_KEYS)))
    session_id = uuid.uuid4().hex

    def render(text: str, finished: bool) -> dict[str, Any]:
        return {"text": text, "finish_reason": "stop" if finished else "null", "session_id": session_id}

    def usage_at(k: int) -> Callable[[UsageNumber], Any]:
        # The router step has finished before generation starts, so only the
        # generating model's output count grows while streaming.
        def build(n: UsageNumber) -> dict[str, Any]:
            if scenario.model:
                steps = [(scenario.model, scenario.output_tokens(k))]
            else:
                steps = [(APP_MODELS[0], scenario.output_tokens(k)), (APP_MODELS[1], 1)]
            return {
                "models": [
                    {"model_id": name, "input_tokens": n(prompt), "output_tokens": n(out)}
                    for name, out in steps
                ]
            }

        return build

    if _wants_stream(ex):
        _stream(ex, words, render, usage_at)
    else:
        _reply(ex, render(" ".join(words), True), usage_at(len(words)))
