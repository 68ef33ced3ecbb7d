# SPDX-License-Identifier: Apache-2.0
"""A test app for Prometheus/Alertmanager: steady traffic on every label the dashboards use.

    python tests/apps/alerting_app.py --port 9464 --config budgets.yaml

It runs the loopback LLM server in-process, serves /metrics on ``--port`` and
makes a round of calls every ``--interval`` seconds until SIGTERM: for each
function, user and anchor, a plain and a streamed OpenAI chat (with cached and
reasoning tokens), a DashScope-compatible call (CNY), a call to a model without
a price, and one that fails with HTTP 429. Budgets come from ``--config``.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from types import FrameType
from typing import Any

import openai
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource

from otel_llm_usage import BudgetExceeded, usage_context
from otel_llm_usage.config import load_config
from otel_llm_usage.instrumentor import LLMUsageInstrumentor
from otel_llm_usage.runtime.bootstrap import start_prometheus_endpoint
from otel_llm_usage.testing import LoopbackLLMServer

FUNCTIONS = ("live-reply", "room-summary")
USERS = ("viewer-1", "viewer-2")
ANCHORS = ("anchor-lin", "anchor-zhao")
UNPRICED_MODEL = "llm-unpriced-test-model"
MESSAGES: Any = [{"role": "user", "content": "hello there"}]


def one_round(client: openai.OpenAI, compat: openai.OpenAI) -> None:
    for function in FUNCTIONS:
        for user in USERS:
            for anchor in ANCHORS:
                with usage_context(function=function, user=user, anchor=anchor, session="s-1"):
                    calls = (
                        lambda: client.chat.completions.create(
                            model="gpt-4o-mini", messages=MESSAGES,
                            extra_headers={"X-Loopback-Scenario": "cached=2;reasoning=2"}),
                        lambda: list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                                    stream=True)),
                        lambda: compat.chat.completions.create(model="qwen-plus", messages=MESSAGES),
                        lambda: client.chat.completions.create(model=UNPRICED_MODEL, messages=MESSAGES),
                        lambda: client.chat.completions.create(
                            model="gpt-4o-mini", messages=MESSAGES,
                            extra_headers={"X-Loopback-Scenario": "status=429"}),
                    )
                    for call in calls:
                        # Errors and blocked calls are part of the traffic being measured.
                        with contextlib.suppress(openai.APIError, BudgetExceeded):
                            call()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args()

    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    server = LoopbackLLMServer().start()
    meter_provider = MeterProvider(metric_readers=[PrometheusMetricReader()],
                                   resource=Resource.create({"service.name": "otel-llm-usage-alerting-app"}))
    instrumentor = LLMUsageInstrumentor()
    instrumentor.instrument(meter_provider=meter_provider, config=load_config(args.config, env={}))
    if not start_prometheus_endpoint("127.0.0.1", args.port):
        raise SystemExit(f"cannot serve /metrics on port {args.port}")
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-alerting", max_retries=0)
    compat = openai.OpenAI(base_url=server.url + "/compatible-mode/v1", api_key="sk-alerting", max_retries=0)
    try:
        while not stop.is_set():
            one_round(client, compat)
            stop.wait(args.interval)
    finally:
        instrumentor.uninstrument()
        meter_provider.shutdown()
        server.stop()


if __name__ == "__main__":
    main()
