# SPDX-License-Identifier: Apache-2.0
"""One fork hook for every object whose threads, locks or connections a forked child cannot use.

Only the forking thread survives ``fork()``: a lock another thread held stays held forever in the
child, a queue holds the parent's records, a SQLite connection must not be shared. Objects that
need to reset such state register here and get ``after_fork_in_child()`` called in the child.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Protocol

from ._guard import internal_error

__all__ = ["reset_after_fork", "run_in_child"]


class _ForkAware(Protocol):
    def after_fork_in_child(self) -> None: ...


_objects: weakref.WeakSet[_ForkAware] = weakref.WeakSet()
_functions: list[Callable[[], None]] = []


def reset_after_fork(obj: _ForkAware) -> None:
    """Call ``obj.after_fork_in_child()`` in every forked child for as long as ``obj`` lives."""
    _objects.add(obj)


def run_in_child(fn: Callable[[], None]) -> Callable[[], None]:
    """Call ``fn()`` in every forked child, before the objects' hooks: module-level state (a lock,
    a pool) a parent thread may have held. Usable as a decorator."""
    _functions.append(fn)
    return fn


def _after_fork_in_child() -> None:
    for fn in list(_functions):
        try:
            fn()
        except Exception as exc:  # a fork hook must never break the child
            internal_error("after_fork", exc)
    for obj in list(_objects):
        try:
            obj.after_fork_in_child()
        except Exception as exc:  # a fork hook must never break the child
            internal_error("after_fork", exc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
