# SPDX-License-Identifier: Apache-2.0
"""The ``otel-llm-usage`` ledger commands, in process (typer's CliRunner) and as the installed console script.

Every test builds a real SQLite ledger in ``tmp_path``: either the known records of
:mod:`tests.cli.test_reports` appended with fixed timestamps, or records made by the ``record``
command itself (which goes through pricing, budgets and the ledger writer).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from otel_llm_usage.cli import app
from otel_llm_usage.cli.serve import MAX_HANDLERS
from otel_llm_usage.ledger import RecordQuery, open_ledger
from otel_llm_usage.usage import UsageRecord
from tests.cli.test_reports import known_records

NOW = "2025-06-11T12:00+00:00"
CONFIG = """\
pricing: {currency: CNY, exchange_rates: {USD: 8}}
budgets:
  - {name: tiny-tokens, window: day, limit: {tokens: 1000}, action: alert}
  - {name: per-user-cost, per: user, window: day, limit: {cost: 1000}, action: alert}
"""
ROOMY = """\
pricing: {currency: CNY, exchange_rates: {USD: 8}}
budgets:
  - {name: roomy, window: day, limit: {tokens: 1000000000}, action: alert}
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The developer's shell must not point the CLI at another config, ledger or state directory.
    for name in list(os.environ):
        if name.startswith("OTEL_LLM_USAGE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state-home"))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "otel-llm-usage.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def ledger_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def ledger(tmp_path: Path) -> str:
    url = ledger_url(tmp_path)
    records, counters = open_ledger(url)
    records.append(known_records())
    records.close()
    counters.close()
    return url


def stored(url: str) -> list[UsageRecord]:
    records, counters = open_ledger(url)
    try:
        return records.query(RecordQuery())
    finally:
        records.close()
        counters.close()


