# SPDX-License-Identifier: Apache-2.0
"""OpenAI SDK (openai >= 1.40, incl. 3.x) request/response shapes.

One adapter reads every surface by shape: chat completions (``choices`` /
``delta``), Responses API (``output`` / typed stream events), legacy
completions (``choices[].text``) and embeddings (``usage`` only). The list of
patched methods is data (:data:`METHODS`); a method missing from the
installed SDK version is skipped.

Streaming usage: when the caller streams a chat or legacy completion without
``stream_options``, we send ``stream_options={"include_usage": true}`` so the
API reports exact usage in one extra final chunk with empty ``choices``. That
chunk is consumed here and not passed on, so code that indexes
``chunk.choices[0]`` keeps working. A caller who asked for it gets it.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from .. import _names as N
from ..usage import count_text, fields_of, normalize_usage, read_field
from .lifecycle import OUTPUT_TEXT_SAMPLE_CHUNKS, Invocation, RequestInfo
from .providers import provider_from_endpoint

__all__ = ["ATTEMPT_HOOKS", "METHODS", "Method", "OpenAIAdapter"]

class Method(NamedTuple):
    module: str
    cls: str
    name: str
    operation: str
    is_async: bool
    responses_api: bool = False


_CHAT = "openai.resources.chat.completions"
_BETA_CHAT = "openai.resources.beta.chat.completions"
_RESP = "openai.resources.responses"
METHODS: tuple[Method, ...] = (
    Method(_CHAT, "Completions", "create", N.OP_CHAT, False),
    Method(_CHAT, "AsyncCompletions", "create", N.OP_CHAT, True),
    Method(_CHAT, "Completions", "parse", N.OP_CHAT, False),
    Method(_CHAT, "AsyncCompletions", "parse", N.OP_CHAT, True),
    # openai < 1.92 kept parse under beta; newer ones delegate, which the re-entrancy guard absorbs.
    Method(_BETA_CHAT, "Completions", "parse", N.OP_CHAT, False),
    Method(_BETA_CHAT, "AsyncCompletions", "parse", N.OP_CHAT, True),
    Method(_RESP, "Responses", "create", N.OP_CHAT, False, True),
    Method(_RESP, "AsyncResponses", "create", N.OP_CHAT, True, True),
    Method(_RESP, "Responses", "parse", N.OP_CHAT, False, True),
    Method(_RESP, "AsyncResponses", "parse", N.OP_CHAT, True, True),
    Method("openai.resources.completions", "Completions", "create", N.OP_TEXT_COMPLETION, False),
    Method("openai.resources.completions", "AsyncCompletions", "create", N.OP_TEXT_COMPLETION, True),
    Method("openai.resources.embeddings", "Embeddings", "create", N.OP_EMBEDDINGS, False),
    Method("openai.resources.embeddings", "AsyncEmbeddings", "create", N.OP_EMBEDDINGS, True),
)

# Called once per HTTP attempt (retries included) in every openai version we support.
ATTEMPT_HOOKS: tuple[tuple[str, str, str], ...] = (("openai._base_client", "BaseClient", "_build_request"),)

_STREAM_USAGE_OPS = (N.OP_CHAT, N.OP_TEXT_COMPLETION)


# Request arguments that carry none of the options request_info reads.
_PLAIN_KEYS = frozenset({"model", "messages", "input", "prompt", "instructions", "stream", "stream_options",
                         "extra_headers", "extra_query", "timeout"})


def _given(value: Any) -> bool:
    """False for None and the SDK's ``omit`` / ``NOT_GIVEN`` sentinels."""
    return value is not None and type(value).__name__ not in ("Omit", "NotGiven")


def _kw(kwargs: dict[str, Any], name: str) -> Any:
    value = kwargs.get(name)
    return value if _given(value) else None


