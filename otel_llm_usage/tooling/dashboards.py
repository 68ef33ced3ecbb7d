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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

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
SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
REPO_ROOT = Path(__file__).resolve().parents[2]

# Attribution filter applied to the llm_usage_* counters; every variable is multi-select with All = ".*".
_USAGE_FILTER = ('provider=~"$provider", model=~"$model", function=~"$function", '
                 'user=~"$user", anchor=~"$anchor"')
# The semconv histograms carry provider/model under their gen_ai_* names and no attribution labels.
# The gen_ai_client_* histograms are semconv names that another GenAI instrumentation (say
# opentelemetry-instrumentation-openai-v2, which `opentelemetry-bootstrap` may install) records for
# the same calls: keep to our scope. The empty alternative matches exporters that add no scope label.
_SEMCONV_FILTER = ('otel_scope_name=~"otel_llm_usage|", '
                   'gen_ai_provider_name=~"$provider", gen_ai_request_model=~"$model"')
_BUDGET_FILTER = 'budget=~"$budget", scope=~"$scope"'
_BUDGET_KEYS = "budget, scope, window, unit"


def _usage(metric: str, extra: str = "") -> str:
    return f"{metric}{{{_USAGE_FILTER}{', ' + extra if extra else ''}}}"


def _target(expr: str, legend: str = "__auto", ref: str = "A", *, instant: bool = False,
            fmt: str = "time_series") -> dict[str, Any]:
    target: dict[str, Any] = {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref,
                              "range": not instant, "instant": instant}
    if fmt != "time_series":
        target["format"] = fmt
    return target


def _thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


_GREEN = _thresholds(("green", None))
_BUDGET_STEPS = _thresholds(("green", None), ("yellow", 0.8), ("orange", 0.9), ("red", 1.0))


class _Layout:
    """Hands out panel ids and grid positions row by row (Grafana's grid is 24 wide)."""

    def __init__(self) -> None:
        self.next_id = 1
        self.x = 0
        self.y = 0
        self.row_height = 0

    def place(self, w: int, h: int) -> tuple[int, dict[str, int]]:
        if self.x + w > 24:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_height = max(self.row_height, h)
        pid = self.next_id
        self.next_id += 1
        return pid, pos

    def row(self, title: str) -> dict[str, Any]:
        if self.x:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        pid, pos = self.place(24, 1)
        self.x, self.y, self.row_height = 0, self.y + 1, 0
        return {"id": pid, "type": "row", "title": title, "collapsed": False, "gridPos": pos, "panels": []}

    def panel(self, kind: str, title: str, targets: list[dict[str, Any]], *, w: int, h: int = 8,
              unit: str = "short", description: str = "", thresholds: dict[str, Any] | None = None,
              options: dict[str, Any] | None = None, custom: dict[str, Any] | None = None,
              time_from: str | None = None, decimals: int | None = None,
              transformations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        pid, pos = self.place(w, h)
        defaults: dict[str, Any] = {"unit": unit, "thresholds": thresholds or _GREEN,
                                    "color": {"mode": "thresholds" if thresholds else "palette-classic"}}
        if decimals is not None:
            defaults["decimals"] = decimals
        if custom:
            defaults["custom"] = custom
        panel: dict[str, Any] = {
            "id": pid, "type": kind, "title": title, "description": description, "gridPos": pos,
            "datasource": DATASOURCE, "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options or {},
        }
        if time_from:
            # Panel-relative time: "now/d" is "today so far", so $__range covers exactly that span.
            panel["timeFrom"] = time_from
            panel["hideTimeOverride"] = False
        if transformations:
            panel["transformations"] = transformations
        return panel


def _value_column(title: str) -> list[dict[str, Any]]:
    """Table transformation: hide the time column and name the value column."""
    options = {"excludeByName": {"Time": True}, "renameByName": {"Value": title}}
    return [{"id": "organize", "options": options}]


def _label_var(name: str, label: str, metric: str, depends: Iterable[str] = (), *,
               label_name: str | None = None) -> dict[str, Any]:
    selectors = ", ".join(f'{d}=~"${d}"' for d in depends)
    query = f"label_values({metric}{{{selectors}}}, {label_name or name})" if selectors \
        else f"label_values({metric}, {label_name or name})"
    return {
        "name": name, "label": label, "type": "query", "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-var", "qryType": 1},
        "definition": query, "refresh": 2, "sort": 1, "multi": True, "includeAll": True,
        "allValue": ".*", "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [], "hide": 0, "regex": "", "skipUrlSync": False,
    }


def _datasource_var() -> dict[str, Any]:
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "options": [], "refresh": 1, "regex": "", "skipUrlSync": False}


