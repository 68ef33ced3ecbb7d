# SPDX-License-Identifier: Apache-2.0
"""Alert rules: promtool check + unit tests, generated per-budget rules, manifests, Alertmanager config."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from otel_llm_usage.cli.rules import rules_app
from otel_llm_usage.config import Config, load_config
from otel_llm_usage.tooling import rules as R
from otel_llm_usage.tooling.stack import render_alertmanager_config, render_prometheus_config
from tests.support.prom_fixtures import DEPLOY, ROOT, require_tool, run_tool

RULES_DIR = DEPLOY / "prometheus" / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
UNIT_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))

EXAMPLE_CONFIG = """\
pricing: {currency: CNY, exchange_rates: {USD: 7.1}}
budgets:
  - {name: qwen-daily-per-user, match: {provider: dashscope, model: "qwen-*"}, per: user, window: day,
     timezone: Asia/Shanghai, limit: {cost: 50, tokens: 600000}, warn_at: [0.75, 0.9], action: block}
  - {name: openai-monthly, match: {provider: openai}, window: month, limit: {cost: 2000}, action: alert}
  - {name: hourly-tokens, match: {function: live-reply}, window: "rolling:30m", limit: {tokens: 10000}}
"""


def promtool() -> str:
    return require_tool(["promtool"])


@pytest.fixture
def example_config(tmp_path: Path) -> Path:
    path = tmp_path / "otel-llm-usage.yaml"
    path.write_text(EXAMPLE_CONFIG, encoding="utf-8")
    return path


def _alerts(rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


# --- static rules ----------------------------------------------------------------------------


def test_promtool_check_static_rules() -> None:
    proc = run_tool([promtool(), "check", "rules", *map(str, RULE_FILES)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests() -> None:
    assert UNIT_TESTS
    proc = run_tool([promtool(), "test", "rules", *map(str, UNIT_TESTS)], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(UNIT_TESTS)


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {r["alert"] for r in _alerts(R.load_rule_files(RULE_FILES))}
    assert names - firing == set(), "alerts without a unit test where they fire"
    assert names - quiet == set(), "alerts without a unit test where they stay quiet"


def test_every_alert_is_labelled_and_annotated() -> None:
    for rule in _alerts(R.load_rule_files(RULE_FILES)):
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert {"summary", "description", "dashboard"} <= set(rule["annotations"]), rule["alert"]
        link = rule["annotations"]["dashboard"]
        assert link.startswith(R.DEFAULT_DASHBOARD_URL + "/d/llm-usage-"), rule["alert"]


def test_alerts_use_only_exported_metric_names() -> None:
    # Names as the exporter produces them (checked against a real scrape in test_zero_code / test_dashboards),
    # plus the recording rules defined next to the alerts.
    known = {"llm_usage_requests_total", "llm_usage_tokens_total", "llm_usage_cost_total",
             "llm_pricing_unpriced_requests_total", "llm_budget_limit", "llm_budget_used",
             "llm_budget_utilization", "llm_budget_events_total", "llm_pricing_catalog_age_days",
             "gen_ai_client_operation_duration_seconds_bucket", "up"}
    rules = R.load_rule_files(RULE_FILES)
    known |= {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert _metric_names(rule["expr"]) <= known, rule.get("alert") or rule.get("record")


_PROMQL_KEYWORDS = {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring"}


def _metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (strings, matchers, groupings and ranges removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr)
    return {n for n in names if n not in _PROMQL_KEYWORDS and not re.fullmatch(r"\d+[smhdwy]?", n)}


def test_metric_name_extraction() -> None:
    expr = 'sum by (currency) (increase(llm_usage_cost_total{a="b"}[1d] offset 1d)) > 1.5 * up'
    assert _metric_names(expr) == {"llm_usage_cost_total", "up"}


def test_kubernetes_prometheusrule_is_in_sync() -> None:
    path = DEPLOY / "kubernetes" / "prometheusrule.yaml"
    assert path.read_text(encoding="utf-8") == R.kubernetes_rule_yaml(ROOT), \
        "run `python -m otel_llm_usage.tooling.rules --write`"
    manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["spec"] == R.load_rule_files(RULES_DIR / f for f in R.STATIC_RULE_FILES)


def test_static_rules_dashboard_url_is_replaceable() -> None:
    rules = R.static_rules(DEPLOY, dashboard_url="https://grafana.example.com/")
    links = [r["annotations"]["dashboard"] for r in _alerts(rules)]
    assert links and all(link.startswith("https://grafana.example.com/d/") for link in links)


# --- generated rules ------------------------------------------------------------------------------


def test_glob_to_regex() -> None:
    assert R.glob_to_regex("qwen-*") == "qwen-.*"
    assert R.glob_to_regex("gpt-4o?") == "gpt-4o."
    assert R.glob_to_regex("a.b+[!x]") == "a\\.b\\+[^x]"


def test_generated_rules_follow_each_budget(example_config: Path) -> None:
    cfg = load_config(example_config, env={})
    rules = R.generate_rules(cfg, dashboard_url="https://g.example")
    by_budget: dict[str, list[dict[str, Any]]] = {}
    for rule in _alerts(rules):
        by_budget.setdefault(rule["labels"]["budget"], []).append(rule)
    qwen = by_budget["qwen-daily-per-user"]
    warn = [r for r in qwen if r["alert"] == "LLMBudgetWarning"]
    assert [r["labels"]["threshold"] for r in warn] == ["0.75", "0.9"]  # this budget's own warn_at
    assert [r["expr"].rsplit(" ", 1)[1] for r in warn] == ["0.75", "0.9"]
    assert any(r["alert"] == "LLMBudgetExceeded" and r["expr"].endswith(">= 1") for r in qwen)
    counters = [r for r in qwen if r["alert"] == "LLMBudgetExceededByCounters"]
    assert {r["labels"]["unit"] for r in counters} == {"CNY", "tokens"}
    cost = next(r for r in counters if r["labels"]["unit"] == "CNY")["expr"]
    assert 'provider="dashscope", model=~"qwen-.*", currency="CNY"}[1d]' in cost
    assert 'currency="USD"}[1d]) * 7.1' in cost  # USD spend converted at the configured rate
    assert cost.startswith("label_replace(sum by (user)") and cost.endswith(">= 50")
    # A month outlives Prometheus's default retention: no counter-based check, gauges only.
    assert {r["alert"] for r in by_budget["openai-monthly"]} == {"LLMBudgetWarning", "LLMBudgetExceeded"}
    rolling = next(r for r in by_budget["hourly-tokens"] if r["alert"] == "LLMBudgetExceededByCounters")
    assert '[1800s]' in rolling["expr"] and rolling["labels"]["scope"] == "all"
    for rule in _alerts(rules):
        assert rule["annotations"]["dashboard"].startswith("https://g.example/d/llm-usage-budgets?var-budget=")


def test_generated_rules_pass_promtool_check(example_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "generated.yml"
    out.write_text(R.dump_yaml(R.generate_rules(load_config(example_config, env={}))), encoding="utf-8")
    proc = run_tool([promtool(), "check", "rules", str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


GENERATED_UNIT_TEST = """\
rule_files: [generated.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # viewer-1 spends 10 CNY a minute on qwen-max plus 1 USD (7.1 CNY) a minute on a USD-billed qwen model.
      - series: 'llm_usage_cost_total{provider="dashscope",model="qwen-max",user="viewer-1",currency="CNY"}'
        values: '0+10x10'
      - series: 'llm_usage_cost_total{provider="dashscope",model="qwen-intl",user="viewer-1",currency="USD"}'
        values: '0+1x10'
      # viewer-2 spends as much, but on an OpenAI model this budget does not match.
      - series: 'llm_usage_cost_total{provider="openai",model="gpt-4o",user="viewer-2",currency="CNY"}'
        values: '0+20x10'
      - series: >-
          llm_budget_utilization{budget="qwen-daily-per-user",scope="viewer-1",window="day",unit="CNY"}
        values: '0.5 0.76 0.95 1.1'
    alert_rule_test:
      - eval_time: 2m
        alertname: LLMBudgetExceededByCounters
        exp_alerts: []
      - eval_time: 5m
        alertname: LLMBudgetExceededByCounters
        exp_alerts:
          - exp_labels: {budget: qwen-daily-per-user, scope: viewer-1, user: viewer-1, window: day, unit: CNY,
                         severity: critical}
      - eval_time: 0m
        alertname: LLMBudgetWarning
        exp_alerts: []
      - eval_time: 1m
        alertname: LLMBudgetWarning
        exp_alerts:
          - exp_labels: {budget: qwen-daily-per-user, scope: viewer-1, window: day, unit: CNY,
                         severity: warning, threshold: "0.75"}
      - eval_time: 2m
        alertname: LLMBudgetExceeded
        exp_alerts: []
"""


def test_generated_rules_pass_promtool_unit_tests(example_config: Path, tmp_path: Path) -> None:
    """The counter-based check fires on the matching models' converted spend, once past the limit."""
    rules = R.generate_rules(load_config(example_config, env={}))
    (tmp_path / "generated.yml").write_text(R.dump_yaml(rules), encoding="utf-8")
    by_key = {(r["alert"], r["labels"].get("unit"), r["labels"].get("threshold")): r for r in _alerts(rules)
              if r["labels"]["budget"] == "qwen-daily-per-user"}
    # At 5m viewer-1 has spent 5 x (10 + 7.1) = 85.5 CNY > 50; at 2m only 34.2.
    counter = by_key[("LLMBudgetExceededByCounters", "CNY", None)]["annotations"]
    warn = by_key[("LLMBudgetWarning", None, "0.75")]["annotations"]

    def render(text: str, value: str) -> str:
        return text.replace("{{ $labels.scope }}", "viewer-1").replace("{{ $value | humanize }}", value) \
            .replace("{{ $value | humanizePercentage }}", value)

    test = yaml.safe_load(GENERATED_UNIT_TEST)
    checks = {(c["alertname"], c["eval_time"]): c for c in test["tests"][0]["alert_rule_test"]}
    checks[("LLMBudgetExceededByCounters", "5m")]["exp_alerts"][0]["exp_annotations"] = {
        k: render(v, "85.5") for k, v in counter.items()}
    checks[("LLMBudgetWarning", "1m")]["exp_alerts"][0]["exp_annotations"] = {
        k: render(v, "76%") for k, v in warn.items()}
    (tmp_path / "generated.test.yml").write_text(yaml.safe_dump(test, sort_keys=False), encoding="utf-8")
    proc = run_tool([promtool(), "test", "rules", str(tmp_path / "generated.test.yml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_as_prometheus_rule_wraps_the_groups() -> None:
    rules = R.generate_rules(Config.model_validate({"budgets": [{"name": "b", "limit": {"tokens": 10}}]}))
    manifest = R.as_prometheus_rule(rules, "llm-budgets", "apps")
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1" and manifest["kind"] == "PrometheusRule"
    assert manifest["metadata"]["name"] == "llm-budgets" and manifest["metadata"]["namespace"] == "apps"
    assert manifest["spec"]["groups"] == rules["groups"]


# --- CLI --------------------------------------------------------------------------------------------


def test_cli_generate_prometheus_file(example_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "budgets.yml"
    result = CliRunner().invoke(rules_app, ["generate", "--config", str(example_config), "--output", str(out),
                                            "--dashboard-url", "https://grafana.internal"])
    assert result.exit_code == 0, result.output
    written = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert written == R.generate_rules(load_config(example_config, env={}), dashboard_url="https://grafana.internal")
    proc = run_tool([promtool(), "check", "rules", str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_generate_kubernetes_to_stdout(example_config: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(rules_app, ["generate", "-c", str(example_config), "--format", "kubernetes",
                                            "--namespace", "llm"])
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load(result.stdout)
    assert manifest["kind"] == "PrometheusRule" and manifest["metadata"]["namespace"] == "llm"
    spec = tmp_path / "spec.yml"
    spec.write_text(yaml.safe_dump(manifest["spec"]), encoding="utf-8")
    proc = run_tool([promtool(), "check", "rules", str(spec)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_reports_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("budgets:\n  - name: x\n    window: fortnight\n    limit: {tokens: 5}\n", encoding="utf-8")
    result = CliRunner().invoke(rules_app, ["generate", "--config", str(bad)])
    assert result.exit_code == 1
    assert "bad.yaml:3" in result.output and "window" in result.output
    empty = tmp_path / "empty.yaml"
    empty.write_text("capture_content: false\n", encoding="utf-8")
    result = CliRunner().invoke(rules_app, ["generate", "--config", str(empty)])
    assert result.exit_code == 1 and "no budgets" in result.output


# --- Prometheus and Alertmanager configs ---------------------------------------------------------


def test_alertmanager_config_is_valid(tmp_path: Path) -> None:
    amtool = require_tool(["amtool"])
    proc = run_tool([amtool, "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The test-time variant the e2e test and `stack up` use is valid too.
    rendered = render_alertmanager_config(DEPLOY / "alertmanager" / "alertmanager.yml",
                                          webhook_url="http://127.0.0.1:1/hook", group_wait="1s",
                                          group_interval="1s", repeat_interval="1m")
    path = tmp_path / "am.yml"
    path.write_text(yaml.safe_dump(rendered), encoding="utf-8")
    proc = run_tool([amtool, "check-config", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    hooks = [h["url"] for r in rendered["receivers"] for h in r.get("webhook_configs", [])]
    assert hooks and set(hooks) == {"http://127.0.0.1:1/hook"}


def test_alertmanager_routes_and_inhibits_budget_alerts() -> None:
    config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text(encoding="utf-8"))
    assert "budget" in config["route"]["group_by"] and "alertname" in config["route"]["group_by"]
    severities = {m for r in config["route"]["routes"] for m in r["matchers"]}
    assert {'severity="critical"', 'severity="warning"'} <= severities
    exceeded = next(r for r in config["inhibit_rules"]
                    if r["source_matchers"] == ['alertname="LLMBudgetExceeded"'])
    assert exceeded["target_matchers"] == ['alertname="LLMBudgetWarning"']
    assert set(exceeded["equal"]) == {"budget", "scope"}


def test_prometheus_config_renders_and_passes_promtool(tmp_path: Path) -> None:
    base = DEPLOY / "prometheus" / "prometheus.yml"
    rendered = render_prometheus_config(base, app_targets=["127.0.0.1:9464"], alertmanager="127.0.0.1:9093",
                                        prometheus_target="127.0.0.1:9090", scrape_interval="1s",
                                        evaluation_interval="1s")
    assert sorted(map(Path, rendered["rule_files"])) == [p.resolve() for p in RULE_FILES]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(rendered), encoding="utf-8")
    proc = run_tool([promtool(), "check", "config", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The bundled file as docker-compose mounts it (rules/ next to it) is valid as is.
    proc = run_tool([promtool(), "check", "config", str(base)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_and_kubernetes_files_reference_existing_paths() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
    provisioning = DEPLOY / "grafana" / "provisioning"
    provider = yaml.safe_load((provisioning / "dashboards" / "llm-usage.yml").read_text(encoding="utf-8"))
    assert provider["providers"][0]["options"]["path"]
    for path in (DEPLOY / "kubernetes").glob("*.yaml"):
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
        assert docs and all("apiVersion" in d and "kind" in d for d in docs), path
