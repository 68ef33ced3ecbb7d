# SPDX-License-Identifier: Apache-2.0
"""`opentelemetry-instrument python app.py` with no flags serves usage metrics on /metrics."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from otel_llm_usage._ports import free_port

APP = Path(__file__).parents[1] / "apps" / "zero_code_app.py"


@pytest.mark.slow
def test_opentelemetry_instrument_serves_prometheus_metrics(llm_server, tmp_path):
    instrument = shutil.which("opentelemetry-instrument")
    assert instrument, "opentelemetry-instrument must be on PATH (installed with opentelemetry-instrumentation)"
    config = tmp_path / "otel-llm-usage.yaml"
    config.write_text('provider_hosts: {"127.0.0.1": openai}\n')
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "LOOPBACK_OPENAI_URL": llm_server.openai_base_url,
        "OTEL_LLM_USAGE_CONFIG": str(config),
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(port),
        "OTEL_SERVICE_NAME": "zero-code-test",
    }
    proc = subprocess.Popen([instrument, sys.executable, str(APP)], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "READY", proc.stderr.read() if proc.poll() is not None else line
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        proc.stdin.close()
        proc.wait(timeout=20)
    assert proc.returncode == 0, proc.stderr.read()
    samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    requests = samples["llm_usage_requests_total"]
    attributed = [v for lbl, v in requests if lbl["function"] == "zero-code-feature"]
    assert attributed == [2.0]
    (lbl,) = [lbl for lbl, _ in requests if lbl["function"] == "zero-code-feature"]
    assert lbl.pop("otel_scope_name") == "otel_llm_usage"  # added by the exporter
    lbl = {k: v for k, v in lbl.items() if not k.startswith("otel_scope_")}
    assert lbl == {"provider": "openai", "model": "gpt-4o-mini", "function": "zero-code-feature",
                   "user": "zc-user", "session": "zc-s", "anchor": "zc-anchor", "status": "ok",
                   "error_type": "none"}
    unattributed = [v for lbl, v in requests if lbl["function"] == "unknown" and lbl["user"] == "unknown"]
    assert unattributed == [1.0]
    token_types = {lbl["token_type"] for lbl, _ in samples["llm_usage_tokens_total"]}
    assert token_types == {"input", "output"}
    # Exact tokens, the `for` stream included: the loopback server counts 3 prompt words and answers 5.
    tokens = {(lbl["function"], lbl["token_type"]): v for lbl, v in samples["llm_usage_tokens_total"]}
    assert tokens == {("zero-code-feature", "input"): 6.0, ("zero-code-feature", "output"): 10.0,
                      ("unknown", "input"): 1.0, ("unknown", "output"): 5.0}
    assert "gen_ai_client_operation_duration_seconds_bucket" in samples
    assert "gen_ai_client_token_usage_bucket" in samples
    assert any(lbl.get("service_name") == "zero-code-test" for lbl, _ in samples.get("target_info", []))


@pytest.mark.slow
def test_opentelemetry_instrument_sends_traces_where_otel_traces_exporter_says(llm_server, tmp_path):
    instrument = shutil.which("opentelemetry-instrument")
    assert instrument
    config = tmp_path / "otel-llm-usage.yaml"
    config.write_text('provider_hosts: {"127.0.0.1": openai}\n')
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "LOOPBACK_OPENAI_URL": llm_server.openai_base_url,
        "OTEL_LLM_USAGE_CONFIG": str(config),
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_TRACES_EXPORTER": "console",
    }
    proc = subprocess.run([instrument, sys.executable, str(APP)], env=env, input="", capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # The console exporter prints one JSON document per span at exit (batch flush on shutdown).
    assert proc.stdout.count('"name": "chat gpt-4o-mini"') == 3
    assert '"llm_usage.function": "zero-code-feature"' in proc.stdout
    assert '"gen_ai.usage.input_tokens": 3' in proc.stdout


@pytest.mark.slow
def test_invalid_config_under_opentelemetry_instrument_refuses_to_start(tmp_path):
    """A configured budget must not silently vanish: the app does not start uninstrumented."""
    instrument = shutil.which("opentelemetry-instrument")
    assert instrument
    config = tmp_path / "otel-llm-usage.yaml"
    config.write_text("budgets:\n  - name: b\n    limit: {tokens: 10}\n    window: fortnight\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
           "OTEL_LLM_USAGE_CONFIG": str(config), "OTEL_METRICS_EXPORTER": "none"}
    proc = subprocess.run([instrument, sys.executable, "-c", "print('APP RAN')"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "APP RAN" not in proc.stdout
    assert f"{config}:4: budgets[0].window:" in proc.stderr and "Traceback" not in proc.stderr
