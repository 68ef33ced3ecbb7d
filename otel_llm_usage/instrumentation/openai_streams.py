# SPDX-License-Identifier: Apache-2.0
"""What OpenAI's stream objects need of the stream proxy beyond iteration: their helpers
(``chat.completions.stream``, ``responses.stream``) close the HTTP response themselves."""

from __future__ import annotations

from typing import Any

from .invocation import Invocation
from .streams import AsyncStreamProxy, Proxy, StreamProxy, end_early

__all__ = ["OPENAI_STREAM_PROXIES"]


class _ClosingResponse(Proxy):
    """An HTTP response whose ``close`` / ``aclose`` also finalizes the call it belongs to."""

    def __init__(self, wrapped: Any, inv: Invocation) -> None:
        super().__init__(wrapped)
        self._self_inv = inv

    def close(self) -> Any:
        try:
            return self.__wrapped__.close()
        finally:
            end_early(self._self_inv)

    async def aclose(self) -> Any:
        try:
            return await self.__wrapped__.aclose()
        finally:
            end_early(self._self_inv)


class _ResponseEndsTheCall:
    """The SDK's stream helpers (``chat.completions.stream``, ``responses.stream``) close the HTTP
    response directly when their ``with`` block ends early; they get one that tells us."""

    __wrapped__: Any
    _self_inv: Invocation

    @property
    def response(self) -> Any:
        return _ClosingResponse(self.__wrapped__.response, self._self_inv)


class _Stream(_ResponseEndsTheCall, StreamProxy):
    pass


class _AsyncStream(_ResponseEndsTheCall, AsyncStreamProxy):
    pass


OPENAI_STREAM_PROXIES: tuple[type[StreamProxy], type[AsyncStreamProxy]] = (_Stream, _AsyncStream)
