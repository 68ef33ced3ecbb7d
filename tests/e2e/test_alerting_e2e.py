# SPDX-License-Identifier: Apache-2.0
"""End to end: instrumented app → Prometheus (bundled + generated rules) → Alertmanager → webhook."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from otel_llm_usage.config import load_config
from otel_llm_usage.tooling.rules import dump_yaml, generate_rules
from tests.support.prom_fixtures import PromAPI, WebhookReceiver, app_and_prometheus, poll, write_app_config

ARTIFACT = Path(__file__).parents[1] / ".artifacts" / "alertmanager-webhook.json"


def _firing(payloads: list[dict[str, Any]], alertname: str, budget: str) -> dict[str, Any] | None:
    """The first webhook payload carrying a firing ``alertname`` for ``budget``."""
    for payload in payloads:
        for alert in payload["alerts"]:
            labels = alert["labels"]
            if (alert["status"], labels["alertname"], labels.get("budget")) == ("firing", alertname, budget):
                return payload
    return None


def _save(payload: dict[str, Any]) -> None:
    ARTIFACT.parent.mkdir(exist_ok=True)
    # Test output, not source: keep it out of git without touching the repository's .gitignore.
    (ARTIFACT.parent / ".gitignore").write_text("*\n", encoding="utf-8")
    text = json.dumps(payload, indent=2, sort_keys=True)
    ARTIFACT.write_text(text + "\n", encoding="utf-8")
    print(f"\nAlertmanager webhook payload saved to {ARTIFACT}:\n{text}")


@pytest.mark.slow
def test_budget_alert_reaches_the_webhook(tmp_path: Path) -> None:
    config = load_config(write_app_config(tmp_path), env={})
    generated = tmp_path / "llm-usage-budgets.yml"
    generated.write_text(dump_yaml(generate_rules(config)), encoding="utf-8")

    with WebhookReceiver() as receiver, \
            app_and_prometheus(tmp_path, rule_files=[generated], with_alertmanager=True,
                               webhook_url=receiver.url) as stack:
        prom = PromAPI(stack.services["prometheus"].url)
        names = {name for name, _, _ in prom.rule_health()}
        # Both the bundled static rules and the generated per-budget rules are loaded.
        assert {"LLMBudgetExceeded", "LLMBudgetExceededByCounters", "LLMUsageExporterDown"} <= names

        def delivered() -> bool:
            got = receiver.received()
            return all(_firing(got, name, budget) for name, budget in (
                ("LLMBudgetExceeded", "e2e-tiny"),            # gauge: bundled and generated rules
                ("LLMBudgetExceededByCounters", "e2e-tiny"),  # counters: generated rules only
                ("LLMBudgetBlocking", "e2e-block"),           # blocked events: bundled rules
            ))

        ok = poll(delivered, timeout=60, interval=0.5)
        got = receiver.received()
        seen = sorted({(a["labels"]["alertname"], a["labels"].get("budget", ""))
                       for p in got for a in p["alerts"]})
        log = stack.services["prometheus"].log_tail()
        assert ok, f"alerts delivered so far: {seen}\nprometheus log:\n{log}"

        payload = _firing(got, "LLMBudgetExceeded", "e2e-tiny")
        assert payload is not None
        _save(payload)
        assert payload["receiver"] == "critical"  # routed by severity
        assert payload["groupLabels"] == {"alertname": "LLMBudgetExceeded", "budget": "e2e-tiny"}
        (alert,) = [a for a in payload["alerts"] if a["labels"].get("budget") == "e2e-tiny"]
        assert alert["labels"]["severity"] == "critical"
        assert alert["labels"]["scope"] == "all"
        assert alert["labels"]["window"] == "day"
        assert alert["labels"]["unit"] == "tokens"
        assert alert["annotations"]["dashboard"].endswith("/d/llm-usage-budgets?var-budget=e2e-tiny")
        assert float(prom.query('llm_budget_utilization{budget="e2e-tiny"}')[0]["value"][1]) >= 1

        # Once exceeded, the budget's warnings are inhibited (inhibit_rules in deploy/alertmanager).
        am = stack.services["alertmanager"].url

        def warning_inhibited() -> bool:
            with urllib.request.urlopen(f"{am}/api/v2/alerts?filter=budget%3D%22e2e-tiny%22", timeout=5) as r:
                alerts = json.load(r)
            warns = [a for a in alerts if a["labels"]["alertname"] == "LLMBudgetWarning"]
            return bool(warns) and all(a["status"]["inhibitedBy"] for a in warns)

        assert poll(warning_inhibited, timeout=20, interval=0.5)
