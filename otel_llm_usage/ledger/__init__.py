# SPDX-License-Identifier: Apache-2.0
"""Where usage records are kept: in memory now; SQLite and Redis backends plug in here."""

from __future__ import annotations

from .memory import MemoryLedger

__all__ = ["MemoryLedger"]
