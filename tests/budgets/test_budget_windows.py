# SPDX-License-Identifier: Apache-2.0
"""Window arithmetic with a controllable clock: time zones, month ends, DST, rolling decay."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otel_llm_usage.budgets.windows import current_window


def ts(text: str, tz: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


@pytest.mark.parametrize(("window", "tz", "now", "start", "end"), [
    ("day", "Asia/Shanghai", "2026-11-26T23:59:59", "2026-11-26T00:00:00", "2026-11-27T00:00:00"),
    ("day", "Asia/Shanghai", "2026-11-27T00:00:00", "2026-11-27T00:00:00", "2026-11-28T00:00:00"),
    ("hour", "UTC", "2026-11-26T10:30:00", "2026-11-26T10:00:00", "2026-11-26T11:00:00"),
    ("week", "UTC", "2026-11-26T10:30:00", "2026-11-23T00:00:00", "2026-11-30T00:00:00"),  # Thursday → Monday
    ("month", "UTC", "2026-01-31T23:59:59", "2026-01-01T00:00:00", "2026-02-01T00:00:00"),
    ("month", "UTC", "2028-02-29T12:00:00", "2028-02-01T00:00:00", "2028-03-01T00:00:00"),  # leap year
    ("month", "Asia/Shanghai", "2026-12-31T23:00:00", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
])
def test_calendar_windows(window, tz, now, start, end):
    w = current_window(window, tz, ts(now, tz))
    assert (w.start, w.end) == (ts(start, tz), ts(end, tz))
    assert len(w.bucket_ids) == 1


def test_dst_spring_forward_day_is_23_hours():
    tz = "Europe/Berlin"
    w = current_window("day", tz, ts("2026-03-29T12:00:00", tz))
    assert w.end - w.start == 23 * 3600


def test_dst_fall_back_day_is_25_hours_and_repeated_hour_is_two_windows():
    tz = "Europe/Berlin"
    w = current_window("day", tz, ts("2026-10-25T12:00:00", tz))
    assert w.end - w.start == 25 * 3600
    first = current_window("hour", tz, ts("2026-10-25T02:30:00", tz))  # the first 02:30 (CEST)
    second = current_window("hour", tz, first.start + 3600 + 1800)  # the repeated 02:30 (CET)
    assert first.current_bucket != second.current_bucket
    assert second.start - first.start == 3600


def test_same_instant_different_zone_different_day():
    now = ts("2026-11-26T20:00:00", "UTC")  # already the 27th in Shanghai
    assert current_window("day", "UTC", now).start != current_window("day", "Asia/Shanghai", now).start


def test_rolling_window_slides_bucket_by_bucket():
    w0 = current_window("rolling:60m", "UTC", 1_000_000.0)
    assert len(w0.bucket_ids) == 60 and w0.current_bucket == w0.bucket_ids[-1]
    w1 = current_window("rolling:60m", "UTC", 1_000_000.0 + 60)
    assert w1.bucket_ids[:-1] == w0.bucket_ids[1:]  # oldest bucket dropped, one new
    w_later = current_window("rolling:60m", "UTC", 1_000_000.0 + 3600)
    assert w0.current_bucket not in w_later.bucket_ids


@given(st.floats(min_value=0, max_value=4e9), st.sampled_from(["hour", "day", "week", "month"]),
       st.sampled_from(["UTC", "Asia/Shanghai", "Europe/Berlin", "America/New_York"]))
def test_now_is_always_inside_its_window(now, window, tz):
    w = current_window(window, tz, now)
    assert w.start <= now < w.end
    assert current_window(window, tz, w.end).start == w.end  # windows tile time with no gaps
