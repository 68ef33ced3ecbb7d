# SPDX-License-Identifier: Apache-2.0
"""Test helpers: a loopback server that impersonates OpenAI and DashScope.

Names are resolved lazily so ``python -m otel_llm_usage.testing.server``
does not import the server module twice (once as the package member, once
as ``__main__``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .scenarios import RecordedRequest, Scenario, ScenarioError
    from .server import LoopbackLLMServer

__all__ = ["LoopbackLLMServer", "RecordedRequest", "Scenario", "ScenarioError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import scenarios, server

        return getattr(server if name == "LoopbackLLMServer" else scenarios, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
