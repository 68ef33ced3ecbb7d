# SPDX-License-Identifier: Apache-2.0
"""Marks code that must not wait for I/O, such as an asyncio event loop running a call's pre-call checks.

::

    with no_waiting():
        try:
            pipeline.before_call(intent)        # a leased budget admits locally, or raises WouldBlock
        except WouldBlock:
            await asyncio.to_thread(...)         # the same work, where waiting is harmless

Code that would have to wait for a shared store checks :func:`may_wait` and raises
:class:`WouldBlock` instead, after undoing what it did so far, so the caller can run
the same work again on a thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["WouldBlock", "may_wait", "no_waiting"]

_no_waiting: ContextVar[bool] = ContextVar("otel_llm_usage_no_waiting", default=False)


class WouldBlock(Exception):
    """The work needs the store and the current context may not wait for it."""


def may_wait() -> bool:
    return not _no_waiting.get()


@contextlib.contextmanager
def no_waiting() -> Iterator[None]:
    token = _no_waiting.set(True)
    try:
        yield
    finally:
        _no_waiting.reset(token)
