# SPDX-License-Identifier: Apache-2.0
"""Grafana dashboards for the usage metrics, built as plain dicts.

The JSON under ``dashboards/`` is generated from this module and checked in;
a test proves the two agree. Regenerate after editing::

    python -m otel_llm_usage.tooling.dashboards --write          # dashboards/*.json + the Kubernetes ConfigMap

Every query aggregates with ``sum by (...)`` (or ``max by`` for the budget
gauges, which every replica reports for the same budget), so the panels stay
right with any number of replicas.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .grafana import (
    BUDGET_FILTER,
    BUDGET_KEYS,
    BUDGET_STEPS,
    SEMCONV_FILTER,
    Layout,
    dashboard,
    datasource_var,
    label_var,
    link,
    target,
    usage_query,
    value_column,
)

__all__ = [
    "BUDGETS_UID",
    "OVERVIEW_UID",
    "all_dashboards",
    "budgets_dashboard",
    "dashboards_configmap",
    "iter_queries",
    "overview_dashboard",
    "render",
    "write_all",
]

OVERVIEW_UID = "llm-usage-overview"
BUDGETS_UID = "llm-usage-budgets"
REPO_ROOT = Path(__file__).resolve().parents[2]

# Attribution filter applied to the llm_usage_* counters; every variable is multi-select with All = ".*".
def overview_dashboard() -> dict[str, Any]:
    """LLM usage overview: spend, projections, tokens, requests, latency, top spenders."""
    lay = Layout()
    cost = usage_query("llm_usage_cost_total")
    # Seconds left in the current (UTC) month: whole days after today plus what is left of today.
    month_left = "(scalar(days_in_month() - day_of_month()) * 86400 + 86400 - time() % 86400)"
    stat_opts = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                 "colorMode": "value", "graphMode": "none", "justifyMode": "auto",
                 "textMode": "value_and_name", "orientation": "auto"}
    ts_custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                 "spanNulls": False, "stacking": {"mode": "none", "group": "A"}}
    stacked = {**ts_custom, "stacking": {"mode": "normal", "group": "A"}}
    ts_opts = {"legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                          "calcs": ["mean", "max", "lastNotNull"]},
               "tooltip": {"mode": "multi", "sort": "desc"}}
    bar_opts = {"displayMode": "gradient", "orientation": "horizontal", "showUnfilled": True,
                "valueMode": "color", "namePlacement": "auto", "sizing": "auto", "minVizHeight": 16,
                "minVizWidth": 8, "maxVizHeight": 300,
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}

    per_currency = f"sum by (currency) (increase({cost}[$__range]))"
    panels: list[dict[str, Any]] = [lay.row("Spend")]
    panels.append(lay.panel(
        "stat", "Spend today", [target(per_currency, "{{currency}}", instant=True)],
        w=6, h=5, decimals=4, options=stat_opts, time_from="now/d",
        description="Cost since midnight (dashboard time zone), per billing currency."))
    panels.append(lay.panel(
        "stat", "Spend this month", [target(per_currency, "{{currency}}", instant=True)],
        w=6, h=5, decimals=4, options=stat_opts, time_from="now/M",
        description="Cost since the first of the month, per billing currency."))
    panels.append(lay.panel(
        "stat", "Projected month-end spend",
        [target(f"{per_currency} + sum by (currency) (rate({cost}[7d])) * {month_left}", "{{currency}}",
                 instant=True)],
        w=6, h=5, decimals=4, options=stat_opts, time_from="now/M",
        description="Month-to-date spend plus the rest of the month at the average rate of the last 7 days."))
    panels.append(lay.panel(
        "stat", "Spend rate (per hour)",
        [target(f"sum by (currency) (rate({cost}[$__rate_interval])) * 3600", "{{currency}}", instant=True)],
        w=6, h=5, decimals=4, options=stat_opts, description="Current spend per hour, per billing currency."))
    panels.append(lay.panel(
        "timeseries", "Spend rate by currency (per hour)",
        [target(f"sum by (currency) (rate({cost}[$__rate_interval])) * 3600", "{{currency}}")],
        w=12, custom=ts_custom, options=ts_opts))
    panels.append(lay.panel(
        "timeseries", "Spend rate by model (per hour)",
        [target(f"sum by (model, currency) (rate({cost}[$__rate_interval])) * 3600",
                 "{{model}} ({{currency}})")],
        w=12, custom=stacked, options=ts_opts))

    panels.append(lay.row("Tokens and requests"))
    tokens = usage_query("llm_usage_tokens_total")
    panels.append(lay.panel(
        "timeseries", "Tokens per second by type",
        [target(f"sum by (token_type) (rate({tokens}[$__rate_interval]))", "{{token_type}}")],
        w=12, custom=stacked, options=ts_opts,
        description="Token types are disjoint (input excludes cached input), so the stack is the total."))
    panels.append(lay.panel(
        "timeseries", "Tokens per second by model",
        [target(f"sum by (model, token_type) (rate({tokens}[$__rate_interval]))",
                 "{{model}} {{token_type}}")],
        w=12, custom=stacked, options=ts_opts))
    requests = usage_query("llm_usage_requests_total")
    errors = usage_query("llm_usage_requests_total", 'status="error"')
    sent = usage_query("llm_usage_requests_total", 'status!="blocked"')
    panels.append(lay.panel(
        "timeseries", "Requests per second by status",
        [target(f"sum by (status) (rate({requests}[$__rate_interval]))", "{{status}}")],
        w=12, unit="reqps", custom=stacked, options=ts_opts,
        description="ok, error (the provider failed) and blocked (stopped by a budget before sending)."))
    panels.append(lay.panel(
        "timeseries", "Error rate by model",
        [target(f"sum by (model) (rate({errors}[$__rate_interval])) "
                 f"/ sum by (model) (rate({sent}[$__rate_interval]))", "{{model}}")],
        w=12, unit="percentunit", custom=ts_custom, options=ts_opts,
        description="Failed calls over calls sent (blocked calls were never sent)."))

    panels.append(lay.row("Latency"))
    duration = f"gen_ai_client_operation_duration_seconds_bucket{{{SEMCONV_FILTER}}}"
    panels.append(lay.panel(
        "timeseries", "Operation duration p50 / p95 / p99",
        [target(f"histogram_quantile({q}, sum by (le) (rate({duration}[$__rate_interval])))",
                 f"p{int(q * 100)}", ref)
         for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))],
        w=12, unit="s", custom=ts_custom, options=ts_opts))
    ttfc = f"gen_ai_client_operation_time_to_first_chunk_seconds_bucket{{{SEMCONV_FILTER}}}"
    panels.append(lay.panel(
        "timeseries", "Time to first chunk p50 / p95 (streaming)",
        [target(f"histogram_quantile({q}, sum by (le) (rate({ttfc}[$__rate_interval])))",
                 f"p{int(q * 100)}", ref)
         for q, ref in ((0.5, "A"), (0.95, "B"))],
        w=12, unit="s", custom=ts_custom, options=ts_opts))
    panels.append(lay.panel(
        "timeseries", "p95 duration by model",
        [target("histogram_quantile(0.95, sum by (le, gen_ai_request_model) "
                 f"(rate({duration}[$__rate_interval])))", "{{gen_ai_request_model}}")],
        w=24, unit="s", custom=ts_custom, options=ts_opts))

    panels.append(lay.row("Who spends it"))
    for label, title in (("user", "Top users by cost"), ("anchor", "Top anchors by cost"),
                         ("function", "Top functions by cost")):
        panels.append(lay.panel(
            "bargauge", title,
            [target(f"topk(10, sum by ({label}, currency) (increase({cost}[$__range])))",
                     f"{{{{{label}}}}} ({{{{currency}}}})", instant=True)],
            w=8, h=9, decimals=4, options=bar_opts,
            description=f"Cost per {label} over the dashboard time range."))
    unpriced = 'llm_pricing_unpriced_requests_total{provider=~"$provider", model=~"$model"}'
    panels.append(lay.panel(
        "table", "Calls to models without a known price",
        [target(f"sum by (provider, model) (increase({unpriced}[$__range]))", instant=True, fmt="table")],
        w=24, h=6, decimals=0,
        description="These calls are counted with unknown cost (never as free): add the model under "
                    "pricing.models in the config.",
        transformations=value_column("calls")))
    panels.append(lay.row("Insights"))
    # These read the recording rules in deploy/prometheus/rules/llm-usage-recording.yml (group
    # otel-llm-usage-insights), the PromQL forms of `otel-llm-usage insights`; they cover all traffic.
    panels.append(lay.panel(
        "stat", "Projected month-end spend (7-day trend)",
        [target("sum by (currency) (increase(llm_usage_cost_total[$__range])) "
                 "+ on (currency) currency:llm_usage_cost:remaining_month_by_trend", "{{currency}}",
                 instant=True)],
        w=8, h=6, decimals=4, options=stat_opts, time_from="now/M",
        description="Month-to-date spend plus the rest of the month on the linear trend of the last 7 days "
                    "(predict_linear); all traffic, UTC months."))
    panels.append(lay.panel(
        "timeseries", "Spend still to come this month: average vs trend",
        [target("currency:llm_usage_cost:remaining_month_by_average", "average {{currency}}", "A"),
         target("currency:llm_usage_cost:remaining_month_by_trend", "trend {{currency}}", "B")],
        w=8, h=6, custom=ts_custom, options=ts_opts,
        description="The 7-day average rate needs 7 days of data before it is meaningful."))
    panels.append(lay.panel(
        "timeseries", "Prompt-cache hit ratio by model",
        [target('provider_model:llm_usage_cache_hit_ratio:rate1h{provider=~"$provider", model=~"$model"}',
                 "{{provider}}/{{model}}")],
        w=8, h=6, unit="percentunit", custom=ts_custom, options=ts_opts,
        description="Cached share of input tokens over the last hour. A low share on a model with cache "
                    "pricing is a saving `otel-llm-usage insights` quantifies."))
    variables = [
        datasource_var(),
        label_var("provider", "Provider", "llm_usage_requests_total"),
        label_var("model", "Model", "llm_usage_requests_total", ["provider"]),
        label_var("function", "Function", "llm_usage_requests_total", ["provider", "model"]),
        label_var("user", "User", "llm_usage_requests_total", ["provider", "model", "function"]),
        label_var("anchor", "Anchor", "llm_usage_requests_total", ["provider", "model", "function"]),
    ]
    return dashboard(OVERVIEW_UID, "LLM usage overview", panels, variables,
                      "What the LLM calls cost, who spent it, and how they perform (otel-llm-usage).",
                      [link("Budgets", BUDGETS_UID)])


def budgets_dashboard() -> dict[str, Any]:
    """Budgets: utilization, used vs limit, threshold events, time to exhaustion."""
    lay = Layout()
    # Every replica sharing a ledger reports the same budget state, so max (not sum) de-duplicates them.
    util = f"max by ({BUDGET_KEYS}) (llm_budget_utilization{{{BUDGET_FILTER}}})"
    used = f"max by ({BUDGET_KEYS}) (llm_budget_used{{{BUDGET_FILTER}}})"
    limit = f"max by ({BUDGET_KEYS}) (llm_budget_limit{{{BUDGET_FILTER}}})"
    events = f'llm_budget_events_total{{{BUDGET_FILTER}}}'
    ts_custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0, "showPoints": "never",
                 "spanNulls": False}
    ts_opts = {"legend": {"displayMode": "table", "placement": "right", "showLegend": True,
                          "calcs": ["lastNotNull", "max"]}, "tooltip": {"mode": "multi", "sort": "desc"}}
    panels: list[dict[str, Any]] = [lay.row("Utilization")]
    panels.append(lay.panel(
        "bargauge", "Budget utilization",
        [target(util, "{{budget}} / {{scope}} ({{window}}, {{unit}})", instant=True)],
        w=12, h=10, unit="percentunit", thresholds=BUDGET_STEPS,
        options={"displayMode": "lcd", "orientation": "horizontal", "showUnfilled": True,
                 "valueMode": "color", "namePlacement": "auto", "sizing": "auto", "minVizHeight": 16,
                 "minVizWidth": 8, "maxVizHeight": 300,
                 "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        description="Used over limit for every budget instance; warn at 80%/90%, exceeded at 100%."))
    panels.append(lay.panel(
        "table", "Time to exhaustion at the current rate",
        [target(f"clamp_min({limit} - {used}, 0) / (max by ({BUDGET_KEYS}) "
                 f"(deriv(llm_budget_used{{{BUDGET_FILTER}}}[15m])) > 0)", instant=True, fmt="table")],
        w=12, h=10, unit="s", decimals=0,
        description="Remaining budget over the growth rate of usage in the last 15 minutes; a budget that "
                    "is not growing is not listed. A new window (day, month) restores the budget earlier.",
        transformations=value_column("time left")))
    panels.append(lay.row("Used vs limit"))
    panels.append(lay.panel(
        "timeseries", "Used vs limit",
        [target(used, "used {{budget}} / {{scope}} ({{unit}})", "A"),
         target(limit, "limit {{budget}} / {{scope}} ({{unit}})", "B")],
        w=12, h=9, custom=ts_custom, options=ts_opts))
    panels.append(lay.panel(
        "timeseries", "Utilization over time", [target(util, "{{budget}} / {{scope}} ({{unit}})")],
        w=12, h=9, unit="percentunit", thresholds=BUDGET_STEPS,
        custom={**ts_custom, "thresholdsStyle": {"mode": "line"}}, options=ts_opts))
    panels.append(lay.row("Events"))
    panels.append(lay.panel(
        "timeseries", "Budget events (warn / exceeded / blocked / downgraded / exit)",
        [target(f"sum by (budget, scope, level) (increase({events}[$__rate_interval]))",
                 "{{level}} {{budget}} / {{scope}}")],
        w=12, h=9, custom={**ts_custom, "drawStyle": "bars", "fillOpacity": 80}, options=ts_opts))
    panels.append(lay.panel(
        "table", "Events in the time range",
        [target(f"sum by (budget, scope, level) (increase({events}[$__range]))", instant=True, fmt="table")],
        w=12, h=9, decimals=0,
        transformations=value_column("events")))
    variables = [
        datasource_var(),
        label_var("budget", "Budget", "llm_budget_utilization"),
        label_var("scope", "Scope", "llm_budget_utilization", ["budget"]),
    ]
    return dashboard(BUDGETS_UID, "LLM budgets", panels, variables,
                      "Every otel-llm-usage budget: how much is used, how fast, and what it triggered.",
                      [link("LLM usage overview", OVERVIEW_UID)])


def all_dashboards() -> dict[str, dict[str, Any]]:
    """File name → dashboard."""
    return {"llm-usage-overview.json": overview_dashboard(), "llm-budgets.json": budgets_dashboard()}


def render(dashboard: dict[str, Any]) -> str:
    return json.dumps(dashboard, indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def iter_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every panel target."""
    for panel in dashboard["panels"]:
        for query in panel.get("targets", []):
            yield panel["title"], query["expr"]


