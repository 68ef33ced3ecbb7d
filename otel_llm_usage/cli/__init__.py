# SPDX-License-Identifier: Apache-2.0
"""The ``otel-llm-usage`` command: demo, prices, config checks."""

from __future__ import annotations

from pathlib import Path

import typer

from .prices import prices_app

app = typer.Typer(help="What your LLM calls cost, who spent it, and budgets that hold.",
                  no_args_is_help=True, add_completion=False)
app.add_typer(prices_app, name="prices", help="Browse the price catalog and estimate a call's cost.")


@app.command()
def demo(
    port: int = typer.Option(9464, help="Port for the demo's Prometheus /metrics endpoint."),
    calls: int = typer.Option(24, min=1, max=10_000, help="Number of instrumented app calls to make."),
    serve: bool = typer.Option(False, "--serve", help="Keep serving /metrics after the run, until Ctrl-C."),
) -> None:
    """Run an instrumented app against a loopback LLM server and print costs and metrics (offline)."""
    from ..demo import run_demo

    raise typer.Exit(run_demo(port=port, calls=calls, serve=serve))


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
