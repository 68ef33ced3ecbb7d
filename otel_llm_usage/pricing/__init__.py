# SPDX-License-Identifier: Apache-2.0
"""Pricing: a dated, sourced price catalog and exact ``Decimal`` cost for every LLM call.

Typical use::

    settings = PricingSettings(currency="CNY", exchange_rates={"USD": 7.1})
    stage = PricingStage(PriceCatalog.from_settings(settings), settings)
    stage.process(record)          # record.cost / .currency / .price_source

Catalog files (bundled ``data/*.yaml``, user ``pricing.catalog_files``) and their freshness are in
:mod:`.catalog` and :mod:`.freshness`; converting genai-prices or LiteLLM data into that schema is
:mod:`.importers` (``otel-llm-usage prices import``).
"""

from __future__ import annotations

from .catalog import (
    CatalogError,
    CatalogFile,
    PriceCatalog,
    Resolution,
    canonical_provider,
    dashscope_region,
    load_bundled,
    load_catalog,
    load_catalog_file,
)
from .compute import compute_cost, thinking_mode
from .hourly import HourlyBilling
from .models import HourlyPrice, PriceEntry, PriceTier, PricingSettings, TimeWindow, VolumePricing, VolumeTier
from .stage import PricingStage, convert_currency
from .volume import VolumeMeter

__all__ = [
    "CatalogError",
    "CatalogFile",
    "HourlyBilling",
    "HourlyPrice",
    "PriceCatalog",
    "PriceEntry",
    "PriceTier",
    "PricingSettings",
    "PricingStage",
    "Resolution",
    "TimeWindow",
    "VolumeMeter",
    "VolumePricing",
    "VolumeTier",
    "canonical_provider",
    "compute_cost",
    "convert_currency",
    "dashscope_region",
    "load_bundled",
    "load_catalog",
    "load_catalog_file",
    "thinking_mode",
]
