# SPDX-License-Identifier: Apache-2.0
"""The two ledger interfaces every backend (memory, SQLite, Redis) implements.

* :class:`RecordStore` keeps one row per call for reports, retention and deletes.
  Writes arrive in batches from a background writer, never on the calling thread.
* :class:`CounterStore` keeps budget counters and answers the one hot-path
  question atomically: "may this call start, and if so hold its reservation".

Money in counters is an integer number of nano-units (1e-9) of the reporting
currency, so Redis ``INCRBY`` and SQLite integer columns stay exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Protocol, runtime_checkable

from ..usage import UsageRecord

__all__ = ["INT64_MAX", "NANOS", "Amount", "CounterStore", "Holder", "LoopLeaseStore", "RecordQuery", "RecordStore",
           "StoreBusy",
           "from_nanos", "no_pause", "saturated", "to_nanos"]

NANOS = Decimal("1e9")
# SQLite INTEGER and Redis HINCRBY are signed 64-bit. Python ints are not: a gateway reporting 10**15
# output tokens on a $10/M model is 10**19 nano-units, which neither store accepts.
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


def to_nanos(cost: Decimal) -> int:
    return int((cost * NANOS).to_integral_value(rounding=ROUND_HALF_EVEN))


def from_nanos(nanos: int) -> Decimal:
    return Decimal(nanos) / NANOS


@dataclass(frozen=True, slots=True)
class Amount:
    """Cost (nano-units of the reporting currency) and tokens, added together as a pair."""

    cost_nanos: int = 0
    tokens: int = 0

    def __add__(self, other: Amount) -> Amount:
        return Amount(self.cost_nanos + other.cost_nanos, self.tokens + other.tokens)

    def __sub__(self, other: Amount) -> Amount:
        return Amount(self.cost_nanos - other.cost_nanos, self.tokens - other.tokens)


def saturated(amount: Amount) -> Amount:
    """``amount`` with each axis clamped to the signed 64-bit range the stores keep: an absurd
    usage saturates a counter (and blocks its budget) instead of failing every later write."""
    cost, tokens = amount.cost_nanos, amount.tokens
    if INT64_MIN <= cost <= INT64_MAX and INT64_MIN <= tokens <= INT64_MAX:
        return amount
    return Amount(min(max(cost, INT64_MIN), INT64_MAX), min(max(tokens, INT64_MIN), INT64_MAX))


@dataclass(frozen=True, slots=True)
class Limit:
    """``None`` = not limited on that axis."""

    cost_nanos: int | None = None
    tokens: int | None = None

    def exhausted_by(self, used: Amount) -> bool:
        return (self.cost_nanos is not None and used.cost_nanos >= self.cost_nanos) or (
            self.tokens is not None and used.tokens >= self.tokens
        )


class StoreBusy(Exception):
    """A store operation gave up waiting because another process held the store (a SQLite write lock),
    whether the wait was a host thread's short one or the full busy timeout: contention, not an outage,
    so the store is asked again soon."""


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lease, for how long without news: a process of the fleet.

    The store keeps each holder's lease beside the in-flight total, and a holder that has not
    touched it for ``ttl_s`` seconds (it was killed, or lost the store) loses it: the next lease
    request of anyone takes it out of the in-flight total. ``id`` is unique per process."""

    id: str
    ttl_s: float


