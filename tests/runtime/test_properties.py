# SPDX-License-Identifier: Apache-2.0
"""Property tests for the parsers and arithmetic that take user or provider input."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from otel_llm_usage.cli.amounts import MAX_AMOUNT, AmountError, parse_amount
from otel_llm_usage.ledger.base import from_nanos, to_nanos

amounts = st.integers(min_value=0, max_value=MAX_AMOUNT)


@given(amounts)
def test_plain_and_grouped_amounts_round_trip(n):
    assert parse_amount(str(n)) == n
    assert parse_amount(f"{n:,}") == n
    assert parse_amount(f"{n:_}") == n
    assert parse_amount(f"{n:,}".replace(",", " ")) == n


@given(st.integers(min_value=0, max_value=MAX_AMOUNT // 10**4))
def test_unit_suffixes_scale_exactly(n):
    assert parse_amount(f"{n}K") == n * 1000
    assert parse_amount(f"{n}万") == n * 10_000
    if n * 10**6 <= MAX_AMOUNT:
        assert parse_amount(f"{n}M") == n * 10**6


@given(st.text(max_size=12))
def test_any_text_parses_to_a_sane_count_or_raises_amount_error(text):
    try:
        n = parse_amount(text)
    except AmountError:
        return
    assert isinstance(n, int) and 0 <= n <= MAX_AMOUNT


@given(st.decimals(min_value=0, max_value=10**9, allow_nan=False, allow_infinity=False, places=9))
def test_nano_units_round_trip_money_exactly(cost):
    assert from_nanos(to_nanos(cost)) == cost


@given(st.decimals(min_value=0, max_value=10**6, allow_nan=False, allow_infinity=False),
       st.decimals(min_value=0, max_value=10**6, allow_nan=False, allow_infinity=False))
def test_nano_units_add_like_decimals_to_within_one_nano(a, b):
    assert abs(from_nanos(to_nanos(a) + to_nanos(b)) - (a + b)) <= Decimal("1e-9")
