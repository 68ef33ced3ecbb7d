# SPDX-License-Identifier: Apache-2.0
"""A host app with its own providers (the programmatic set-up) that records N usage records.

    python ledger_app.py LEDGER_URL N wait     # print READY, then sleep (the test sends SIGTERM)
    python ledger_app.py LEDGER_URL N exit     # uninstrument, print the dropped-records counter, exit
    python ledger_app.py LEDGER_URL N handler  # like wait, with the app's own SIGTERM handler installed first
"""

from __future__ import annotations

import json
import signal
import sys
import time

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from otel_llm_usage import LLMUsageInstrumentor, record_usage
from otel_llm_usage.config import Config

url, count, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode == "handler":
    def app_handler(signum: int, frame: object) -> None:
        print("APP HANDLER", flush=True)
        sys.exit(3)

    signal.signal(signal.SIGTERM, app_handler)
reader = InMemoryMetricReader()
instrumentor = LLMUsageInstrumentor()
instrumentor.instrument(tracer_provider=TracerProvider(), meter_provider=MeterProvider(metric_readers=[reader]),
                        config=Config(ledger=url))
for i in range(count):
    record_usage(provider="openai", model="gpt-4o-mini", input_tokens=10, output_tokens=i % 7, user=f"u{i % 5}")
if mode == "exit":
    instrumentor.uninstrument()
    data = reader.get_metrics_data()
    dropped = {dp.attributes["reason"]: dp.value for rm in data.resource_metrics for sm in rm.scope_metrics
               for m in sm.metrics if m.name == "llm.usage.ledger.dropped_records" for dp in m.data.data_points}
    print(json.dumps({"dropped": dropped}), flush=True)
    sys.exit(0)
print("READY", flush=True)
time.sleep(60)
print("NOT KILLED", flush=True)
