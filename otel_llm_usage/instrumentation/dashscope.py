# SPDX-License-Identifier: Apache-2.0
"""DashScope SDK (Alibaba Qwen, ``dashscope`` >= 1.x incl. 2.x) request/response shapes.

Nothing here imports ``dashscope``: the patched methods are data
(:data:`SURFACES`, module paths where each method is *defined*) and a method
missing from the installed SDK is skipped by the instrumentor::

    from otel_llm_usage.instrumentor import LLMUsageInstrumentor
    LLMUsageInstrumentor().instrument()          # patches dashscope if importable

    import dashscope
    dashscope.Generation.call(model="qwen-plus", prompt="...")             # classic API
    dashscope.Client().chat.completions.create(model="qwen-plus", messages=[...])  # 2.x client

Shape rules this adapter relies on (dashscope 2.0.2):

* The classic API *returns* errors (``status_code != 200`` with a ``code``),
  also as frames inside a stream; the 2.x client raises them unless
  ``raise_on_error=False``, where it returns them with ``is_error``. A returned
  error is recorded with ``error.type`` = its ``code``; its ``message`` is never
  read (it can echo request content).
* Streamed usage is cumulative: every chunk carries the totals so far, so the
  latest one wins. ``finish_reason`` is the string ``"null"`` mid-stream.
* Classic ``from_api_response`` turns absent usage into zeros, and 2.x models
  default every counter to 0: an all-zero usage means "not reported", so the
  lifecycle estimates instead of recording a free call.
* Applications report ``usage.models[]`` (2.x keeps zero top-level totals):
  one record per model via :meth:`Invocation.set_model_usages`.
* Native responses carry no model name: the request model is the label.
* The server address comes from the base URL the call actually used
  (``base_address`` kwarg or ``dashscope.base_http_api_url`` for the classic
  API, the client's base URL for 2.x), so pricing can tell the China
  endpoint (CNY) from ``dashscope-intl`` (USD).

* 2.x ``stream=True`` returns ``ChatStream`` / ``AppStream`` objects whose
  helpers (``text_stream``, ``get_final_message``) read an inner SSE stream
  (``_inner``) directly; :meth:`DashScopeAdapter.attach_stream` puts the shared
  stream proxy *there*, so every helper's chunks pass through it.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from .. import _names as N
from ..config import Config
from ..usage import TokenUsage, count_text, normalize_usage, read_field, safe_int
from .contract import CallSpec, RequestInfo
from .invocation import Invocation
from .streams import STREAM_PROXIES

__all__ = ["PROVIDER", "SURFACES", "DashScopeAdapter", "Surface", "server_from_url", "targets"]

PROVIDER = "dashscope"
# 2.x stream objects that hold the SSE stream in ``_inner`` (dashscope/v2/resources/chat/completions.py, apps.py).
_STREAM_HOLDERS = frozenset({"ChatStream", "AsyncChatStream", "AppStream", "AsyncAppStream"})


class Surface(NamedTuple):
    """One SDK surface: the method name on its sync class and, when it has one, its async twin."""

    module: str
    sync_cls: str
    async_cls: str | None
    method: str
    operation: str


SURFACES: tuple[Surface, ...] = (
    # Classic API: classmethods, patched on the classes that define them.
    Surface("dashscope.aigc.generation", "Generation", "AioGeneration", "call", N.OP_CHAT),
    Surface("dashscope.aigc.multimodal_conversation", "MultiModalConversation", "AioMultiModalConversation",
            "call", N.OP_CHAT),
    Surface("dashscope.embeddings.text_embedding", "TextEmbedding", None, "call", N.OP_EMBEDDINGS),
    # Application.call builds its request itself instead of going through BaseApi.call.
    Surface("dashscope.app.application", "Application", None, "call", N.OP_INVOKE_AGENT),
    # 2.x client resources (``dashscope.Client`` / ``AsyncClient``).
    Surface("dashscope.v2.resources.chat.completions", "Completions", "AsyncCompletions", "create",
            N.OP_CHAT),
    Surface("dashscope.v2.resources.multimodal.chat", "MultimodalChat", "AsyncMultimodalChat", "create",
            N.OP_CHAT),
    Surface("dashscope.v2.resources.embeddings", "Embeddings", "AsyncEmbeddings", "create", N.OP_EMBEDDINGS),
    Surface("dashscope.v2.resources.apps", "AppCompletions", "AsyncAppCompletions", "create",
            N.OP_INVOKE_AGENT),
)

# Where request text lives (DashScope ``input`` keys, message parts, legacy history turns).
_TEXT_KEYS = ("prompt", "messages", "history", "content", "text", "texts", "input", "user", "bot",
              "reasoning_content")
_NO_REASON = ("", "null", "None")


def targets(config: Config) -> list[tuple[str, str, str, bool, CallSpec]]:
    """(module, class, method, is_async, spec) for every DashScope surface.

    ``config`` is accepted for symmetry with the other providers; DashScope needs
    no options today (usage is always reported, there is nothing to inject).
    """
    del config
    adapter = DashScopeAdapter()
    out: list[tuple[str, str, str, bool, CallSpec]] = []
    for s in SURFACES:
        spec = CallSpec(adapter, s.operation)
        out.append((s.module, s.sync_cls, s.method, False, spec))
        if s.async_cls:
            out.append((s.module, s.async_cls, s.method, True, spec))
    return out


class DashScopeAdapter:
    """Reads every DashScope surface by shape: classic DictMixin responses and 2.x pydantic models."""

    stream_proxies = STREAM_PROXIES

    # -- request ---------------------------------------------------------------
    def request_info(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> RequestInfo:
        v2 = _is_v2(instance)
        host, port = _endpoint(instance, kwargs, v2)
        # 2.x takes extra knobs in ``parameters``; the classic API takes them as kwargs.
        extra = kwargs.get("parameters")
        extra = extra if isinstance(extra, dict) else {}

        def option(name: str) -> Any:
            value = kwargs.get(name)
            return extra.get(name) if value is None else value

        stream = option("stream") is True
        params: dict[str, Any] = {}
        if isinstance(option("enable_thinking"), bool):
            params["enable_thinking"] = option("enable_thinking")
        if stream:
            # What the chunks this proxy sees will hold. The classic API streams full text so
            # far unless asked for increments (and merges client-side when told False); 2.x
            # streams increments unless told False, then yields cumulative snapshots.
            asked = option("incremental_output")
            params["incremental_output"] = asked is not False if v2 else asked is True
        span_attrs: dict[str, Any] = {}
        for name, attr in (("temperature", N.GEN_AI_REQUEST_TEMPERATURE), ("top_p", N.GEN_AI_REQUEST_TOP_P)):
            value = option(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                span_attrs[attr] = float(value)
        dimension = option("dimension")
        if isinstance(dimension, int) and not isinstance(dimension, bool):
            span_attrs[N.GEN_AI_EMBEDDINGS_DIMENSION_COUNT] = dimension
        max_tokens = safe_int(option("max_tokens"))
        # An application's first argument is its id, not a model; its models come back in usage.
        model = None if _is_app(instance) else kwargs.get("model", args[0] if args else None)
        return RequestInfo(
            provider=PROVIDER,
            request_model=model if isinstance(model, str) and model else None,
            stream=stream,
            server_address=host,
            server_port=port,
            max_output_tokens=max_tokens,
            params=params,
            span_attributes=span_attrs,
        )

    def prepare(self, inv: Invocation, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        # Native responses always carry usage: nothing to ask for. Only a budget downgrade
        # changes the request, in whichever place the caller put the model.
        if "downgraded_from" not in inv.record.request_params:
            return args, kwargs
        model = inv.record.request_model
        if "model" not in kwargs and args and isinstance(args[0], str):
            return (model, *args[1:]), kwargs
        return args, {**kwargs, "model": model}

    def input_text_size(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int]:
        # The second positional argument is the prompt/messages/input on every classic ``call``.
        sizes = [count_text(text) for text in _strings([*args[1:2], *(kwargs.get(k) for k in _TEXT_KEYS)])]
        return sum(latin for latin, _ in sizes), sum(cjk for _, cjk in sizes)

    # -- response --------------------------------------------------------------
    def attach_stream(self, inv: Invocation, result: Any, wrap: Callable[[Invocation, Any], Any]) -> Any | None:
        """Proxy the inner stream of a 2.x stream object; ``None`` for anything else."""
        if not inv.record.streamed or type(result).__name__ not in _STREAM_HOLDERS:
            return None
        inner = getattr(result, "_inner", None)
        if inner is None:
            return None
        result._inner = wrap(inv, inner)
        return result

    def is_stream(self, inv: Invocation, result: Any) -> bool:
        # Classic streams are (async) generators; see the module notes for 2.x stream objects.
        return inv.record.streamed and isinstance(result, (Iterator, AsyncIterator))

    def read_response(self, inv: Invocation, result: Any) -> None:
        if self._read_error(inv, result):
            return
        self._read_usage(inv, result)
        inv.set_output_text("".join(_output_texts(result)))  # only used if no usage was reported
        rec = inv.record
        rid = read_field(result, "request_id")
        if isinstance(rid, str) and rid:
            rec.response_id = rid
        model = read_field(result, "model")
        if isinstance(model, str) and model:
            rec.response_model = model
        rec.finish_reasons = tuple(_finish_reasons(result))

    def on_chunk(self, inv: Invocation, chunk: Any) -> bool:
        rec = inv.record
        if self._read_error(inv, chunk):
            return True  # the caller gets the error frame unchanged
        if rec.response_id is None:
            rid = read_field(chunk, "request_id") or read_field(chunk, "id")
            if isinstance(rid, str) and rid:
                rec.response_id = rid
        if rec.response_model is None:
            # Native frames carry no model; OpenAI-protocol (2.x ``protocol="openai"``) ones do.
            model = read_field(chunk, "model")
            if isinstance(model, str) and model:
                rec.response_model = model
        self._read_usage(inv, chunk)
        if rec.request_params.get("incremental_output"):
            inv.add_output_text("".join(_output_texts(chunk)))
        else:
            # Each chunk repeats the whole text so far: keep the latest, count it only if needed.
            inv.defer_output_text(lambda: "".join(_output_texts(chunk)))
        reasons = _finish_reasons(chunk)
        if reasons:
            rec.finish_reasons = (*rec.finish_reasons, *reasons)
        return True

    # -- helpers ----------------------------------------------------------------
    @staticmethod
    def _read_error(inv: Invocation, result: Any) -> bool:
        """A *returned* error (classic API, 2.x ``raise_on_error=False``): its code, never its message."""
        status = safe_int(read_field(result, "status_code"))
        code = read_field(result, "code")
        failed = bool(code) or status not in (None, 200) or read_field(result, "is_error") is True
        if failed:
            inv.mark_error(str(code) if code else str(status or "error"), refused=True)
        return failed

    @staticmethod
    def _read_usage(inv: Invocation, result: Any) -> None:
        usage = read_field(result, "usage")
        models = read_field(usage, "models")
        if isinstance(models, list) and models:
            inv.set_model_usages([(str(read_field(m, "model_id") or ""), _tokens(m)) for m in models])
            return
        tokens = _tokens(usage)
        if tokens is not None:
            inv.set_usage(tokens)


def _tokens(usage: Any) -> TokenUsage | None:
    """Normalized usage, or ``None`` when the SDK's zero defaults stand in for "not reported"."""
    tokens = normalize_usage(usage)
    if tokens is None:
        return None
    total = safe_int(read_field(usage, "total_tokens")) or 0
    if tokens.total_tokens == 0 and total > 0:
        # 2.x embeddings: input/output default to 0 and only ``total_tokens`` is real.
        tokens.input_tokens = total
    return tokens if tokens.total_tokens > 0 else None


