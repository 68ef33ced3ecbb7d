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

A host thread that may wait still waits only briefly for a contended store (a SQLite file
another process holds), except inside :func:`waiting_for_admission`: a budget admission the
call cannot go on without waits as long as the plugin's own threads do.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from ._context_flag import ContextFlag

__all__ = ["WouldBlock", "admission_waits", "may_wait", "no_waiting", "waiting_for_admission"]

_no_waiting = ContextFlag("otel_llm_usage_no_waiting")
_admission = ContextFlag("otel_llm_usage_admission")


class WouldBlock(Exception):
    """The work needs the store and the current context may not wait for it."""


def may_wait() -> bool:
    return not _no_waiting.is_set()


def no_waiting() -> AbstractContextManager[None]:
    return _no_waiting.on()


def admission_waits() -> bool:
    """True inside :func:`waiting_for_admission`: wait for a contended store as our threads do."""
    return _admission.is_set()


def waiting_for_admission() -> AbstractContextManager[None]:
    return _admission.on()
