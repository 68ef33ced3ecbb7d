# SPDX-License-Identifier: Apache-2.0
"""Token amounts as people write them (``otel_llm_usage.cli.amounts``): what is accepted and what is not."""

from __future__ import annotations

import pytest

from otel_llm_usage.cli.amounts import MAX_AMOUNT, AmountError, parse_amount


@pytest.mark.parametrize(("text", "tokens"), [
    pytest.param("350000", 350_000, id="plain"),
    pytest.param("350,000", 350_000, id="commas"),
    pytest.param("350 000", 350_000, id="space"),
    pytest.param("350\u00a0000", 350_000, id="no-break-space"),
    pytest.param("1_000_000", 1_000_000, id="underscores"),
    pytest.param("350K", 350_000, id="K"),
    pytest.param("350k", 350_000, id="k"),
    pytest.param("1.2M", 1_200_000, id="fraction-M"),
    pytest.param("2B", 2_000_000_000, id="B"),
    pytest.param("35万", 350_000, id="wan"),
    pytest.param("1.5亿", 150_000_000, id="yi"),
    pytest.param("3千", 3_000, id="qian"),
    pytest.param(" 12 K ", 12_000, id="spaces-around-unit"),
    pytest.param("0", 0, id="zero"),
])
def test_accepted(text: str, tokens: int) -> None:
    assert parse_amount(text) == tokens


@pytest.mark.parametrize(("text", "reason"), [
    pytest.param("35萬", "traditional 萬", id="traditional-wan"),
    pytest.param("2億", "traditional 億", id="traditional-yi"),
    pytest.param("-5", "signed", id="negative"),
    pytest.param("+5", "signed", id="plus"),
    pytest.param("1e400", "exponents", id="huge-exponent"),
    pytest.param("1e6", "exponents", id="exponent"),
    pytest.param("", "empty", id="empty"),
    pytest.param("   ", "empty", id="blank"),
    pytest.param("abc", "not a token amount", id="word"),
    pytest.param("1,5M", "groups must be of three", id="decimal-comma"),
    pytest.param("35,00", "groups must be of three", id="bad-grouping"),
    pytest.param("1,000 000", "mixes digit separators", id="mixed-separators"),
    pytest.param("1.5", "whole number", id="fraction-without-unit"),
    pytest.param("1.2345K", "not a whole number", id="fractional-tokens"),
    pytest.param("5X", "unknown unit", id="unknown-unit"),
    pytest.param("10亿亿", "unknown unit", id="double-unit"),
    pytest.param("２万", "not a token amount", id="full-width-digit"),
    pytest.param(f"{MAX_AMOUNT + 1}", "typo", id="too-large"),
])
def test_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(AmountError, match=reason):
        parse_amount(text)


def test_traditional_unit_message_suggests_the_fix() -> None:
    with pytest.raises(AmountError, match="write 35万 instead"):
        parse_amount("35萬")
