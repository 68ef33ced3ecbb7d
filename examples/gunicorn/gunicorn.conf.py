# SPDX-License-Identifier: Apache-2.0
"""Pre-fork recipe: instrument in every gunicorn worker, after the fork.

    gunicorn -c examples/gunicorn/gunicorn.conf.py                 # Prometheus: one port per worker
    OTEL_METRICS_EXPORTER=otlp gunicorn -c examples/gunicorn/gunicorn.conf.py   # push to a Collector

Why after the fork: exporters run threads and (for Prometheus) own a listening port, and
neither survives ``fork()`` usefully. Set up in the master, every worker would share one
``service.instance.id`` and one port. So the master never instruments; ``post_fork`` does it
in each worker:

* ``OTEL_METRICS_EXPORTER=prometheus`` (default): worker slot *i* serves /metrics on
  ``LLM_USAGE_METRICS_BASE_PORT + i`` (default 9464 + i). Slots are the lowest free ones, so a
  worker that gunicorn replaces reuses its predecessor's port: list ``base .. base+workers-1``
  as scrape targets. Each port is its own Prometheus target (``instance`` label).
* ``OTEL_METRICS_EXPORTER=otlp``: each worker pushes with its own ``service.instance.id``
  (a UUID set by otel-llm-usage), to ``OTEL_EXPORTER_OTLP_ENDPOINT``; the Collector keeps it as
  the ``service_instance_id`` label (deploy/otel-collector/config.yaml). Cumulative temporality.
* Budgets hold across workers (and hosts) with a shared ledger, ``ledger: redis://...`` in the
  config (``OTEL_LLM_USAGE_CONFIG``, ``OTEL_LLM_USAGE_LEDGER``).

A worker that exits (``max_requests``, a reload, SIGTERM from the master) exits normally, so
the SDK's exit hook pushes its last OTLP export and the ledger writer flushes.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
wsgi_app = "app:app"
chdir = os.path.dirname(os.path.abspath(__file__))
preload_app = False  # the app creates its OpenAI client lazily anyway; see app.py

METRICS_BASE_PORT = int(os.environ.get("LLM_USAGE_METRICS_BASE_PORT", "9464"))


def pre_fork(server: Any, worker: Any) -> None:
    """In the master: give the new worker the lowest slot no live worker holds (bounded port range)."""
    taken = {getattr(w, "llm_usage_slot", None) for w in server.WORKERS.values()}
    worker.llm_usage_slot = next(i for i in itertools.count() if i not in taken)


def post_fork(server: Any, worker: Any) -> None:
    """In the worker: choose its /metrics port, then instrument (providers + exporters start here)."""
    from otel_llm_usage.instrumentor import LLMUsageInstrumentor

    exporters = os.environ.setdefault("OTEL_METRICS_EXPORTER", "prometheus")
    if "prometheus" in exporters:
        os.environ["OTEL_EXPORTER_PROMETHEUS_PORT"] = str(METRICS_BASE_PORT + worker.llm_usage_slot)
    # setup_providers=True: what `opentelemetry-instrument` would do, per process, so this worker gets
    # its own MeterProvider, exporter thread, port and service.instance.id.
    LLMUsageInstrumentor().instrument(setup_providers=True)
    server.log.info("otel-llm-usage: worker %s (slot %s) instrumented, metrics via %s%s", worker.pid,
                    worker.llm_usage_slot, exporters,
                    f" on :{os.environ['OTEL_EXPORTER_PROMETHEUS_PORT']}" if "prometheus" in exporters else "")


def worker_exit(server: Any, worker: Any) -> None:
    """Write the ledger and push the last metrics while the worker is still healthy.

    The SDK's atexit hook would export too; doing it here also covers workers that end with
    ``os._exit`` (gunicorn does so when a worker fails to boot)."""
    from otel_llm_usage.instrumentor import LLMUsageInstrumentor

    runtime = LLMUsageInstrumentor().runtime
    if runtime is not None:
        runtime.flush(5.0)
