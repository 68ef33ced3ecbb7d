# SPDX-License-Identifier: Apache-2.0
"""The in-process :class:`~otel_llm_usage.ledger.base.RecordStore`: the most recent records, lost on exit.

A bounded deque, so a long-running process keeps at most ``maxlen`` records
(the oldest fall off first); use SQLite or Redis for a durable ledger::

    store = MemoryRecordStore(maxlen=10_000)
    store.append([record])
    store.query(RecordQuery(user="alice", since=time.time() - 3600))
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import replace

from ..usage import UsageRecord
from ._records import deletion, matches, public_params, select
from .base import RecordQuery

__all__ = ["MemoryRecordStore"]


def _storable(rec: UsageRecord) -> UsageRecord:
    """The record, or a copy without private ``request_params`` (the caller's object is left alone)."""
    if not rec.request_params:
        return rec
    params = public_params(rec.request_params)
    return rec if params == rec.request_params else replace(rec, request_params=params)


class MemoryRecordStore:
    """Thread-safe; ``query`` returns records in the order they were appended."""

    def __init__(self, maxlen: int = 100_000) -> None:
        self._records: deque[UsageRecord] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def append(self, records: Sequence[UsageRecord]) -> None:
        kept = [_storable(r) for r in records]
        with self._lock:
            self._records.extend(kept)

    def process(self, record: UsageRecord) -> None:
        """Pipeline-stage form of :meth:`append` (memory needs no background writer)."""
        record = _storable(record)
        with self._lock:
            self._records.append(record)

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

    def flush(self, timeout: float | None = None) -> bool:
        return True  # appended as they arrive

    def close(self) -> None:
        pass
