# SPDX-License-Identifier: Apache-2.0
"""One SQLite file shared by the record and counter stores of a process: its schema, connection,
transactions under a process lock with bounded waits, and the errors a locked or unwritable file
gives. See :mod:`.sqlite` for the stores and the reasons behind the settings."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from .._blocking import admission_waits
from .._fork import reset_after_fork
from ..errors import ConfigError
from ._records import COLUMNS
from .base import StoreBusy

__all__ = ["HOLDER", "INSERT_FULL", "ROWS_PER_INSERT", "SCHEMA_VERSION", "UPSERT_COUNTER", "SqliteDatabase",
           "default_sqlite_path", "insert_rows", "open_database"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    record_id TEXT PRIMARY KEY, ts REAL NOT NULL, provider TEXT NOT NULL, operation TEXT NOT NULL,
    model TEXT, response_model TEXT, function TEXT, user TEXT, session TEXT, anchor TEXT,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, cached_input_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL, reasoning_tokens INTEGER NOT NULL, token_details TEXT,
    cost TEXT, currency TEXT, price_source TEXT, duration_s REAL, ttft_s REAL, status TEXT NOT NULL,
    error_type TEXT, usage_source TEXT, streamed INTEGER NOT NULL, server_address TEXT, request_params TEXT
);
CREATE INDEX IF NOT EXISTS records_ts ON records(ts);
CREATE INDEX IF NOT EXISTS records_user ON records(user);
CREATE INDEX IF NOT EXISTS records_model ON records(model);
CREATE INDEX IF NOT EXISTS records_anchor ON records(anchor);
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY, cost_nanos INTEGER NOT NULL, tokens INTEGER NOT NULL, expires_at REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS marks (key TEXT PRIMARY KEY, expires_at REAL) WITHOUT ROWID;
"""
assert len(COLUMNS) == 27  # the CREATE TABLE above lists the same columns in the same order

