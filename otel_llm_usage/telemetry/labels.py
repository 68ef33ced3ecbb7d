# SPDX-License-Identifier: Apache-2.0
"""Metric label values from attribution: capped in number and length, users hashed when asked.

Each attribution label has a distinct-value cap (beyond it values become ``__overflow__``),
values are length-capped, and labels can be dropped in config. Spans carry the detail.
"""

from __future__ import annotations

import hashlib
import hmac
import threading

from .. import _names as N
from ..config import AttributionSettings

__all__ = ["LabelPolicy"]


class LabelPolicy:
    """Turns raw attribution values into bounded, sanitized metric label values."""

    def __init__(self, settings: AttributionSettings) -> None:
        self.enabled = frozenset(settings.metric_labels)
        self.max_values = settings.max_label_values
        self.max_length = settings.max_label_length
        self._hash_key = (settings.hash_key or "").encode() if settings.hash_users else None
        self._seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def hash_user(self, user: str | None) -> str | None:
        """HMAC the user id when configured, so raw ids never leave the process."""
        if user is None or self._hash_key is None:
            return user
        return hmac.new(self._hash_key, user.encode(), hashlib.sha256).hexdigest()[:16]

    def value(self, label: str, raw: str | None) -> str:
        if raw is None or raw == "":
            return N.UNKNOWN
        value = raw if len(raw) <= self.max_length else raw[: self.max_length]
        if label in ("provider", "model"):
            return value  # bounded by the providers and catalog, not by users
        seen = self._seen.get(label)
        if seen is not None and value in seen:
            return value
        with self._lock:
            seen = self._seen.setdefault(label, set())
            if value in seen:
                return value
            if len(seen) >= self.max_values:
                return N.OVERFLOW
            seen.add(value)
        return value
