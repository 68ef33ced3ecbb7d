# SPDX-License-Identifier: Apache-2.0
"""The exceptions otel-llm-usage can raise into application code.

    OtelLLMUsageError
    ├── ConfigError        invalid configuration, at start-up only
    └── BudgetExceeded     a ``block`` budget refused a call before it was sent

Nothing else of ours ever reaches the host application: instrumentation
faults are logged once per kind and counted instead.
"""

from __future__ import annotations

from decimal import Decimal

__all__ = ["BudgetExceeded", "ConfigError", "OtelLLMUsageError"]


class OtelLLMUsageError(Exception):
    """Base class of every exception this package raises on purpose."""


class ConfigError(OtelLLMUsageError, ValueError):
    """The configuration file or an ``OTEL_LLM_USAGE_*`` variable is invalid."""


class BudgetExceeded(OtelLLMUsageError):
    """Raised before a request is sent when a ``block`` budget has no room left."""

    def __init__(
        self,
        budget: str,
        scope: str,
        used: Decimal | int,
        limit: Decimal | int,
        unit: str,
    ) -> None:
        self.budget = budget
        self.scope = scope
        self.used = used
        self.limit = limit
        self.unit = unit
        super().__init__(f"budget {budget!r} ({scope}) exhausted: used {used} of {limit} {unit}")