def _dashboard(uid: str, title: str, panels: list[dict[str, Any]], variables: list[dict[str, Any]],
               description: str, links: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": description,
        "tags": ["llm", "otel-llm-usage", "cost"], "timezone": "browser", "editable": True,
        "graphTooltip": 1, "schemaVersion": SCHEMA_VERSION, "version": 1, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"}, "timepicker": {}, "fiscalYearStartMonth": 0,
        "liveNow": False, "weekStart": "", "links": links,
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "templating": {"list": variables},
        "panels": panels,
    }


def _link(title: str, uid: str) -> dict[str, Any]:
    # keepTime/includeVars carry the time range and the selected variables across dashboards.
    return {"title": title, "type": "link", "url": f"/d/{uid}", "icon": "dashboard", "tags": [],
            "asDropdown": False, "keepTime": True, "includeVars": True, "targetBlank": False, "tooltip": ""}


def overview_dashboard() -> dict[str, Any]:
    """LLM usage overview: spend, projections, tokens, requests, latency, top spenders."""
    lay = _Layout()
    cost = _usage("llm_usage_cost_total")
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
        "stat", "Spend today", [_target(per_currency, "{{currency}}", instant=True)],
        w=6, h=5, decimals=4, options=stat_opts, time_from="now/d",
        description="Cost since midnight (dashboard time zone), per billing currency."))
    panels.append(lay.panel(
        "stat", "Spend this month", [_target(per_currency, "{{currency}}", instant=True)],
        w=6, h=5, decimals=4, options=stat_opts, time_from="now/M",
        description="Cost since the first of the month, per billing currency."))
    panels.append(lay.panel(
        "stat", "Projected month-end spend",
        [_target(f"{per_currency} + sum by (currency) (rate({cost}[7d])) * {month_left}", "{{currency}}",
                 instant=True)],
        w=6, h=5, decimals=4, options=stat_opts, time_from="now/M",
        description="Month-to-date spend plus the rest of the month at the average rate of the last 7 days."))
    panels.append(lay.panel(
        "stat", "Spend rate (per hour)",
        [_target(f"sum by (currency) (rate({cost}[$__rate_interval])) * 3600", "{{currency}}", instant=True)],
        w=6, h=5, decimals=4, options=stat_opts, description="Current spend per hour, per billing currency."))
    panels.append(lay.panel(
        "timeseries", "Spend rate by currency (per hour)",
        [_target(f"sum by (currency) (rate({cost}[$__rate_interval])) * 3600", "{{currency}}")],
        w=12, custom=ts_custom, options=ts_opts))
    panels.append(lay.panel(
        "timeseries", "Spend rate by model (per hour)",
        [_target(f"sum by (model, currency) (rate({cost}[$__rate_interval])) * 3600",
                 "{{model}} ({{currency}})")],
        w=12, custom=stacked, options=ts_opts))

    panels.append(lay.row("Tokens and requests"))
    tokens = _usage("llm_usage_tokens_total")
    panels.append(lay.panel(
        "timeseries", "Tokens per second by type",
        [_target(f"sum by (token_type) (rate({tokens}[$__rate_interval]))", "{{token_type}}")],
        w=12, custom=stacked, options=ts_opts,
        description="Token types are disjoint (input excludes cached input), so the stack is the total."))
    panels.append(lay.panel(
        "timeseries", "Tokens per second by model",
        [_target(f"sum by (model, token_type) (rate({tokens}[$__rate_interval]))",
                 "{{model}} {{token_type}}")],
        w=12, custom=stacked, options=ts_opts))
    requests = _usage("llm_usage_requests_total")
    errors = _usage("llm_usage_requests_total", 'status="error"')
    sent = _usage("llm_usage_requests_total", 'status!="blocked"')
    panels.append(lay.panel(
        "timeseries", "Requests per second by status",
        [_target(f"sum by (status) (rate({requests}[$__rate_interval]))", "{{status}}")],
        w=12, unit="reqps", custom=stacked, options=ts_opts,
        description="ok, error (the provider failed) and blocked (stopped by a budget before sending)."))
    panels.append(lay.panel(
        "timeseries", "Error rate by model",
        [_target(f"sum by (model) (rate({errors}[$__rate_interval])) "
                 f"/ sum by (model) (rate({sent}[$__rate_interval]))", "{{model}}")],
        w=12, unit="percentunit", custom=ts_custom, options=ts_opts,
        description="Failed calls over calls sent (blocked calls were never sent)."))

    panels.append(lay.row("Latency"))
    duration = f"gen_ai_client_operation_duration_seconds_bucket{{{_SEMCONV_FILTER}}}"
    panels.append(lay.panel(
        "timeseries", "Operation duration p50 / p95 / p99",
        [_target(f"histogram_quantile({q}, sum by (le) (rate({duration}[$__rate_interval])))",
                 f"p{int(q * 100)}", ref)
         for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))],
        w=12, unit="s", custom=ts_custom, options=ts_opts))
    ttfc = f"gen_ai_client_operation_time_to_first_chunk_seconds_bucket{{{_SEMCONV_FILTER}}}"
    panels.append(lay.panel(
        "timeseries", "Time to first chunk p50 / p95 (streaming)",
        [_target(f"histogram_quantile({q}, sum by (le) (rate({ttfc}[$__rate_interval])))",
                 f"p{int(q * 100)}", ref)
         for q, ref in ((0.5, "A"), (0.95, "B"))],
        w=12, unit="s", custom=ts_custom, options=ts_opts))
    panels.append(lay.panel(
        "timeseries", "p95 duration by model",
        [_target("histogram_quantile(0.95, sum by (le, gen_ai_request_model) "
                 f"(rate({duration}[$__rate_interval])))", "{{gen_ai_request_model}}")],
        w=24, unit="s", custom=ts_custom, options=ts_opts))

    panels.append(lay.row("Who spends it"))
    for label, title in (("user", "Top users by cost"), ("anchor", "Top anchors by cost"),
                         ("function", "Top functions by cost")):
        panels.append(lay.panel(
            "bargauge", title,
            [_target(f"topk(10, sum by ({label}, currency) (increase({cost}[$__range])))",
                     f"{{{{{label}}}}} ({{{{currency}}}})", instant=True)],
            w=8, h=9, decimals=4, options=bar_opts,
            description=f"Cost per {label} over the dashboard time range."))
    unpriced = 'llm_pricing_unpriced_requests_total{provider=~"$provider", model=~"$model"}'
    panels.append(lay.panel(
        "table", "Calls to models without a known price",
        [_target(f"sum by (provider, model) (increase({unpriced}[$__range]))", instant=True, fmt="table")],
        w=24, h=6, decimals=0,
        description="These calls are counted with unknown cost (never as free): add the model under "
                    "pricing.models in the config.",
        transformations=_value_column("calls")))
    panels.append(lay.row("Insights"))
    # These read the recording rules in deploy/prometheus/rules/llm-usage-recording.yml (group
    # otel-llm-usage-insights), the PromQL forms of `otel-llm-usage insights`; they cover all traffic.
    panels.append(lay.panel(
        "stat", "Projected month-end spend (7-day trend)",
        [_target("sum by (currency) (increase(llm_usage_cost_total[$__range])) "
                 "+ on (currency) currency:llm_usage_cost:remaining_month_by_trend", "{{currency}}",
                 instant=True)],
        w=8, h=6, decimals=4, options=stat_opts, time_from="now/M",
        description="Month-to-date spend plus the rest of the month on the linear trend of the last 7 days "
                    "(predict_linear); all traffic, UTC months."))
    panels.append(lay.panel(
        "timeseries", "Spend still to come this month: average vs trend",
        [_target("currency:llm_usage_cost:remaining_month_by_average", "average {{currency}}", "A"),
         _target("currency:llm_usage_cost:remaining_month_by_trend", "trend {{currency}}", "B")],
        w=8, h=6, custom=ts_custom, options=ts_opts,
        description="The 7-day average rate needs 7 days of data before it is meaningful."))
    panels.append(lay.panel(
        "timeseries", "Prompt-cache hit ratio by model",
        [_target('provider_model:llm_usage_cache_hit_ratio:rate1h{provider=~"$provider", model=~"$model"}',
                 "{{provider}}/{{model}}")],
        w=8, h=6, unit="percentunit", custom=ts_custom, options=ts_opts,
        description="Cached share of input tokens over the last hour. A low share on a model with cache "
                    "pricing is a saving `otel-llm-usage insights` quantifies."))
    variables = [
        _datasource_var(),
        _label_var("provider", "Provider", "llm_usage_requests_total"),
        _label_var("model", "Model", "llm_usage_requests_total", ["provider"]),
        _label_var("function", "Function", "llm_usage_requests_total", ["provider", "model"]),
        _label_var("user", "User", "llm_usage_requests_total", ["provider", "model", "function"]),
        _label_var("anchor", "Anchor", "llm_usage_requests_total", ["provider", "model", "function"]),
    ]
    return _dashboard(OVERVIEW_UID, "LLM usage overview", panels, variables,
                      "What the LLM calls cost, who spent it, and how they perform (otel-llm-usage).",
                      [_link("Budgets", BUDGETS_UID)])


