# SPDX-License-Identifier: Apache-2.0
"""In-process budget counters: one lock, exact, lost on exit (use SQLite or Redis to keep them).

The arithmetic is :mod:`._counting`'s, shared with SQLite; this module only
supplies atomicity (a lock) and storage (dicts with optional expiry).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from . import _counting
from .base import Amount, Holder, Limit

__all__ = ["MemoryCounterStore"]

_ZERO = Amount()  # immutable, so one instance serves every absent key


class _View:
    """Dict storage with expiry; ``put`` with ``ttl_s=None`` keeps a key's current expiry."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.values: dict[str, Amount] = {}
        self.expiry: dict[str, float] = {}
        self.leases: dict[str, dict[str, tuple[Amount, float]]] = {}  # inflight key -> holder -> lease, expiry
        self.clock = clock

    def now(self) -> float:
        return self.clock()

    def holders(self, inflight_key: str) -> dict[str, tuple[Amount, float]]:
        entries = self.leases.get(inflight_key)
        if entries is not None and inflight_key not in self.values:
            # The in-flight key expired with its window: its holders' leases went with it.
            del self.leases[inflight_key]
            return {}
        return dict(entries) if entries else {}

    def put_holder(self, inflight_key: str, holder_id: str, value: Amount, expires_at: float,
                   ttl_s: int | None) -> None:
        entries = self.leases.setdefault(inflight_key, {})
        if value == _ZERO:
            entries.pop(holder_id, None)
            if not entries:
                del self.leases[inflight_key]
        else:
            entries[holder_id] = (value, expires_at)

    def get(self, key: str) -> Amount:
        exp = self.expiry.get(key)
        if exp is not None and exp <= self.clock():
            self.values.pop(key, None)
            self.expiry.pop(key, None)
        return self.values.get(key, _ZERO)

    def put(self, key: str, value: Amount, ttl_s: int | None) -> None:
        self.values[key] = value
        if ttl_s is not None:
            self.expiry[key] = self.clock() + ttl_s


class MemoryCounterStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._view = _View(clock)
        self._marks: dict[str, float | None] = {}
        self._clock = clock

    def try_reserve(self, used_keys: Sequence[str], inflight_key: str, reservation: Amount, limit: Limit,
                    ttl_s: int | None) -> tuple[bool, Amount, Amount]:
        with self._lock:
            return _counting.reserve(self._view, used_keys, inflight_key, reservation, limit, ttl_s)

    def lease(self, used_keys: Sequence[str], inflight_key: str, need: Amount, release: Amount, share: float,
              limit: Limit, ttl_s: int | None, holder: Holder | None = None) -> tuple[Amount, Amount, Amount]:
        with self._lock:
            return _counting.lease(self._view, used_keys, inflight_key, need, release, share, limit, ttl_s, holder)

    def settle(self, bucket_key: str, inflight_key: str, reserved: Amount, actual: Amount,
               ttl_s: int | None, holder: Holder | None = None) -> None:
        with self._lock:
            _counting.settle(self._view, bucket_key, inflight_key, reserved, actual, ttl_s, holder)

    def settle_and_read(self, bucket_key: str, inflight_key: str, reserved: Amount, actual: Amount,
                        ttl_s: int | None, used_keys: Sequence[str],
                        holder: Holder | None = None) -> tuple[Amount, Amount]:
        with self._lock:
            return _counting.settle_and_read(self._view, bucket_key, inflight_key, reserved, actual, ttl_s,
                                             used_keys, holder)

    def add(self, bucket_key: str, actual: Amount, ttl_s: int | None) -> None:
        with self._lock:
            _counting.add(self._view, bucket_key, actual, ttl_s)

    def read(self, used_keys: Sequence[str], inflight_key: str) -> tuple[Amount, Amount]:
        with self._lock:
            return _counting.read(self._view, used_keys, inflight_key)

    def mark_once(self, key: str, ttl_s: int | None) -> bool:
        now = self._clock()
        with self._lock:
            if key in self._marks:
                exp = self._marks[key]
                if exp is None or exp > now:
                    return False
            self._marks[key] = None if ttl_s is None else now + ttl_s
            return True

    def after_fork_in_child(self) -> None:
        """A parent thread may have held the lock at the fork; the child's copy would never be released."""
        self._lock = threading.Lock()

    def close(self) -> None:
        pass
