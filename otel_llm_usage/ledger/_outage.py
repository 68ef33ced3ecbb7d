# SPDX-License-Identifier: Apache-2.0
"""What the fail-open counter store keeps to answer locally during an outage: the last totals the
shared store gave for each budget instance, and the reservations the local stand-in took."""

from __future__ import annotations

import threading
from collections import OrderedDict

from .base import Amount

__all__ = ["Baseline", "LocalReservations"]

_Where = tuple[tuple[str, ...], str]  # (used keys, in-flight key) of one budget instance
_ZERO = Amount()


class Baseline:
    """The last (used, in-flight) the primary reported per budget instance, for the ``size`` most
    recently seen: while it is down, local admission adds what it counts to these."""

    def __init__(self, size: int) -> None:
        self._seen: OrderedDict[_Where, tuple[Amount, Amount]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def remember(self, where: _Where, used: Amount, inflight: Amount) -> None:
        with self._lock:
            self._seen[where] = (used, inflight)
            self._seen.move_to_end(where)
            if len(self._seen) > self._size:
                self._seen.popitem(last=False)

    def recall(self, where: _Where) -> tuple[Amount, Amount]:
        with self._lock:
            return self._seen.get(where, (_ZERO, _ZERO))

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()


def _covers(have: Amount, want: Amount) -> bool:
    return have.cost_nanos >= want.cost_nanos and have.tokens >= want.tokens


class LocalReservations:
    """Reservations (and lease grants) the local stand-in took, per in-flight key: settling one of
    them releases it locally, never on the primary, which never held it."""

    def __init__(self) -> None:
        self._held: dict[str, Amount] = {}
        self._lock = threading.Lock()

    def __contains__(self, inflight_key: str) -> bool:
        return inflight_key in self._held

    def hold(self, inflight_key: str, amount: Amount) -> None:
        with self._lock:
            self._held[inflight_key] = self._held.get(inflight_key, _ZERO) + amount

    def take(self, inflight_key: str, reserved: Amount) -> bool:
        """Was ``reserved`` taken locally? If so, forget it (it is being settled)."""
        with self._lock:
            have = self._held.get(inflight_key)
            if have is None or not _covers(have, reserved):
                return False
            left = have - reserved
            if left == _ZERO:
                del self._held[inflight_key]
            else:
                self._held[inflight_key] = left
            return True

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
