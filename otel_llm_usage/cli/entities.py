# SPDX-License-Identifier: Apache-2.0
"""``otel-llm-usage session ID`` / ``user ID`` / ``anchor ID``: one entity's calls, tokens, cost and time range.

    otel-llm-usage user viewer-1 --since 30d --ledger sqlite:///var/lib/app/llm-usage.db
    otel-llm-usage anchor anchor-lin --format json

The three commands are one function bound to a different :class:`RecordQuery` field. With
``attribution.hash_users: true`` the ledger holds hashed user ids: pass the hash.
"""

# No ``from __future__ import annotations`` here: the command's annotations use the closure variable
# ``kind``, and typer evaluates string annotations in module globals, where it does not exist.

from collections.abc import Callable
from datetime import tzinfo
from typing import Annotated, Any, cast

import typer

from ..ledger import RecordQuery
from ..ledger.totals import Totals, breakdown, summarize
from ..pricing.stage import CostConverter
from . import _common as C
from .report import totals_table

__all__ = ["entity_command", "entity_summary"]


def entity_summary(records: list[Any], kind: str, ident: str, convert: CostConverter, tz: tzinfo
                   ) -> dict[str, Any]:
    totals: Totals = summarize(records, convert)
    others = [d for d in ("model", "function", "user", "anchor", "session") if d != kind]
    return {
        "kind": kind, "id": ident, "currency": convert.currency, "timezone": str(tz),
        "first": totals.first, "last": totals.last,
        "duration_s": (totals.last - totals.first) if totals.first is not None and totals.last is not None else None,
        "totals": totals.as_dict(),
        "by": {dim: [{"key": k, **t.as_dict()} for k, t in breakdown(records, dim, convert)] for dim in others},
    }


def _show(data: dict[str, Any], tz: tzinfo) -> None:
    con = C.console()
    t, ccy = data["totals"], data["currency"]
    con.print(f"[bold]{data['kind']} {data['id']}[/bold]: {t['requests']:,} calls ({t['errors']:,} errors), "
              f"{t['total_tokens']:,} tokens (in {t['input_tokens']:,} / out {t['output_tokens']:,}), "
              f"cost {C.fmt_money(t['cost'])} {ccy}"
              + (f", {t['unpriced_requests']:,} unpriced calls" if t["unpriced_requests"] else ""))
    con.print(f"from {C.fmt_time(data['first'], tz)} to {C.fmt_time(data['last'], tz)} ({data['timezone']}, "
              f"span {C.fmt_duration(data['duration_s'])})")
    for dim, rows in data["by"].items():
        if rows and not (len(rows) == 1 and rows[0]["key"] == "unknown"):
            con.print(totals_table(rows, dim, ccy, title=f"By {dim}", limit=20))


def entity_command(kind: str) -> Callable[..., None]:
    """The ``kind`` command: the same options for session, user and anchor."""

    def command(
        ident: Annotated[str, typer.Argument(metavar=f"{kind.upper()}_ID", help=f"The {kind} id as recorded.")],
        since: C.SinceOption = None,
        until: C.UntilOption = None,
        ledger: C.LedgerOption = None,
        config: C.ConfigOption = None,
        fmt: C.FormatOption = C.OutputFormat.table,
        tz: C.TzOption = None,
        now: C.NowOption = None,
    ) -> None:
        zone = C.resolve_tz(tz)
        lo, hi = C.resolve_period(since, until, False, False, zone, C.resolve_now(now, zone))
        cfg = C.load(config, ledger)
        with C.open_stores(cfg) as (store, _):
            query = RecordQuery(since=lo, until=hi, **cast(dict[str, Any], {kind: ident}))
            records = C.load_records(store, query)
        data = entity_summary(records, kind, ident, C.converter(cfg), zone)
        C.emit(data, fmt, table=lambda: _show(data, zone), csv_rows=lambda: _rows(data))
        if not records:
            typer.echo(f"no records for {kind} {ident!r}", err=True)
            raise typer.Exit(1)

    command.__doc__ = f"One {kind}'s calls, tokens, cost and time range."
    command.__name__ = kind
    return command


def _rows(data: dict[str, Any]) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    rows = [{"section": "total", "key": data["id"], **data["totals"]}]
    rows += [{"section": f"by_{dim}", **r} for dim, items in data["by"].items() for r in items]
    return rows, ("section", "key", "requests", "errors", "input_tokens", "output_tokens", "total_tokens", "cost",
                  "unpriced_requests", "first", "last")