def _choices(obj: Any) -> list[Any]:
    choices = read_field(obj, "output", "choices")
    if not isinstance(choices, list):
        choices = read_field(obj, "choices")
    return choices if isinstance(choices, list) else []


def _finish_reasons(obj: Any) -> list[str]:
    found = [read_field(obj, "output", "finish_reason"), read_field(obj, "finish_reason")]
    found.extend(read_field(c, "finish_reason") for c in _choices(obj))
    return [str(r) for r in found if r is not None and str(r) not in _NO_REASON]


def _output_texts(obj: Any) -> Iterator[str]:
    """Generated text in a response or chunk (classic ``output``, 2.x ``choices``/``text``)."""
    yield from _strings([read_field(obj, "output", "text"), read_field(obj, "text")])
    for choice in _choices(obj):
        for part in ("message", "delta"):
            yield from _strings([read_field(choice, part, "content"),
                                 read_field(choice, part, "reasoning_content")])


def _strings(values: list[Any]) -> Iterator[str]:
    """Every string inside plain values, dicts (text keys only, so image URLs are skipped) and lists."""
    for value in values:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            yield from _strings([value[k] for k in _TEXT_KEYS if k in value])
        elif isinstance(value, (list, tuple)):
            yield from _strings(list(value))
        elif hasattr(value, "model_dump"):
            yield from _strings([value.model_dump()])


def _is_v2(instance: Any) -> bool:
    return getattr(instance, "_client", None) is not None


def _is_app(instance: Any) -> bool:
    owner = instance if isinstance(instance, type) else type(instance)
    return owner.__name__ in ("Application", "AppCompletions", "AsyncAppCompletions")


def _endpoint(instance: Any, kwargs: dict[str, Any], v2: bool) -> tuple[str | None, int | None]:
    if v2:
        config = read_field(instance, "_client", "config")
        url = read_field(config, "protocol_base_url") or read_field(config, "base_url")
    else:
        # Read per call, as the SDK does: users switch region by assigning this module attribute.
        url = kwargs.get("base_address") or getattr(sys.modules.get("dashscope"), "base_http_api_url", None)
    return server_from_url(url) if isinstance(url, str) else (None, None)


@lru_cache(maxsize=64)
def server_from_url(url: str) -> tuple[str | None, int | None]:
    """(host, port) of a base URL; the port defaults from the scheme."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None, None
    if port is None and parts.hostname:
        port = 443 if parts.scheme in ("https", "wss") else 80
    return parts.hostname, port
