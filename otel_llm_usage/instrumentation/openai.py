# SPDX-License-Identifier: Apache-2.0
"""OpenAI SDK (openai >= 1.40, incl. 3.x) request/response shapes.

Where the patch sits: on the client's ``request`` method (``SyncAPIClient`` /
``AsyncAPIClient`` in ``openai._base_client``), not on the resource methods. Every
way of reaching the API ends there exactly once per logical call: resource methods,
``with_raw_response`` / ``with_streaming_response`` (which add a header and call the
resource method), the stream and parse helpers (which call ``create`` / ``_post``),
a framework's direct ``client.post("/chat/completions", ...)`` (litellm), and
resource methods bound before ``instrument()`` (a bound method still calls
``self._client.request``, looked up on the class at call time). Retries run inside
``request`` (a loop in current SDKs, ``_retry_request`` → ``_request`` in 1.x), and
pagination calls it once per page of non-LLM paths, so a call is neither missed nor
counted twice. :data:`ROUTES` (data) says which ``POST`` paths are LLM calls; every
other request the client makes passes straight through.

One adapter reads every surface by shape: chat completions (``choices`` /
``delta``), Responses API (``output`` / typed stream events), legacy
completions (``choices[].text``) and embeddings (``usage`` only), from the
request body the SDK is about to send (``options.json_data`` plus ``extra_body``).

Streaming usage: when the caller streams a chat or legacy completion without
``stream_options``, we send ``stream_options={"include_usage": true}`` so the
API reports exact usage in one extra final chunk with empty ``choices``. That
chunk is consumed here and not passed on, so code that indexes
``chunk.choices[0]`` keeps working. A caller who asked for it gets it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from .. import _names as N
from ..usage import count_text, fields_of, normalize_usage, read_field
from .contract import CallSpec, RequestInfo, Router
from .invocation import Invocation
from .openai_streams import OPENAI_STREAM_PROXIES
from .providers import provider_from_endpoint

__all__ = ["ATTEMPT_HOOKS", "CLIENT_METHODS", "ROUTES", "OpenAIAdapter", "router"]

#: The client methods patched: (module, class, method, is_async).
CLIENT_METHODS: tuple[tuple[str, str, str, bool], ...] = (
    ("openai._base_client", "SyncAPIClient", "request", False),
    ("openai._base_client", "AsyncAPIClient", "request", True),
)

#: ``POST`` path suffix → (operation, Responses API). A suffix, because the client's base URL
#: carries any prefix (``/v1``, a gateway's ``/openai``) and Azure rewrites the path later.
ROUTES: dict[str, tuple[str, bool]] = {
    "/chat/completions": (N.OP_CHAT, False),
    "/responses": (N.OP_CHAT, True),
    "/completions": (N.OP_TEXT_COMPLETION, False),
    "/embeddings": (N.OP_EMBEDDINGS, False),
}

# Called once per HTTP attempt (retries included) in every openai version we support.
ATTEMPT_HOOKS: tuple[tuple[str, str, str], ...] = (("openai._base_client", "BaseClient", "_build_request"),)

_STREAM_USAGE_OPS = (N.OP_CHAT, N.OP_TEXT_COMPLETION)


# Request body keys that carry none of the options request_info reads.
# The SDK sends ``encoding_format`` on every embeddings request (base64 unless told otherwise).
_PLAIN_KEYS = frozenset({"model", "messages", "input", "prompt", "instructions", "stream", "stream_options",
                         "encoding_format"})


def _given(value: Any) -> bool:
    """False for None and the SDK's ``omit`` / ``NOT_GIVEN`` sentinels."""
    return value is not None and type(value).__name__ not in ("Omit", "NotGiven")


def _kw(kwargs: Mapping[str, Any], name: str) -> Any:
    value = kwargs.get(name)
    return value if _given(value) else None


