# SPDX-License-Identifier: Apache-2.0
"""SQLite ledger: durable records and budget counters shared by every process on one host.

::

    db = SqliteDatabase("/var/lib/myapp/llm-usage.db")     # or default_sqlite_path()
    records, counters = SqliteRecordStore(db), SqliteCounterStore(db)
    records.append(batch)                                  # one transaction, 100 rows per INSERT
    counters.try_reserve(["b:day:2024-06-01"], "b:inflight", Amount(0, 500), Limit(tokens=10_000), 86_400)
    records.close(); counters.close()                      # the file closes with its last store

Schema (``schema_version`` holds :data:`SCHEMA_VERSION`)::

    records(record_id TEXT PRIMARY KEY, ts REAL, provider, operation, model, response_model,
            function, user, session, anchor, input_tokens, output_tokens, cached_input_tokens,
            cache_write_tokens, reasoning_tokens INTEGER, token_details TEXT(JSON),
            cost TEXT(Decimal, NULL = unpriced), currency, price_source, duration_s REAL, ttft_s REAL,
            status, error_type, usage_source, streamed INTEGER, server_address,
            request_params TEXT(JSON, keys starting with "_" never stored))
        indexes: ts, user, model, anchor
    counters(key TEXT PRIMARY KEY, cost_nanos INTEGER, tokens INTEGER, expires_at REAL NULL)
    marks(key TEXT PRIMARY KEY, expires_at REAL NULL)

Why it is built this way:

* WAL journal, ``synchronous=NORMAL``: readers never block the writer and a commit costs
  no fsync (a power cut may lose the last commits, never corrupt the file).
* One connection per database object, guarded by a lock. Threads of one process queue on
  that lock (a cheap hand-off) instead of on SQLite's busy handler, which *sleeps* in
  1-100 ms steps; only other processes ever meet the busy handler (``busy_timeout``).
* Every counter operation runs in ``BEGIN IMMEDIATE``: it takes the write lock before
  reading, so read-check-write is atomic across processes. Expired counter rows are
  treated as absent and deleted when touched, plus a sweep at most once a minute.
* ``append`` uses ``INSERT OR IGNORE`` on ``record_id``: a batch retried after an
  ambiguous failure is not counted twice.
* Fork: SQLite forbids using a connection opened before ``fork()`` in the child. An
  ``os.register_at_fork`` hook makes the child open its own connection on first use and
  re-creates the process lock (a parent thread may have held it mid-write). The inherited
  connection is parked, never used and never closed: closing it could run the parent's
  end-of-connection work (WAL checkpoint, lock release) on a file the parent still uses.
* A file that is not a SQLite database raises :class:`~otel_llm_usage.errors.ConfigError`
  when opened (a start-up problem to fix, not to hide). A database that is locked or
  read-only opens anyway and its operations raise ``sqlite3.OperationalError``, which
  :class:`~otel_llm_usage.ledger.resilient.FailOpenCounterStore` and
  :class:`~otel_llm_usage.ledger.writer.LedgerWriter` absorb; the connection is retried.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..usage import UsageRecord
from . import _counting as counting
from ._records import COLUMNS, deletion, from_row, to_row
from ._sqlite_db import (
    HOLDER,
    INSERT_FULL,
    ROWS_PER_INSERT,
    SCHEMA_VERSION,
    UPSERT_COUNTER,
    SqliteDatabase,
    default_sqlite_path,
    insert_rows,
    open_database,
)
from .base import Amount, RecordQuery, no_pause, saturated

__all__ = [
    "SCHEMA_VERSION",
    "SqliteCounterStore",
    "SqliteDatabase",
    "SqliteRecordStore",
    "default_sqlite_path",
]

class SqliteRecordStore:
    writes_block = True

    def __init__(self, path: str | os.PathLike[str] | SqliteDatabase, *, busy_timeout: float = 2.0) -> None:
        self._db = open_database(path, busy_timeout, time.time)
        self._closed = False

    def encode(self, record: UsageRecord) -> tuple[Any, ...]:
        return to_row(record)

    def append(self, records: Sequence[UsageRecord], *, pace: Callable[[], None] = no_pause) -> None:
        self.write([to_row(r) for r in records], pace=pace)

    def write(self, encoded: Sequence[tuple[Any, ...]], *, pace: Callable[[], None] = no_pause) -> None:
        if not encoded:
            return
        # Built (paced) before taking the lock, and not paced inside the transaction: a pause there
        # would hold the file's lock longer.
        statements = []
        for i in range(0, len(encoded), ROWS_PER_INSERT):
            part = encoded[i:i + ROWS_PER_INSERT]
            statements.append((INSERT_FULL if len(part) == ROWS_PER_INSERT else insert_rows(len(part)),
                               [value for row in part for value in row]))
            pace()
        with self._db.transaction() as conn:
            for sql, values in statements:
                conn.execute(sql, values)

    @property
    def unwritable(self) -> str | None:
        """Why the file cannot be written for now (the writer then stops waiting for it at exit)."""
        return self._db.unwritable

    @property
    def location(self) -> str:
        return self._db.path

    def query(self, q: RecordQuery) -> list[UsageRecord]:
        where, args = _where(q.since, q.until, q.provider, q.model, q.function, q.user, q.session, q.anchor)
        sql = f"SELECT {', '.join(COLUMNS)} FROM records{where} ORDER BY ts, rowid"
        if q.limit is not None:
            sql += " LIMIT ?"
            args.append(q.limit)
        with self._db.reading() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [from_row(row) for row in rows]

    def delete(self, *, model: str | None = None, user: str | None = None) -> int:
        q = deletion(model, user)
        where, args = _where(model=q.model, user=q.user)
        with self._db.transaction() as conn:
            return conn.execute(f"DELETE FROM records{where}", args).rowcount

    def purge(self, before: float) -> int:
        with self._db.transaction() as conn:
            return conn.execute("DELETE FROM records WHERE ts < ?", (before,)).rowcount

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._db.release()


def _where(since: float | None = None, until: float | None = None, provider: str | None = None,
           model: str | None = None, function: str | None = None, user: str | None = None,
           session: str | None = None, anchor: str | None = None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if since is not None:
        clauses.append("ts >= ?")
        args.append(since)
    if until is not None:
        clauses.append("ts < ?")
        args.append(until)
    if model is not None:
        # The model label: request model, else response model, else "unknown" (UsageRecord.model).
        clauses.append("(model = ? OR (model IS NULL AND COALESCE(response_model, 'unknown') = ?))")
        args += [model, model]
    for column, value in (("provider", provider), ("function", function), ("user", user),
                          ("session", session), ("anchor", anchor)):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


class SqliteCounterStore(counting.CountingStore):
    """:class:`~otel_llm_usage.ledger.base.CounterStore` on SQLite; behaves like ``MemoryCounterStore``."""
    shared = True
    counts_locally = False

    def __init__(self, path: str | os.PathLike[str] | SqliteDatabase, *, busy_timeout: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._db = open_database(path, busy_timeout, clock)
        self._clock = self._db.clock
        self._closed = False

    @contextmanager
    def _view(self, keys: Sequence[str]) -> Iterator[_Counters]:
        now = self._clock()
        with self._db.transaction() as conn:
            if self._db.sweep_due(now):
                # A holder's expired lease still counts in flight until an operation takes it out
                # (_counting._claim); its row goes here only once its in-flight row has gone too.
                conn.execute(f"DELETE FROM counters WHERE expires_at <= ? AND key NOT LIKE '%{HOLDER}%'", (now,))
                conn.execute(f"DELETE FROM counters WHERE key LIKE '%{HOLDER}%' AND expires_at <= ? AND "
                             f"substr(key, 1, instr(key, '{HOLDER}') - 1) NOT IN (SELECT key FROM counters)", (now,))
                conn.execute("DELETE FROM marks WHERE expires_at <= ?", (now,))
            yield _Counters(conn, keys, now)

    def mark_once(self, key: str, ttl_s: int | None) -> bool:
        now = self._clock()
        with self._db.transaction() as conn:
            row = conn.execute("SELECT expires_at FROM marks WHERE key = ?", (key,)).fetchone()
            if row is not None and (row[0] is None or row[0] > now):
                return False
            conn.execute("INSERT OR REPLACE INTO marks (key, expires_at) VALUES (?, ?)",
                         (key, None if ttl_s is None else now + ttl_s))
            return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._db.release()


class _Counters:
    """A :class:`~._counting.CounterView` of the rows of one operation, loaded once inside its
    transaction; expired rows read as absent (and are deleted)."""

    def __init__(self, conn: sqlite3.Connection, keys: Sequence[str], now: float) -> None:
        self._conn = conn
        self._now = now
        self._rows: dict[str, tuple[Amount, float | None]] = {}
        unique = list(dict.fromkeys(keys))
        marks = ", ".join("?" * len(unique))
        found = conn.execute(
            f"SELECT key, cost_nanos, tokens, expires_at FROM counters WHERE key IN ({marks})", unique
        ).fetchall()
        expired = []
        for key, cost, tokens, expires_at in found:
            if expires_at is not None and expires_at <= now:
                expired.append((key,))
            else:
                self._rows[key] = (Amount(cost, tokens), expires_at)
        if expired:
            conn.executemany("DELETE FROM counters WHERE key = ?", expired)

    def get(self, key: str) -> Amount:
        row = self._rows.get(key)
        return Amount() if row is None else row[0]

    def now(self) -> float:
        return self._now

    def holders(self, inflight_key: str) -> dict[str, tuple[Amount, float]]:
        # Rows "<inflight key>|holder|<id>": a range scan of the primary key.
        prefix = inflight_key + HOLDER
        rows = self._conn.execute(
            "SELECT key, cost_nanos, tokens, expires_at FROM counters WHERE key >= ? AND key < ?",
            (prefix, prefix + "\U0010ffff")).fetchall()
        return {key[len(prefix):]: (Amount(cost, tokens), expires_at) for key, cost, tokens, expires_at in rows}

    def put_holder(self, inflight_key: str, holder_id: str, value: Amount, expires_at: float,
                   ttl_s: int | None) -> None:
        key = inflight_key + HOLDER + holder_id
        if value == Amount():
            self._conn.execute("DELETE FROM counters WHERE key = ?", (key,))
        else:
            value = saturated(value)
            self._conn.execute(UPSERT_COUNTER, (key, value.cost_nanos, value.tokens, expires_at))

    def put(self, key: str, value: Amount, ttl_s: int | None) -> None:
        # Like MemoryCounterStore: a TTL restarts the expiry, no TTL keeps the one the key has.
        old = self._rows.get(key)
        expires_at = self._now + ttl_s if ttl_s is not None else (None if old is None else old[1])
        value = saturated(value)  # an out-of-range INTEGER would fail this and every later write
        self._rows[key] = (value, expires_at)
        self._conn.execute(UPSERT_COUNTER, (key, value.cost_nanos, value.tokens, expires_at))
