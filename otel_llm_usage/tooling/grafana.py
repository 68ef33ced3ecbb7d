# SPDX-License-Identifier: Apache-2.0
"""The pieces the bundled Grafana dashboards are made of: query filters, targets, thresholds,
template variables, a panel grid and the dashboard frame."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["BUDGET_FILTER", "BUDGET_KEYS", "BUDGET_STEPS", "DATASOURCE", "GREEN", "SCHEMA_VERSION", "SEMCONV_FILTER",
           "USAGE_FILTER", "Layout", "dashboard", "datasource_var", "label_var", "link", "target", "thresholds",
           "usage_query", "value_column"]

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 39

USAGE_FILTER = ('provider=~"$provider", model=~"$model", function=~"$function", '
                 'user=~"$user", anchor=~"$anchor"')
# The semconv histograms carry provider/model under their gen_ai_* names and no attribution labels.
# The gen_ai_client_* histograms are semconv names that another GenAI instrumentation (say
# opentelemetry-instrumentation-openai-v2, which `opentelemetry-bootstrap` may install) records for
# the same calls: keep to our scope. The empty alternative matches exporters that add no scope label.
SEMCONV_FILTER = ('otel_scope_name=~"otel_llm_usage|", '
                   'gen_ai_provider_name=~"$provider", gen_ai_request_model=~"$model"')
BUDGET_FILTER = 'budget=~"$budget", scope=~"$scope"'
BUDGET_KEYS = "budget, scope, window, unit"


def usage_query(metric: str, extra: str = "") -> str:
    return f"{metric}{{{USAGE_FILTER}{', ' + extra if extra else ''}}}"


def target(expr: str, legend: str = "__auto", ref: str = "A", *, instant: bool = False,
            fmt: str = "time_series") -> dict[str, Any]:
    target: dict[str, Any] = {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref,
                              "range": not instant, "instant": instant}
    if fmt != "time_series":
        target["format"] = fmt
    return target


def thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


GREEN = thresholds(("green", None))
BUDGET_STEPS = thresholds(("green", None), ("yellow", 0.8), ("orange", 0.9), ("red", 1.0))


class Layout:
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
        defaults: dict[str, Any] = {"unit": unit, "thresholds": thresholds or GREEN,
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


def value_column(title: str) -> list[dict[str, Any]]:
    """Table transformation: hide the time column and name the value column."""
    options = {"excludeByName": {"Time": True}, "renameByName": {"Value": title}}
    return [{"id": "organize", "options": options}]


def label_var(name: str, label: str, metric: str, depends: Iterable[str] = (), *,
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


def datasource_var() -> dict[str, Any]:
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "options": [], "refresh": 1, "regex": "", "skipUrlSync": False}


def dashboard(uid: str, title: str, panels: list[dict[str, Any]], variables: list[dict[str, Any]],
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


def link(title: str, uid: str) -> dict[str, Any]:
    # keepTime/includeVars carry the time range and the selected variables across dashboards.
    return {"title": title, "type": "link", "url": f"/d/{uid}", "icon": "dashboard", "tags": [],
            "asDropdown": False, "keepTime": True, "includeVars": True, "targetBlank": False, "tooltip": ""}
