# SPDX-License-Identifier: Apache-2.0
"""Who and what a call is for: function, user, session, anchor.

Three sources, strongest first: explicit per-call values (the request's
``user`` field, :func:`record_usage` arguments), the innermost
:func:`usage_context` / :func:`track`, then OpenTelemetry baggage set by an
upstream service. Usage::

    @track(function="live-reply")
    def reply(anchor_id, user_id):
        with usage_context(anchor=anchor_id, user=user_id):
            client.chat.completions.create(...)
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar, cast, overload

from opentelemetry import baggage

from ._names import BAGGAGE_KEYS

__all__ = ["Attribution", "carry_attribution", "current_attribution", "track", "usage_context"]


@dataclass(frozen=True, slots=True)
class Attribution:
    function: str | None = None
    user: str | None = None
    session: str | None = None
    anchor: str | None = None

    def merged_over(self, weaker: Attribution) -> Attribution:
        """Fields set here win; unset ones fall through to ``weaker``."""
        return Attribution(
            function=self.function if self.function is not None else weaker.function,
            user=self.user if self.user is not None else weaker.user,
            session=self.session if self.session is not None else weaker.session,
            anchor=self.anchor if self.anchor is not None else weaker.anchor,
        )


_EMPTY = Attribution()
_current: ContextVar[Attribution] = ContextVar("otel_llm_usage_attribution", default=_EMPTY)


def _from_baggage() -> Attribution:
    values = baggage.get_all()
    if not values:
        return _EMPTY
    found = {field: values.get(key) for field, key in BAGGAGE_KEYS.items()}
    return Attribution(**{k: str(v) for k, v in found.items() if v is not None})


def current_attribution(explicit: Attribution | None = None) -> Attribution:
    """Resolve the attribution for a call happening now."""
    ctx = _current.get()
    from_baggage = _from_baggage()
    resolved = ctx if from_baggage is _EMPTY else ctx.merged_over(from_baggage)
    return explicit.merged_over(resolved) if explicit is not None else resolved


C = TypeVar("C", bound=Callable[..., Any])


def carry_attribution(fn: C) -> C:
    """``fn`` made to run with the attribution in force here, on whichever thread runs it.

    For hand-offs that do not copy context variables (``loop.run_in_executor``, a thread
    pool's ``submit``); the instrumentor applies it to ``ThreadPoolExecutor.submit`` itself.
    Without any attribution in force ``fn`` is returned unchanged."""
    carried = current_attribution()
    if carried is _EMPTY:
        return fn

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        token = _current.set(carried.merged_over(_current.get()))
        try:
            return fn(*args, **kwargs)
        finally:
            _current.reset(token)

    return cast(C, run)


@contextlib.contextmanager
def usage_context(
    *,
    function: str | None = None,
    user: str | None = None,
    session: str | None = None,
    anchor: str | None = None,
) -> Iterator[Attribution]:
    """Attribute every LLM call inside the block; nested blocks override only what they set."""
    outer = _current.get()
    inner = Attribution(function, user, session, anchor).merged_over(outer)
    token = _current.set(inner)
    try:
        yield inner
    finally:
        _current.reset(token)


F = TypeVar("F", bound=Callable[..., Any])


@overload
def track(func: F) -> F: ...
@overload
def track(
    *,
    function: str | None = None,
    user: str | None = None,
    session: str | None = None,
    anchor: str | None = None,
) -> Callable[[F], F]: ...


def track(
    func: F | None = None,
    *,
    function: str | None = None,
    user: str | None = None,
    session: str | None = None,
    anchor: str | None = None,
) -> F | Callable[[F], F]:
    """Decorator form of :func:`usage_context`; ``function`` defaults to the qualified name.

    Works on plain and ``async`` functions, and on (async) generators, whose
    bodies run lazily — the context is re-entered around each resumption.
    """

    def decorate(fn: F) -> F:
        attrs = Attribution(function or fn.__qualname__, user, session, anchor)

        def enter() -> Any:
            return _current.set(attrs.merged_over(_current.get()))

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                token = enter()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    _current.reset(token)

            return cast(F, async_wrapper)

        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
                gen = fn(*args, **kwargs)
                send: Any = None
                while True:
                    token = enter()
                    try:
                        item = gen.send(send)
                    except StopIteration as stop:
                        return stop.value
                    finally:
                        _current.reset(token)
                    send = yield item

            return cast(F, gen_wrapper)

        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def agen_wrapper(*args: Any, **kwargs: Any) -> Any:
                agen = fn(*args, **kwargs)
                send: Any = None
                while True:
                    token = enter()
                    try:
                        item = await agen.asend(send)
                    except StopAsyncIteration:
                        return
                    finally:
                        _current.reset(token)
                    send = yield item

            return cast(F, agen_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            token = enter()
            try:
                return fn(*args, **kwargs)
            finally:
                _current.reset(token)

        return cast(F, wrapper)

    if func is not None:
        return decorate(func)
    return decorate
