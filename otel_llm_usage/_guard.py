# SPDX-License-Identifier: Apache-2.0
"""Our own faults never reach the host: log once per kind, count, carry on."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Callable

__all__ = ["internal_error", "internal_error_counts", "set_error_sink"]

logger = logging.getLogger("otel_llm_usage")

_lock = threading.Lock()
_counts: Counter[str] = Counter()
_sink: Callable[[str], None] | None = None


def set_error_sink(sink: Callable[[str], None] | None) -> None:
    """Where counted faults also go (the telemetry counter once it exists)."""
    global _sink
    _sink = sink


def internal_error(kind: str, exc: BaseException) -> None:
    """Record a fault in our code. Only the exception *type* is logged: messages can carry content."""
    with _lock:
        _counts[kind] += 1
        first = _counts[kind] == 1
    if first:
        logger.warning(
            "otel-llm-usage internal error in %s (%s); the call itself was not affected. "
            "Further errors of this kind are counted, not logged.",
            kind,
            type(exc).__name__,
            exc_info=logger.isEnabledFor(logging.DEBUG),
        )
    else:
        logger.debug("otel-llm-usage internal error in %s (%s)", kind, type(exc).__name__)
    sink = _sink
    if sink is not None:
        with contextlib.suppress(Exception):
            sink(kind)


def internal_error_counts() -> dict[str, int]:
    with _lock:
        return dict(_counts)
