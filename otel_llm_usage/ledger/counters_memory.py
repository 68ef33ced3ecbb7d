# SPDX-License-Identifier: Apache-2.0
"""In-process budget counters: one lock, exact, lost on exit (use SQLite or Redis to keep them)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from .base import Amount, Limit

__all__ = ["MemoryCounterStore"]


class MemoryCounterStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, Amount] = {}
        self._expiry: dict[str, float] = {}
        self._marks: dict[str, float | None] = {}
        self._clock = clock

    def _get(self, key: str) -> Amount:
        exp = self._expiry.get(key)
        if exp is not None and exp <= self._clock():
            self._values.pop(key, None)
            self._expiry.pop(key, None)
        return self._values.get(key, Amount())

    def _put(self, key: str, value: Amount, ttl_s: int | None) -> None:
        self._values[key] = value
        if ttl_s is not None:
            self._expiry[key] = self._clock() + ttl_s

    def try_reserve(self, used_keys: Sequence[str], inflight_key: str, reservation: Amount, limit: Limit,
                    ttl_s: int | None) -> tuple[bool, Amount, Amount]:
        with self._lock:
            used = sum((self._get(k) for k in used_keys), Amount())
            inflight = self._get(inflight_key)
            if limit.exhausted_by(used + inflight):
                return False, used, inflight
            self._put(inflight_key, inflight + reservation, ttl_s)
            return True, used, inflight

    def settle(self, bucket_key: str, inflight_key: str, reserved: Amount, actual: Amount,
               ttl_s: int | None) -> None:
        with self._lock:
            left = self._get(inflight_key) - reserved
            self._put(inflight_key, Amount(max(0, left.cost_nanos), max(0, left.tokens)), ttl_s)
            self._put(bucket_key, self._get(bucket_key) + actual, ttl_s)

    def add(self, bucket_key: str, actual: Amount, ttl_s: int | None) -> None:
        with self._lock:
            self._put(bucket_key, self._get(bucket_key) + actual, ttl_s)

    def read(self, used_keys: Sequence[str], inflight_key: str) -> tuple[Amount, Amount]:
        with self._lock:
            return sum((self._get(k) for k in used_keys), Amount()), self._get(inflight_key)

    def mark_once(self, key: str, ttl_s: int | None) -> bool:
        now = self._clock()
        with self._lock:
            if key in self._marks:
                exp = self._marks[key]
                if exp is None or exp > now:
                    return False
            self._marks[key] = None if ttl_s is None else now + ttl_s
            return True

    def close(self) -> None:
        pass
