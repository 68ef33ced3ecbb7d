# SPDX-License-Identifier: Apache-2.0
"""The counter arithmetic every CounterStore shares, over any get/put view of its keys.

A backend supplies atomicity (a lock, a transaction) and a view; the rules live here once::

    with transaction() as view:             # view.get(key) -> Amount, view.put(key, Amount, ttl_s)
        return reserve(view, used_keys, inflight_key, reservation, limit, ttl_s)

Memory and SQLite use these functions; Redis states the same rules in Lua (one round trip).

Leases with a :class:`~.base.Holder`: beside the in-flight total the view keeps each holder's lease
and when it expires. Every holder-aware operation first takes the leases of expired holders out of
the in-flight total (:func:`_claim`), releases at most what the asking holder still holds (a lease
taken away meanwhile is not taken out twice) and restarts the holder's expiry.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from .base import Amount, Holder, Limit

__all__ = ["CounterView", "CountingStore", "add", "lease", "lease_grant", "read", "reserve", "settle",
           "settle_and_read"]

_ZERO = Amount()


class CounterView(Protocol):
    def get(self, key: str) -> Amount:
        """The key's amount; zero when absent or expired."""
        ...

    def put(self, key: str, value: Amount, ttl_s: int | None) -> None:
        """Store ``value``; a TTL restarts the expiry, ``None`` keeps the key's current one."""
        ...

    def now(self) -> float:
        """The store's clock (seconds), which holder expiries are compared with."""
        ...

    def holders(self, inflight_key: str) -> dict[str, tuple[Amount, float]]:
        """Every holder's lease on ``inflight_key`` and when it expires, expired ones included."""
        ...

    def put_holder(self, inflight_key: str, holder_id: str, value: Amount, expires_at: float,
                   ttl_s: int | None) -> None:
        """Store a holder's lease (``value`` zero: forget the holder); ``ttl_s`` as for ``put``."""
        ...


def _floor0(a: Amount) -> Amount:
    return Amount(max(0, a.cost_nanos), max(0, a.tokens))


def _min(a: Amount, b: Amount) -> Amount:
    return Amount(min(a.cost_nanos, b.cost_nanos), min(a.tokens, b.tokens))


def _claim(view: CounterView, inflight_key: str, holder: Holder | None,
           ttl_s: int | None) -> tuple[Amount, Amount, bool]:
    """(in-flight with the leases of expired holders taken out, what ``holder`` holds, whether the
    in-flight total changed). Expired holders are forgotten."""
    inflight, mine, changed = view.get(inflight_key), _ZERO, False
    entries = view.holders(inflight_key)
    if entries:
        now = view.now()
        for holder_id, (held, expires_at) in entries.items():
            if expires_at <= now:
                inflight, changed = _floor0(inflight - held), True
                view.put_holder(inflight_key, holder_id, _ZERO, 0.0, ttl_s)
            elif holder is not None and holder_id == holder.id:
                mine = held
    return inflight, mine, changed


def _hold(view: CounterView, inflight_key: str, holder: Holder, held: Amount, ttl_s: int | None) -> None:
    view.put_holder(inflight_key, holder.id, held, view.now() + holder.ttl_s, ttl_s)


def _used(view: CounterView, used_keys: Sequence[str]) -> Amount:
    if len(used_keys) == 1:  # calendar windows: one bucket (this runs before every budgeted call)
        return view.get(used_keys[0])
    return sum((view.get(k) for k in used_keys), Amount())


def reserve(view: CounterView, used_keys: Sequence[str], inflight_key: str, reservation: Amount, limit: Limit,
            ttl_s: int | None) -> tuple[bool, Amount, Amount]:
    used = _used(view, used_keys)
    inflight = view.get(inflight_key)
    if limit.exhausted_by(used + inflight):
        return False, used, inflight
    view.put(inflight_key, inflight + reservation, ttl_s)
    return True, used, inflight


def lease_grant(limit: Limit, used: Amount, inflight: Amount, need: Amount, share: float) -> Amount:
    """What a lease request is granted, given the store's totals: nothing once ``used + inflight``
    reaches the limit on a limited axis; otherwise, on each limited axis, ``share`` of what remains
    but never less than ``need`` (the call waiting for it must fit) nor than 1 (below the limit
    something is always granted). Unlimited axes are not leased. ``share == 0`` with no ``need``
    grants nothing: a pure hand-back.

    Because a grant is made only below the limit and exceeds what remains by less than ``need``,
    ``used + inflight`` never passes ``limit + need``: the fleet-wide overshoot of a per-call
    reservation, whatever the number of processes holding leases."""
    total = used + inflight
    if limit.exhausted_by(total) or (share == 0 and need == Amount()):
        return Amount()
    cost = 0 if limit.cost_nanos is None else \
        max(need.cost_nanos, int((limit.cost_nanos - total.cost_nanos) * share), 1)
    tokens = 0 if limit.tokens is None else max(need.tokens, int((limit.tokens - total.tokens) * share), 1)
    return Amount(cost, tokens)