def dashboards_configmap(name: str = "otel-llm-usage-dashboards",
                         namespace: str = "monitoring") -> dict[str, Any]:
    """The dashboards as a ConfigMap the Grafana sidecar picks up (label ``grafana_dashboard: "1"``)."""
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"grafana_dashboard": "1", "app.kubernetes.io/name": "otel-llm-usage"}},
        "data": {fname: render(d) for fname, d in all_dashboards().items()},
    }


def configmap_yaml() -> str:
    import yaml

    header = "# Generated by `python -m otel_llm_usage.tooling.dashboards --write`; do not edit.\n"
    return header + yaml.safe_dump(dashboards_configmap(), sort_keys=False, width=200, allow_unicode=True)


def expected_files(root: Path = REPO_ROOT) -> dict[Path, str]:
    """Every generated file and its content."""
    files = {root / "dashboards" / fname: render(d) for fname, d in all_dashboards().items()}
    files[root / "deploy" / "kubernetes" / "grafana-dashboards-configmap.yaml"] = configmap_yaml()
    return files


def write_all(root: Path = REPO_ROOT) -> list[Path]:
    written = []
    for path, text in expected_files(root).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write dashboards/*.json and the ConfigMap")
    parser.add_argument("--root", type=Path, default=REPO_ROOT,
                        help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    if not args.write:
        print(render(overview_dashboard()), end="")
        return 0
    for path in write_all(args.root):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
