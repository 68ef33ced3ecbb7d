# SPDX-License-Identifier: Apache-2.0
"""Caches keyed by what calls carry (model names, user ids, budget scopes): bounded, because those
values come from the host and a long-running process may see any number of them.

Forgetting everything at the bound, rather than evicting one entry at a time, keeps a hit a plain
``dict`` lookup in C; what these caches hold is cheap to compute again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["BoundedDict", "BoundedSet"]

K = TypeVar("K")
V = TypeVar("V")

DEFAULT_SIZE = 10_000


class BoundedDict(dict[K, V]):
    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        super().__init__()
        self.size = size

    def put(self, key: K, value: V) -> V:
        """Store ``value`` (after forgetting everything, at the bound) and return it."""
        if len(self) >= self.size:
            self.clear()
        self[key] = value
        return value

    def memo(self, key: K, build: Callable[[], V]) -> V:
        """``self[key]``, built on first use (a rebuilt entry is equal to the one forgotten)."""
        value = self.get(key)
        if value is None:
            value = self.put(key, build())
        return value


class BoundedSet(set[K]):
    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        super().__init__()
        self.size = size

    def first(self, key: K) -> bool:
        """``True`` the first time ``key`` is seen (since the last time the set forgot everything)."""
        if key in self:
            return False
        if len(self) >= self.size:
            self.clear()
        self.add(key)
        return True
