# SPDX-License-Identifier: Apache-2.0
"""``otel-llm-usage record``: usage that happened outside instrumented code, priced and budgeted like a call.

    otel-llm-usage record --provider dashscope --model qwen-plus --input 1.2M --output 350K --user ops
    otel-llm-usage record --provider openai --model gpt-4o --total 35万            # all priced as input
    otel-llm-usage record --provider openai --model gpt-4o --sync-total 1500000 --source billing-export

``--sync-total N --source NAME`` records only the increase since the last total synced for that
(ledger, source) pair and refuses a decrease. The last totals live in ``sync-totals.json`` next to
a SQLite ledger (else in ``$XDG_STATE_HOME/otel-llm-usage``; ``--state-dir`` to choose), updated
under an exclusive file lock *after* the record is written: a crash in between re-records the
increase next time (an over-count, which budgets prefer to an under-count). ``--baseline`` stores
N without recording anything (first sync of an old counter, or after a counter reset).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

import typer

from ..config import Config
from ..ledger import default_sqlite_path
from ..pricing.stage import CostConverter
from ..usage import UsageRecord
from . import _common as C
from .amounts import AmountError, parse_amount

__all__ = ["parse_tokens", "record", "record_json", "submit_records"]

STATE_FILE = "sync-totals.json"


def parse_tokens(text: str | None, option: str) -> int | None:
    if text is None:
        return None
    try:
        return parse_amount(text)
    except AmountError as exc:
        raise ValueError(f"{option}: {exc}") from None


def submit_records(cfg: Config, entries: list[dict[str, Any]]) -> list[UsageRecord]:
    """Each entry through the full pipeline (price → budgets → telemetry → ledger), written before returning."""
    from .. import record_usage
    from ..runtime.core import build_runtime, clear_runtime

    runtime = build_runtime(cfg)
    try:
        records = [record_usage(**entry) for entry in entries]
        if not runtime.flush_ledger(30):
            C.fail(f"the ledger {cfg.ledger} did not accept the record within 30 s (is it reachable?)")
    finally:
        clear_runtime(runtime)
        runtime.shutdown()
    return records


def record_json(rec: UsageRecord, convert: CostConverter) -> dict[str, Any]:
    reporting = convert(rec.cost, rec.currency) if rec.cost is not None and rec.currency else None
    return {"record_id": rec.record_id, "provider": rec.provider, "model": rec.model,
            "input_tokens": rec.tokens.input_tokens, "output_tokens": rec.tokens.output_tokens,
            "function": rec.function, "user": rec.user, "session": rec.session, "anchor": rec.anchor,
            "cost": rec.cost, "currency": rec.currency, "reporting_cost": reporting,
            "reporting_currency": convert.currency, "timestamp": rec.timestamp}


# -- sync state ---------------------------------------------------------------------------------------------

def state_dir_for(cfg: Config, override: Path | None) -> Path:
    if override is not None:
        return override
    if os.environ.get("OTEL_LLM_USAGE_STATE_DIR"):
        return Path(os.environ["OTEL_LLM_USAGE_STATE_DIR"])
    if cfg.ledger.startswith("sqlite://"):
        raw = unquote(urlsplit(cfg.ledger).path)
        return Path(raw).parent if raw else default_sqlite_path().parent
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "otel-llm-usage"


@contextlib.contextmanager
def locked_state(directory: Path) -> Iterator[dict[str, Any]]:
    """The sync totals under an exclusive lock; written back (atomically) only if the block succeeds."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_FILE
    with open(directory / (STATE_FILE + ".lock"), "a+", encoding="utf-8") as lock:
        try:
            import fcntl

            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - Windows: no advisory lock, single writer assumed
            pass
        try:
            state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        except (OSError, ValueError) as exc:
            C.fail(f"cannot read {path}: {exc}; fix or remove it (then --baseline the current totals)")
        yield state
        tmp = directory / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)


def _sync(cfg: Config, entry: dict[str, Any], total: int, source: str, directory: Path, baseline: bool
          ) -> tuple[list[UsageRecord], dict[str, Any]]:
    key = f"{cfg.ledger}|{source}"
    with locked_state(directory) as state:
        previous = state.get(key, {}).get("total")
        info = {"source": source, "previous_total": previous, "total": total,
                "state_file": str(directory / STATE_FILE)}
        if baseline:
            state[key] = {"total": total, "updated": time.time(), "baseline": True}
            return [], {**info, "recorded": 0}
        if previous is not None and total < previous:
            C.fail(f"--sync-total {total:,} is below the last synced total {previous:,} for source {source!r}; "
                   "refusing to record a decrease (nothing recorded). If the counter was reset, run again "
                   "with --baseline to restart from the new total.")
        delta = total - (previous or 0)
        records = submit_records(cfg, [{**entry, "input_tokens": delta}]) if delta else []
        state[key] = {"total": total, "updated": time.time(), "provider": entry["provider"], "model": entry["model"]}
        return records, {**info, "recorded": delta}