def cli(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    return result


def cli_json(*args: str, code: int = 0) -> Any:
    result = cli(*args, "--format", "json")
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def console_script() -> list[str]:
    path = shutil.which("otel-llm-usage")
    return [path] if path else [sys.executable, "-c", "from otel_llm_usage.cli import main; main()"]


def _clean_env() -> dict[str, str]:
    """The parent's environment without OTel settings, but keeping conftest's retention override."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("OTEL_") or k == "OTEL_LLM_USAGE_RETENTION_DAYS"}


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = _clean_env()
    return subprocess.run([*console_script(), *args], capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)


# -- report ------------------------------------------------------------------------------------------------

def test_report_json_figures(ledger: str, config: Path) -> None:
    data = cli_json("report", "--ledger", ledger, "--config", str(config), "--since", "2025-06-01",
                    "--until", "2025-06-10", "--now", NOW, "--tz", "UTC", "--top", "2")
    t = data["totals"]
    assert (t["requests"], t["errors"], t["unpriced_requests"]) == (11, 1, 1)
    assert Decimal(t["cost"]) == 23  # June 1..10, the USD call at 8 CNY/USD; today's call is outside
    assert [(u["key"], Decimal(u["cost"])) for u in data["top"]["user"]] == [("alice", 13), ("carol", 10)]
    assert {m["key"]: Decimal(m["cost"]) for m in data["by"]["model"]} == {
        "qwen-plus": 21, "gpt-4o": 2, "mystery": 0}
    # Forecast: 23 so far + (19 / 7 = 2.714285714 a day over June 4..10) x 20 days left = 77.28571428.
    assert Decimal(data["forecast"]["forecast"]) == Decimal("77.28571428")
    assert data["day_over_day"]["change_pct"] == pytest.approx(-50.0)
    assert [a["at"] for a in data["anomalies"]["days"]] == ["2025-06-08"]
    assert data["trend"]["sparkline"] == "▂▁▂▁█▂▁"
    assert data["slow_calls"]["count"] == 1


def test_report_period_shortcuts_and_relative_since(ledger: str, config: Path) -> None:
    today = cli_json("report", "--ledger", ledger, "-c", str(config), "--today", "--now", NOW, "--tz", "UTC")
    assert today["totals"]["requests"] == 1 and Decimal(today["totals"]["cost"]) == 3
    month = cli_json("report", "--ledger", ledger, "-c", str(config), "--month", "--now", NOW, "--tz", "UTC")
    assert month["totals"]["requests"] == 12 and Decimal(month["totals"]["cost"]) == 26
    recent = cli_json("report", "--ledger", ledger, "-c", str(config), "--since", "2d", "--now", NOW, "--tz", "UTC")
    # 2d before June 11 12:00 = June 9 12:00: June 10 (1) and June 11 (3).
    assert recent["totals"]["requests"] == 2 and Decimal(recent["totals"]["cost"]) == 4


def test_report_as_console_script_with_files(ledger: str, config: Path, tmp_path: Path) -> None:
    html_file, csv_file = tmp_path / "r.html", tmp_path / "r.csv"
    proc = run("report", "--ledger", ledger, "--config", str(config), "--now", NOW, "--tz", "UTC",
               "--format", "json", "--output", str(html_file))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["totals"]["requests"] == 12 and Decimal(data["totals"]["cost"]) == 26
    page = html_file.read_text(encoding="utf-8")
    assert "<svg" in page and page.count("<rect") == 11 and "http" not in page.replace("http://www.w3.org", "")
    proc = run("report", "--ledger", ledger, "-c", str(config), "--now", NOW, "--tz", "UTC", "--output", str(csv_file))
    assert proc.returncode == 0, proc.stderr
    assert "LLM usage" in proc.stdout and "▂▁▂▁█▂▁" in proc.stdout  # the table view with its sparkline
    rows = csv_file.read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("section,key,requests") and rows[1].startswith("total,all,12,")


def test_report_csv_and_bad_options(ledger: str, config: Path) -> None:
    result = cli("report", "--ledger", ledger, "-c", str(config), "--now", NOW, "--format", "csv")
    assert result.exit_code == 0 and result.stdout.splitlines()[1].startswith("total,all,12,")
    assert cli("report", "--ledger", ledger, "--since", "yesterday-ish").exit_code == 2
    assert cli("report", "--ledger", ledger, "--today", "--month").exit_code == 2
    assert cli("report", "--ledger", ledger, "--output", "x.pdf").exit_code == 2
    no_ledger = cli("report", "--ledger", "memory://")
    assert no_ledger.exit_code == 1 and "no ledger" in no_ledger.stderr


# -- entities ------------------------------------------------------------------------------------------------

def test_user_anchor_session(ledger: str, config: Path) -> None:
    carol = cli_json("user", "carol", "--ledger", ledger, "-c", str(config), "--tz", "UTC")
    assert carol["totals"]["requests"] == 1 and Decimal(carol["totals"]["cost"]) == 10
    assert carol["first"] == carol["last"] == known_records()[7].timestamp
    lin = cli_json("anchor", "anchor-lin", "--ledger", ledger, "-c", str(config))
    assert lin["totals"]["requests"] == 11 and Decimal(lin["totals"]["cost"]) == 16
    session = cli_json("session", "s1", "--ledger", ledger, "-c", str(config), "--since", "2025-06-09",
                       "--until", "2025-06-09", "--tz", "UTC")
    assert session["totals"]["requests"] == 2 and session["totals"]["unpriced_requests"] == 1
    missing = cli("user", "nobody", "--ledger", ledger)
    assert missing.exit_code == 1 and "no records" in missing.stderr


# -- record ----------------------------------------------------------------------------------------------------

def test_record_prices_and_writes(tmp_path: Path, config: Path) -> None:
    url = ledger_url(tmp_path)
    out = cli_json("record", "--ledger", url, "-c", str(config), "-p", "openai", "-m", "gpt-4o",
                   "--input", "1.2M", "--output", "35万", "--user", "u1", "--anchor", "a1")
    rec = out["recorded"][0]
    assert (rec["input_tokens"], rec["output_tokens"]) == (1_200_000, 350_000)
    assert rec["currency"] == "USD" and Decimal(rec["reporting_cost"]) == Decimal(rec["cost"]) * 8
    [row] = stored(url)
    assert (row.user, row.anchor, row.tokens.total_tokens, row.usage_source) == ("u1", "a1", 1_550_000, "manual")
    assert row.cost == Decimal(rec["cost"])


@pytest.mark.parametrize("bad", ["35萬", "-5", "1e400", "", "abc", "1,5M"])
def test_record_bad_amount_records_nothing(tmp_path: Path, config: Path, bad: str) -> None:
    url = ledger_url(tmp_path)
    result = cli("record", "--ledger", url, "-c", str(config), "-p", "openai", "-m", "gpt-4o", "--input", bad)
    assert result.exit_code == 2
    assert "nothing recorded" in result.stderr
    assert not (tmp_path / "ledger.db").exists() or stored(url) == []


def test_record_bad_amount_as_console_script(tmp_path: Path) -> None:
    url = ledger_url(tmp_path)
    proc = run("record", "--ledger", url, "-p", "dashscope", "-m", "qwen-plus", "--total", "35萬")
    assert proc.returncode == 2 and "traditional 萬" in proc.stderr
    assert not (tmp_path / "ledger.db").exists() or stored(url) == []


def test_record_option_combinations(tmp_path: Path) -> None:
    url = ledger_url(tmp_path)
    base = ("record", "--ledger", url, "-p", "openai", "-m", "gpt-4o")
    assert cli(*base).exit_code == 2  # no amount
    assert cli(*base, "--input", "5", "--total", "5").exit_code == 2
    assert cli(*base, "--sync-total", "5").exit_code == 2  # no --source
    assert not (tmp_path / "ledger.db").exists() or stored(url) == []


def test_sync_total_records_increases_and_refuses_decreases(tmp_path: Path, config: Path) -> None:
    url = ledger_url(tmp_path)
    sync = ("record", "--ledger", url, "-c", str(config), "-p", "dashscope", "-m", "qwen-plus", "--source", "bill")
    first = cli_json(*sync, "--sync-total", "1000")
    assert first["sync"]["recorded"] == 1000
    second = cli_json(*sync, "--sync-total", "1,500")
    assert second["sync"] == {**second["sync"], "previous_total": 1000, "recorded": 500}
    assert sorted(r.tokens.total_tokens for r in stored(url)) == [500, 1000]
    refused = cli(*sync, "--sync-total", "1200")
    assert refused.exit_code == 1 and "refusing to record a decrease" in refused.stderr
    assert len(stored(url)) == 2
    # The state sits next to the SQLite ledger; another source is independent.
    state = json.loads((tmp_path / "sync-totals.json").read_text(encoding="utf-8"))
    assert state[f"{url}|bill"]["total"] == 1500
    other = cli_json(*sync[:-1], "other", "--sync-total", "10", "--baseline")
    assert other["recorded"] == [] and len(stored(url)) == 2
    assert cli_json(*sync[:-1], "other", "--sync-total", "15")["sync"]["recorded"] == 5


def test_sync_total_as_console_script(tmp_path: Path) -> None:
    url = ledger_url(tmp_path)
    args = ("record", "--ledger", url, "-p", "openai", "-m", "gpt-4o-mini", "--source", "s", "--sync-total")
    assert run(*args, "2K").returncode == 0
    assert run(*args, "2.5K").returncode == 0
    proc = run(*args, "2,400")
    assert proc.returncode == 1 and "below the last synced total 2,500" in proc.stderr
    assert sorted(r.tokens.input_tokens for r in stored(url)) == [500, 2000]


# -- budget status ------------------------------------------------------------------------------------------------

def test_budget_status_exit_codes(tmp_path: Path, config: Path) -> None:
    url = ledger_url(tmp_path)
    ok = cli("record", "--ledger", url, "-c", str(config), "-p", "openai", "-m", "gpt-4o", "--input", "400",
             "--user", "ann")
    assert ok.exit_code == 0, ok.output
    rows = cli_json("budget", "status", "--ledger", url, "-c", str(config))
    by_name = {(r["budget"], r["scope"], r["unit"]): r for r in rows}
    assert by_name[("tiny-tokens", "all", "tokens")]["used"] == 400
    assert by_name[("tiny-tokens", "all", "tokens")]["state"] == "ok"
    assert ("per-user-cost", "ann", "CNY") in by_name  # discovered from the ledger records
    cli("record", "--ledger", url, "-c", str(config), "-p", "openai", "-m", "gpt-4o", "--input", "700")
    over = cli("budget", "status", "--ledger", url, "-c", str(config), "--format", "json")
    assert over.exit_code == 2 and "tiny-tokens[all]" in over.stderr
    assert {r["state"] for r in json.loads(over.stdout) if r["budget"] == "tiny-tokens"} == {"exceeded"}
    roomy = tmp_path / "roomy.yaml"
    roomy.write_text(ROOMY, encoding="utf-8")
    proc = run("budget", "status", "--ledger", url, "--config", str(roomy))
    assert proc.returncode == 0, proc.stderr
    # Counters are per budget name: a budget added after the calls starts from 0, as enforcement sees it.
    assert "roomy" in proc.stdout and "0 / 1,000,000,000 tokens" in proc.stdout
    proc = run("budget", "status", "--ledger", url, "--config", str(config))
    assert proc.returncode == 2 and "exceeded" in proc.stdout


# -- estimate ------------------------------------------------------------------------------------------------------

def test_estimate_heuristic_is_stated() -> None:
    data = cli_json("estimate", "abcd" * 10 + "你好你好你好", "--model", "gpt-4o", "--output", "1K")
    # 40 Latin chars / 4 + 6 CJK chars / 1.5 = 10 + 4 = 14 tokens.
    assert data["input_tokens"] == 14 and data["method"].startswith("heuristic (~4 chars/token Latin")
    assert data["currency"] == "USD" and Decimal(data["cost"]) > 0


def test_estimate_qwen_tokenizer_offline(tmp_path: Path) -> None:
    pytest.importorskip("dashscope")
    prompt = tmp_path / "p.txt"
    prompt.write_text("hello world", encoding="utf-8")
    data = cli_json("estimate", "--file", str(prompt), "--model", "qwen-plus")
    assert data["input_tokens"] == 2 and data["method"].startswith("dashscope Qwen tokenizer")
    assert cli("estimate", "--model", "qwen-plus").exit_code == 2


# -- serve ------------------------------------------------------------------------------------------------------------

@pytest.fixture
def server(ledger: str, config: Path) -> Iterator[str]:
    proc = subprocess.Popen([*console_script(), "serve", "--port", "0", "--ledger", ledger, "-c", str(config),
                             "--token", "s3cret"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_clean_env())
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "serving http://127.0.0.1:PORT ..." once bound
        assert line.startswith("serving http://"), (line, proc.stderr.read() if proc.poll() is not None else "")
        yield line.split()[1]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def http(url: str, *, token: str | None = None, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.load(exc)


def test_serve_endpoints_and_auth(server: str, ledger: str) -> None:
    status, body = http(f"{server}/api/usage?group_by=user")
    assert status == 401 and body["status"] == 401
    status, usage = http(f"{server}/api/usage?group_by=user&since=2025-06-01&until=2025-06-10", token="s3cret")
    assert status == 200 and usage["totals"]["requests"] == 11 and Decimal(usage["totals"]["cost"]) == 23
    assert [(g["key"], Decimal(g["cost"])) for g in usage["groups"]][:2] == [("alice", 13), ("carol", 10)]
    status, top = http(f"{server}/api/top?by=anchor&n=1", token="s3cret")
    assert status == 200 and [(t["key"], Decimal(t["cost"])) for t in top["top"]] == [("anchor-lin", 16)]
    status, budgets = http(f"{server}/api/budgets", token="s3cret")
    assert status == 200 and {b["budget"] for b in budgets} >= {"tiny-tokens"}
    assert http(f"{server}/api/usage?group_by=colour", token="s3cret")[0] == 400
    assert http(f"{server}/api/nothing", token="s3cret")[0] == 404

    manual = {"provider": "openai", "model": "gpt-4o-mini", "input": "2K", "output": 100, "user": "web"}
    status, body = http(f"{server}/api/record", body=manual)
    assert status == 401 and len(stored(ledger)) == 12
    status, body = http(f"{server}/api/record", token="wrong", body=manual)
    assert status == 401 and len(stored(ledger)) == 12
    assert http(f"{server}/api/record", token="s3cret", body={**manual, "input": "35萬"})[0] == 400
    assert len(stored(ledger)) == 12
    status, body = http(f"{server}/api/record", token="s3cret", body=manual)
    assert status == 201 and body["recorded"]["input_tokens"] == 2000
    rows = [r for r in stored(ledger) if r.user == "web"]
    assert len(rows) == 1 and rows[0].tokens.output_tokens == 100 and rows[0].cost is not None


def test_serve_refuses_public_bind_without_token(ledger: str) -> None:
    result = cli("serve", "--host", "0.0.0.0", "--port", "0", "--ledger", ledger)
    assert result.exit_code == 2 and "without --token" in result.stderr


# -- report --prometheus --------------------------------------------------------------------------------------------

def _wait(check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def _prom_query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            result: list[dict[str, Any]] = json.load(resp)["data"]["result"]
            return result
    except (urllib.error.URLError, OSError):
        return []


@pytest.mark.slow
def test_report_from_prometheus(tmp_path: Path, config: Path) -> None:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import CollectorRegistry, start_http_server

    from otel_llm_usage import record_usage
    from otel_llm_usage.config import load_config
    from otel_llm_usage.runtime.core import build_runtime, clear_runtime
    from otel_llm_usage.tooling.stack import free_port
    from tests.conftest import require_binary

    prometheus = require_binary("prometheus")
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    runtime = build_runtime(load_config(config, env={}), None, provider)
    calls = [("openai", "gpt-4o", 1000, 200, "u1", "a1", "chat"),
             ("openai", "gpt-4o-mini", 3000, 100, "u2", "a1", "chat"),
             ("dashscope", "qwen-plus", 5000, 500, "u2", "a2", "summary"),
             ("dashscope", "qwen-max", 800, 80, "u3", "a2", "chat")]
    try:
        records = [record_usage(provider=p, model=m, input_tokens=i, output_tokens=o, user=u, anchor=a, function=f)
                   for p, m, i, o, u, a, f in calls]
    finally:
        clear_runtime(runtime)
        runtime.shutdown()
    cost_by_ccy: dict[str, float] = {}
    for r in records:
        assert r.cost is not None and r.currency is not None
        cost_by_ccy[r.currency] = cost_by_ccy.get(r.currency, 0.0) + float(r.cost)
    reporting = {u: 0.0 for u in ("u1", "u2", "u3")}
    for r in records:
        reporting[str(r.user)] += float(r.cost or 0) * (8 if r.currency == "USD" else 1)

    exporter_port, prom_port = free_port(), free_port()
    exporter, _thread = start_http_server(exporter_port, addr="127.0.0.1", registry=registry)
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\n"
        f"scrape_configs: [{{job_name: app, static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]}}]\n",
        encoding="utf-8")
    proc = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{prom_port}"
    try:
        scraped = _wait(lambda: _prom_query(base, "sum(llm_usage_requests_total) == 4"), 90)
        assert scraped, "Prometheus did not scrape the exporter within 90 s"
        proc_cli = run("report", "--prometheus", base, "--config", str(config), "--format", "json", "--top", "2")
        assert proc_cli.returncode == 0, proc_cli.stderr
        data = json.loads(proc_cli.stdout)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        exporter.shutdown()
        provider.shutdown()
    assert Decimal(data["requests"]) == 4 and data["error_rate"] == 0
    assert {k: float(v) for k, v in data["cost_by_currency"].items()} == pytest.approx(cost_by_ccy)
    assert float(data["cost"]) == pytest.approx(sum(reporting.values()))
    tokens = {k: int(Decimal(v)) for k, v in data["tokens"].items()}
    assert tokens == {"input": 9800, "output": 880}
    top_users = [(t["key"], float(t["cost"])) for t in data["top"]["user"]]
    expected = sorted(reporting.items(), key=lambda kv: -kv[1])[:2]
    assert [k for k, _ in top_users] == [k for k, _ in expected]
    assert [v for _, v in top_users] == pytest.approx([v for _, v in expected])
    assert {t["key"] for t in data["top"]["function"]} == {"chat", "summary"}


def test_ledger_delete_and_purge_commands(tmp_path):
    import time as _time

    from otel_llm_usage.cli import app
    from otel_llm_usage.ledger import RecordQuery, open_ledger
    from otel_llm_usage.usage import TokenUsage, UsageRecord

    url = f"sqlite:///{tmp_path / 'l.db'}"
    store, counters = open_ledger(url)
    now = _time.time()
    store.append([
        UsageRecord(provider="openai", operation="chat", request_model="gpt-4o", user="alice",
                    tokens=TokenUsage(1, 1), timestamp=now),
        UsageRecord(provider="openai", operation="chat", request_model="gpt-4o", user="bob",
                    tokens=TokenUsage(1, 1), timestamp=now),
        UsageRecord(provider="openai", operation="chat", request_model="gpt-4o-mini", user="bob",
                    tokens=TokenUsage(1, 1), timestamp=now - 200 * 86400),
    ])
    store.close()
    counters.close()
    runner = CliRunner()
    result = runner.invoke(app, ["ledger", "delete", "--ledger", url])
    assert result.exit_code == 2 and "nothing deleted" in result.output
    result = runner.invoke(app, ["ledger", "delete", "--ledger", url, "--user", "alice"])
    assert result.exit_code == 0 and "deleted 1 records" in result.output
    result = runner.invoke(app, ["ledger", "purge", "--ledger", url, "--older-than-days", "90"])
    assert result.exit_code == 0 and "removed 1 records" in result.output
    store, counters = open_ledger(url)
    try:
        assert [(r.user, r.model) for r in store.query(RecordQuery())] == [("bob", "gpt-4o")]
    finally:
        store.close()
        counters.close()


def raw(server: str, request: bytes, *, timeout: float = 10) -> bytes:
    host, port = server.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as conn:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it may answer and hang up first
            conn.sendall(request)
        return conn.recv(65536)


def test_serve_rejects_bad_lengths_cross_site_posts_and_bad_query_values(ledger: str, config: Path) -> None:
    proc = subprocess.Popen([*console_script(), "serve", "--port", "0", "--ledger", ledger, "-c", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_clean_env())
    try:
        assert proc.stdout is not None
        server = proc.stdout.readline().split()[1]
        own = server.split("//")[1]
        body = b'{"provider": "openai", "model": "gpt-4o", "input": 5}'
        post = ("POST /api/record HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\n"
                "Content-Length: {n}\r\n{extra}\r\n")

        def send(host: str = own, ctype: str = "application/json", n: str = str(len(body)), extra: str = "",
                 data: bytes = body) -> int:
            reply = raw(server, post.format(host=host, ctype=ctype, n=n, extra=extra).encode() + data)
            return int(reply.split()[1])

        assert send(n="-1", data=b"x" * (2 << 20)) == 400  # no longer read to EOF past the cap
        assert send(ctype="text/plain") == 415  # what a page on another site may POST unasked
        assert send(extra="Origin: https://evil.example\r\n") == 403
        assert send(host="evil.example:80") == 403  # DNS rebinding
        for query in ("since=1e308d", "until=9999-12-31", "n=" + "9" * 5000, "since=0001-01-01"):
            status, reply = http(f"{server}/api/top?{query}")
            assert status == 400 and reply["status"] == 400, (query, reply)
        assert send() == 201
        # 50 connections that never send a request: beyond MAX_HANDLERS the server hangs up at once
        # (the ones it keeps are cut off by the read timeout), instead of holding 50 threads.
        host, port = own.split(":")
        idle = [socket.create_connection((host, int(port)), timeout=2) for _ in range(50)]
        try:
            time.sleep(0.5)
            closed = 0
            for conn in idle:
                conn.settimeout(0.1)
                with contextlib.suppress(TimeoutError):
                    closed += conn.recv(1) == b""
            assert closed >= 50 - MAX_HANDLERS
        finally:
            for conn in idle:
                conn.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
