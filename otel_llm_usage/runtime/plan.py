# SPDX-License-Identifier: Apache-2.0
"""Which stage of a call runs on which thread: decided here, once, from what the stores declare."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..ledger.base import RecordStore
from ..ledger.writer import LedgerWriter
from ..usage import UsageRecord
from .pipeline import Stage

__all__ = ["InlineLedger", "StagePlan", "plan_stages"]


class InlineLedger(Stage):
    """The ledger stage of a store whose writes do not wait (memory): appended on the worker."""

    def __init__(self, store: RecordStore) -> None:
        self.store = store

    def process(self, record: UsageRecord) -> None:
        self.store.append((record,))

    def flush(self, timeout: float | None = None) -> bool:
        return True  # appended as they arrive


@dataclass(frozen=True, slots=True)
class StagePlan:
    inline: list[Stage]  # on the calling thread, as the record is submitted
    deferred: list[Stage]  # on the pipeline's worker, in this order
    ledger: InlineLedger | LedgerWriter
    retention_thread: bool  # purge old records on a thread of their own


def plan_stages(pricing: Stage, budgets: Stage, telemetry: Stage, store: RecordStore,
                on_dropped: Callable[[int, str], None]) -> StagePlan:
    """Where each stage runs, and why.

    * **Calling thread: nothing after the span ends.** A call returns to the host as soon as its
      span has ended. The span of a call that records is priced *before* it ends, on the calling
      thread (``CallHandler.price_now``), so that it carries its cost; the budget check before a
      call is the pipeline's pre-call step, not a stage. So ``inline`` is empty.
    * **The worker, in this order:** pricing (records not priced yet: sampled-out spans, manual
      records; it skips the rest), budget settlement (it needs the cost), metrics (they need the
      cost), the ledger (it keeps everything). Every reader drains the worker first, so none of
      them sees stale state; settlement off the calling thread keeps the overshoot bound, since a
      reservation stays in flight until its record is settled. Every counter store settles here:
      with leases, admission is local, so a settlement never makes the next call wait behind it.
    * **An event loop's records, on that loop.** The same deferred stages run in the loop's own
      short slices (``Pipeline``'s module docstring says why); a stage that would wait there (a
      settlement on a store that ``counts_locally`` not, a threshold's warn-once mark and the
      host's callbacks, a stopped writer) hands the record to the worker from that stage on.
    * **The ledger:** a store whose writes wait on a file or the network (``writes_block``) gets a
      writer thread of its own that batches and retries (``LedgerWriter``), and the daily retention
      purge runs on its own thread; an in-memory store is appended to on the worker, which costs
      less than a hand-off to another thread.
    """
    ledger: InlineLedger | LedgerWriter = (LedgerWriter(store, on_dropped=on_dropped) if store.writes_block
                                           else InlineLedger(store))
    return StagePlan(inline=[], deferred=[pricing, budgets, telemetry, ledger], ledger=ledger,
                     retention_thread=store.writes_block)