# -- command --------------------------------------------------------------------------------------------------

def record(
    provider: Annotated[str, typer.Option("--provider", "-p", help="Provider, e.g. openai, dashscope.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model id as billed.")],
    input_tokens: Annotated[str | None, typer.Option("--input", help="Input tokens: 350000, 350K, 1.2M, 35万.")] = None,
    output_tokens: Annotated[str | None, typer.Option("--output", help="Output tokens (same forms).")] = None,
    total: Annotated[str | None, typer.Option("--total", help="Total tokens when there is no split "
                                                               "(priced as input).")] = None,
    sync_total: Annotated[str | None, typer.Option(
        "--sync-total", help="A cumulative total: record only the increase since the last sync of --source.")] = None,
    source: Annotated[str | None, typer.Option("--source", help="Name of the counter --sync-total reads.")] = None,
    baseline: Annotated[bool, typer.Option("--baseline", help="With --sync-total: store the total, record "
                                                              "nothing.")] = False,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="Where sync totals are kept.")] = None,
    function: Annotated[str | None, typer.Option(help="Attribution: app feature.")] = None,
    user: Annotated[str | None, typer.Option(help="Attribution: user id.")] = None,
    session: Annotated[str | None, typer.Option(help="Attribution: session id.")] = None,
    anchor: Annotated[str | None, typer.Option(help="Attribution: anchor (streamer/creator) id.")] = None,
    config: C.ConfigOption = None,
    ledger: C.LedgerOption = None,
    fmt: C.FormatOption = C.OutputFormat.table,
) -> None:
    """Record usage from outside instrumented code (priced, budgeted, exported and written to the ledger)."""
    try:
        amounts = {name: parse_tokens(text, opt) for name, text, opt in (
            ("input", input_tokens, "--input"), ("output", output_tokens, "--output"), ("total", total, "--total"),
            ("sync", sync_total, "--sync-total"))}
    except ValueError as exc:
        C.fail(f"{exc} (nothing recorded)", 2)
    split = amounts["input"] is not None or amounts["output"] is not None
    if sum((split, amounts["total"] is not None, amounts["sync"] is not None)) != 1:
        C.fail("give --input/--output, --total, or --sync-total with --source (exactly one of them)", 2)
    if (amounts["sync"] is None) != (source is None) or (baseline and amounts["sync"] is None):
        C.fail("--sync-total and --source go together (and --baseline needs both)", 2)
    cfg = C.load(config, ledger, durable=False)
    if cfg.ledger.startswith("memory://"):
        typer.echo("warning: the ledger is memory://, so this record is not kept; pass --ledger "
                   "sqlite:///abs/path.db or set ledger: in the config", err=True)
    entry: dict[str, Any] = {"provider": provider, "model": model, "function": function, "user": user,
                             "session": session, "anchor": anchor}
    sync_info: dict[str, Any] | None = None
    if amounts["sync"] is not None:
        assert source is not None
        records, sync_info = _sync(cfg, entry, amounts["sync"], source, state_dir_for(cfg, state_dir), baseline)
    else:
        tokens = ({"input_tokens": amounts["total"]} if amounts["total"] is not None
                  else {"input_tokens": amounts["input"] or 0, "output_tokens": amounts["output"] or 0})
        records = submit_records(cfg, [{**entry, **tokens}])
    convert = C.converter(cfg)
    data: dict[str, Any] = {"recorded": [record_json(r, convert) for r in records], "sync": sync_info,
                            "ledger": cfg.ledger}
    C.emit(data, fmt, table=lambda: _show(data), csv_rows=lambda: (data["recorded"], _CSV))


_CSV = ("record_id", "provider", "model", "input_tokens", "output_tokens", "cost", "currency", "reporting_cost",
        "reporting_currency", "function", "user", "session", "anchor", "timestamp")


def _show(data: dict[str, Any]) -> None:
    sync = data["sync"]
    if sync is not None and not data["recorded"]:
        typer.echo(f"source {sync['source']}: total {sync['total']:,} stored, nothing recorded "
                   f"(previous {sync['previous_total'] if sync['previous_total'] is not None else 'none'})")
        return
    for r in data["recorded"]:
        converted = (f" = {C.fmt_money(r['reporting_cost'])} {r['reporting_currency']}"
                     if r["currency"] != r["reporting_currency"] else "")
        cost = (f"{C.fmt_money(r['cost'])} {r['currency']}{converted}" if r["cost"] is not None
                else "unpriced (no catalog entry)")
        typer.echo(f"recorded {r['provider']}/{r['model']}: {r['input_tokens']:,} in / {r['output_tokens']:,} out, "
                   f"cost {cost} → {data['ledger']}")
    if sync is not None:
        typer.echo(f"source {sync['source']}: {sync['previous_total'] or 0:,} → {sync['total']:,} "
                   f"(+{sync['recorded']:,})")
