# SPDX-License-Identifier: Apache-2.0
"""A boolean carried by the current context (thread, task), switched on for a ``with`` block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["ContextFlag"]


class ContextFlag:
    def __init__(self, name: str) -> None:
        self._var: ContextVar[bool] = ContextVar(name, default=False)

    def is_set(self) -> bool:
        return self._var.get()

    @contextlib.contextmanager
    def on(self) -> Iterator[None]:
        token = self._var.set(True)
        try:
            yield
        finally:
            self._var.reset(token)
