# SPDX-License-Identifier: Apache-2.0
"""Every instrument this package emits (``instruments``), created once, the metric label policy
behind them (``labels``), the span attributes they share (``attributes``) and the metrics read
from the budget stores (``stores``)."""

from __future__ import annotations

from .attributes import put_present, semconv_attributes
from .instruments import Telemetry
from .labels import LabelPolicy
from .stores import register_budget_gauges, register_lease_metrics, register_store_metrics

__all__ = ["LabelPolicy", "Telemetry", "put_present", "register_budget_gauges", "register_lease_metrics",
           "register_store_metrics", "semconv_attributes"]