class OpenAIAdapter:
    def __init__(self, *, provider_hosts: dict[str, str] | None = None, capture_content: bool = False,
                 capture_max_chars: int = 4096, stream_include_usage: bool = True,
                 responses_api: bool = False) -> None:
        self.provider_hosts = provider_hosts or {}
        self.capture_content = capture_content
        self.capture_max_chars = capture_max_chars
        self.stream_include_usage = stream_include_usage
        self.responses_api = responses_api
        self._endpoint_cache: dict[tuple[str, str], tuple[str, str | None, int | None]] = {}
        self._url_cache: dict[int, tuple[Any, str, tuple[str, str | None, int | None]]] = {}

    # -- request ---------------------------------------------------------------
    def _endpoint(self, instance: Any) -> tuple[str, str | None, int | None]:
        client = getattr(instance, "_client", None)
        base_url = getattr(client, "base_url", None)
        client_type = type(client).__name__
        # By the URL object's identity (str() of an httpx URL costs a microsecond per call); the
        # object is kept in the entry, so its id cannot be reused while the entry exists.
        cached = self._url_cache.get(id(base_url))
        if cached is not None and cached[0] is base_url and cached[1] == client_type:
            return cached[2]
        key = (client_type, str(base_url))
        hit = self._endpoint_cache.get(key)
        if hit is not None:
            if len(self._url_cache) < 256:
                self._url_cache[id(base_url)] = (base_url, client_type, hit)
            return hit
        host = getattr(base_url, "host", None)
        port = getattr(base_url, "port", None)
        scheme = getattr(base_url, "scheme", "https")
        if port is None and host:
            port = 443 if scheme == "https" else 80
        path = str(getattr(base_url, "path", "") or "")
        if "Azure" in client_type:
            # The client class says Azure whatever host fronts it (custom domains, gateways, loopback).
            provider = "azure.ai.openai"
        else:
            provider = provider_from_endpoint(host, port, path, overrides=self.provider_hosts)
        result = (provider, host, port)
        if len(self._endpoint_cache) < 256:
            self._endpoint_cache[key] = result
        return result

    def request_info(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> RequestInfo:
        provider, host, port = self._endpoint(instance)
        params: dict[str, Any] = {}
        span_attrs: dict[str, Any] = {}
        max_tokens = user = None
        if not _PLAIN_KEYS.issuperset(kwargs):  # most calls pass none of the options read below
            max_tokens = _kw(kwargs, "max_completion_tokens") or _kw(kwargs, "max_tokens") \
                or _kw(kwargs, "max_output_tokens")
            for name, attr in (("temperature", N.GEN_AI_REQUEST_TEMPERATURE), ("top_p", N.GEN_AI_REQUEST_TOP_P)):
                value = _kw(kwargs, name)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    span_attrs[attr] = float(value)
            extra_body = _kw(kwargs, "extra_body")
            if isinstance(extra_body, dict) and isinstance(extra_body.get("enable_thinking"), bool):
                params["enable_thinking"] = extra_body["enable_thinking"]
            if _kw(kwargs, "service_tier") == "flex":
                params["service_tier"] = "flex"
            user = _kw(kwargs, "user")
        if self.capture_content:
            captured = self._capture(kwargs.get("messages") if _given(kwargs.get("messages")) else
                                     _kw(kwargs, "input") or _kw(kwargs, "prompt"))
            if captured:
                span_attrs[N.GEN_AI_INPUT_MESSAGES] = captured
        return RequestInfo(
            provider=provider,
            request_model=_kw(kwargs, "model"),
            stream=_kw(kwargs, "stream") is True,
            server_address=host,
            server_port=port,
            user=user if isinstance(user, str) and user else None,
            max_output_tokens=max_tokens if isinstance(max_tokens, int) else None,
            params=params,
            span_attributes=span_attrs,
        )

    def prepare(self, inv: Invocation, kwargs: dict[str, Any]) -> dict[str, Any]:
        if (self.stream_include_usage and inv.record.streamed and inv.record.operation in _STREAM_USAGE_OPS
                and not self.responses_api and not _given(kwargs.get("stream_options"))):
            inv.stream_usage_injected = inv.usage_expected = True
            return {**kwargs, "stream_options": {"include_usage": True}}
        options = kwargs.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            inv.usage_expected = True
        return kwargs

    def input_text_size(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int]:
        latin = cjk = 0
        for text in _texts(kwargs.get("messages"), kwargs.get("input"), kwargs.get("prompt"),
                           kwargs.get("instructions")):
            a, b = count_text(text)
            latin += a
            cjk += b
        return latin, cjk

    # -- response --------------------------------------------------------------
    def is_stream(self, inv: Invocation, result: Any) -> bool:
        return inv.record.streamed and (hasattr(result, "__next__") or hasattr(result, "__anext__"))

    def read_response(self, inv: Invocation, result: Any) -> None:
        if isinstance(result, (str, bytes)):
            result = json.loads(result)
        rec = inv.record
        get = fields_of(result).get
        inv.set_usage(normalize_usage(get("usage")))
        model = get("model")
        if isinstance(model, str):
            rec.response_model = model
        rid = get("id")
        if isinstance(rid, str):
            rec.response_id = rid
        choices = get("choices")
        if isinstance(choices, list):
            rec.finish_reasons = tuple(str(r) for c in choices if (r := read_field(c, "finish_reason")))
        status = get("status")
        if isinstance(status, str) and get("output") is not None:
            rec.finish_reasons = (status,)
            if status == "failed":
                code = read_field(result, "error", "code")
                inv.mark_error(str(code) if code else "response_failed")
        if self.capture_content:
            self._capture_output(inv, result)

    def on_chunk(self, inv: Invocation, chunk: Any) -> bool:
        if self.responses_api:
            event_type = read_field(chunk, "type")
            if isinstance(event_type, str) and event_type.startswith("response."):
                return self._on_response_event(inv, chunk, event_type)
        # The per-chunk path of every chat stream. SDK chunks are pydantic models whose fields sit in
        # ``__dict__``: read them there directly (a function call per field costs more than the read);
        # anything else (dicts, odd shapes) takes the general ``read_field`` path.
        rec = inv.record
        try:
            fields = chunk.__dict__
            usage, choices = fields["usage"], fields["choices"]
        except (AttributeError, KeyError):
            usage, choices = read_field(chunk, "usage"), read_field(chunk, "choices")
        if choices and usage is None:
            inv.output_chunks += 1
            if inv.usage_expected and inv.output_chunks > OUTPUT_TEXT_SAMPLE_CHUNKS:
                # Usage arrives in the last chunk; the text sample only backs an estimate if it
                # never does (see Invocation._estimate_usage). Past it, only finish reasons matter.
                for choice in choices:
                    try:
                        reason = choice.__dict__["finish_reason"]
                    except (AttributeError, KeyError):
                        reason = read_field(choice, "finish_reason")
                    if reason:
                        rec.finish_reasons = (*rec.finish_reasons, str(reason))
                return True
        if rec.response_model is None:
            model = read_field(chunk, "model")
            if isinstance(model, str) and model:
                rec.response_model = model
            rid = read_field(chunk, "id")
            if isinstance(rid, str):
                rec.response_id = rid
        if usage is not None:
            inv.set_usage(normalize_usage(usage))
        if choices:
            for choice in choices:
                try:
                    parts = choice.__dict__
                    delta, reason = parts["delta"], parts["finish_reason"]
                    text = delta.__dict__["content"] if delta is not None else None
                except (AttributeError, KeyError):
                    delta, reason = read_field(choice, "delta"), read_field(choice, "finish_reason")
                    text = read_field(delta, "content") if delta is not None else read_field(choice, "text")
                if text:
                    inv.add_output_text(text)
                if reason:
                    rec.finish_reasons = (*rec.finish_reasons, str(reason))
            return True
        # The usage-only chunk that exists because we asked for it: hide it.
        return not (inv.stream_usage_injected and usage is not None)

    def _on_response_event(self, inv: Invocation, event: Any, event_type: str) -> bool:
        if event_type == "response.output_text.delta":
            inv.add_output_text(read_field(event, "delta"))
        elif event_type in ("response.created", "response.completed", "response.incomplete", "response.failed"):
            response = read_field(event, "response")
            if response is not None:
                self.read_response(inv, response)
        return True

    # -- content capture (opt-in) ------------------------------------------------
    def _capture(self, value: Any) -> str | None:
        if value is None:
            return None
        try:
            text = json.dumps(value, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            text = str(value)
        return text[: self.capture_max_chars]

    def _capture_output(self, inv: Invocation, result: Any) -> None:
        texts = []
        for choice in read_field(result, "choices") or []:
            texts.append(read_field(choice, "message", "content") or read_field(choice, "text") or "")
        output_text = getattr(result, "output_text", None)  # a property of Response, not a field
        if isinstance(output_text, str):
            texts.append(output_text)
        if texts and inv.span.is_recording():
            inv.span.set_attribute(N.GEN_AI_OUTPUT_MESSAGES, self._capture(texts) or "")


def _texts(*values: Any) -> list[str]:
    """Every string inside messages/input/prompt, however nested (text parts, lists)."""
    out: list[str] = []
    stack = [v for v in values if _given(v)]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict):
            for key in ("content", "text", "input_text"):
                if key in value:
                    stack.append(value[key])
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
        elif hasattr(value, "model_dump"):
            stack.append(value.model_dump())
    return out
