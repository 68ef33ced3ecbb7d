# SPDX-License-Identifier: Apache-2.0
"""The GenAI semantic-convention attributes a span and the histograms share."""

from __future__ import annotations

from typing import Any

from .. import _names as N
from ..usage import UsageRecord

__all__ = ["put_present", "semconv_attributes"]


def put_present(attrs: dict[str, Any], pairs: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """Add each (key, value) whose value is set: OTel attributes must not be None."""
    for key, value in pairs:
        if value is not None and value != "" and value != 0:
            attrs[key] = value
    return attrs


def semconv_attributes(record: UsageRecord) -> dict[str, Any]:
    """The GenAI identity attributes shared by the span and the semconv histograms."""
    return put_present(
        {N.GEN_AI_OPERATION_NAME: record.operation, N.GEN_AI_PROVIDER_NAME: record.provider},
        ((N.GEN_AI_REQUEST_MODEL, record.request_model), (N.GEN_AI_RESPONSE_MODEL, record.response_model),
         (N.SERVER_ADDRESS, record.server_address), (N.SERVER_PORT, record.server_port)),
    )
