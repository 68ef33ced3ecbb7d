# SPDX-License-Identifier: Apache-2.0
"""Zero-code set-up: give ``opentelemetry-instrument python app.py`` a /metrics endpoint.

Without a configurator (``opentelemetry-distro``) nobody installs SDK
providers, so our counters would go to the no-op API. When the global
MeterProvider is not an SDK one, we install one whose readers follow
``OTEL_METRICS_EXPORTER`` — ``prometheus`` (the default here, on
``OTEL_EXPORTER_PROMETHEUS_HOST``:``OTEL_EXPORTER_PROMETHEUS_PORT``,
0.0.0.0:9464), ``otlp`` (extra ``[otlp]``), ``console`` or ``none`` — and a
TracerProvider when ``OTEL_TRACES_EXPORTER`` names ``console`` or ``otlp``.
A provider someone else configured is always left alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from opentelemetry import metrics, trace

__all__ = ["setup_default_providers", "start_prometheus_endpoint"]

logger = logging.getLogger("otel_llm_usage")
_started_ports: set[tuple[str, int]] = set()


def _names(value: str | None, default: str) -> list[str]:
    return [n.strip().lower() for n in (value or default).split(",") if n.strip()]


def start_prometheus_endpoint(host: str, port: int) -> bool:
    """Serve the global prometheus_client registry; False (logged) if the port is taken."""
    from prometheus_client import start_http_server

    if (host, port) in _started_ports:
        return True
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        logger.warning("otel-llm-usage: cannot serve Prometheus metrics on %s:%s (%s); "
                       "set OTEL_EXPORTER_PROMETHEUS_PORT to a free port", host, port, exc.strerror or exc)
        return False
    _started_ports.add((host, port))
    logger.info("otel-llm-usage: Prometheus metrics on http://%s:%s/metrics", host, port)
    return True


def setup_default_providers(env: Mapping[str, str] | None = None) -> None:
    env = os.environ if env is None else env
    _setup_metrics(env)
    _setup_traces(env)


def _setup_metrics(env: Mapping[str, str]) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader

    if isinstance(metrics.get_meter_provider(), MeterProvider):
        return
    names = _names(env.get("OTEL_METRICS_EXPORTER"), "prometheus")
    if "none" in names:
        return
    readers: list[MetricReader] = []
    if "prometheus" in names:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        host = env.get("OTEL_EXPORTER_PROMETHEUS_HOST", "0.0.0.0")
        port = int(env.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464"))
        if start_prometheus_endpoint(host, port):
            readers.append(PrometheusMetricReader())
    if "otlp" in names:
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        except ImportError:
            logger.warning("otel-llm-usage: OTEL_METRICS_EXPORTER=otlp needs `pip install otel-llm-usage[otlp]`")
    if "console" in names:
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
    if readers:
        from opentelemetry.sdk.resources import Resource

        metrics.set_meter_provider(MeterProvider(metric_readers=readers, resource=Resource.create()))


def _setup_traces(env: Mapping[str, str]) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    names = _names(env.get("OTEL_TRACES_EXPORTER"), "none")
    if "none" in names:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create())
    added = False
    if "console" in names:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        added = True
    if "otlp" in names:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            added = True
        except ImportError:
            logger.warning("otel-llm-usage: OTEL_TRACES_EXPORTER=otlp needs `pip install otel-llm-usage[otlp]`")
    if added:
        trace.set_tracer_provider(provider)