def lease(view: CounterView, used_keys: Sequence[str], inflight_key: str, need: Amount, release: Amount,
          share: float, limit: Limit, ttl_s: int | None,
          holder: Holder | None = None) -> tuple[Amount, Amount, Amount]:
    """Take back ``release`` (the asking process's unused lease, so its own leftovers never count
    against it) from ``inflight_key``, then grant a lease (:func:`lease_grant`) and hold it there.
    With a ``holder``: expired holders' leases are taken out first, at most what ``holder`` holds
    is released, and the grant is added to what it holds, with a new expiry. Returns (granted,
    used, inflight after the release, before the grant); a zero grant with ``used + inflight`` at
    the limit means refused."""
    used = _used(view, used_keys)
    inflight, mine, changed = _claim(view, inflight_key, holder, ttl_s)
    if holder is not None:
        release = _min(release, mine)
    if release != _ZERO:
        inflight, mine, changed = _floor0(inflight - release), _floor0(mine - release), True
    granted = lease_grant(limit, used, inflight, need, share)
    if granted != _ZERO or changed:
        view.put(inflight_key, inflight + granted, ttl_s)
    if holder is not None:
        _hold(view, inflight_key, holder, mine + granted, ttl_s)
    return granted, used, inflight


def settle(view: CounterView, bucket_key: str, inflight_key: str, reserved: Amount, actual: Amount,
           ttl_s: int | None, holder: Holder | None = None) -> None:
    if holder is None:
        inflight = _floor0(view.get(inflight_key) - reserved)  # never below zero
    else:  # out of the holder's lease, at most what it still holds
        inflight, mine, _ = _claim(view, inflight_key, holder, ttl_s)
        reserved = _min(reserved, mine)
        inflight = _floor0(inflight - reserved)
        _hold(view, inflight_key, holder, _floor0(mine - reserved), ttl_s)
    view.put(inflight_key, inflight, ttl_s)
    view.put(bucket_key, view.get(bucket_key) + actual, ttl_s)


def settle_and_read(view: CounterView, bucket_key: str, inflight_key: str, reserved: Amount, actual: Amount,
                    ttl_s: int | None, used_keys: Sequence[str],
                    holder: Holder | None = None) -> tuple[Amount, Amount]:
    """:func:`settle`, then :func:`read` of the totals the budget thresholds need, in one view."""
    settle(view, bucket_key, inflight_key, reserved, actual, ttl_s, holder)
    return read(view, used_keys, inflight_key)


def add(view: CounterView, bucket_key: str, actual: Amount, ttl_s: int | None) -> None:
    view.put(bucket_key, view.get(bucket_key) + actual, ttl_s)


def read(view: CounterView, used_keys: Sequence[str], inflight_key: str) -> tuple[Amount, Amount]:
    return _used(view, used_keys), view.get(inflight_key)


class CountingStore:
    """A :class:`~.base.CounterStore` made of these rules: a backend supplies ``_view(keys)``, a
    context manager that holds the backend atomic (a lock, a transaction) and yields a view of
    ``keys``, plus ``mark_once``. Memory and SQLite are this; Redis states the rules in Lua."""

    def _view(self, keys: Sequence[str]) -> AbstractContextManager[CounterView]:
        raise NotImplementedError

    def try_reserve(self, used_keys: Sequence[str], inflight_key: str, reservation: Amount, limit: Limit,
                    ttl_s: int | None) -> tuple[bool, Amount, Amount]:
        with self._view([*used_keys, inflight_key]) as view:
            return reserve(view, used_keys, inflight_key, reservation, limit, ttl_s)

    def lease(self, used_keys: Sequence[str], inflight_key: str, need: Amount, release: Amount, share: float,
              limit: Limit, ttl_s: int | None, holder: Holder | None = None) -> tuple[Amount, Amount, Amount]:
        with self._view([*used_keys, inflight_key]) as view:
            return lease(view, used_keys, inflight_key, need, release, share, limit, ttl_s, holder)

    def settle(self, bucket_key: str, inflight_key: str, reserved: Amount, actual: Amount,
               ttl_s: int | None, holder: Holder | None = None) -> None:
        with self._view([bucket_key, inflight_key]) as view:
            settle(view, bucket_key, inflight_key, reserved, actual, ttl_s, holder)

    def settle_and_read(self, bucket_key: str, inflight_key: str, reserved: Amount, actual: Amount,
                        ttl_s: int | None, used_keys: Sequence[str],
                        holder: Holder | None = None) -> tuple[Amount, Amount]:
        """``settle`` then ``read`` in one atomic step (on SQLite a second transaction cost ~11 µs a call)."""
        with self._view([bucket_key, inflight_key, *used_keys]) as view:
            return settle_and_read(view, bucket_key, inflight_key, reserved, actual, ttl_s, used_keys, holder)

    def add(self, bucket_key: str, actual: Amount, ttl_s: int | None) -> None:
        with self._view([bucket_key]) as view:
            add(view, bucket_key, actual, ttl_s)

    def read(self, used_keys: Sequence[str], inflight_key: str) -> tuple[Amount, Amount]:
        with self._view([*used_keys, inflight_key]) as view:
            return read(view, used_keys, inflight_key)

    def mark_once(self, key: str, ttl_s: int | None) -> bool:
        raise NotImplementedError

    def flush(self, timeout_s: float = 2.0) -> bool:
        return True  # counted where it was asked: nothing held back

    def close(self) -> None:
        pass
