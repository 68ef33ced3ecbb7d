# SPDX-License-Identifier: Apache-2.0
"""Budgets → Prometheus alert rules, from the same config the app enforces.

::

    from otel_llm_usage.config import load_config
    from otel_llm_usage.tooling.rules import generate_rules, as_prometheus_rule, dump_yaml

    rules = generate_rules(load_config("otel-llm-usage.yaml"), dashboard_url="https://grafana.example.com")
    print(dump_yaml(as_prometheus_rule(rules, "llm-budgets", "monitoring")))

Each budget gets an alert per ``warn_at`` threshold and one at 100% on the
``llm_budget_utilization`` gauge the app exports (the same alert names and
labels as the bundled static rules, so Alertmanager merges duplicates), plus,
where the window has a fixed length and the limit can be summed from the usage
counters, a check computed by Prometheus alone that still works when the app's
budget gauges are gone (the process died, or another replica enforces).

``python -m otel_llm_usage.tooling.rules --write`` regenerates the Kubernetes
``PrometheusRule`` from the static rule files under ``deploy/prometheus/rules``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from ..budgets.config import BudgetConfig, parse_rolling
from ..config import Config

__all__ = [
    "DEFAULT_DASHBOARD_URL",
    "as_prometheus_rule",
    "counter_expr",
    "dump_yaml",
    "generate_rules",
    "glob_to_regex",
    "load_rule_files",
    "static_rules",
]

#: Base URL written into ``dashboard`` annotations: the Grafana of deploy/docker-compose.yml.
DEFAULT_DASHBOARD_URL = "http://localhost:3000"
BUDGETS_DASHBOARD_PATH = "/d/llm-usage-budgets"
REPO_ROOT = Path(__file__).resolve().parents[2]
STATIC_RULE_FILES = ("llm-usage-recording.yml", "llm-usage-alerts.yml")
# Fixed-length windows Prometheus can sum over. Calendar windows (day, hour, week) are approximated by the
# trailing range, which is never shorter than the part of the window elapsed, so the check errs early.
# month and total are left out: a month outlives Prometheus's default 15-day retention, and total
# has no range.
_WINDOW_RANGES = {"hour": "1h", "day": "1d", "week": "7d"}
_GLOB_SPECIAL = set(".^$+(){}|\\")


def glob_to_regex(pattern: str) -> str:
    """An fnmatch-style glob as an RE2 regex (Prometheus anchors it at both ends)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end
        elif c in _GLOB_SPECIAL or c in "[]":
            out.append("\\" + c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _quote(value: str) -> str:
    """A PromQL double-quoted string literal (Go escaping)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _matchers(budget: BudgetConfig) -> list[str]:
    out = []
    for key, value in budget.match.model_dump().items():
        if value is None:
            continue
        # Only `model` is a glob in budget matching (fnmatch); the other keys compare exactly.
        if key == "model" and any(ch in value for ch in "*?["):
            out.append(f"{key}=~{_quote(glob_to_regex(value))}")
        else:
            out.append(f"{key}={_quote(value)}")
    return out


def _range(window: str) -> str | None:
    seconds = parse_rolling(window)
    if seconds is not None:
        return f"{seconds}s"
    return _WINDOW_RANGES.get(window)


def _number(value: Decimal | float | int) -> str:
    text = format(Decimal(str(value)).normalize(), "f")
    return text


def counter_expr(budget: BudgetConfig, config: Config, unit: str) -> str | None:
    """PromQL summing this budget's usage over its window from the counters, or None if it cannot."""
    rng = _range(budget.window)
    if rng is None:
        return None
    matchers = _matchers(budget)
    by = f" by ({budget.per})" if budget.per else ""
    if unit == "tokens":
        # Token types are disjoint buckets that sum to the total, like the in-process budget counts them.
        sel = ", ".join(matchers)
        inner = f"increase(llm_usage_tokens_total{{{sel}}}[{rng}])"
    else:
        # Cost counters are in each model's billing currency: convert with the config's fixed rates
        # (1 X = rate x reporting currency). `or` unions the currencies, which differ in their label.
        reporting = config.pricing.currency
        rates: dict[str, Decimal] = {reporting: Decimal(1), **{
            k: v for k, v in config.pricing.exchange_rates.items() if k != reporting}}
        terms = []
        for code, rate in sorted(rates.items(), key=lambda kv: kv[0] != reporting):
            sel = ", ".join([*matchers, f"currency={_quote(code)}"])
            term = f"increase(llm_usage_cost_total{{{sel}}}[{rng}])"
            terms.append(term if rate == 1 else f"{term} * {_number(rate)}")
        inner = "\n  or ".join(terms)
    expr = f"sum{by} (\n  {inner}\n)"
    if budget.per:
        # Name the split value `scope`, as the in-process budget gauges do.
        expr = f'label_replace({expr}, "scope", "$1", {_quote(budget.per)}, "(.*)")'
    return expr


def _annotations(budget: BudgetConfig, what: str, dashboard_url: str) -> dict[str, str]:
    link = f"{dashboard_url.rstrip('/')}{BUDGETS_DASHBOARD_PATH}?var-budget={budget.name}"
    return {
        "summary": f"Budget {budget.name} ({{{{ $labels.scope }}}}) {what}",
        "description": (f"LLM budget {budget.name} (window {budget.window}, action {budget.action}), "
                        f"scope {{{{ $labels.scope }}}}: {what}."),
        "dashboard": link,
    }


def _units(budget: BudgetConfig, config: Config) -> list[tuple[str, Decimal | int]]:
    out: list[tuple[str, Decimal | int]] = []
    if budget.limit.cost is not None:
        out.append((config.pricing.currency, budget.limit.cost))
    if budget.limit.tokens is not None:
        out.append(("tokens", budget.limit.tokens))
    return out


def _budget_rules(budget: BudgetConfig, config: Config, dashboard_url: str) -> list[dict[str, Any]]:
    # The static `budget` label equals the one the expression yields; it keeps promtool's duplicate-rule
    # lint quiet and leaves the resulting alerts identical to the bundled static rules'.
    util = (f"max by (budget, scope, window, unit) "
            f"(llm_budget_utilization{{budget={_quote(budget.name)}}})")
    rules: list[dict[str, Any]] = []
    for threshold in budget.warn_at:
        pct = f"{threshold:.0%}"
        rules.append({
            "alert": "LLMBudgetWarning",
            "expr": f"{util} >= {threshold:g}",
            "labels": {"severity": "warning", "budget": budget.name, "threshold": f"{threshold:g}"},
            "annotations": _annotations(
                budget, f"is at {{{{ $value | humanizePercentage }}}} of its limit (warn at {pct})",
                dashboard_url),
        })
    rules.append({
        "alert": "LLMBudgetExceeded",
        "expr": f"{util} >= 1",
        "labels": {"severity": "critical", "budget": budget.name},
        "annotations": _annotations(
            budget, "is exhausted ({{ $value | humanizePercentage }} of its limit)", dashboard_url),
    })
    for unit, limit in _units(budget, config):
        expr = counter_expr(budget, config, unit)
        if expr is None:
            continue
        labels = {"severity": "critical", "budget": budget.name, "window": budget.window, "unit": unit}
        if not budget.per:
            labels["scope"] = "all"
        rules.append({
            "alert": "LLMBudgetExceededByCounters",
            "expr": f"{expr} >= {_number(limit)}",
            "labels": labels,
            "annotations": _annotations(
                budget, f"used {{{{ $value | humanize }}}} {unit} of {_number(limit)} over the trailing "
                        f"{_range(budget.window)} (computed by Prometheus from the usage counters)",
                dashboard_url),
        })
    return rules


def generate_rules(config: Config, *, dashboard_url: str = DEFAULT_DASHBOARD_URL,
                   group_name: str = "otel-llm-usage-budgets-generated") -> dict[str, Any]:
    """A Prometheus rule file (as a dict) with the alerts for every budget in ``config``."""
    rules: list[dict[str, Any]] = []
    for budget in config.budgets:
        rules.extend(_budget_rules(budget, config, dashboard_url))
    return {"groups": [{"name": group_name, "rules": rules}]}


def as_prometheus_rule(rules: dict[str, Any], name: str, namespace: str, *,
                       labels: dict[str, str] | None = None) -> dict[str, Any]:
    """Wrap a rule file into a prometheus-operator ``PrometheusRule`` manifest."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/name": "otel-llm-usage", **(labels or {})}},
        "spec": {"groups": rules["groups"]},
    }


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Multi-line PromQL reads better as a literal block than as an escaped one-liner.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=200, allow_unicode=True)


def load_rule_files(paths: Iterable[Path]) -> dict[str, Any]:
    """Merge rule files into one ``{"groups": [...]}``."""
    groups: list[dict[str, Any]] = []
    for path in paths:
        groups.extend((yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}).get("groups", []))
    return {"groups": groups}


def static_rules(deploy_dir: Path = REPO_ROOT / "deploy", *,
                 dashboard_url: str = DEFAULT_DASHBOARD_URL) -> dict[str, Any]:
    """The bundled recording and alert rules, with the dashboard base URL replaced."""
    rules = load_rule_files(deploy_dir / "prometheus" / "rules" / f for f in STATIC_RULE_FILES)
    if dashboard_url != DEFAULT_DASHBOARD_URL:
        for group in rules["groups"]:
            for rule in group["rules"]:
                ann = rule.get("annotations", {})
                if "dashboard" in ann:
                    ann["dashboard"] = ann["dashboard"].replace(DEFAULT_DASHBOARD_URL,
                                                                dashboard_url.rstrip("/"))
    return rules


def kubernetes_rule_yaml(root: Path = REPO_ROOT, dashboard_url: str = DEFAULT_DASHBOARD_URL) -> str:
    manifest = as_prometheus_rule(static_rules(root / "deploy", dashboard_url=dashboard_url),
                                  "otel-llm-usage", "monitoring", labels={"release": "prometheus"})
    header = ("# Generated from deploy/prometheus/rules/*.yml by `python -m otel_llm_usage.tooling.rules --write`;"
              " do not edit.\n")
    return header + dump_yaml(manifest)


def expected_files(root: Path = REPO_ROOT, dashboard_url: str = DEFAULT_DASHBOARD_URL) -> dict[Path, str]:
    return {root / "deploy" / "kubernetes" / "prometheusrule.yaml": kubernetes_rule_yaml(root, dashboard_url)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate deploy/kubernetes/prometheusrule.yaml.")
    parser.add_argument("--write", action="store_true", help="write the file (default: print it)")
    parser.add_argument("--root", type=Path, default=REPO_ROOT,
                        help="repository root (default: this checkout)")
    parser.add_argument("--dashboard-url", default=DEFAULT_DASHBOARD_URL, help="Grafana base URL for links")
    args = parser.parse_args(argv)
    for path, text in expected_files(args.root, args.dashboard_url).items():
        if args.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
        else:
            print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