@runtime_checkable
class CounterStore(Protocol):
    """Budget counters. ``used_keys`` are the window's bucket keys (one for calendar windows,
    several for rolling ones); ``inflight_key`` holds outstanding reservations of one budget instance.
    Every method is atomic with respect to other processes sharing the store."""

    #: Other processes count in these counters too (SQLite, Redis); ``False``: this process alone.
    shared: bool
    #: ``try_reserve``, ``settle`` and ``settle_and_read`` count here without waiting for a file or the
    #: network (memory; leases, which write in the background and raise ``WouldBlock`` themselves when an
    #: admission would have to wait for the store), so they may run on an event loop.
    counts_locally: bool

    def try_reserve(self, used_keys: Sequence[str], inflight_key: str, reservation: Amount, limit: Limit,
                    ttl_s: int | None) -> tuple[bool, Amount, Amount]:
        """Admit iff ``used + inflight`` is below ``limit`` on every limited axis; if admitted,
        add ``reservation`` to in-flight. Returns (admitted, used, inflight) as seen by the check."""
        ...

    def lease(self, used_keys: Sequence[str], inflight_key: str, need: Amount, release: Amount, share: float,
              limit: Limit, ttl_s: int | None, holder: Holder | None = None) -> tuple[Amount, Amount, Amount]:
        """Take back ``release`` from in-flight, then grant a lease of ``share`` of what remains (never
        less than ``need``) and hold it in flight, or nothing once the limit is reached. With a
        ``holder`` the store also keeps what that holder holds, until it expires. Returns (granted,
        used, inflight before the grant): see :func:`~otel_llm_usage.ledger._counting.lease`."""
        ...

    def settle(self, bucket_key: str, inflight_key: str, reserved: Amount, actual: Amount,
               ttl_s: int | None, holder: Holder | None = None) -> None:
        """Release a reservation (with a ``holder``: out of that holder's lease) and add the actual
        usage to the current bucket."""
        ...

    def settle_and_read(self, bucket_key: str, inflight_key: str, reserved: Amount, actual: Amount,
                        ttl_s: int | None, used_keys: Sequence[str],
                        holder: Holder | None = None) -> tuple[Amount, Amount]:
        """``settle``, then ``read`` of ``used_keys``: one atomic step where the store can fuse them."""
        ...

    def add(self, bucket_key: str, actual: Amount, ttl_s: int | None) -> None:
        """Add usage with no reservation (alert-only budgets, manual records)."""
        ...

    def read(self, used_keys: Sequence[str], inflight_key: str) -> tuple[Amount, Amount]:
        """(used, inflight) now."""
        ...

    def mark_once(self, key: str, ttl_s: int | None) -> bool:
        """True the first time ``key`` is marked (until it expires): warn-once per window, across processes."""
        ...

    def flush(self, timeout_s: float = 2.0) -> bool:
        """Hand the shared store what this process still holds back (usage counted locally in an
        outage, settled usage of leases), within ``timeout_s``; ``False`` if some is left. Never raises."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class LoopLeaseStore(Protocol):
    """A counter store that can also take a lease awaited on an asyncio event loop (Redis), so a
    refill asked for on the loop's thread needs no other thread's turn at the interpreter."""

    @property
    def leases_on_loop(self) -> bool:
        """``lease_on_loop`` works on this store as configured."""
        ...

    async def lease_on_loop(self, used_keys: Sequence[str], inflight_key: str, need: Amount, release: Amount,
                            share: float, limit: Limit, ttl_s: int | None,
                            holder: Holder | None = None) -> tuple[Amount, Amount, Amount]:
        """:meth:`CounterStore.lease`, awaited on the running event loop; raises as ``lease`` does."""
        ...

    async def connect_on_loop(self) -> None:
        """Make the running loop's connection now, ahead of its first ``lease_on_loop``; raises on a fault."""
        ...


@dataclass(frozen=True, slots=True)
class RecordQuery:
    since: float | None = None  # epoch seconds, inclusive
    until: float | None = None  # epoch seconds, exclusive
    provider: str | None = None
    model: str | None = None
    function: str | None = None
    user: str | None = None
    session: str | None = None
    anchor: str | None = None
    limit: int | None = None


def no_pause() -> None:
    """The ``pace`` of a write nobody waits behind (tests, the CLI, a drain at exit)."""


@runtime_checkable
class RecordStore(Protocol):
    #: Writes wait on a file or the network: they get a writer thread of their own (``LedgerWriter``).
    writes_block: bool

    @property
    def location(self) -> str:
        """Where the records go, for log lines: a path or a key, never a credential."""
        ...

    @property
    def unwritable(self) -> str | None:
        """Why the store cannot be written for now (a read-only file), else ``None``: the writer then
        stops waiting for it at exit instead of waiting out ``close_timeout``."""
        ...

    def encode(self, record: UsageRecord) -> Any:
        """``record`` in the form :meth:`write` takes: Python work, no I/O. ``LedgerWriter`` encodes
        where the record is processed (an event loop's slices, the pipeline's worker), so that its
        own thread only sends: a thread running Python beside an event loop makes it wait."""
        ...

    def write(self, encoded: Sequence[Any], *, pace: Callable[[], None] = ...) -> None:
        """Write a batch of records made by :meth:`encode`; raise on failure (the writer retries and
        buffers). A store that still works in Python per item calls ``pace`` between items and
        between requests: the writer thread passes its :class:`~otel_llm_usage._pacing.Pacer`, so a
        batch never holds the host's threads off the interpreter for more than a slice."""
        ...

    def append(self, records: Sequence[UsageRecord], *, pace: Callable[[], None] = ...) -> None:
        """Encode and write the records (the CLI, tests, a late record at exit)."""
        ...

    def query(self, q: RecordQuery) -> list[UsageRecord]:
        """Records matching ``q``, oldest first."""
        ...

    def delete(self, *, model: str | None = None, user: str | None = None) -> int:
        """Delete every record of a model and/or user; returns how many."""
        ...

    def purge(self, before: float) -> int:
        """Retention: drop records older than ``before`` (epoch seconds)."""
        ...

    def close(self) -> None: ...
