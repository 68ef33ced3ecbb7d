# SPDX-License-Identifier: Apache-2.0
"""CI cross-check: every bundled USD entry that genai-prices (a dev dependency) also prices must agree with
it on the input, output and cached-input price, unless the difference is explained, with a reason and a
date, in ``otel_llm_usage/pricing/data/genai-prices-differences.yaml``.

The comparison table is printed (``pytest -s`` or ``-rP`` shows it): one row per compared figure, marked
``ok``, ``explained`` or ``UNEXPLAINED``. An explanation that no longer matches a difference fails too, so
the file never keeps a stale excuse. Figures compared: ours as ``prices`` shows them (a tiered entry's
first tier; a cache price given as a ratio worked out), theirs the genai-prices price in force now, outside
any time-of-day interval, as genai-prices matches our model id.
"""

from __future__ import annotations

import datetime as dt
import importlib.resources
from decimal import Decimal
from typing import Any

import pytest
import yaml

from otel_llm_usage.pricing.catalog import bundled_catalogs, display_price
from otel_llm_usage.pricing.importers import GENAI_PRICES_PROVIDERS, genai_standard_price
from otel_llm_usage.pricing.models import PriceEntry

genai_data = pytest.importorskip("genai_prices.data", reason="genai-prices is a dev dependency")

DIFFERENCES_FILE = "genai-prices-differences.yaml"
# Entry field -> genai-prices ModelPrice attribute.
FIELDS = {"input": "input_mtok", "output": "output_mtok", "cached_input": "cache_read_mtok"}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    base = getattr(value, "base", value)  # TieredPrices: the price below its first threshold
    return format(Decimal(base).normalize(), "f")


def _explanations() -> list[dict[str, Any]]:
    text = importlib.resources.files("otel_llm_usage.pricing").joinpath("data", DIFFERENCES_FILE).read_text("utf-8")
    listed = yaml.safe_load(text)["differences"] or []
    for item in listed:
        assert str(item.get("reason", "")).strip(), f"{DIFFERENCES_FILE}: {item} has no reason"
        assert isinstance(item.get("date"), dt.date), f"{DIFFERENCES_FILE}: {item} has no date (YYYY-MM-DD)"
    return listed


def _key(provider: Any, model: Any, field: Any, ours: Any, theirs: Any) -> tuple[str, str, str, str, str]:
    return (str(provider), str(model), str(field), _text(ours) or "none", _text(theirs) or "none")


def _compare(now: dt.datetime) -> list[tuple[PriceEntry, str, str, str | None, str | None]]:
    """(entry, genai-prices model id, field, ours, theirs) for every figure both sides price."""
    providers = {p.id: p for p in genai_data.providers}
    rows = []
    for catalog in bundled_catalogs():
        provider = providers.get(GENAI_PRICES_PROVIDERS.get(catalog.provider, ""))
        if catalog.currency != "USD" or provider is None:
            continue
        for entry in catalog.entries:
            info = provider.find_model(entry.model)
            if info is None:
                continue
            price = genai_standard_price(info, now)
            for field, attribute in FIELDS.items():
                ours = _text(display_price(entry, field))
                theirs = _text(getattr(price, attribute, None))
                if field == "cached_input" and ours is None and theirs is None:
                    continue
                rows.append((entry, info.id, field, ours, theirs))
    return rows



def _check(rows: list[Any], listed: list[dict[str, Any]]) -> tuple[list[str], list[tuple[str, ...]], set[Any]]:
    """(table lines, unexplained differences, stale explanations)."""
    explained = {_key(e["provider"], e["model"], e["field"], e.get("ours"), e.get("theirs")) for e in listed}
    unexplained, used = [], set()
    lines = [f"{'provider':<9} {'model':<28} {'genai-prices id':<28} {'field':<13} {'ours':>10} {'theirs':>10}  status"]
    for entry, their_id, field, ours, theirs in rows:
        key = _key(entry.provider, entry.model, field, ours, theirs)
        if ours == theirs:
            status = "ok"
        elif key in explained:
            status = "explained"
            used.add(key)
        else:
            status = "UNEXPLAINED"
            unexplained.append(key)
        lines.append(f"{entry.provider:<9} {entry.model:<28} {their_id:<28} {field:<13} {ours or '-':>10} "
                     f"{theirs or '-':>10}  {status}")
    return lines, unexplained, explained - used


def test_bundled_usd_prices_agree_with_genai_prices() -> None:
    now = dt.datetime.now(dt.timezone.utc)
    rows = _compare(now)
    assert rows, "nothing compared: the USD catalogs and genai-prices share no model"
    lines, unexplained, stale = _check(rows, _explanations())
    print(f"\nbundled USD prices vs genai-prices (in force {now.date().isoformat()}), {len(rows)} figures:")
    print("\n".join(lines))
    assert not unexplained, (f"differences from genai-prices not explained in {DIFFERENCES_FILE} "
                             f"(provider, model, field, ours, theirs): {unexplained}")
    assert not stale, f"{DIFFERENCES_FILE} explains differences that no longer exist; remove them: {sorted(stale)}"


def test_the_check_catches_unexplained_and_stale_differences() -> None:
    entry = PriceEntry(provider="openai", model="gpt-x", currency="USD", input=Decimal("2"), output=Decimal("8"))
    rows = [(entry, "gpt-x", "input", "2", "2.5"), (entry, "gpt-x", "output", "8", "8")]
    _, unexplained, stale = _check(rows, [])
    assert unexplained == [("openai", "gpt-x", "input", "2", "2.5")] and not stale
    reason = {"reason": "r", "date": dt.date(2026, 12, 2)}
    explained = [{"provider": "openai", "model": "gpt-x", "field": "input", "ours": 2, "theirs": 2.5, **reason}]
    lines, unexplained, stale = _check(rows, explained)
    assert not unexplained and not stale and lines[1].endswith("explained") and lines[2].endswith("ok")
    # The explanation names the old figures; once ours changes, it no longer explains anything.
    _, unexplained, stale = _check([(entry, "gpt-x", "input", "3", "2.5")], explained)
    assert unexplained and stale == {("openai", "gpt-x", "input", "2", "2.5")}
