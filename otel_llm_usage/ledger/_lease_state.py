# SPDX-License-Identifier: Apache-2.0
"""A process's lease on one budget instance, the admission statistics, and the amount arithmetic
the lease protocol of :mod:`.leases` uses."""

from __future__ import annotations

import os
import secrets
import socket
import threading
from dataclasses import dataclass, field

from .base import INT64_MAX, Amount, Limit

__all__ = ["ALL", "HOLDER_TTL_FACTOR", "LOCAL_SHARE", "ZERO", "Lease", "LeaseStats", "floor0", "holder_id",
           "min_amount", "on_limited"]

ZERO = Amount()
ALL = Amount(INT64_MAX, INT64_MAX)  # a release of "all I hold": the store takes at most the holder's lease

#: A holder's lease is taken from it after this many ``ttl_s`` without news (renewals come every ``ttl_s``).
HOLDER_TTL_FACTOR = 3
# A process admits from its lease for this share of the holder TTL after its last answer from the store
# (measured from when it asked): the rest is margin for clocks running at slightly different rates.
LOCAL_SHARE = 0.8


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def floor0(a: Amount) -> Amount:
    return Amount(max(0, a.cost_nanos), max(0, a.tokens))


def on_limited(limit: Limit, a: Amount) -> Amount:
    """``a`` on the axes ``limit`` limits; leases hold nothing on the others."""
    return Amount(0 if limit.cost_nanos is None else a.cost_nanos, 0 if limit.tokens is None else a.tokens)


def min_amount(a: Amount, b: Amount) -> Amount:
    return Amount(min(a.cost_nanos, b.cost_nanos), min(a.tokens, b.tokens))


@dataclass(slots=True)
class Lease:
    """This process's share of one budget instance (one in-flight key)."""

    used_keys: tuple[str, ...]
    limit: Limit
    ttl_s: int | None
    granted: Amount = ZERO  # held on the store's in-flight key for this process
    inflight: Amount = ZERO  # reservations of calls admitted here and not settled yet
    unflushed: dict[str, Amount] = field(default_factory=dict)  # bucket -> settled, not written yet
    unflushed_total: Amount = ZERO
    seen_used: Amount = ZERO  # the store's used at the last contact
    others: Amount = ZERO  # the store's in-flight that is not this lease, at the last contact
    last_grant: Amount = ZERO
    renew_at: float = 0.0
    busy: bool = False  # admitted a call since the last renewal
    refused_until: float = 0.0  # the store said "at the limit" this recently: refuse without asking again
    flight: threading.Event | None = None  # set when the request a thread has in flight with the store ends
    refill: bool = False  # below the low-water mark: topped up by the background thread (or an event loop)
    valid_until: float = 0.0  # admit from the lease until then (the store may take it some time after)
    lost: bool = False  # the lease went stale: the next request hands back all the store still holds of it
    # A request ended without its answer: the store may hold a grant of it this process never saw
    # (under-admission: others see it as spoken for), handed back with the rest at the first quiet
    # renewal (nothing in flight, nothing admitted since the renewal before) or at exit.
    uncertain: bool = False
    exchanges: int = 0  # requests of this process on the lease's keys the store has not answered yet
    landed: int = 0  # answers taken in so far: a read that saw none land in between saw one state

    def free(self) -> Amount:
        return on_limited(self.limit, self.granted - self.inflight - self.unflushed_total)

    def fits(self, reservation: Amount) -> bool:
        """The free part covers ``reservation`` and is not empty on a limited axis: a call reserving
        nothing (an unpriced model on a cost budget) is admitted only while the lease holds some
        allowance, as the store admits it only below the limit."""
        free, need, limit = self.free(), on_limited(self.limit, reservation), self.limit
        return ((limit.cost_nanos is None or free.cost_nanos >= max(need.cost_nanos, 1))
                and (limit.tokens is None or free.tokens >= max(need.tokens, 1)))

    def low(self, fraction: float) -> bool:
        free, grant = self.free(), self.last_grant
        return free.cost_nanos < grant.cost_nanos * fraction or free.tokens < grant.tokens * fraction

    def low_mark(self, fraction: float) -> Amount:
        """The free part at which a refill is asked for: ``fraction`` of the last grant."""
        grant = self.last_grant
        return Amount(int(grant.cost_nanos * fraction), int(grant.tokens * fraction))

    def idle(self) -> bool:
        return self.granted == ZERO and self.inflight == ZERO and not self.unflushed


@dataclass(slots=True)
class LeaseStats:
    """How admission went: ``waits`` is the number of calls that waited for the store."""

    local: int = 0
    waits: int = 0
    refused_locally: int = 0
    would_block: int = 0
    refills: int = 0
    loop_refills: int = 0  # of ``refills``, those awaited on an event loop
    returns: int = 0
    flushes: int = 0

    def admissions(self) -> dict[str, int]:
        """Budget checks by how they were answered (the ``path`` label of the admissions metric)."""
        return {"local": self.local, "store": self.waits, "thread": self.would_block,
                "refused_locally": self.refused_locally}

