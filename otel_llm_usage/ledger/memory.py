# SPDX-License-Identifier: Apache-2.0
"""The in-process ledger, lost on exit (use SQLite or Redis to keep it): records and budget counters.

Records sit in a bounded deque, so a long-running process keeps at most ``maxlen`` of them (the
oldest fall off first)::

    store = MemoryRecordStore(maxlen=10_000)
    store.append([record])
    store.query(RecordQuery(user="alice", since=time.time() - 3600))

Counters hold one lock and are exact; their arithmetic is :mod:`._counting`'s, shared with SQLite,
so this module only supplies atomicity (the lock) and storage (dicts with optional expiry).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace

from .._fork import reset_after_fork
from ..usage import UsageRecord
from . import _counting
from ._records import deletion, matches, public_params, select
from .base import Amount, RecordQuery, no_pause

__all__ = ["MemoryCounterStore", "MemoryRecordStore"]


def _storable(rec: UsageRecord) -> UsageRecord:
    """The record, or a copy without private ``request_params`` (the caller's object is left alone)."""
    if not rec.request_params:
        return rec
    params = public_params(rec.request_params)
    return rec if params == rec.request_params else replace(rec, request_params=params)


class MemoryRecordStore:
    """Thread-safe; ``query`` returns records in the order they were appended."""
    writes_block = False
    location = "memory"
    unwritable = None

    def __init__(self, maxlen: int = 100_000) -> None:
        self._records: deque[UsageRecord] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def encode(self, record: UsageRecord) -> UsageRecord:
        return _storable(record)

    def write(self, encoded: Sequence[UsageRecord], *, pace: Callable[[], None] = no_pause) -> None:
        with self._lock:
            self._records.extend(encoded)

    def append(self, records: Sequence[UsageRecord], *, pace: Callable[[], None] = no_pause) -> None:
        self.write([_storable(r) for r in records])

    def records(self) -> list[UsageRecord]:
        """Every kept record, oldest first."""
        with self._lock:
            return list(self._records)

    def query(self, q: RecordQuery) -> list[UsageRecord]:
        with self._lock:
            snapshot = list(self._records)
        return select(q, snapshot)  # filtered outside the lock: a report must not stall the writer

    def delete(self, *, model: str | None = None, user: str | None = None) -> int:
        q = deletion(model, user)
        with self._lock:
            kept = [r for r in self._records if not matches(q, r)]
            removed = len(self._records) - len(kept)
            self._records = deque(kept, maxlen=self._records.maxlen)
        return removed

    def purge(self, before: float) -> int:
        with self._lock:
            kept = [r for r in self._records if r.timestamp >= before]
            removed = len(self._records) - len(kept)
            self._records = deque(kept, maxlen=self._records.maxlen)
        return removed

    def close(self) -> None:
        pass


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


class _Locked:
    """The view under the store's lock; a class rather than a generator context manager, as
    every budgeted call goes through it."""

    __slots__ = ("lock", "view")

    def __init__(self, lock: threading.Lock, view: _View) -> None:
        self.lock = lock
        self.view = view

    def __enter__(self) -> _View:
        self.lock.acquire()
        return self.view

    def __exit__(self, *exc_info: object) -> None:
        self.lock.release()


class MemoryCounterStore(_counting.CountingStore):
    shared = False
    counts_locally = True
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._locked = _Locked(self._lock, _View(clock))
        self._marks: dict[str, float | None] = {}
        self._clock = clock
        reset_after_fork(self)

    def _view(self, keys: Sequence[str]) -> _Locked:
        return self._locked

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
        self._lock = self._locked.lock = threading.Lock()
