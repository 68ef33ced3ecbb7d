# SPDX-License-Identifier: Apache-2.0
"""The counter arithmetic every CounterStore shares, over any get/put view of its keys.

A backend supplies atomicity (a lock, a transaction) and a view; the rules live here once::

    with transaction() as view:             # view.get(key) -> Amount, view.put(key, Amount, ttl_s)
        return reserve(view, used_keys, inflight_key, reservation, limit, ttl_s)

Memory and SQLite use these functions; Redis states the same rules in Lua (one round trip).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .base import Amount, Limit

__all__ = ["CounterView", "add", "lease", "lease_grant", "read", "reserve", "settle", "settle_and_read"]


class CounterView(Protocol):
    def get(self, key: str) -> Amount:
        """The key's amount; zero when absent or expired."""
        ...

    def put(self, key: str, value: Amount, ttl_s: int | None) -> None:
        """Store ``value``; a TTL restarts the expiry, ``None`` keeps the key's current one."""
        ...


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
          share: float, limit: Limit, ttl_s: int | None) -> tuple[Amount, Amount, Amount]:
    """Take back ``release`` (the asking process's unused lease, so its own leftovers never count
    against it) from ``inflight_key``, then grant a lease (:func:`lease_grant`) and hold it there.
    Returns (granted, used, inflight after the release, before the grant); a zero grant with
    ``used + inflight`` at the limit means refused."""
    used = _used(view, used_keys)
    inflight = view.get(inflight_key)
    if release != Amount():
        left = inflight - release
        inflight = Amount(max(0, left.cost_nanos), max(0, left.tokens))
    granted = lease_grant(limit, used, inflight, need, share)
    if granted != Amount() or release != Amount():
        view.put(inflight_key, inflight + granted, ttl_s)
    return granted, used, inflight


def settle(view: CounterView, bucket_key: str, inflight_key: str, reserved: Amount, actual: Amount,
           ttl_s: int | None) -> None:
    left = view.get(inflight_key) - reserved
    view.put(inflight_key, Amount(max(0, left.cost_nanos), max(0, left.tokens)), ttl_s)  # never below zero
    view.put(bucket_key, view.get(bucket_key) + actual, ttl_s)


def settle_and_read(view: CounterView, bucket_key: str, inflight_key: str, reserved: Amount, actual: Amount,
                    ttl_s: int | None, used_keys: Sequence[str]) -> tuple[Amount, Amount]:
    """:func:`settle`, then :func:`read` of the totals the budget thresholds need, in one view."""
    settle(view, bucket_key, inflight_key, reserved, actual, ttl_s)
    return read(view, used_keys, inflight_key)


def add(view: CounterView, bucket_key: str, actual: Amount, ttl_s: int | None) -> None:
    view.put(bucket_key, view.get(bucket_key) + actual, ttl_s)


def read(view: CounterView, used_keys: Sequence[str], inflight_key: str) -> tuple[Amount, Amount]:
    return _used(view, used_keys), view.get(inflight_key)