# Rows per INSERT statement: executemany runs one sqlite3_step per row, and each step hands the GIL
# over and back; on a host whose threads keep the interpreter busy every hand-back waits for the
# switch interval (5 ms), so a 500-record batch meant ~500 forced switches of the host's threads.
# Bounded by SQLite's host-parameter limit (999 before 3.32.0, 32766 since).
ROWS_PER_INSERT = min(100, (32_766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999) // len(COLUMNS))
_ROW = f"({', '.join('?' * len(COLUMNS))})"


def insert_rows(rows: int) -> str:
    return f"INSERT OR IGNORE INTO records ({', '.join(COLUMNS)}) VALUES {', '.join([_ROW] * rows)}"


INSERT_FULL = insert_rows(ROWS_PER_INSERT)
UPSERT_COUNTER = (
    "INSERT INTO counters (key, cost_nanos, tokens, expires_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(key) DO UPDATE SET cost_nanos = excluded.cost_nanos, tokens = excluded.tokens, "
    "expires_at = excluded.expires_at"
)
_SWEEP_EVERY_S = 60.0
HOLDER = "|holder|"  # a holder's lease is the counter row "<in-flight key>|holder|<holder id>"


def default_sqlite_path() -> Path:
    """``$XDG_STATE_HOME/otel-llm-usage/ledger.db`` (``~/.local/state/...`` by default).

    Creates the folder."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    folder = Path(state) / "otel-llm-usage"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "ledger.db"


class SqliteDatabase:
    """One SQLite file: a lazily (re)opened connection, a lock, and the schema.

    Shared by a :class:`SqliteRecordStore` and a :class:`SqliteCounterStore` of the same file so
    they queue on one lock; the file is closed when the last store using it is closed.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 2.0,
                 caller_wait: float | None = None, clock: Callable[[], float] = time.time) -> None:
        self.path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise ConfigError(f"ledger {self.path}: folder {folder} does not exist")
        self.busy_timeout = busy_timeout
        # How long a host thread (any thread not named otel-llm-usage-*) may wait for the file;
        # None: as long as ours. Past it the operation raises "database is locked" and the
        # fail-open counter store answers locally: a lock held by another process for 10 s must
        # not hold the app's call for 10 s. Our own threads (ledger writer, budget refresh) wait, and
        # so does a budget admission the call cannot go on without (see FailOpenCounterStore).
        self.caller_wait = caller_wait
        self.clock = clock
        # When a wait for the file last began that ended locked, with no transaction through since
        # (monotonic); None while the file answers. See _wait.
        self._refused_since: float | None = None
        self.unwritable: str | None = None  # why writes fail for good (permissions, read-only file system)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._busy_ms = -1
        self._reported = False  # the unwritable ERROR is logged once per file
        self._users = 0
        self._closed = False
        self._next_sweep = 0.0
        try:
            with self._lock:
                self._connection(busy_timeout)
        except sqlite3.OperationalError as exc:
            # Locked or unwritable now: operations retry and raise, callers degrade. Noted, not logged
            # yet: a reader (the CLI) has nothing to lose; the first failed write logs.
            self._note_failure(exc, log=False)
        reset_after_fork(self)

    def _wait(self) -> float:
        """The longest this thread may wait for the process lock and for SQLite's busy handler.

        A budget admission (a host call's, or the lease thread's request host calls wait for) waits
        as our threads do, since other processes' short transactions can keep a file busy past a host
        thread's brief wait, except once the file has refused this process for :data:`_HELD_AFTER`
        busy timeouts: that is a lock held for long (a backup, a stuck process), no wait outlasts it,
        and every call missing its lease would wait the whole busy timeout, one after another. Then an
        admission waits as a host read does until a transaction gets through again."""
        if self.caller_wait is None:
            return self.busy_timeout
        if admission_waits():
            refused_since = self._refused_since
            held = refused_since is not None and time.monotonic() - refused_since >= _HELD_AFTER * self.busy_timeout
            return self.caller_wait if held else self.busy_timeout
        if threading.current_thread().name.startswith(_OUR_THREADS):
            return self.busy_timeout
        return self.caller_wait

    def _refused(self, wait: float) -> None:
        if self._refused_since is None:
            self._refused_since = time.monotonic() - wait  # locked since that wait began, at least

    def _note_failure(self, exc: sqlite3.Error, *, log: bool = True) -> None:
        """Name the file and the cause once (ERROR) when it cannot be written at all; a lock is transient."""
        message = str(exc).lower()
        if not any(sign in message for sign in _UNWRITABLE):
            return
        reason = _os_reason(self.path) or str(exc)
        if log and not self._reported:
            self._reported = True
            _logger.error("otel-llm-usage: ledger %s cannot be written (%s); usage records are kept in memory "
                          "and retried, and those still unwritten at exit are dropped (counted in "
                          "llm_usage_ledger_dropped_records_total)", self.path, reason)
        self.unwritable = reason

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._refused_since = None
        if self._conn is not None:
            _inherited_connections.append(self._conn)
            self._conn = None

    def _connection(self, wait: float) -> sqlite3.Connection:
        """The open connection, opening it (and creating the schema) if needed, set to wait at most
        ``wait`` seconds for another process's lock. Caller holds the lock."""
        if self._conn is not None:
            busy_ms = round(wait * 1000)  # a lock taken at once leaves it as it was: no PRAGMA
            if busy_ms != self._busy_ms:
                self._conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
                self._busy_ms = busy_ms
            return self._conn
        if self._closed:
            raise sqlite3.ProgrammingError("the ledger database is closed")
        conn = sqlite3.connect(self.path, timeout=wait, isolation_level=None,
                               check_same_thread=False)  # used by many threads, always under self._lock
        try:
            conn.execute(f"PRAGMA busy_timeout = {round(wait * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            # executescript() would COMMIT first; run the statements one by one inside our transaction
            # so two processes creating the schema at once cannot interleave.
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            if row[0] is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] > SCHEMA_VERSION:
                raise ConfigError(f"ledger {self.path}: schema version {row[0]} was written by a newer "
                                  f"otel-llm-usage (this one reads version {SCHEMA_VERSION})")
            conn.execute("COMMIT")
        except sqlite3.OperationalError:
            conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise ConfigError(f"ledger {self.path} is not a usable SQLite database ({exc}); "
                              "move the file aside or point `ledger:` at another path") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._busy_ms = round(wait * 1000)
        return conn

    def _begin(self, deadline: float) -> sqlite3.Connection:
        """``BEGIN IMMEDIATE`` by ``deadline``, looking for the file every few milliseconds. SQLite's own
        busy handler backs off to one look every 100 ms, and beside another process holding the file
        190 ms at a time and freeing it for 10 ms it missed every gap for a whole 1 s wait. Only what
        is left of the wait: behind a thread of ours that held the connection while it waited for the
        file, a call would otherwise wait twice. Caller holds the lock."""
        while True:
            left = max(0.0, deadline - time.monotonic())
            try:
                conn = self._connection(min(left, _BUSY_STEP_S))  # opening it may meet the lock too
                conn.execute("BEGIN IMMEDIATE")
                return conn
            except sqlite3.OperationalError as exc:
                if left <= _BUSY_STEP_S or not _is_lock(exc):
                    raise

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` under the process lock; rolls back on any error.

        Waits at most :meth:`_wait` for the process lock and the file lock; raises
        ``sqlite3.OperationalError`` past that, a :class:`~.base.StoreBusy` one when it was a lock.
        However long the wait was, a lock is contention: taken for an outage, budgets answered
        locally for the whole probe interval while the file was free again in milliseconds."""
        wait = self._wait()
        deadline = time.monotonic() + wait
        if not self._lock.acquire(timeout=wait):
            self._refused(wait)
            raise _Locked("database is locked (by another thread of this process)")
        try:
            conn = self._begin(deadline)
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):  # the original error is the one worth raising
                        conn.execute("ROLLBACK")
                raise
            self.unwritable = None
            self._refused_since = None
        except sqlite3.OperationalError as exc:
            self._note_failure(exc)
            if isinstance(exc, StoreBusy) or _is_lock(exc):
                self._refused(wait)
            if not isinstance(exc, StoreBusy) and _is_lock(exc):
                raise _Locked(str(exc)) from exc
            raise
        finally:
            self._lock.release()

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._connection(self.busy_timeout)

    def sweep_due(self, now: float) -> bool:
        if now < self._next_sweep:
            return False
        self._next_sweep = now + _SWEEP_EVERY_S
        return True

    def acquire(self) -> SqliteDatabase:
        with self._lock:
            self._users += 1
        return self

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None


_logger = logging.getLogger("otel_llm_usage")
_OUR_THREADS = "otel-llm-usage-"
#: busy timeouts of refusal past which a lock is taken as held for long (see SqliteDatabase._wait)
_HELD_AFTER = 2
#: the longest one look for the file lasts (SQLite's handler sleeps 1, 2, 5, 10 ms... within it)
_BUSY_STEP_S = 0.02
# sqlite3 messages of a file that cannot be written at all (as opposed to "database is locked").
class _Locked(sqlite3.OperationalError, StoreBusy):
    """Locked past this thread's wait: another process (or thread) holds the file."""


def _is_lock(exc: sqlite3.OperationalError) -> bool:
    message = str(exc).lower()
    return "locked" in message or "busy" in message


_UNWRITABLE = ("readonly database", "unable to open database file", "disk i/o error")


def _os_reason(path: str) -> str | None:
    """The operating system's reason the file cannot be opened for writing (SQLite's message hides it)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)  # SQLite would create it too
    except OSError as exc:
        return f"{exc.strerror or exc}: {path}"
    os.close(fd)
    if not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
        return f"folder not writable (the journal files go next to the database): {path}"
    return None


# Connections a forked child inherited: kept referenced so garbage collection never closes them.
_inherited_connections: list[sqlite3.Connection] = []


def open_database(path: str | os.PathLike[str] | SqliteDatabase, busy_timeout: float,
          clock: Callable[[], float]) -> SqliteDatabase:
    db = path if isinstance(path, SqliteDatabase) else SqliteDatabase(path, busy_timeout=busy_timeout,
                                                                      clock=clock)
    return db.acquire()

