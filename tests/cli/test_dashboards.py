# SPDX-License-Identifier: Apache-2.0
"""Grafana dashboards: generated = checked in, well-formed, every query returns data from a real scrape."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_llm_usage.tooling import dashboards as D
from tests.support.prom_fixtures import ROOT, PromAPI, app_and_prometheus, poll

DASHBOARDS = D.all_dashboards()
VAR_REF = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
GRAFANA_BUILTINS = {"__range", "__rate_interval", "__interval", "__all", "__auto"}


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _strings(dashboard: dict[str, Any]) -> Iterator[str]:
    # Variable references live in queries, legends, titles and variable definitions alike.
    for node in _walk({k: v for k, v in dashboard.items() if k != "templating"}):
        if isinstance(node, str):
            yield node
    for var in dashboard["templating"]["list"]:
        yield json.dumps(var.get("query", ""))


@pytest.mark.parametrize("fname", sorted(DASHBOARDS))
def test_checked_in_json_is_the_generated_one(fname: str) -> None:
    checked_in = (ROOT / "dashboards" / fname).read_text(encoding="utf-8")
    assert checked_in == D.render(DASHBOARDS[fname]), \
        "dashboards/ is stale: run `python -m otel_llm_usage.tooling.dashboards --write`"


def test_configmap_is_in_sync() -> None:
    path = ROOT / "deploy" / "kubernetes" / "grafana-dashboards-configmap.yaml"
    assert path.read_text(encoding="utf-8") == D.configmap_yaml(), \
        "run `python -m otel_llm_usage.tooling.dashboards --write`"
    cm = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert {k: json.loads(v) for k, v in cm["data"].items()} == DASHBOARDS


def test_write_regenerates_every_file(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "otel_llm_usage.tooling.dashboards", "--write", "--root", str(tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    for path, text in D.expected_files(ROOT).items():
        assert (tmp_path / path.relative_to(ROOT)).read_text(encoding="utf-8") == text


@pytest.mark.parametrize("fname", sorted(DASHBOARDS))
def test_structure(fname: str) -> None:
    dash = DASHBOARDS[fname]
    assert dash["schemaVersion"] >= 39
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {fname}"
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        assert set(pos) == {"h", "w", "x", "y"} and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]
    # Panels must not overlap on Grafana's grid.
    cells: dict[tuple[int, int], str] = {}
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("fname", sorted(DASHBOARDS))
def test_variables_are_defined_and_datasource_is_the_variable(fname: str) -> None:
    dash = DASHBOARDS[fname]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    used = {a or b for s in _strings(dash) for a, b in VAR_REF.findall(s)}
    undefined = used - set(variables) - GRAFANA_BUILTINS
    assert not undefined, f"{fname} uses undefined variables {undefined}"
    for name, var in variables.items():
        if var["type"] == "query":
            assert var["multi"] and var["includeAll"], name
            assert var["query"]["query"].startswith("label_values("), name
    # Every datasource reference (panel, target, variable) goes through the ${datasource} variable.
    refs = [n["datasource"] for n in _walk(dash) if isinstance(n, dict) and "datasource" in n
            and isinstance(n["datasource"], dict) and n["datasource"].get("type") != "grafana"]
    assert refs and all(r == {"type": "prometheus", "uid": "${datasource}"} for r in refs)


def test_overview_has_the_attribution_variables() -> None:
    names = [v["name"] for v in D.overview_dashboard()["templating"]["list"]]
    assert names == ["datasource", "provider", "model", "function", "user", "anchor"]


# --- every query against a real Prometheus ----------------------------------------------

# Grafana's built-ins, made concrete: 30s holds ~30 scrapes at 1s; 1h reaches back past the start.
BUILTINS = {"__range": "1h", "__rate_interval": "30s", "__interval": "15s"}
ALL = {name: ".*" for name in ("provider", "model", "function", "user", "anchor", "budget", "scope")}
# A multi-value selection, rendered the way Grafana renders it for Prometheus: a regex alternation.
SELECTED = {"provider": "openai", "model": "(gpt-4o-mini|llm-unpriced-test-model)", "function": "live-reply",
            "user": "viewer-1", "anchor": "anchor-lin", "budget": "(e2e-tiny|e2e-per-anchor)",
            "scope": "(all|anchor-lin)"}


def substitute(expr: str, values: dict[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"no test value for ${name} in {expr}")
        return values[name]

    return VAR_REF.sub(repl, expr)


def _all_queries() -> list[tuple[str, str]]:
    return [(f"{d['title']} / {title}", expr)
            for d in DASHBOARDS.values() for title, expr in D.iter_queries(d)]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromAPI]:
    # The Insights row reads recording rules, so this Prometheus evaluates them like a deployment would.
    recording = ROOT / "deploy" / "prometheus" / "rules" / "llm-usage-recording.yml"
    with app_and_prometheus(tmp_path_factory.mktemp("dash-stack"), rule_files=[recording]) as stack:
        yield PromAPI(stack.services["prometheus"].url)


@pytest.mark.slow
@pytest.mark.parametrize("values", [ALL, SELECTED], ids=["all", "selected"])
def test_every_panel_query_returns_data(prometheus: PromAPI, values: dict[str, str]) -> None:
    queries = [(title, substitute(expr, {**BUILTINS, **values})) for title, expr in _all_queries()]
    # Variable queries too: a dropdown with no values makes every panel empty.
    for dash in DASHBOARDS.values():
        for var in dash["templating"]["list"]:
            if var["type"] == "query":
                m = re.fullmatch(r"label_values\((.*), (\w+)\)", var["query"]["query"])
                assert m, var["query"]["query"]
                selector = substitute(m.group(1), values)
                queries.append((f"variable {var['name']}", f"count by ({m.group(2)}) ({selector})"))

    def empty() -> list[str]:
        return [f"{title}: {expr}" for title, expr in queries if not prometheus.query(expr)]

    # Rates need two scrapes in the window and the budget needs time to fill: wait, bounded.
    all_have_data = poll(lambda: not empty(), timeout=45, interval=1)
    assert all_have_data, "queries without data:\n" + "\n".join(empty())


@pytest.mark.slow
def test_queries_fail_on_a_wrong_metric_name(prometheus: PromAPI) -> None:
    # The check above can fail: a misspelled metric returns nothing.
    assert prometheus.query('sum by (currency) (increase(llm_usage_costs_total{provider=~".*"}[1h]))') == []