def budgets_dashboard() -> dict[str, Any]:
    """Budgets: utilization, used vs limit, threshold events, time to exhaustion."""
    lay = _Layout()
    # Every replica sharing a ledger reports the same budget state, so max (not sum) de-duplicates them.
    util = f"max by ({_BUDGET_KEYS}) (llm_budget_utilization{{{_BUDGET_FILTER}}})"
    used = f"max by ({_BUDGET_KEYS}) (llm_budget_used{{{_BUDGET_FILTER}}})"
    limit = f"max by ({_BUDGET_KEYS}) (llm_budget_limit{{{_BUDGET_FILTER}}})"
    events = f'llm_budget_events_total{{{_BUDGET_FILTER}}}'
    ts_custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0, "showPoints": "never",
                 "spanNulls": False}
    ts_opts = {"legend": {"displayMode": "table", "placement": "right", "showLegend": True,
                          "calcs": ["lastNotNull", "max"]}, "tooltip": {"mode": "multi", "sort": "desc"}}
    panels: list[dict[str, Any]] = [lay.row("Utilization")]
    panels.append(lay.panel(
        "bargauge", "Budget utilization",
        [_target(util, "{{budget}} / {{scope}} ({{window}}, {{unit}})", instant=True)],
        w=12, h=10, unit="percentunit", thresholds=_BUDGET_STEPS,
        options={"displayMode": "lcd", "orientation": "horizontal", "showUnfilled": True,
                 "valueMode": "color", "namePlacement": "auto", "sizing": "auto", "minVizHeight": 16,
                 "minVizWidth": 8, "maxVizHeight": 300,
                 "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        description="Used over limit for every budget instance; warn at 80%/90%, exceeded at 100%."))
    panels.append(lay.panel(
        "table", "Time to exhaustion at the current rate",
        [_target(f"clamp_min({limit} - {used}, 0) / (max by ({_BUDGET_KEYS}) "
                 f"(deriv(llm_budget_used{{{_BUDGET_FILTER}}}[15m])) > 0)", instant=True, fmt="table")],
        w=12, h=10, unit="s", decimals=0,
        description="Remaining budget over the growth rate of usage in the last 15 minutes; a budget that "
                    "is not growing is not listed. A new window (day, month) restores the budget earlier.",
        transformations=_value_column("time left")))
    panels.append(lay.row("Used vs limit"))
    panels.append(lay.panel(
        "timeseries", "Used vs limit",
        [_target(used, "used {{budget}} / {{scope}} ({{unit}})", "A"),
         _target(limit, "limit {{budget}} / {{scope}} ({{unit}})", "B")],
        w=12, h=9, custom=ts_custom, options=ts_opts))
    panels.append(lay.panel(
        "timeseries", "Utilization over time", [_target(util, "{{budget}} / {{scope}} ({{unit}})")],
        w=12, h=9, unit="percentunit", thresholds=_BUDGET_STEPS,
        custom={**ts_custom, "thresholdsStyle": {"mode": "line"}}, options=ts_opts))
    panels.append(lay.row("Events"))
    panels.append(lay.panel(
        "timeseries", "Budget events (warn / exceeded / blocked / downgraded / exit)",
        [_target(f"sum by (budget, scope, level) (increase({events}[$__rate_interval]))",
                 "{{level}} {{budget}} / {{scope}}")],
        w=12, h=9, custom={**ts_custom, "drawStyle": "bars", "fillOpacity": 80}, options=ts_opts))
    panels.append(lay.panel(
        "table", "Events in the time range",
        [_target(f"sum by (budget, scope, level) (increase({events}[$__range]))", instant=True, fmt="table")],
        w=12, h=9, decimals=0,
        transformations=_value_column("events")))
    variables = [
        _datasource_var(),
        _label_var("budget", "Budget", "llm_budget_utilization"),
        _label_var("scope", "Scope", "llm_budget_utilization", ["budget"]),
    ]
    return _dashboard(BUDGETS_UID, "LLM budgets", panels, variables,
                      "Every otel-llm-usage budget: how much is used, how fast, and what it triggered.",
                      [_link("LLM usage overview", OVERVIEW_UID)])


def all_dashboards() -> dict[str, dict[str, Any]]:
    """File name → dashboard."""
    return {"llm-usage-overview.json": overview_dashboard(), "llm-budgets.json": budgets_dashboard()}


def render(dashboard: dict[str, Any]) -> str:
    return json.dumps(dashboard, indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def iter_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every panel target."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


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
