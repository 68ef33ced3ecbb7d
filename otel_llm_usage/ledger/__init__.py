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
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError
from .base import NANOS, Amount, CounterStore, Limit, RecordQuery, RecordStore, from_nanos, to_nanos
from .counters_memory import MemoryCounterStore
from .memory import MemoryRecordStore
from .resilient import FailOpenCounterStore
from .sqlite import SqliteCounterStore, SqliteDatabase, SqliteRecordStore, default_sqlite_path
from .writer import LedgerWriter

__all__ = [
    "NANOS",
    "Amount",
    "CounterStore",
    "FailOpenCounterStore",
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


def open_ledger(url: str, *, probe_interval: float = 5.0) -> tuple[RecordStore, CounterStore]:
    """The record store and counter store a ``ledger:`` URL names. The caller closes both.

    Raises :class:`~otel_llm_usage.errors.ConfigError` for an unknown scheme, a relative SQLite
    path, a file that is not a SQLite database, or a missing ``redis`` client. An unreachable
    Redis or a locked SQLite file does not raise here: operations degrade later.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        return MemoryRecordStore(), MemoryCounterStore()
    if scheme == "sqlite":
        parts = urlsplit(url)
        raw = unquote(parts.path)
        if parts.netloc or (raw and not raw.startswith("/")):
            raise ConfigError(f"ledger {url!r}: use an absolute path, sqlite:///abs/path.db")
        db = SqliteDatabase(raw or default_sqlite_path())
        counters: CounterStore = SqliteCounterStore(db)
        return SqliteRecordStore(db), FailOpenCounterStore(counters, probe_interval=probe_interval)
    if scheme in ("redis", "rediss"):
        from .redis import RedisCounterStore, RedisRecordStore

        counters = RedisCounterStore(url)
        return RedisRecordStore(url), FailOpenCounterStore(counters, probe_interval=probe_interval)
    raise ConfigError(f"ledger {url!r}: must start with memory://, sqlite:///PATH or redis://HOST:PORT/DB")


def purge_older_than(store: RecordStore, days: float, *, now: float | None = None) -> int:
    """Retention: delete records older than ``days``; returns how many."""
    if days < 0:
        raise ValueError("days must be >= 0")
    return store.purge((time.time() if now is None else now) - days * _DAY_S)
