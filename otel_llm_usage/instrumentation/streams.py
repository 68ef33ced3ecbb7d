# SPDX-License-Identifier: Apache-2.0
"""One stream proxy, sync and async, for every provider.

The proxy is transparent (``wrapt.ObjectProxy``): attribute access, ``with``,
``close()`` and iteration behave as on the SDK object. It feeds each chunk to
the provider adapter's ``on_chunk`` hook (which may hide a chunk *we* asked
for, such as OpenAI's injected usage chunk) and finalizes the invocation
exactly once: on exhaustion, error, ``close()``, context-manager exit, or
garbage collection of a stream the caller abandoned.

Raw-response objects (``.with_raw_response`` / ``.with_streaming_response``)
are proxied too: their ``parse()`` result goes through the same path.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import wrapt
from pydantic import BaseModel

from .._guard import internal_error
from .invocation import Invocation

__all__ = ["STREAM_PROXIES", "AsyncStreamProxy", "Proxy", "StreamProxy", "end_early", "wrap_result", "wrap_stream"]

# wrapt >= 2 types ObjectProxy as a generic; wrapt 1.x cannot subscript it at run time.
if TYPE_CHECKING:
    Proxy = wrapt.ObjectProxy[Any]
else:
    Proxy = wrapt.ObjectProxy


def end_early(inv: Invocation, exc: BaseException | None = None, *, dropped: bool = False) -> None:
    """The caller stopped before the stream's natural end: ``close()``, leaving ``with``, or
    ``dropped`` its iterator with chunks unread (always abandoned, even when a provider that
    reports cumulative usage on every chunk already gave a partial total). Otherwise abandoned
    means usage never arrived. An exception the caller raised inside ``with`` is the call's error."""
    abandoned = dropped or not inv.output.usage_seen
    if exc is None or isinstance(exc, GeneratorExit):
        inv.finish(abandoned=abandoned)
    else:
        inv.fail(exc, abandoned=abandoned)


def _on_chunk(inv: Invocation, chunk: Any) -> bool:
    output = inv.output
    if output.first_chunk_at is None:
        output.first_chunk()
    try:
        return inv.adapter.on_chunk(inv, chunk)
    except Exception as exc:
        internal_error("stream_chunk", exc)
        return True


class _StreamBase(Proxy):
    """State and abandonment shared by the sync and async proxies."""

    _iterator_method = "__next__"

    def __init__(self, wrapped: Any, inv: Invocation) -> None:
        super().__init__(wrapped)
        self._self_inv = inv
        # Some SDK streams are iterables, not iterators: iterate them through one iterator of ours.
        self._self_it = wrapped if hasattr(wrapped, self._iterator_method) else None
        self._self_gen: Iterator[Any] | None = None

    def __del__(self) -> None:
        # A sync proxy that handed out its chunk generator leaves abandonment to it: in
        # ``for chunk in client...create(stream=True)`` the proxy is freed before the first chunk.
        inv = getattr(self, "_self_inv", None)
        if inv is not None and not inv.done and getattr(self, "_self_gen", None) is None:
            inv.finish(abandoned=True)


def _chunks(inv: Invocation, it: Iterator[Any]) -> Iterator[Any]:
    """The per-chunk hot path of every sync stream. A generator, because resuming its frame costs
    less per chunk than a ``__next__`` call through the proxy type, and the per-stream lookups
    happen once. ``_on_chunk``'s two steps are written out here rather than called: a call per
    chunk is a measurable part of the ~1.5 µs per-chunk budget (the async proxy calls it).

    The caller often holds only this generator (``for chunk in create(stream=True)`` frees the
    proxy at once), so the generator itself tells a dropped stream from a finished one. The proxy
    primes it to the bare ``yield`` first: a generator that never started runs no code when it is
    closed or collected, a primed one runs the ``GeneratorExit`` branch."""
    on_chunk = inv.adapter.on_chunk
    output = inv.output
    try:
        yield None
        for chunk in it:
            if output.first_chunk_at is None:
                output.first_chunk()
            try:
                keep = on_chunk(inv, chunk)
            except Exception as exc:
                internal_error("stream_chunk", exc)
                keep = True
            if keep:
                yield chunk
    except GeneratorExit:
        # Closed or collected before the end: a ``break``, an exception in the caller's loop
        # body, or a stream left unread.
        end_early(inv, dropped=True)
        raise
    except BaseException as exc:
        inv.fail(exc)
        raise
    inv.finish()


class StreamProxy(_StreamBase):

    def __iter__(self) -> Iterator[Any]:
        return self._self_generator()

    def __next__(self) -> Any:
        return next(self._self_generator())

    def _self_generator(self) -> Iterator[Any]:
        gen: Iterator[Any] | None = self._self_gen
        if gen is None:
            it = self._self_it if self._self_it is not None else iter(self.__wrapped__)
            gen = _chunks(self._self_inv, it)
            next(gen)  # primed: see _chunks
            self._self_gen = gen
        return gen

    def close(self) -> Any:
        try:
            close = getattr(self.__wrapped__, "close", None)
            return close() if close is not None else None
        finally:
            end_early(self._self_inv)

    def __enter__(self) -> StreamProxy:
        enter = getattr(self.__wrapped__, "__enter__", None)
        if enter is not None:
            enter()
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        try:
            exit_ = getattr(self.__wrapped__, "__exit__", None)
            return exit_(*exc_info) if exit_ is not None else None
        finally:
            end_early(self._self_inv, exc_info[1])


