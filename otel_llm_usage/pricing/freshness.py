# SPDX-License-Identifier: Apache-2.0
"""How old the prices in use are: rows for ``prices catalogs``, the age gauge and the start-up warning.

A catalog's read date is the oldest ``read_on`` of its entries still on sale (see
:meth:`~otel_llm_usage.pricing.catalog.CatalogFile.read_on`); its age is counted in whole days
from that date to ``today``. Past :data:`STALE_AFTER_DAYS` a catalog is stale: prices move
(OpenAI, DeepSeek and Alibaba all repriced within a year), and a cost tool with old prices is
wrong without saying so. ::

    rows = catalog_rows(catalog, today=date.today(), in_use=stage.used_catalogs)
    warn_if_stale(catalog.catalogs, today=date.today())   # one WARNING line, or nothing
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Collection, Sequence
from typing import Any

from .catalog import CatalogFile, PriceCatalog

__all__ = ["STALE_AFTER_DAYS", "catalog_rows", "stale_catalogs", "today_utc", "warn_if_stale"]

#: The age (days) past which a catalog counts as stale; the LLMPricingCatalogStale alert uses the same.
STALE_AFTER_DAYS = 120

logger = logging.getLogger("otel_llm_usage.pricing")


def today_utc(epoch_seconds: float) -> _dt.date:
    return _dt.datetime.fromtimestamp(epoch_seconds, _dt.timezone.utc).date()


def catalog_rows(catalog: PriceCatalog, today: _dt.date, in_use: Collection[str] = ()) -> list[dict[str, Any]]:
    """One row per catalog file: what it prices, how old it is and whether it priced a call."""
    rows = []
    for file in catalog.catalogs:
        read_on = file.read_on(today)
        rows.append({
            "catalog": file.name, "origin": file.origin, "provider": file.provider, "region": file.region,
            "currency": file.currency, "read_on": read_on.isoformat(), "file_read_on": file.file_read_on.isoformat(),
            "age_days": (today - read_on).days, "entries": len(file.entries),
            "stale": (today - read_on).days > STALE_AFTER_DAYS, "in_use": file.key in in_use, "source": file.source,
        })
    return rows


def stale_catalogs(catalogs: Sequence[CatalogFile], today: _dt.date,
                   limit_days: int = STALE_AFTER_DAYS) -> list[CatalogFile]:
    return [c for c in catalogs if c.age_days(today) > limit_days]


def warn_if_stale(catalogs: Sequence[CatalogFile], today: _dt.date) -> bool:
    """Log one WARNING naming every stale catalog (nothing when all are fresh); whether it logged."""
    stale = stale_catalogs(catalogs, today)
    if not stale:
        return False
    listed = ", ".join(f"{c.name} (read {c.read_on(today).isoformat()}, {c.age_days(today)} days)" for c in stale)
    logger.warning("price catalogs older than %d days are in use: %s; costs may be out of date. Update "
                   "otel-llm-usage, or write a current catalog with `otel-llm-usage prices import` and load it "
                   "with pricing.catalog_files", STALE_AFTER_DAYS, listed)
    return True
