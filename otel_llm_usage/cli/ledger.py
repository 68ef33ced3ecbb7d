# SPDX-License-Identifier: Apache-2.0
"""``otel-llm-usage ledger``: retention and deletion of per-call records (e.g. a user's data on request)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..ledger import purge_older_than
from . import _common as C

__all__ = ["ledger_app"]

ledger_app = typer.Typer(help="Maintain the ledger: retention purge, delete a model's or a user's records.",
                         no_args_is_help=True)


@ledger_app.command("purge")
def purge(
    config: C.ConfigOption = None,
    ledger: C.LedgerOption = None,
    older_than_days: Annotated[float | None, typer.Option(
        "--older-than-days", min=0, help="Default: the config's retention_days.")] = None,
) -> None:
    """Delete records older than the retention period (budget counters are not touched)."""
    cfg = C.load(config, ledger)
    days = cfg.retention_days if older_than_days is None else older_than_days
    with C.open_stores(cfg) as (records, _):
        removed = purge_older_than(records, days)
    typer.echo(f"removed {removed} records older than {days:g} days from {cfg.ledger}")


@ledger_app.command("delete")
def delete(
    config: C.ConfigOption = None,
    ledger: C.LedgerOption = None,
    model: Annotated[str | None, typer.Option("--model", help="Delete every record of this model.")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Delete every record of this user.")] = None,
) -> None:
    """Delete every record of a model and/or a user (both given: records matching both)."""
    if model is None and user is None:
        C.fail("give --model, --user or both (nothing deleted)", 2)
    cfg = C.load(config, ledger)
    with C.open_stores(cfg) as (records, _):
        removed = records.delete(model=model, user=user)
    typer.echo(f"deleted {removed} records from {cfg.ledger}")
