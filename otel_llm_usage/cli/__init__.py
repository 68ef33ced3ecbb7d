# SPDX-License-Identifier: Apache-2.0
"""The ``otel-llm-usage`` command: demo, prices, config checks."""

from __future__ import annotations

from pathlib import Path

import typer

from .prices import prices_app

app = typer.Typer(help="What your LLM calls cost, who spent it, and budgets that hold.",
                  no_args_is_help=True, add_completion=False)
app.add_typer(prices_app, name="prices", help="Browse the price catalog and estimate a call's cost.")

# Ledger commands: reports, per-entity views, budgets, manual records, estimates, the HTTP API.
from . import entities as _entities  # noqa: E402
from .budget import budget_app  # noqa: E402
from .estimate import estimate as _estimate  # noqa: E402
from .record import record as _record  # noqa: E402
from .report import report as _report  # noqa: E402
from .serve import serve as _serve  # noqa: E402

app.command("report")(_report)
for _kind in ("session", "user", "anchor"):
    app.command(_kind)(_entities.entity_command(_kind))
app.add_typer(budget_app, name="budget", help="Budget status from the config and the ledger (exit 2 if exceeded).")
app.command("record")(_record)
app.command("estimate")(_estimate)
app.command("serve")(_serve)

from .insights import insights as _insights  # noqa: E402
from .ledger import ledger_app  # noqa: E402
from .rules import rules_app  # noqa: E402
from .stack import stack_app  # noqa: E402

app.command("insights")(_insights)
app.add_typer(ledger_app, name="ledger", help="Retention purge and deletion of ledger records.")
app.add_typer(rules_app, name="rules", help="Generate Prometheus alert rules from the configured budgets.")
app.add_typer(stack_app, name="stack", help="Run the demo app, Prometheus and Alertmanager locally (no Docker).")


@app.command()
def demo(
    port: int = typer.Option(9464, help="Port for the demo's Prometheus /metrics endpoint."),
    host: str = typer.Option("127.0.0.1", help="Address for /metrics (0.0.0.0 to let another container scrape)."),
    calls: int = typer.Option(24, min=1, max=10_000, help="Number of instrumented app calls to make."),
    serve: bool = typer.Option(False, "--serve", help="Keep serving /metrics after the run, until Ctrl-C."),
    ledger: str = typer.Option("memory://", help="Also keep the records in this ledger (e.g. sqlite:///tmp/demo.db), "
                                                 "to explore with `report`, `insights`, `budget status`."),
) -> None:
    """Run an instrumented app against a loopback LLM server and print costs and metrics (offline)."""
    from ..tooling.demo import run_demo

    raise typer.Exit(run_demo(port=port, calls=calls, serve=serve, host=host, ledger=ledger))


@app.command("check-config")
def check_config(path: Path = typer.Argument(..., exists=False, help="Config file to validate.")) -> None:
    """Validate a config file; errors name the file, line and key."""
    from ..config import ConfigError, load_config

    try:
        cfg = load_config(path, env={})
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{path}: OK ({len(cfg.budgets)} budgets, ledger {cfg.ledger})")


@app.command()
def version() -> None:
    """Print the package version."""
    from .. import __version__

    typer.echo(__version__)


def main() -> None:
    app()
