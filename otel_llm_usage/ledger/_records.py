# SPDX-License-Identifier: Apache-2.0
"""The one flat shape a :class:`~otel_llm_usage.usage.UsageRecord` takes in every record store.

SQLite stores :data:`COLUMNS` as table columns, Redis stores the same names as a
JSON object, memory keeps the record itself; all of them filter with
:func:`matches`. Keeping the mapping here means the backends cannot drift apart::

    row = to_row(record)            # tuple in COLUMNS order, ready for executemany
    same = from_row(row)            # UsageRecord again (cost as Decimal)
    [r for r in records if matches(query, r)]

What is *not* kept: ``server_port``, ``response_id``, ``finish_reasons`` and the
``priced`` flag (not needed for reports), and any ``request_params`` key that
starts with ``_`` (internal hand-offs). A record carries no prompt or
completion text, so none can end up in a ledger.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from ..usage import TokenUsage, UsageRecord
from .base import RecordQuery

__all__ = [
    "COLUMNS", "deletion", "from_mapping", "from_row", "matches", "public_params", "select", "to_mapping",
    "to_row",
]

COLUMNS: tuple[str, ...] = (
    "record_id", "ts", "provider", "operation", "model", "response_model",
    "function", "user", "session", "anchor",
    "input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens",
    "token_details", "cost", "currency", "price_source",
    "duration_s", "ttft_s", "status", "error_type", "usage_source", "streamed", "server_address",
    "request_params",
)

# RecordQuery field → the attribute of UsageRecord it compares with. ``model`` is the metric label
# (request model, else response model, else "unknown") so a query finds what dashboards show.
_FILTERS: tuple[tuple[str, str], ...] = (
    ("provider", "provider"), ("model", "model"), ("function", "function"),
    ("user", "user"), ("session", "session"), ("anchor", "anchor"),
)


def public_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``request_params`` without ``_``-prefixed keys (at any depth) and without values JSON cannot hold."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if not isinstance(key, str) or key.startswith("_"):
            continue
        if isinstance(value, Mapping):
            value = public_params(value)
        elif not isinstance(value, (str, int, float, bool, type(None))):
            continue  # objects could carry anything, content included: leave them out
        out[key] = value
    return out


# Built once: json.dumps() with any keyword builds a new encoder per call (3x slower on the write path).
_encode = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


def _json_or_none(value: Mapping[str, Any]) -> str | None:
    return _encode(value) if value else None


def to_row(rec: UsageRecord) -> tuple[Any, ...]:
    t = rec.tokens
    return (
        rec.record_id, rec.timestamp, rec.provider, rec.operation, rec.request_model, rec.response_model,
        rec.function, rec.user, rec.session, rec.anchor,
        t.input_tokens, t.output_tokens, t.cached_input_tokens, t.cache_write_tokens, t.reasoning_tokens,
        _json_or_none(t.details), None if rec.cost is None else str(rec.cost), rec.currency, rec.price_source,
        rec.duration_s, rec.ttft_s, rec.status, rec.error_type, rec.usage_source, int(rec.streamed),
        rec.server_address, _json_or_none(public_params(rec.request_params)),
    )


def from_row(row: Sequence[Any]) -> UsageRecord:
    v = dict(zip(COLUMNS, row, strict=True))
    return UsageRecord(
        provider=v["provider"],
        operation=v["operation"],
        request_model=v["model"],
        response_model=v["response_model"],
        tokens=TokenUsage(
            input_tokens=v["input_tokens"] or 0,
            output_tokens=v["output_tokens"] or 0,
            cached_input_tokens=v["cached_input_tokens"] or 0,
            cache_write_tokens=v["cache_write_tokens"] or 0,
            reasoning_tokens=v["reasoning_tokens"] or 0,
            details=json.loads(v["token_details"]) if v["token_details"] else {},
        ),
        usage_source=v["usage_source"],
        duration_s=v["duration_s"],
        ttft_s=v["ttft_s"],
        status=v["status"],
        error_type=v["error_type"],
        function=v["function"],
        user=v["user"],
        session=v["session"],
        anchor=v["anchor"],
        streamed=bool(v["streamed"]),
        server_address=v["server_address"],
        timestamp=v["ts"],
        record_id=v["record_id"],
        cost=None if v["cost"] is None else Decimal(v["cost"]),
        currency=v["currency"],
        price_source=v["price_source"],
        priced=True,  # it went through the pipeline before it was stored: never price it again
        request_params=json.loads(v["request_params"]) if v["request_params"] else {},
    )


def to_mapping(rec: UsageRecord) -> str:
    """One JSON object (``None`` values left out): the Redis member for a record."""
    return _encode({k: val for k, val in zip(COLUMNS, to_row(rec), strict=True) if val is not None})


def from_mapping(data: str | bytes) -> UsageRecord:
    obj = json.loads(data)
    return from_row([obj.get(k) for k in COLUMNS])


def select(q: RecordQuery, records: Iterable[UsageRecord]) -> list[UsageRecord]:
    """The records of ``records`` matching ``q``, in their order, at most ``q.limit`` of them."""
    out: list[UsageRecord] = []
    if q.limit is not None and q.limit <= 0:
        return out
    for rec in records:
        if matches(q, rec):
            out.append(rec)
            if q.limit is not None and len(out) >= q.limit:
                break
    return out


def deletion(model: str | None, user: str | None) -> RecordQuery:
    """The query ``delete(model=, user=)`` removes; refuses the empty one, which would match everything."""
    if model is None and user is None:
        raise ValueError("delete() needs model= and/or user=; use purge() to drop everything old")
    return RecordQuery(model=model, user=user)


def matches(q: RecordQuery, rec: UsageRecord) -> bool:
    if q.since is not None and rec.timestamp < q.since:
        return False
    if q.until is not None and rec.timestamp >= q.until:
        return False
    return all(getattr(q, qf) is None or getattr(rec, rf) == getattr(q, qf) for qf, rf in _FILTERS)
