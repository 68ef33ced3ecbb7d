# SPDX-License-Identifier: Apache-2.0
"""Run one recorded interaction through one SDK surface twice (bare, then instrumented) and judge it.

Usage::

    CASES = build_cases(load_all(root), SURFACES, UNFITTED)  # params "<cassette>:<i>-<surface>-<mode>"
    problems = replay(env, surface, mode, interaction)
    assert not problems, "\\n".join(problems)

Every check is collected rather than stopping at the first, so one failing case says
everything that differed (what the recording says, what the product recorded).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import re
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pydantic
import pytest
from opentelemetry.trace import StatusCode

from otel_llm_usage.pricing import PriceEntry

from ..conftest import close_otel, make_otel
from .cassettes import Interaction
from .expectations import Expected, Tokens, expect, expected_cost, price_entry
from .server import ReceivedRequest, ReplayServer

__all__ = ["API_KEY", "Env", "Surface", "adrain", "asettle", "build_cases", "drain", "replay", "settle", "snapshot"]

API_KEY = "sk-replay-not-a-key"
SERVER_ADDRESS = "127.0.0.1"
# Per request, not per call: differs between two identical calls whatever the plugin does.
_VOLATILE_HEADERS = frozenset({"content-length"})
_INJECTED = {"stream_options": {"include_usage": True}}
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@dataclass
class Env:
    """What a surface needs to build its client: the server, and one TLS context for every client
    (building a default context loads the CA bundle, ~40 ms, which would dominate the suite)."""

    server: ReplayServer
    tls: ssl.SSLContext = field(default_factory=ssl.create_default_context)

    @property
    def url(self) -> str:
        return self.server.url


SyncCall = Callable[[Env, Interaction], Any]
AsyncCall = Callable[[Env, Interaction], Awaitable[Any]]


@dataclass(frozen=True)
class Surface:
    """One SDK entry point a recording can be driven through.

    ``fits`` says whether the recorded request can be rebuilt as a call of this surface;
    ``wire_body`` is the body that call must send (the recording, adjusted only for what the
    installed SDK version sends differently on its own); ``injects`` says where the plugin may
    add ``stream_options`` (streamed chat and legacy completions through the OpenAI SDK).
    """

    name: str
    fits: Callable[[Interaction], bool]
    sync: SyncCall | None
    asynchronous: AsyncCall | None
    wire_body: Callable[[Interaction], Any]
    after_async: Callable[[], Awaitable[None]] | None = None
    injects: Callable[[Interaction], bool] = field(default=lambda it: False)

    def modes(self) -> list[str]:
        return [m for m, fn in (("sync", self.sync), ("async", self.asynchronous)) if fn is not None]


def build_cases(interactions: Iterable[Interaction], surfaces: Iterable[Surface],
                unfitted: Mapping[str, str] | None) -> list[Any]:
    """One param per (interaction, fitting surface, mode). An interaction no surface fits is one
    skipped param with the reason ``unfitted`` gives; without a reason, collection fails.
    ``unfitted=None``: another module replays these interactions too, so misfits are not listed."""
    surfaces = list(surfaces)
    cases = []
    for it in interactions:
        fitting = [s for s in surfaces if s.fits(it)]
        for surface in fitting:
            cases.extend(pytest.param(surface, mode, it, id=f"{it.id}-{surface.name}-{mode}")
                         for mode in surface.modes())
        if not fitting and unfitted is not None:
            reason = unfitted.get(it.id)
            if not reason:
                raise ValueError(f"{it.id}: no SDK surface fits this recording; say why in the UNFITTED table")
            cases.append(pytest.param(None, "none", it, id=f"{it.id}-unfitted", marks=pytest.mark.skip(reason=reason)))
    return cases


# --- what the caller saw ----------------------------------------------------------------------------------

def snapshot(obj: Any) -> Any:
    """A plain, comparable picture of an SDK result: its class (through any proxy) and its data."""
    if isinstance(obj, pydantic.BaseModel):
        # warnings=False: SDK models hold values their own annotations do not describe (base64
        # embeddings in a list[float] field, parsed generics) and pydantic would warn about each.
        return {"__class__": obj.__class__.__qualname__, **obj.model_dump(mode="json", warnings=False)}
    if isinstance(obj, Mapping):
        return {"__class__": obj.__class__.__qualname__, **{str(k): snapshot(v) for k, v in obj.items()}}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__class__": obj.__class__.__qualname__, **snapshot(dataclasses.asdict(obj))}
    if isinstance(obj, (list, tuple)):
        return [snapshot(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool, bytes)):
        return obj
    # Object addresses in a repr differ between the two runs without meaning anything.
    return {"__class__": obj.__class__.__qualname__, "repr": _ADDRESS.sub("", repr(obj))}


def settle(fn: Callable[[], Any]) -> Any:
    """``fn()``'s snapshot, or the picture of what it raised: for SDK accessors that may refuse
    after a successful exchange (``get_final_completion()`` on a ``length`` finish)."""
    try:
        return snapshot(fn())
    except Exception as exc:
        return _raised(exc)


async def asettle(fn: Callable[[], Awaitable[Any]]) -> Any:
    try:
        return snapshot(await fn())
    except Exception as exc:
        return _raised(exc)


class StreamBroke(Exception):
    """A stream raised part-way; carries the chunks the caller had by then (the error is the cause)."""

    def __init__(self, chunks: list[Any]) -> None:
        super().__init__(f"the stream raised after {len(chunks)} chunks")
        self.chunks = chunks


def drain(result: Any, it: Interaction) -> Any:
    """What the caller gets: the result, or every chunk of a stream read with a plain ``for`` loop
    (no ``with``, no ``close()``: how most callers write it)."""
    if not it.requested_stream:
        return snapshot(result)
    chunks: list[Any] = []
    try:
        for chunk in result:
            chunks.append(snapshot(chunk))
    except Exception as exc:
        raise StreamBroke(chunks) from exc
    return chunks


async def adrain(result: Any, it: Interaction) -> Any:
    if not it.requested_stream:
        return snapshot(result)
    chunks: list[Any] = []
    try:
        async for chunk in result:
            chunks.append(snapshot(chunk))
    except Exception as exc:
        raise StreamBroke(chunks) from exc
    return chunks


def _raised(exc: BaseException) -> dict[str, Any]:
    return {"raised": exc.__class__.__qualname__, "status_code": getattr(exc, "status_code", None),
            "message": str(exc), "body": snapshot(getattr(exc, "body", None))}


@dataclass
class _Run:
    result: Any
    exception: BaseException | None
    requests: list[ReceivedRequest]


def _run(env: Env, surface: Surface, mode: str, it: Interaction) -> _Run:
    env.server.arm(it)
    exception: BaseException | None = None
    try:
        if mode == "sync":
            assert surface.sync is not None
            result = surface.sync(env, it)
        else:
            assert surface.asynchronous is not None
            result = asyncio.run(_drive(surface, env, it))
    except StreamBroke as broke:
        exception = broke.__cause__
        result = {"chunks": broke.chunks, **_raised(broke.__cause__ or broke)}
    except Exception as exc:  # the SDK's own errors are part of what the caller sees
        exception = exc
        result = _raised(exc)
    return _Run(result, exception, env.server.take_requests())


async def _drive(surface: Surface, env: Env, it: Interaction) -> Any:
    assert surface.asynchronous is not None
    try:
        return await surface.asynchronous(env, it)
    finally:
        if surface.after_async is not None:
            await surface.after_async()


def first_difference(a: Any, b: Any, path: str = "$") -> str | None:
    if type(a) is not type(b):
        return f"{path}: {_short(a)} != {_short(b)}"
    if isinstance(a, dict):
        for key in list(dict.fromkeys([*a, *b])):
            if key not in a or key not in b:
                return f"{path}.{key}: {'missing' if key not in a else _short(a[key])} != " \
                       f"{'missing' if key not in b else _short(b[key])}"
            found = first_difference(a[key], b[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b else f"{path}: {_short(a)} != {_short(b)}"


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, default=repr, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# --- the verdict ------------------------------------------------------------------------------------------

def _one(items: list[Any], what: str, problems: list[str]) -> Any:
    if len(items) != 1:
        problems.append(f"expected exactly one {what}, got {len(items)}")
        return None
    return items[0]


def _check_wire(surface: Surface, it: Interaction, bare: _Run, inst: _Run, problems: list[str]) -> None:
    bare_req = _one(bare.requests, "request from the uninstrumented call", problems)
    inst_req = _one(inst.requests, "request from the instrumented call", problems)
    if bare_req is None or inst_req is None:
        return
    wanted = surface.wire_body(it)
    if bare_req.json() != wanted:
        problems.append("test rebuild: the uninstrumented call did not send the recorded body: "
                        f"{first_difference(wanted, bare_req.json())}")
    recorded_sse = it.request_headers.get("x-dashscope-sse") == "enable"
    if it.path.startswith("/api/v1/") and (bare_req.headers.get("x-dashscope-sse") == "enable") != recorded_sse:
        problems.append(f"test rebuild: X-DashScope-SSE sent={bare_req.headers.get('x-dashscope-sse')!r}, "
                        f"recorded={it.request_headers.get('x-dashscope-sse')!r}")
    wanted = bare_req.json()
    if surface.injects(it) and isinstance(wanted, dict) and wanted.get("stream") is True \
            and "stream_options" not in wanted:
        wanted = {**wanted, **_INJECTED}  # the one documented change (and on by default): ask for usage
    if inst_req.json() != wanted:
        problems.append("wire body: expected the uninstrumented body (plus stream_options where documented), "
                        f"got {first_difference(wanted, inst_req.json())}")
    bare_headers = {k: v for k, v in bare_req.headers.items() if k not in _VOLATILE_HEADERS}
    inst_headers = {k: v for k, v in inst_req.headers.items() if k not in _VOLATILE_HEADERS}
    if bare_headers != inst_headers:
        problems.append(f"wire headers changed by instrumentation: {first_difference(bare_headers, inst_headers)}")


def _failed(exp: Expected, it: Interaction, bare: _Run) -> bool:
    """The call failed for the caller: the provider answered with an error, or the stream broke."""
    return exp.error or (it.cut and bare.exception is not None)


def _expected_error_type(exp: Expected, it: Interaction, bare: _Run) -> str | None:
    if not _failed(exp, it, bare):
        return None
    if bare.exception is not None:
        return bare.exception.__class__.__name__  # raised: the SDK's exception class names the error
    return exp.error_code  # returned (DashScope classic): the body's ``code``


def _record_tokens(record: Any) -> Tokens:
    t = record.tokens
    return Tokens(t.input_tokens, t.output_tokens, t.cached_input_tokens, t.reasoning_tokens)


def _request_params(it: Interaction) -> dict[str, Any]:
    body = it.request_json
    params = body.get("parameters")
    return params if isinstance(params, dict) else body


@dataclass(frozen=True)
class _Truth:
    """The expectation plus what follows from it once the record is known."""

    exp: Expected
    failed: bool
    error_type: str | None
    tokens: Tokens  # reported, else (estimated) the record's own, else zero
    cost: Decimal | None
    entry: PriceEntry | None


def _compare(facts: dict[str, tuple[Any, Any]], prefix: str, problems: list[str]) -> None:
    for name, (want, have) in facts.items():
        if want != have:
            problems.append(f"{prefix}{name}: expected {want!r}, got {have!r}")


def _check_record(it: Interaction, truth: _Truth, record: Any, problems: list[str]) -> None:
    exp = truth.exp
    got = _record_tokens(record)
    facts = {
        "provider": (exp.provider, record.provider),
        "operation": (exp.operation, record.operation),
        "request_model": (exp.request_model, record.request_model),
        "status": ("error" if truth.failed else "ok", record.status),
        "error_type": (truth.error_type, record.error_type),
        "usage_source": (exp.usage_source, record.usage_source),
        "cache_write_tokens": (0, record.tokens.cache_write_tokens),
    }
    if exp.response_model is not None:
        facts["response_model"] = (exp.response_model, record.response_model)
    if not exp.error:
        facts["streamed"] = (it.is_sse, record.streamed)
    if exp.tokens is not None:
        facts["tokens (input, output, cached, reasoning)"] = (dataclasses.astuple(exp.tokens),
                                                              dataclasses.astuple(got))
    elif exp.usage_source == "none":
        facts["tokens (input, output)"] = ((0, 0), (got.input, got.output))
    _compare(facts, "record.", problems)
    if exp.usage_source == "estimated" and (got.input < 1 or (exp.produced_text and got.output < 1)):
        problems.append(f"record: an estimate must never be zero, got input={got.input} output={got.output}")
    if truth.cost is None:
        if record.cost is not None:
            problems.append(f"record.cost: the catalog has no price for {exp.request_model!r}, so unpriced "
                            f"(None) expected, got {record.cost} {record.currency}")
    else:
        assert truth.entry is not None  # a cost is only worked out from an entry
        if record.cost is None or Decimal(record.cost) != truth.cost or record.currency != truth.entry.currency:
            problems.append(f"record.cost: expected {truth.cost} {truth.entry.currency} ({truth.entry.model}, "
                            f"tokens {dataclasses.astuple(truth.tokens)}), got {record.cost} {record.currency}")


def _check_span(truth: _Truth, span: Any, problems: list[str]) -> None:
    exp, tokens = truth.exp, truth.tokens
    attrs = dict(span.attributes or {})
    facts: dict[str, tuple[Any, Any]] = {
        "gen_ai.provider.name": (exp.provider, attrs.get("gen_ai.provider.name")),
        "gen_ai.operation.name": (exp.operation, attrs.get("gen_ai.operation.name")),
        "gen_ai.request.model": (exp.request_model, attrs.get("gen_ai.request.model")),
        "llm_usage.usage_source": (exp.usage_source, attrs.get("llm_usage.usage_source")),
        "llm_usage.stream.abandoned": (None, attrs.get("llm_usage.stream.abandoned")),
        "error.type": (truth.error_type, attrs.get("error.type")),
        "status is ERROR": (truth.failed, span.status.status_code is StatusCode.ERROR),
    }
    if exp.response_model is not None:
        facts["gen_ai.response.model"] = (exp.response_model, attrs.get("gen_ai.response.model"))
    if exp.usage_source == "none":
        facts["gen_ai.usage.input_tokens"] = (None, attrs.get("gen_ai.usage.input_tokens"))
    else:
        # An estimate is the product's own number: the span must carry the record's (checked above).
        of = " (the record's estimate)" if exp.usage_source == "estimated" else ""
        facts[f"gen_ai.usage.input_tokens{of}"] = (tokens.input, attrs.get("gen_ai.usage.input_tokens"))
        # Semconv's embeddings span counts input tokens only.
        out = None if exp.operation == "embeddings" else tokens.output
        facts[f"gen_ai.usage.output_tokens{of}"] = (out, attrs.get("gen_ai.usage.output_tokens"))
        # Zero counts are left off the span (README: "where non-zero").
        facts["gen_ai.usage.cache_read.input_tokens"] = (tokens.cached or None,
                                                         attrs.get("gen_ai.usage.cache_read.input_tokens"))
        facts["gen_ai.usage.reasoning.output_tokens"] = (tokens.reasoning or None,
                                                         attrs.get("gen_ai.usage.reasoning.output_tokens"))
    _compare(facts, "span ", problems)
    have_cost = attrs.get("llm_usage.cost")
    if truth.cost is None and have_cost is not None:
        problems.append(f"span llm_usage.cost: unpriced expected, got {have_cost}")
    if truth.cost is not None and (have_cost is None or have_cost != pytest.approx(float(truth.cost), rel=1e-9)):
        problems.append(f"span llm_usage.cost: expected {float(truth.cost)!r}, got {have_cost!r}")


def replay(env: Env, surface: Surface, mode: str, it: Interaction) -> list[str]:
    """Everything that differs from the truth for this case; empty when the product got it right."""
    exp = expect(it)
    bare = _run(env, surface, mode, it)
    otel = make_otel(env.server)  # type: ignore[arg-type] - the fixture only keeps the server for the test
    try:
        inst = _run(env, surface, mode, it)
        gc.collect()  # a stream the proxy thinks abandoned is finalized here, and must show as such
        records, spans = otel.records(), otel.spans()
    finally:
        close_otel(otel)
        # What is still alive now outlives the case (SDK modules imported lazily, pydantic schemas
        # built on first use): out of the collector's way, the next case's collections only walk
        # what that case creates. The conftest unfreezes when the replay package is done.
        gc.freeze()
    problems: list[str] = []
    if bare.exception is not None and not exp.error and not it.cut:
        problems.append(f"test rebuild: the uninstrumented call failed on a successful recording: {bare.result}")
    if exp.error and bare.exception is None and exp.error_code is None:
        problems.append(f"test rebuild: the SDK neither raised nor returned the recorded {it.status} error")
    if exp.error and getattr(bare.exception, "status_code", it.status) != it.status:
        problems.append(f"test rebuild: the SDK raised {bare.result} for a recorded {it.status}")
    diff = first_difference(bare.result, inst.result)
    if diff is not None:
        problems.append(f"caller-visible result differs with instrumentation (uninstrumented != instrumented): {diff}")
    _check_wire(surface, it, bare, inst, problems)
    record = _one(records, "UsageRecord", problems)
    tokens = exp.tokens or Tokens(0, 0)
    if exp.usage_source == "estimated" and record is not None:
        tokens = _record_tokens(record)
    entry = price_entry(exp.provider, SERVER_ADDRESS, exp.request_model, exp.response_model)
    truth = _Truth(exp, _failed(exp, it, bare), _expected_error_type(exp, it, bare), tokens,
                   expected_cost(entry, tokens, _request_params(it)), entry)
    if record is not None:
        _check_record(it, truth, record, problems)
    span = _one(spans, "span", problems)
    if span is not None:
        _check_span(truth, span, problems)
    return [f"{it.id} via {surface.name} ({mode}): {p}" for p in problems]
