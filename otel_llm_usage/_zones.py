# SPDX-License-Identifier: Apache-2.0
"""One check for the IANA time-zone names config takes (budget windows, time-of-day price windows)."""

from __future__ import annotations

import zoneinfo
from typing import Annotated

from pydantic import AfterValidator

__all__ = ["Zone", "iana_zone"]


def iana_zone(name: str) -> str:
    """``name`` if the system's zone database knows it, else ``ValueError`` (for pydantic validators)."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name like Asia/Shanghai)") from None
    return name


#: A config field holding an IANA zone name, checked when the config is read.
Zone = Annotated[str, AfterValidator(iana_zone)]
