# SPDX-License-Identifier: Apache-2.0
"""otel-llm-usage: what your LLM calls cost, who spent it, and a stop before the budget is blown.

    from otel_llm_usage import track, usage_context

    @track(function="live-reply")
    def reply(anchor_id: str, user_id: str) -> str:
        with usage_context(anchor=anchor_id, user=user_id):
            return client.chat.completions.create(...).choices[0].message.content
"""

from __future__ import annotations

__version__ = "0.1.0"

import typing as _typing

from .attribution import Attribution, current_attribution, track, usage_context
from .budgets.bypass import budget_bypass
from .budgets.events import BudgetEvent
from .errors import BudgetExceeded, ConfigError, OtelLLMUsageError
from .usage import TokenUsage, UsageRecord

if _typing.TYPE_CHECKING:
    from collections.abc import Callable


def record_usage(
    *,
    provider: str,
    model: str,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cached_input_tokens: int = 0,
    reasoning_tokens: int = 0,
    operation: str = "chat",
    function: str | None = None,
    user: str | None = None,
    session: str | None = None,
    anchor: str | None = None,
) -> UsageRecord:
    """Record usage that happened outside instrumented code; it is priced, budgeted and exported like a call."""
    from .runtime.core import active_runtime

    for name, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens),
                        ("cached_input_tokens", cached_input_tokens), ("reasoning_tokens", reasoning_tokens)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    runtime = active_runtime()
    assert runtime is not None
    attribution = current_attribution(Attribution(function, user, session, anchor))
    record = UsageRecord(
        provider=provider,
        operation=operation,
        request_model=model,
        tokens=TokenUsage(input_tokens, output_tokens, cached_input_tokens, 0, reasoning_tokens).clamp(),
        function=attribution.function,
        user=runtime.telemetry.labels.hash_user(attribution.user),
        session=attribution.session,
        anchor=attribution.anchor,
        usage_source="manual",
    )
    runtime.pricer.process(record)  # the caller gets the record back priced (the pipeline skips it)
    runtime.pipeline.submit(record)
    return record


def flush(timeout_s: float = 5.0) -> bool:
    """Finish the work queued for calls made so far: budget settlement and events, metric values,
    ledger writes. ``False`` if it did not finish within ``timeout_s``.

    Calls return before that work is done (it runs on a background thread); readers such as
    :func:`get_budget_status` and metric collection catch up by themselves, so this is for code
    that needs budget callbacks or ledger rows *now*. Exporting stays with the OpenTelemetry
    providers (their ``force_flush``)."""
    from .runtime.core import active_runtime

    runtime = active_runtime(create=False)
    return runtime.flush_ledger(timeout_s) if runtime is not None else True


def get_budget_status() -> list[dict[str, object]]:
    """Every budget instance with used / limit / utilization (empty until budgets are configured)."""
    from .runtime.core import active_runtime

    runtime = active_runtime(create=False)
    return [dict(row) for row in runtime.budget_status()] if runtime is not None else []


def start_model(model: str) -> None:
    """Start the runtime meter of an hourly-billed model (``pricing.hourly``) before its first call."""
    from .runtime.core import active_runtime

    runtime = active_runtime()
    assert runtime is not None
    runtime.pricer.stage.hourly.start_model(model)


def stop_model(model: str) -> None:
    """Stop the runtime meter of an hourly-billed model (e.g. when its GPU server is shut down)."""
    from .runtime.core import active_runtime

    runtime = active_runtime()
    assert runtime is not None
    runtime.pricer.stage.hourly.stop_model(model)


def register_budget_callback(fn: Callable[[BudgetEvent], None]) -> None:
    """Call ``fn(event)`` on every budget event (warn, exceeded, blocked, downgraded, exit)."""
    from .runtime.core import active_runtime

    runtime = active_runtime()
    assert runtime is not None
    runtime.budgets.callbacks.append(fn)


def __getattr__(name: str) -> object:
    # The instrumentor pulls in OpenTelemetry's instrumentation package; import it on demand.
    if name == "LLMUsageInstrumentor":
        from .instrumentor import LLMUsageInstrumentor

        return LLMUsageInstrumentor
    raise AttributeError(name)


__all__ = [
    "Attribution",
    "BudgetEvent",
    "BudgetExceeded",
    "ConfigError",
    "LLMUsageInstrumentor",
    "OtelLLMUsageError",
    "TokenUsage",
    "UsageRecord",
    "__version__",
    "budget_bypass",
    "current_attribution",
    "flush",
    "get_budget_status",
    "record_usage",
    "register_budget_callback",
    "start_model",
    "stop_model",
    "track",
    "usage_context",
]
