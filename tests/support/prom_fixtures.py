# SPDX-License-Identifier: Apache-2.0
"""Helpers for the tests that run real Prometheus, Alertmanager and promtool.

Processes are started through :mod:`otel_llm_usage.tooling.stack`, the same code as
``otel-llm-usage stack up``, and always stopped by the caller's ``with``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from otel_llm_usage.tooling.stack import ALERTMANAGER_BINARIES, PROMETHEUS_BINARIES, LocalStack, find_binary

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
APP = Path(__file__).parents[1] / "apps" / "alerting_app.py"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Budgets of the test app. e2e-tiny (action alert) keeps growing past its limit, so both the gauge alert
# and the counter-based check fire; e2e-block refuses calls (blocked events); e2e-per-anchor never fills
# up, which gives the time-to-exhaustion panel a growing budget.
APP_CONFIG = """\
provider_hosts: {"127.0.0.1": openai}
pricing: {currency: CNY, exchange_rates: {USD: 7.1}}
budgets:
  - name: e2e-tiny
    match: {function: live-reply}
    window: day
    limit: {tokens: 600}
    warn_at: [0.5, 0.8]
    action: alert
  - name: e2e-block
    match: {model: "qwen-*", user: viewer-2}
    window: day
    limit: {tokens: 150}
    action: block
  - name: e2e-per-anchor
    per: anchor
    window: day
    limit: {tokens: 50000000, cost: 1000}
    action: alert
"""


def require_tool(names: Sequence[str]) -> str:
    """A binary the test needs: fail loudly in CI, skip (with the reason) elsewhere."""
    path = find_binary(names)
    if path:
        return path
    message = (f"{' or '.join(names)} not found on PATH "
               "(Debian: apt-get install prometheus prometheus-alertmanager)")
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)
    raise AssertionError("unreachable")


def require_prometheus() -> str:
    return require_tool(PROMETHEUS_BINARIES)


def require_alertmanager() -> str:
    return require_tool(ALERTMANAGER_BINARIES)


def run_tool(argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


def write_app_config(directory: Path) -> Path:
    path = directory / "otel-llm-usage.yaml"
    path.write_text(APP_CONFIG, encoding="utf-8")
    return path


def app_argv(config: Path) -> list[str]:
    return [sys.executable, str(APP), "--port", "{port}", "--config", str(config), "--interval", "0.5"]


def app_env() -> dict[str, str]:
    # The test app sets up its own providers; OTEL_* from the developer's shell must not change that.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class PromAPI:
    """The bits of the Prometheus HTTP API the tests use."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def rule_health(self) -> list[tuple[str, str, str]]:
        """(rule name, health, last error) for every loaded rule."""
        out = []
        for group in self.get("/api/v1/rules")["groups"]:
            for rule in group["rules"]:
                out.append((rule["name"], rule["health"], rule.get("lastError", "")))
        return out


def poll(check: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """Call ``check`` until truthy or ``timeout`` seconds pass; return its last result."""
    deadline = time.monotonic() + timeout
    result = check()
    while not result and time.monotonic() < deadline:
        time.sleep(interval)
        result = check()
    return result


@contextmanager
def app_and_prometheus(workdir: Path, *, rule_files: Sequence[Path] = (), with_alertmanager: bool = False,
                       webhook_url: str | None = None) -> Iterator[LocalStack]:
    """The test app scraped every second by Prometheus (1s evaluation), optionally with Alertmanager."""
    require_prometheus()
    if with_alertmanager:
        require_alertmanager()
    config = write_app_config(workdir)
    with LocalStack(workdir / "stack", deploy_dir=DEPLOY) as stack:
        stack.start_app(app_argv(config), env=app_env())
        if with_alertmanager:
            stack.start_alertmanager(webhook_url=webhook_url, fast=True)
        stack.start_prometheus(rule_files=rule_files, scrape_interval="1s", evaluation_interval="1s")
        yield stack


class WebhookReceiver:
    """A loopback HTTP server that keeps every JSON payload POSTed to it (Alertmanager's webhook)."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.payloads.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/alertmanager"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.payloads)
