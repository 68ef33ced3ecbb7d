# SPDX-License-Identifier: Apache-2.0
"""Pricing: a dated, sourced price catalog and exact ``Decimal`` cost for every LLM call.

Typical use::

    settings = PricingSettings(currency="CNY", exchange_rates={"USD": 7.1})
    stage = PricingStage(PriceCatalog.from_settings(settings), settings)
    stage.process(record)          # record.cost / .currency / .price_source
"""

from __future__ import annotations

from .catalog import PriceCatalog, canonical_provider, dashscope_region, load_bundled, load_catalog
from .compute import compute_cost, thinking_mode
from .hourly import HourlyBilling
from .models import HourlyPrice, PriceEntry, PriceTier, PricingSettings, VolumePricing, VolumeTier
from .stage import PricingStage, convert_currency
from .volume import VolumeMeter

__all__ = [
    "HourlyBilling",
    "HourlyPrice",
    "PriceCatalog",
    "PriceEntry",
    "PriceTier",
    "PricingSettings",
    "PricingStage",
    "VolumeMeter",
    "VolumePricing",
    "VolumeTier",
    "canonical_provider",
    "compute_cost",
    "convert_currency",
    "dashscope_region",
    "load_bundled",
    "load_catalog",
    "thinking_mode",
]
