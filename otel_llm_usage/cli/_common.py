# SPDX-License-Identifier: Apache-2.0
"""What the ledger commands share: options, config + ledger loading, time parsing, output helpers.

    cfg = load(config, ledger)                      # --config / --ledger, ConfigError → exit 1
    with open_stores(cfg) as (records, counters):   # closed on the way out
        rows = load_records(records, RecordQuery(since=...))   # progress bar on a TTY only
    emit(data, fmt, table=lambda: ..., csv_rows=...)          # --format table|json|csv
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import os
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date, datetime, timedelta, tzinfo
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from rich.console import Console

from ..config import Config, ConfigError, load_config
from ..ledger import CounterStore, RecordQuery, RecordStore, open_ledger
from ..ledger.urls import ledger_url_problem
from ..pricing.stage import CostConverter
from ..tooling.reports import day_start
from ..usage import UsageRecord

__all__ = [
    "ConfigOption", "FormatOption", "LedgerOption", "NowOption", "OutputFormat", "SinceOption", "TzOption",
    "UntilOption",
    "console", "converter", "emit", "fail", "fmt_money", "jsonable", "load", "load_records",
    "open_stores", "parse_when", "resolve_period", "resolve_tz", "write_csv",
]


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


ConfigOption = Annotated[Path | None, typer.Option(
    "--config", "-c", envvar="OTEL_LLM_USAGE_CONFIG", help="otel-llm-usage YAML config (budgets, pricing, ledger).")]
LedgerOption = Annotated[str | None, typer.Option(
    "--ledger", help="Ledger URL (sqlite:///abs/path.db, redis://host:6379/0); overrides the config's ledger.")]
FormatOption = Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")]
TzOption = Annotated[str | None, typer.Option("--tz", help="IANA time zone for days and hours "
                                                         "(default: the local zone).")]
SinceOption = Annotated[str | None, typer.Option(
    "--since", help="Start: ISO date/datetime (local to --tz unless it has an offset) or an age like 7d, 24h.")]
UntilOption = Annotated[str | None, typer.Option(
    "--until", help="End, exclusive; a bare date includes that day.")]
NowOption = Annotated[str | None, typer.Option(
    "--now", help="Pretend it is this time (ISO), for reproducible reports; default: now.")]


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def console(stderr: bool = False) -> Console:
    # A fixed, generous width when not on a terminal so piped/tested output is not wrapped.
    con = Console(stderr=stderr)
    return con if con.is_terminal else Console(stderr=stderr, width=160)


def load(config: Path | None, ledger: str | None, *, durable: bool = True) -> Config:
    """The config (file and ``OTEL_LLM_USAGE_*`` env, like the library) with ``--ledger`` applied."""
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        fail(str(exc))
    if ledger:
        problem = ledger_url_problem(ledger)
        if problem is not None:
            fail(f"--ledger {ledger!r}: {problem}", 2)
        cfg = cfg.model_copy(update={"ledger": ledger})
    if durable and cfg.ledger.startswith("memory://"):
        fail("no ledger to read: the config's ledger is memory:// (kept only inside the instrumented "
             "process). Pass --ledger sqlite:///abs/path.db or set ledger: in the config.")
    return cfg


@contextlib.contextmanager
def open_stores(cfg: Config) -> Iterator[tuple[RecordStore, CounterStore]]:
    try:
        records, counters = open_ledger(cfg.ledger)
    except ConfigError as exc:
        fail(str(exc))
    try:
        yield records, counters
    except sqlite3.Error as exc:
        # Locked, unreadable or unwritable file: one line naming it, not a traceback.
        reason = records.unwritable or str(exc)
        fail(f"ledger {cfg.ledger}: cannot read it ({reason})")
    finally:
        for store in (records, counters):
            with contextlib.suppress(Exception):
                store.close()


def converter(cfg: Config) -> CostConverter:
    return CostConverter(cfg.pricing.currency, cfg.pricing.exchange_rates)


# -- time -------------------------------------------------------------------------------------------

def resolve_tz(name: str | None) -> tzinfo:
    """``--tz``, else ``$TZ``, else the zone /etc/localtime points at, else the current UTC offset."""
    candidates = [name] if name else [os.environ.get("TZ", "").lstrip(":"), _localtime_name()]
    for candidate in filter(None, candidates):
        try:
            return ZoneInfo(candidate)
        except (ZoneInfoNotFoundError, ValueError):
            if name:
                fail(f"--tz {name!r}: unknown time zone (use an IANA name such as Asia/Shanghai)", 2)
    local = datetime.now().astimezone().tzinfo
    assert local is not None
    return local


def _localtime_name() -> str | None:
    with contextlib.suppress(OSError):
        target = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in target:
            return target.split("zoneinfo/", 1)[1]
    return None


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)$", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, tz: tzinfo, now: float, *, end: bool = False) -> float:
    """Epoch seconds for ``7d``/``24h``/``30m`` ago, an ISO date (local midnight in ``tz``) or datetime.

    With ``end=True`` a bare date means the *end* of that day, so ``--until 2024-06-30`` includes June 30.
    Raises ``ValueError`` with a message fit for the user (the HTTP API reuses it).
    """
    text = text.strip()
    rel = _RELATIVE.match(text)
    if rel:
        return now - float(rel.group(1)) * _UNIT_S[rel.group(2).lower()]
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = date.fromisoformat(text)
            return day_start(day + timedelta(days=1) if end else day, tz)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r}: use an ISO date (2024-06-01), datetime (2024-06-01T08:00, optionally "
                         "with +08:00) or a relative age such as 7d, 24h, 30m") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment.timestamp()


def _when(text: str, tz: tzinfo, now: float, option: str, *, end: bool = False) -> float:
    try:
        return parse_when(text, tz, now, end=end)
    except ValueError as exc:
        fail(f"{option} {exc}", 2)


def resolve_now(text: str | None, tz: tzinfo) -> float:
    return _when(text, tz, time.time(), "--now") if text else time.time()


def resolve_period(since: str | None, until: str | None, today: bool, month: bool, tz: tzinfo,
                   now: float) -> tuple[float | None, float | None]:
    if sum(bool(x) for x in (since or until, today, month)) > 1:
        fail("use either --since/--until, --today or --month", 2)
    local_day = datetime.fromtimestamp(now, tz).date()
    if today:
        return day_start(local_day, tz), day_start(local_day + timedelta(days=1), tz)
    if month:
        first = local_day.replace(day=1)
        return day_start(first, tz), day_start((first + timedelta(days=32)).replace(day=1), tz)
    lo = _when(since, tz, now, "--since") if since else None
    hi = _when(until, tz, now, "--until", end=True) if until else None
    if lo is not None and hi is not None and hi <= lo:
        fail("--until must be after --since", 2)
    return lo, hi


# -- loading ------------------------------------------------------------------------------------------

_SLICES = 50


def load_records(store: RecordStore, query: RecordQuery, *, until_hint: float | None = None) -> list[UsageRecord]:
    """``store.query(query)``; on a terminal, in time slices behind a progress bar (on stderr)."""
    err = Console(stderr=True)
    if not err.is_terminal:
        return store.query(query)
    from dataclasses import replace

    from rich.progress import Progress

    first = store.query(replace(query, limit=1))
    if not first:
        return []
    lo = first[0].timestamp
    hint = until_hint if until_hint is not None else time.time()
    hi = query.until if query.until is not None else max(hint, lo) + 1
    # Slice edges; the last slice keeps the query's own end (open-ended: records stamped after "now" too).
    edges: list[float | None] = [lo + i * (hi - lo) / _SLICES for i in range(_SLICES)]
    edges.append(query.until)
    out: list[UsageRecord] = []
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("reading the ledger", total=_SLICES)
        for start, stop in itertools.pairwise(edges):
            out.extend(store.query(replace(query, since=start, until=stop)))
            progress.advance(task)
    return out


# -- output ---------------------------------------------------------------------------------------------

def fmt_money(value: Decimal | None, places: int = 6) -> str:
    """Fixed-point money text; ``-`` for unknown (unpriced is never shown as 0)."""
    if value is None:
        return "-"
    return f"{value.quantize(Decimal(1).scaleb(-places)):f}" if value.is_finite() else str(value)


def jsonable(obj: Any) -> Any:
    """Decimals become exact strings (like ``prices estimate --format json``); dates become ISO text."""
    if isinstance(obj, Decimal):
        return format(obj.normalize(), "f") if obj.is_finite() else str(obj)
    if isinstance(obj, (date, datetime)):
        return obj.isoformat()
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    return obj


def dump_json(obj: Any) -> str:
    return json.dumps(jsonable(obj), indent=2, ensure_ascii=False)


def write_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(jsonable(row))
    return buf.getvalue()


def emit(data: Any, fmt: OutputFormat, *, table: Callable[[], None],
         csv_rows: Callable[[], tuple[Sequence[Mapping[str, Any]], Sequence[str]]]) -> None:
    if fmt is OutputFormat.json:
        typer.echo(dump_json(data))
    elif fmt is OutputFormat.csv:
        sys.stdout.write(write_csv(*csv_rows()))
    else:
        table()


def fmt_time(ts: float | None, tz: tzinfo) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    days, rem = divmod(seconds, 86400)
    hours, rem = divmod(rem, 3600)
    minutes = rem // 60
    parts = [f"{days}d"] if days else []
    if hours or days:
        parts.append(f"{hours}h")
    parts.append(f"{minutes}m")
    return " ".join(parts[:2])
