# SPDX-License-Identifier: Apache-2.0
"""Where usage is kept: records (reports, retention, deletes) and budget counters.

::

    records, counters = open_ledger("sqlite:///var/lib/myapp/llm-usage.db")
    writer = LedgerWriter(records)           # batches writes off the calling thread
    ...
    writer.close(); records.close(); counters.close()
    purge_older_than(records, days=90)       # retention

``memory://`` keeps both in the process; ``sqlite:///ABS/PATH`` (``sqlite://`` alone = the
default path, see :func:`default_sqlite_path`) shares them between the processes of one
host; ``redis://HOST:PORT/DB`` (optionally ``?prefix=myapp:``) between hosts. Durable
counters come wrapped in :class:`FailOpenCounterStore`, so an unreachable store degrades
budgets to local counting instead of failing calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError
from .base import NANOS, Amount, CounterStore, Limit, RecordQuery, RecordStore, from_nanos, to_nanos
from .leases import LeasedCounterStore
from .memory import MemoryCounterStore, MemoryRecordStore
from .resilient import FailOpenCounterStore
from .sqlite import SqliteCounterStore, SqliteDatabase, SqliteRecordStore, default_sqlite_path
from .urls import ledger_url_problem
from .writer import LedgerWriter

if TYPE_CHECKING:
    from ..config import LeaseSettings

__all__ = [
    "NANOS",
    "Amount",
    "CounterStore",
    "FailOpenCounterStore",
    "LeasedCounterStore",
    "LedgerWriter",
    "Limit",
    "MemoryCounterStore",
    "MemoryRecordStore",
    "RecordQuery",
    "RecordStore",
    "SqliteCounterStore",
    "SqliteDatabase",
    "SqliteRecordStore",
    "default_sqlite_path",
    "from_nanos",
    "open_ledger",
    "purge_older_than",
    "to_nanos",
]

_DAY_S = 86_400.0


def open_ledger(url: str, *, probe_interval: float = 5.0, caller_wait: float | None = None,
                leases: LeaseSettings | None = None,
                clock: Callable[[], float] = time.time) -> tuple[RecordStore, CounterStore]:
    """The record store and counter store a ``ledger:`` URL names. The caller closes both.

    Raises :class:`~otel_llm_usage.errors.ConfigError` for an unknown scheme, a relative SQLite
    path or missing folder, a Redis URL without a numeric port, a file that is not a SQLite database,
    or a missing ``redis`` client. An unreachable Redis or a locked SQLite file does not raise here:
    operations degrade later. ``caller_wait`` bounds how long a SQLite operation from a thread that
    is not one of ours (the host's) waits for a lock; ``None`` waits the full busy timeout (the CLI).
    With ``leases`` enabled, shared counters admit from local leases (:class:`LeasedCounterStore`).
    """
    problem = ledger_url_problem(url)
    if problem is not None:
        raise ConfigError(f"ledger {url!r}: {problem}")
    scheme = url.split("://", 1)[0].lower()
    if scheme == "memory":
        return MemoryRecordStore(), MemoryCounterStore(clock)  # ``clock``: budget windows in tests
    if scheme == "sqlite":
        db = SqliteDatabase(unquote(urlsplit(url).path) or default_sqlite_path(), caller_wait=caller_wait)
        records: RecordStore = SqliteRecordStore(db)
        shared: CounterStore = SqliteCounterStore(db)
    else:
        from .redis import RedisCounterStore, RedisRecordStore

        records, shared = RedisRecordStore(url), RedisCounterStore(url)
    counters = FailOpenCounterStore(shared, probe_interval=probe_interval)
    if leases is None or not leases.enabled:
        return records, counters
    return records, LeasedCounterStore(counters, share=leases.share, ttl_s=leases.ttl, low_water=leases.low_water,
                                       flush_interval=leases.flush_interval)


def purge_older_than(store: RecordStore, days: float, *, now: float | None = None) -> int:
    """Retention: delete records older than ``days``; returns how many."""
    if days < 0:
        raise ValueError("days must be >= 0")
    return store.purge((time.time() if now is None else now) - days * _DAY_S)
