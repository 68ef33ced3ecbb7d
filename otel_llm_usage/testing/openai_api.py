# SPDX-License-Identifier: Apache-2.0
"""OpenAI-compatible routes of the loopback server.

Served under ``/v1``, ``/openai/v1``, ``/compatible-mode/v1`` (DashScope's
OpenAI-compatible mode) and ``/openai/deployments/{deployment}`` (Azure,
where the deployment name stands in for a missing ``model``):

* ``POST chat/completions`` - JSON or SSE (``stream_options.include_usage``)
* ``POST responses``        - JSON or the typed ``response.*`` SSE events; with the
  ``tool_call`` scenario, a ``function_call`` to the first function tool until a tool result
  comes back
* ``POST embeddings``       - float or base64 (the SDK's default) vectors
* ``POST completions``      - legacy text completions, JSON or SSE
* ``GET  models``

Shapes follow the openai 3.x SDK models; only fields the SDK helpers read
(plus usage) are filled in.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .scenarios import Scenario, UsageNumber, count_words, fake_vector, filler_words, iter_texts
from .server import Exchange, Route, SSEWriter

_PREFIXES = (
    r"/v1",
    r"/openai/v1",
    r"/compatible-mode/v1",
    r"/openai/deployments/(?P<deployment>[^/]+)",
)

# (error type, error code) per status, as the real API labels them.
_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    409: ("invalid_request_error", "conflict"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}

EMBEDDING_DIMENSIONS = 8


def render_error(status: int, message: str) -> dict[str, Any]:
    kind, code = _ERRORS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def routes() -> list[Route]:
    endpoints: list[tuple[str, str, Callable[[Exchange], None]]] = [
        ("POST", "/chat/completions", chat_completions),
        ("POST", "/responses", responses),
        ("POST", "/embeddings", embeddings),
        ("POST", "/completions", completions),
        ("GET", "/models", models),
    ]
    return [
        Route(method, re.compile(prefix + suffix), handler, render_error)
        for prefix in _PREFIXES
        for method, suffix, handler in endpoints
    ]


# -- shared helpers ----------------------------------------------------------


def _model(ex: Exchange) -> str:
    return ex.scenario.model or ex.body.get("model") or ex.params.get("deployment") or "loopback-model"


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


# Where prompt text lives in OpenAI bodies: message/item ``content``, text
# parts' ``text`` and tool results' ``output``.
_TEXT_KEYS = ("content", "text", "output")


def _texts(value: Any) -> Iterator[str]:
    return iter_texts(value, _TEXT_KEYS)


def _sample(schema: Any, defs: dict[str, Any], depth: int = 0) -> Any:
    """A minimal instance of a JSON schema, so ``parse()`` helpers validate."""
    if not isinstance(schema, dict) or depth > 10:
        return None
    if "$ref" in schema:
        return _sample(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs, depth + 1)
    for combinator in ("anyOf", "oneOf", "allOf"):
        if schema.get(combinator):
            return _sample(schema[combinator][0], defs, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        return {k: _sample(v, defs, depth + 1) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        return [_sample(schema["items"], defs, depth + 1)] if "items" in schema else []
    return {"integer": 1, "number": 1.0, "boolean": True, "null": None}.get(str(kind), "x")


def _reply_text(scenario: Scenario, schema: dict[str, Any] | None, json_object: bool = False) -> str:
    if schema is not None:
        return json.dumps(_sample(schema, schema.get("$defs") or schema.get("definitions") or {}))
    if json_object:
        return "{}"
    return " ".join(filler_words(scenario.words))


def _pieces(text: str) -> list[str]:
    """Stream deltas (one per word, whitespace kept) that concatenate to ``text``."""
    return re.findall(r"\s*\S+", text)


def _sse(payload: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload)}\n\n"


def _completion_usage(prompt: int, completion: int, scenario: Scenario) -> Callable[[UsageNumber], Any]:
    def build(n: UsageNumber) -> dict[str, Any]:
        return {
            "prompt_tokens": n(prompt),
            "completion_tokens": n(completion),
            "total_tokens": n(prompt + completion),
            "prompt_tokens_details": {"cached_tokens": n(scenario.cached), "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": n(scenario.reasoning),
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    return build


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _stream_completion(
    writer: SSEWriter,
    scenario: Scenario,
    base: dict[str, Any],
    choice_frames: Iterable[dict[str, Any]],
    include_usage: bool,
    usage: Callable[[UsageNumber], Any],
) -> None:
    """Chat and legacy completions share the chunk/usage-chunk/[DONE] framing.

    As OpenAI does, ``usage: null`` rides on every chunk when usage was
    requested, and one extra chunk with empty ``choices`` carries the totals."""
    with_usage = include_usage and not scenario.no_usage
    for choice in choice_frames:
        chunk = {**base, "choices": [choice]}
        if with_usage:
            chunk["usage"] = None
        writer.send(_sse(chunk))
    if with_usage:
        final: dict[str, Any] = {**base, "choices": []}
        scenario.attach_usage(final, "usage", usage)
        writer.send(_sse(final))
    writer.send("data: [DONE]\n\n")


# -- chat completions --------------------------------------------------------


def _chat_schema(body: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None, False
    if fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("schema") or {}, False
    return None, fmt.get("type") == "json_object"


def chat_completions(ex: Exchange) -> None:
    body, scenario = ex.body, ex.scenario
    schema, json_object = _chat_schema(body)
    pieces = _pieces(_reply_text(scenario, schema, json_object))
    prompt = scenario.input_tokens(count_words(_texts(body.get("messages"))))
    usage = _completion_usage(prompt, scenario.output_tokens(len(pieces)), scenario)
    base = {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": _model(ex),
        "system_fingerprint": "fp_loopback",
    }

    if not body.get("stream"):
        message = {"role": "assistant", "content": "".join(pieces), "refusal": None}
        reply = {
            **base,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        }
        scenario.attach_usage(reply, "usage", usage)
        ex.send_json(reply)
        return

    def frames() -> Iterator[dict[str, Any]]:
        for i, piece in enumerate(pieces or [""]):
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            yield {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        yield {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}

    base["object"] = "chat.completion.chunk"
    _stream_completion(ex.open_sse(), scenario, base, frames(), _include_usage(body), usage)


# -- legacy completions ------------------------------------------------------


def completions(ex: Exchange) -> None:
    body, scenario = ex.body, ex.scenario
    pieces = _pieces(_reply_text(scenario, None))
    prompt = scenario.input_tokens(count_words(_texts(body.get("prompt"))))
    usage = _completion_usage(prompt, scenario.output_tokens(len(pieces)), scenario)
    base = {
        "id": _new_id("cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": _model(ex),
    }

    if not body.get("stream"):
        reply = {
            **base,
            "choices": [{"index": 0, "text": "".join(pieces), "logprobs": None, "finish_reason": "stop"}],
        }
        scenario.attach_usage(reply, "usage", usage)
        ex.send_json(reply)
        return

    def frames() -> Iterator[dict[str, Any]]:
        for piece in pieces:
            yield {"index": 0, "text": piece, "logprobs": None, "finish_reason": None}
        yield {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}

    _stream_completion(ex.open_sse(), scenario, base, frames(), _include_usage(body), usage)


# -- embeddings --------------------------------------------------------------


def embeddings(ex: Exchange) -> None:
    body, scenario = ex.body, ex.scenario
    raw = body.get("input")
    # A flat list of ints is one tokenized input, not many inputs.
    inputs = raw if isinstance(raw, list) and not all(isinstance(v, int) for v in raw) else [raw]
    dims = body.get("dimensions") or EMBEDDING_DIMENSIONS
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index in range(len(inputs)):
        vector = fake_vector(index, dims)
        # The SDK asks for base64 float32 by default and decodes it itself.
        encoded: Any = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode() if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    prompt = scenario.input_tokens(count_words(_texts(raw)))
    reply: dict[str, Any] = {"object": "list", "data": data, "model": _model(ex)}
    scenario.attach_usage(reply, "usage", lambda n: {"prompt_tokens": n(prompt), "total_tokens": n(prompt)})
    ex.send_json(reply)


# -- models ------------------------------------------------------------------


def models(ex: Exchange) -> None:
    ex.send_json(
        {
            "object": "list",
            "data": [{"id": "loopback-model", "object": "model", "created": 0, "owned_by": "loopback"}],
        }
    )


# -- responses ---------------------------------------------------------------


def _responses_schema(body: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict):
        return None, False
    if fmt.get("type") == "json_schema":
        return fmt.get("schema") or {}, False
    return None, fmt.get("type") == "json_object"


def _function_call(body: dict[str, Any], scenario: Scenario) -> dict[str, Any] | None:
    """The ``function_call`` output item of a ``tool_call`` scenario, or None to answer with text.

    Arguments are a minimal instance of the tool's parameter schema (structure, like ``parse()``
    replies, never request content). Once the input carries a tool result, the loop is over."""
    if not scenario.tool_call:
        return None
    items = body.get("input")
    if isinstance(items, list) and any(isinstance(i, dict) and i.get("type") == "function_call_output" for i in items):
        return None
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("name"), str):
            params = tool.get("parameters") if isinstance(tool.get("parameters"), dict) else {}
            return {
                "type": "function_call",
                "id": _new_id("fc_"),
                "call_id": _new_id("call_"),
                "name": tool["name"],
                "arguments": json.dumps(_sample(params, params.get("$defs") or {}) if params else {}),
                "status": "completed",
            }
    return None


def responses(ex: Exchange) -> None:
    body, scenario = ex.body, ex.scenario
    call = _function_call(body, scenario)
    schema, json_object = _responses_schema(body)
    text = _reply_text(scenario, schema, json_object)
    pieces = _pieces(text)
    prompt = scenario.input_tokens(
        count_words([*_texts(body.get("input")), *_texts(body.get("instructions"))])
    )
    # A tool call bills the scenario's ``words`` as output, whatever its arguments' length.
    completion = scenario.output_tokens() if call else scenario.output_tokens(len(pieces))

    def usage(n: UsageNumber) -> dict[str, Any]:
        return {
            "input_tokens": n(prompt),
            "input_tokens_details": {"cached_tokens": n(scenario.cached), "cache_write_tokens": 0},
            "output_tokens": n(completion),
            "output_tokens_details": {"reasoning_tokens": n(scenario.reasoning)},
            "total_tokens": n(prompt + completion),
        }

    item_id = _new_id("msg_")
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    item = {"type": "message", "id": item_id, "status": "completed", "role": "assistant", "content": [part]}
    response: dict[str, Any] = {
        "id": _new_id("resp_"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": _model(ex),
        "output": [call or item],
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": {},
        "parallel_tool_calls": True,
        "temperature": 1.0,
        "top_p": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "text": body.get("text") or {"format": {"type": "text"}},
    }
    scenario.attach_usage(response, "usage", usage)
    if not body.get("stream"):
        ex.send_json(response)
        return

    writer = ex.open_sse()
    sequence = iter(range(1_000_000))

    def emit(kind: str, **payload: Any) -> None:
        writer.send(_sse({"type": kind, "sequence_number": next(sequence), **payload}, event=kind))

    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    emit("response.created", response=pending)
    emit("response.in_progress", response=pending)
    output = call or item
    where = {"item_id": output["id"], "output_index": 0}
    if call is not None:
        emit("response.output_item.added", output_index=0, item={**call, "status": "in_progress", "arguments": ""})
        for piece in _pieces(call["arguments"]):
            emit("response.function_call_arguments.delta", **where, delta=piece)
        emit("response.function_call_arguments.done", **where, arguments=call["arguments"])
    else:
        emit("response.output_item.added", output_index=0, item={**item, "status": "in_progress", "content": []})
        emit("response.content_part.added", **where, content_index=0, part={**part, "text": ""})
        for piece in pieces:
            emit("response.output_text.delta", **where, content_index=0, delta=piece, logprobs=[])
        emit("response.output_text.done", **where, content_index=0, text=text, logprobs=[])
        emit("response.content_part.done", **where, content_index=0, part=part)
    emit("response.output_item.done", output_index=0, item=output)
    emit("response.completed", response=response)