class AsyncStreamProxy(_StreamBase):
    _iterator_method = "__anext__"

    def __aiter__(self) -> AsyncStreamProxy:
        return self

    async def __anext__(self) -> Any:
        inv = self._self_inv
        while True:
            try:
                if self._self_it is None:
                    self._self_it = self.__wrapped__.__aiter__()
                chunk = await self._self_it.__anext__()
            except StopAsyncIteration:
                inv.finish()
                raise
            except BaseException as exc:  # includes CancelledError
                inv.fail(exc)
                raise
            if _on_chunk(inv, chunk):
                return chunk

    async def _close_wrapped(self, name: str) -> Any:
        method = getattr(self.__wrapped__, name, None)
        if method is None:
            return None
        result = method()
        return await result if inspect.isawaitable(result) else result

    async def close(self) -> Any:
        try:
            return await self._close_wrapped("close")
        finally:
            end_early(self._self_inv)

    async def aclose(self) -> Any:
        try:
            return await self._close_wrapped("aclose")
        finally:
            end_early(self._self_inv)

    async def __aenter__(self) -> AsyncStreamProxy:
        enter = getattr(self.__wrapped__, "__aenter__", None)
        if enter is not None:
            await enter()
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        try:
            exit_ = getattr(self.__wrapped__, "__aexit__", None)
            return (await exit_(*exc_info)) if exit_ is not None else None
        finally:
            end_early(self._self_inv, exc_info[1])


def _is_async_iterable(obj: Any) -> bool:
    return hasattr(obj, "__anext__") or (hasattr(obj, "__aiter__") and not hasattr(obj, "__iter__"))


#: The proxy classes (sync, async) of an adapter whose streams need nothing of their own.
STREAM_PROXIES: tuple[type[StreamProxy], type[AsyncStreamProxy]] = (StreamProxy, AsyncStreamProxy)


def wrap_stream(inv: Invocation, stream: Any) -> Any:
    """The adapter's proxy around ``stream``: subclasses add what its SDK's stream objects need."""
    sync_proxy, async_proxy = inv.adapter.stream_proxies
    return async_proxy(stream, inv) if _is_async_iterable(stream) else sync_proxy(stream, inv)


def _deliver(inv: Invocation, parsed: Any) -> Any:
    """Route a parsed result: a stream gets a proxy, anything else is read and finished."""
    # SDK stream objects whose helpers read an inner stream get the proxy *inside* them.
    attached = inv.adapter.attach_stream(inv, parsed, wrap_stream)
    if attached is not None:
        return attached
    if inv.adapter.is_stream(inv, parsed):
        return wrap_stream(inv, parsed)
    try:
        inv.adapter.read_response(inv, parsed)
    except Exception as exc:
        internal_error("read_response", exc)
    inv.finish()
    return parsed


class _RawResponseProxy(Proxy):
    """``with_raw_response`` / ``with_streaming_response`` objects: usage arrives on ``parse()``."""

    def __init__(self, wrapped: Any, inv: Invocation) -> None:
        super().__init__(wrapped)
        self._self_inv = inv
        self._self_parsed: Any = None

    def _self_route(self, parsed: Any) -> Any:
        if self._self_parsed is None:
            try:
                self._self_parsed = _deliver(self._self_inv, parsed)
            except Exception as exc:
                internal_error("raw_response", exc)
                self._self_inv.finish()
                return parsed
        return self._self_parsed

    def close(self) -> Any:
        try:
            return self.__wrapped__.close()
        finally:
            if self._self_parsed is None:
                self._self_inv.finish(abandoned=True)

    def __del__(self) -> None:
        inv = getattr(self, "_self_inv", None)
        if inv is not None and not inv.done and getattr(self, "_self_parsed", None) is None:
            inv.finish(abandoned=True)


class RawResponseProxy(_RawResponseProxy):
    def parse(self, *args: Any, **kwargs: Any) -> Any:
        parsed = self.__wrapped__.parse(*args, **kwargs)
        return self._self_route(parsed) if not args and not kwargs else parsed


class AsyncRawResponseProxy(_RawResponseProxy):
    async def parse(self, *args: Any, **kwargs: Any) -> Any:
        parsed = await self.__wrapped__.parse(*args, **kwargs)
        return self._self_route(parsed) if not args and not kwargs else parsed

    async def close(self) -> Any:  # the async SDK's close is a coroutine
        try:
            return await self.__wrapped__.close()
        finally:
            if self._self_parsed is None:
                self._self_inv.finish(abandoned=True)


def _is_raw_response(result: Any) -> bool:
    # Parsed responses (pydantic models, DashScope's dict responses) answer a missing attribute
    # with an exception, microseconds each: rule them out by type first.
    return not isinstance(result, (BaseModel, dict)) and hasattr(result, "http_response") \
        and hasattr(result, "parse")


def wrap_result(inv: Invocation, result: Any) -> Any:
    if _is_raw_response(result):
        if inspect.iscoroutinefunction(result.parse):
            return AsyncRawResponseProxy(result, inv)
        proxy = RawResponseProxy(result, inv)
        if not inv.record.streamed and getattr(result.http_response, "is_closed", False):
            # The body is already read (legacy raw response): parse now, cached for the caller.
            proxy.parse()
        return proxy
    return _deliver(inv, result)
