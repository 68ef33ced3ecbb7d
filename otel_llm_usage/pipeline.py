# SPDX-License-Identifier: Apache-2.0
"""price → budgets → telemetry → ledger, as pluggable stages.

Each stage sees every :class:`~otel_llm_usage.usage.UsageRecord` once, in
order, and runs guarded: a failing stage is logged and counted and the next
stage still runs. Pricing and the in-memory budget update are synchronous
(the next call must see them); a ledger stage queues and writes off-thread.

Budgets also get a say *before* a call (:meth:`Pipeline.before_call`): they
may raise :class:`~otel_llm_usage.errors.BudgetExceeded` or return a cheaper
model to use instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from ._guard import internal_error
from .errors import BudgetExceeded
from .usage import UsageRecord

__all__ = ["CallIntent", "Pipeline", "PreCallStage", "Stage"]


@runtime_checkable
class Stage(Protocol):
    def process(self, record: UsageRecord) -> None: ...


class CallIntent:
    """What a call is about to do, for pre-call budget checks (no content).

    The input-size estimate walks the request's messages, so it is computed
    only if a budget actually needs it.
    """

    __slots__ = ("_estimate", "_input_tokens", "max_output_tokens", "record")

    def __init__(self, record: UsageRecord, estimate_input: Callable[[], int] | int,
                 max_output_tokens: int | None) -> None:
        self.record = record  # provider, model, attribution already filled in
        self.max_output_tokens = max_output_tokens
        self._estimate = estimate_input
        self._input_tokens: int | None = estimate_input if isinstance(estimate_input, int) else None

    @property
    def estimated_input_tokens(self) -> int:
        if self._input_tokens is None:
            self._input_tokens = self._estimate() if callable(self._estimate) else int(self._estimate)
        return self._input_tokens


@runtime_checkable
class PreCallStage(Protocol):
    def before_call(self, intent: CallIntent) -> str | None:
        """Raise ``BudgetExceeded`` to block, return a model name to downgrade, else ``None``."""
        ...


class Pipeline:
    def __init__(self, stages: list[Stage] | None = None) -> None:
        self.stages: list[Stage] = list(stages or [])
        self._pre_call_cache: tuple[int, int, list[PreCallStage]] | None = None

    def add(self, stage: Stage) -> None:
        self.stages.append(stage)

    @property
    def has_pre_call(self) -> bool:
        return bool(self._pre_call_stages())

    def _pre_call_stages(self) -> list[PreCallStage]:
        """Stages that want to see calls before they are sent (budgets that can refuse).

        Cached: ``isinstance`` against a runtime-checkable Protocol inspects every member
        and would cost microseconds per stage on every call. The key notices the list
        being replaced or grown from outside (the fork hook, tests).
        """
        key = (id(self.stages), len(self.stages))
        cache = self._pre_call_cache
        if cache is None or cache[:2] != key:
            found: list[PreCallStage] = [s for s in self.stages
                                         if isinstance(s, PreCallStage) and getattr(s, "wants_pre_call", True)]
            cache = (key[0], key[1], found)
            self._pre_call_cache = cache
        return cache[2]

    def before_call(self, intent: CallIntent) -> str | None:
        """Pre-call checks; ``BudgetExceeded`` propagates on purpose, anything else is ours."""
        new_model: str | None = None
        for stage in self._pre_call_stages():
            try:
                new_model = stage.before_call(intent) or new_model
            except BudgetExceeded:
                raise
            except Exception as exc:
                internal_error(f"stage:{type(stage).__name__}.before_call", exc)
        return new_model

    def submit(self, record: UsageRecord) -> None:
        for stage in self.stages:
            try:
                stage.process(record)
            except Exception as exc:  # one broken stage must not stop the others
                internal_error(f"stage:{type(stage).__name__}", exc)

    def shutdown(self) -> None:
        for stage in self.stages:
            close = getattr(stage, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:
                    internal_error(f"stage:{type(stage).__name__}.close", exc)
