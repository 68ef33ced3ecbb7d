# SPDX-License-Identifier: Apache-2.0
"""The SDK surfaces a worker times, one timed unit each.

A unit is one call (a stream counts until it is exhausted), except
``async_chat_100``: 100 concurrent ``AsyncOpenAI`` calls gathered on one event
loop, timed as a batch. Clients are built once per worker and reused, as an
application would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from . import transports as T

__all__ = ["SURFACE_INFO", "Surfaces"]

#: surface -> (what one timed unit is, unit label)
SURFACE_INFO: dict[str, tuple[str, str]] = {
    "chat": ("OpenAI chat, non-stream (mock transport)", "call"),
    "chat_stream_1": ("OpenAI chat stream, 1 content chunk (mock)", "call"),
    "chat_stream_100": ("OpenAI chat stream, 100 content chunks (mock)", "call"),
    "embeddings": ("OpenAI embeddings (mock)", "call"),
    "async_chat_100": ("AsyncOpenAI chat, 100 concurrent tasks (mock)", "batch"),
    "chat_loopback": ("OpenAI chat, non-stream, real HTTP to LoopbackLLMServer", "call"),
    "dashscope": ("DashScope Generation.call, non-stream (requests adapter)", "call"),
    "dashscope_stream_100": ("DashScope Generation.call stream, 100 chunks (requests adapter)", "call"),
}

_MESSAGES = [{"role": "user", "content": "Say lorem ipsum."}]


class Surfaces:
    """Lazily-built clients and one ``run(surface, n) -> [ns per unit]`` entry point."""

    def __init__(self, loopback_url: str | None) -> None:
        self.loopback_url = loopback_url
        self._clients: dict[str, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dashscope_mounted = False

    def _client(self, key: str, make: Callable[[], Any]) -> Any:
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = make()
        return client

    def _unit(self, surface: str) -> Callable[[], Any]:
        """A zero-argument callable doing one timed unit of ``surface``."""
        if surface == "chat":
            c = self._client("mock", T.openai_client)
            return lambda: c.chat.completions.create(model=T.CHAT_MODEL, messages=_MESSAGES)
        if surface in ("chat_stream_1", "chat_stream_100"):
            chunks = int(surface.rsplit("_", 1)[1])
            c = self._client(surface, lambda: T.openai_client(chunks=chunks))

            def stream() -> None:
                # Ask for usage explicitly so every variant receives (and may read) the same chunks.
                for _ in c.chat.completions.create(model=T.CHAT_MODEL, messages=_MESSAGES, stream=True,
                                                   stream_options={"include_usage": True}):
                    pass

            return stream
        if surface == "embeddings":
            c = self._client("mock", T.openai_client)
            return lambda: c.embeddings.create(model=T.EMBED_MODEL, input="lorem ipsum")
        if surface == "async_chat_100":
            return self._async_batch()
        if surface == "chat_loopback":
            if self.loopback_url is None:
                raise RuntimeError("no loopback server URL given to this worker")
            url = self.loopback_url
            c = self._client("loopback", lambda: T.openai_client(base_url=url))
            return lambda: c.chat.completions.create(model=T.CHAT_MODEL, messages=_MESSAGES)
        if surface in ("dashscope", "dashscope_stream_100"):
            import dashscope

            if not self._dashscope_mounted:
                T.mount_dashscope(100)
                self._dashscope_mounted = True
            if surface == "dashscope":
                return lambda: dashscope.Generation.call(model=T.DASHSCOPE_MODEL, prompt="Say lorem ipsum.")

            def ds_stream() -> None:
                responses: Any = dashscope.Generation.call(
                    model=T.DASHSCOPE_MODEL, prompt="Say lorem ipsum.", stream=True, incremental_output=True)
                for _ in responses:
                    pass

            return ds_stream
        raise ValueError(f"unknown surface {surface!r}")

    def _async_batch(self) -> Callable[[], Any]:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        loop = self._loop
        c = self._client("async", T.openai_async_client)

        async def batch() -> None:
            await asyncio.gather(*(c.chat.completions.create(model=T.CHAT_MODEL, messages=_MESSAGES)
                                   for _ in range(100)))

        return lambda: loop.run_until_complete(batch())

    def run(self, surface: str, n: int) -> list[int]:
        """Time ``n`` units back to back; nanoseconds per unit."""
        unit = self._unit(surface)
        clock = time.perf_counter_ns
        out = []
        for _ in range(n):
            t0 = clock()
            unit()
            out.append(clock() - t0)
        return out

    def close(self) -> None:
        """Close the clients' connection pools (the async one on its own loop)."""
        for key, client in self._clients.items():
            close = getattr(client, "close", None)
            if not callable(close):
                continue
            if key == "async" and self._loop is not None:
                self._loop.run_until_complete(close())
            else:
                close()
        if self._loop is not None:
            self._loop.close()
