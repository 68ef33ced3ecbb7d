# SPDX-License-Identifier: Apache-2.0
"""``otel-llm-usage stack up``: the demo app, Prometheus and Alertmanager on this machine, no Docker.

    otel-llm-usage stack up                      # free ports, a temporary directory
    otel-llm-usage stack up --dir ./stack --prometheus-port 9090 --alertmanager-port 9093
"""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

__all__ = ["stack_app"]

# `otel-llm-usage demo --serve` run by this interpreter (the console script may not be on PATH).
DEMO_COMMAND = (sys.executable, "-c", "from otel_llm_usage.cli import main; main()", "demo", "--serve")

stack_app = typer.Typer(help="Run a local Prometheus + Alertmanager stack around the demo app.",
                        no_args_is_help=True, add_completion=False)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@stack_app.callback()
def _group() -> None:
    """Local monitoring stack (Debian prometheus and prometheus-alertmanager binaries)."""


@stack_app.command()
def up(
    workdir: Annotated[Path | None, typer.Option(
        "--dir", help="Working directory for configs, data and logs (default: a new temporary directory).")
    ] = None,
    deploy_dir: Annotated[Path | None, typer.Option(
        "--deploy-dir", help="The repository's deploy/ directory.")] = None,
    app_port: Annotated[int, typer.Option(help="Demo app metrics port (0: a free port).")] = 0,
    prometheus_port: Annotated[int, typer.Option(help="Prometheus port (0: a free port).")] = 0,
    alertmanager_port: Annotated[int, typer.Option(help="Alertmanager port (0: a free port).")] = 0,
    webhook_url: Annotated[str | None, typer.Option(
        help="Send notifications here instead of the bundled placeholder webhook.")] = None,
    calls: Annotated[int, typer.Option(min=1, help="Demo app calls to make before it idles.")] = 24,
) -> None:
    """Start the demo app, Prometheus and Alertmanager; print the URLs; stop them all on Ctrl-C."""
    from ..tooling.demo import demo_config
    from ..tooling.rules import dump_yaml, generate_rules
    from ..tooling.stack import LocalStack, StackError, default_deploy_dir

    # `kill` / a service manager sends SIGTERM: treat it like Ctrl-C so the children are stopped too.
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = workdir or Path(tempfile.mkdtemp(prefix="otel-llm-usage-stack-"))
    stack = LocalStack(workdir, deploy_dir=deploy_dir or default_deploy_dir())
    # The demo's own budgets become per-budget rules next to the bundled ones, as a real deployment would do.
    generated = workdir / "llm-usage-budgets.yml"
    generated.write_text(dump_yaml(generate_rules(demo_config())), encoding="utf-8")
    try:
        with stack:
            stack.start_app([*DEMO_COMMAND, "--port", "{port}", "--calls", str(calls)], port=app_port or None)
            stack.start_alertmanager(port=alertmanager_port or None, webhook_url=webhook_url, fast=True)
            stack.start_prometheus(port=prometheus_port or None, rule_files=[generated],
                                   scrape_interval="5s", evaluation_interval="5s")
            for name, url in stack.urls().items():
                typer.echo(f"{name:>13}: {url}")
            typer.echo(f"{'alerts':>13}: {stack.services['prometheus'].url}/alerts")
            typer.echo(f"{'logs':>13}: {workdir}")
            typer.echo("Press Ctrl-C to stop.")
            while all(s.alive() for s in stack.services.values()):
                time.sleep(1)
            dead = [s for s in stack.services.values() if not s.alive()]
            for s in dead:
                typer.echo(f"{s.name} exited ({s.process.returncode}); log {s.log_path}:\n{s.log_tail()}",
                           err=True)
            raise typer.Exit(1)
    except KeyboardInterrupt:
        typer.echo("stopped")
    except StackError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