def _options(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The ``FinalRequestOptions`` of ``request(cast_to, options, ...)``."""
    return args[1] if len(args) > 1 else kwargs.get("options")


def _body(options: Any) -> Mapping[str, Any]:
    """The JSON body about to be sent, ``extra_body`` merged over it as the SDK does."""
    body = getattr(options, "json_data", None)
    body = body if isinstance(body, Mapping) else {}
    extra = getattr(options, "extra_json", None)
    return {**body, **extra} if isinstance(extra, Mapping) and extra else body


def _path(options: Any) -> str | None:
    if str(getattr(options, "method", "")).lower() != "post":
        return None
    url = getattr(options, "url", None)
    if not isinstance(url, str):
        return None
    return (urlsplit(url).path if "://" in url else url.split("?", 1)[0]).rstrip("/")


def router(chat: OpenAIAdapter, responses: OpenAIAdapter) -> Router:
    """The :data:`ROUTES` lookup for the patched ``request`` methods."""
    specs: dict[str, CallSpec] = {
        suffix: CallSpec(responses if is_responses else chat, operation)
        for suffix, (operation, is_responses) in ROUTES.items()
    }
    cache: dict[str, CallSpec | None] = {}

    def route(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallSpec | None:
        path = _path(_options(args, kwargs))
        if path is None:
            return None
        try:
            return cache[path]
        except KeyError:
            pass
        # "/chat/completions" also ends with "/completions": the longest suffix wins.
        found = [suffix for suffix in specs if path.endswith(suffix)]
        spec = specs[max(found, key=len)] if found else None
        if len(cache) < 256:
            cache[path] = spec
        return spec

    return route


class OpenAIAdapter:
    stream_proxies = OPENAI_STREAM_PROXIES

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
    def _endpoint(self, client: Any) -> tuple[str, str | None, int | None]:
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
        body = _body(_options(args, kwargs))
        params: dict[str, Any] = {}
        span_attrs: dict[str, Any] = {}
        max_tokens = user = None
        if not _PLAIN_KEYS.issuperset(body):  # most calls send none of the options read below
            max_tokens = _kw(body, "max_completion_tokens") or _kw(body, "max_tokens") \
                or _kw(body, "max_output_tokens")
            for name, attr in (("temperature", N.GEN_AI_REQUEST_TEMPERATURE), ("top_p", N.GEN_AI_REQUEST_TOP_P)):
                value = _kw(body, name)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    span_attrs[attr] = float(value)
            if isinstance(body.get("enable_thinking"), bool):  # Qwen's extra_body switch
                params["enable_thinking"] = body["enable_thinking"]
            if _kw(body, "service_tier") == "flex":
                params["service_tier"] = "flex"
            user = _kw(body, "user")
            dimensions = _kw(body, "dimensions")
            if isinstance(dimensions, int) and not isinstance(dimensions, bool):
                span_attrs[N.GEN_AI_EMBEDDINGS_DIMENSION_COUNT] = dimensions
        if self.capture_content:
            captured = self._capture(body.get("messages") if _given(body.get("messages")) else
                                     _kw(body, "input") or _kw(body, "prompt"))
            if captured:
                span_attrs[N.GEN_AI_INPUT_MESSAGES] = captured
        return RequestInfo(
            provider=provider,
            request_model=_kw(body, "model"),
            stream=_kw(body, "stream") is True or kwargs.get("stream") is True,
            server_address=host,
            server_port=port,
            user=user if isinstance(user, str) and user else None,
            max_output_tokens=max_tokens if isinstance(max_tokens, int) else None,
            params=params,
            span_attributes=span_attrs,
        )

    def prepare(self, inv: Invocation, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        options = _options(args, kwargs)
        body = _body(options)
        changes: dict[str, Any] = {}
        if (self.stream_include_usage and inv.record.streamed and inv.record.operation in _STREAM_USAGE_OPS
                and not self.responses_api and not _given(body.get("stream_options"))):
            inv.expect_stream_usage(injected=True)
            changes["stream_options"] = {"include_usage": True}
        else:
            asked = body.get("stream_options")
            if isinstance(asked, Mapping) and asked.get("include_usage") is True:
                inv.expect_stream_usage(injected=False)
        if "downgraded_from" in inv.record.request_params:
            changes["model"] = inv.record.request_model
        if not changes or not isinstance(getattr(options, "json_data", None), Mapping):
            return args, kwargs
        # A copy: the caller's options object is reused by the SDK for retries of the original.
        sent = copy.copy(options)
        sent.json_data = {**options.json_data, **changes}
        if len(args) > 1:
            return (args[0], sent, *args[2:]), kwargs
        return args, {**kwargs, "options": sent}

    def input_text_size(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int]:
        body = _body(_options(args, kwargs))
        latin = cjk = 0
        for text in _texts(body.get("messages"), body.get("input"), body.get("prompt"),
                           body.get("instructions")):
            a, b = count_text(text)
            latin += a
            cjk += b
        return latin, cjk

    # -- response --------------------------------------------------------------
    def attach_stream(self, inv: Invocation, result: Any, wrap: Callable[[Invocation, Any], Any]) -> Any | None:
        return None  # OpenAI's helper streams iterate the proxied ``Stream`` itself

    def is_stream(self, inv: Invocation, result: Any) -> bool:
        return inv.record.streamed and (hasattr(result, "__next__") or hasattr(result, "__anext__"))

    def read_response(self, inv: Invocation, result: Any) -> None:
        if isinstance(result, (str, bytes)):
            result = json.loads(result)
        rec = inv.record
        get = fields_of(result).get
        tokens = normalize_usage(get("usage"))
        inv.set_usage(tokens)
        if tokens is None and not rec.streamed:
            # No usage (some gateways and self-hosted servers): the output estimate comes from the
            # answer itself, or a budget would count the input only and admit call after call.
            inv.set_output_text("".join(_answer_texts(result)))
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
        if choices and usage is None and inv.output.text_chunk_past_sample():
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
        return not inv.output.hides(usage is not None)

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
        texts = list(_answer_texts(result))
        if texts and inv.span.is_recording():
            inv.span.set_attribute(N.GEN_AI_OUTPUT_MESSAGES, self._capture(texts) or "")


def _answer_texts(result: Any) -> Iterator[str]:
    """What the model produced, as text: message content, refusals, tool-call arguments (chat);
    output text and function-call arguments (Responses API); the text of legacy completions."""
    for choice in read_field(result, "choices") or []:
        message = read_field(choice, "message")
        for text in (read_field(message, "content"), read_field(message, "refusal"), read_field(choice, "text")):
            if isinstance(text, str) and text:
                yield text
        for call in read_field(message, "tool_calls") or []:
            arguments = read_field(call, "function", "arguments")
            if isinstance(arguments, str):
                yield arguments
    for item in read_field(result, "output") or []:
        arguments = read_field(item, "arguments")
        if isinstance(arguments, str):
            yield arguments
        for part in read_field(item, "content") or []:
            text = read_field(part, "text")
            if isinstance(text, str):
                yield text


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
