# SPDX-License-Identifier: Apache-2.0
"""Budget window arithmetic: pure functions of (window, time zone, now).

Calendar windows (hour/day/week/month) start at local wall-clock boundaries
in the budget's time zone, so "day" in Asia/Shanghai resets at 00:00 CST and
a DST day in Europe/Berlin is 23 or 25 hours long. Rolling windows are 60
buckets wide; usage older than the window drops out bucket by bucket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from .config import parse_rolling

__all__ = ["ROLLING_BUCKETS", "Window", "current_window"]

ROLLING_BUCKETS = 60
# Counter keys outlive their window a little so late settlements and reports still find them.
_GRACE_S = 3600


@dataclass(frozen=True, slots=True)
class Window:
    kind: str
    start: float  # epoch seconds; 0 for "total"
    end: float  # epoch seconds; inf for "total"
    bucket_ids: tuple[str, ...]  # the counter buckets whose sum is the window's usage
    current_bucket: str  # where new usage goes
    ttl_s: int | None  # how long counter keys must live

    @property
    def id(self) -> str:
        return self.current_bucket if self.kind != "rolling" else f"rolling:{int(self.start)}"

    def elapsed(self, now: float) -> float:
        return max(0.0, now - self.start) if math.isfinite(self.end) else 0.0


def _local_start(kind: str, local: datetime) -> datetime:
    if kind == "hour":
        return local.replace(minute=0, second=0, microsecond=0)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "day":
        return day
    if kind == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)  # month


def _local_next(kind: str, start: datetime) -> datetime:
    if kind == "hour":
        # Add real elapsed time, not wall time: DST transitions make some local hours vanish or repeat.
        return datetime.fromtimestamp(start.timestamp() + 3600, start.tzinfo)
    naive = start.replace(tzinfo=None)
    if kind == "day":
        nxt = naive + timedelta(days=1)
    elif kind == "week":
        nxt = naive + timedelta(days=7)
    else:
        nxt = (naive.replace(day=28) + timedelta(days=4)).replace(day=1)
    return nxt.replace(tzinfo=start.tzinfo)


def current_window(window: str, timezone: str, now: float) -> Window:
    seconds = parse_rolling(window)
    if seconds is not None:
        size = max(1, seconds // ROLLING_BUCKETS)
        idx = int(now // size)
        count = math.ceil(seconds / size)
        ids = tuple(f"r{size}:{i}" for i in range(idx - count + 1, idx + 1))
        return Window("rolling", (idx - count + 1) * size, (idx + 1) * size, ids, ids[-1], seconds + 2 * size)
    if window == "total":
        return Window("total", 0.0, math.inf, ("total",), "total", None)
    tz = ZoneInfo(timezone)
    start = _local_start(window, datetime.fromtimestamp(now, tz))
    end = _local_next(window, start)
    start_ts, end_ts = start.timestamp(), end.timestamp()
    bucket = f"{window}:{int(start_ts)}"
    return Window(window, start_ts, end_ts, (bucket,), bucket, int(end_ts - now) + _GRACE_S)
