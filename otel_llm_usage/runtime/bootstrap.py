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

For many processes (replicas, pre-fork workers, short jobs) this module also:

* gives every process its own ``service.instance.id`` (a UUID) unless
  ``OTEL_RESOURCE_ATTRIBUTES`` sets one, so per-process series pushed over OTLP
  (cumulative by default, as Prometheus needs) never collide in the Collector;
* on ``SIGTERM`` (in every set-up: the instrumentor installs it, see
  :func:`install_sigterm_flush`), flushes the ledger and the metrics first and then
  does what the signal did before: the previous handler runs, or the default action
  ends the process (exit at interpreter shutdown is covered by the SDK's own
  ``atexit`` shutdown, which runs a final collection).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import uuid
from collections.abc import Callable, Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace

from .._fork import run_in_child

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource

__all__ = [
    "SERVICE_INSTANCE_ID", "install_sigterm_flush", "process_resource", "setup_default_providers",
    "start_prometheus_endpoint", "uninstall_sigterm_flush",
]

logger = logging.getLogger("otel_llm_usage")
SERVICE_INSTANCE_ID = "service.instance.id"
_SIGTERM_FLUSH_TIMEOUT_S = 5.0
_started_ports: set[tuple[str, int]] = set()
# Providers this module installed (and so may flush on SIGTERM).
_installed: list[object] = []


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


def process_resource() -> Resource:
    """``Resource.create()`` (env and detectors) plus a fresh ``service.instance.id`` if none is set.

    Every process pushing OTLP needs its own id: two replicas sending cumulative sums for the
    same series identity would overwrite each other in the Collector. Recent SDKs detect one
    themselves (``ServiceInstanceIdResourceDetector``); older ones (before 1.4x) do not."""
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create()
    if resource.attributes.get(SERVICE_INSTANCE_ID):
        return resource
    return Resource.create({SERVICE_INSTANCE_ID: str(uuid.uuid4())})


def setup_default_providers(env: Mapping[str, str] | None = None) -> None:
    env = os.environ if env is None else env
    resource = process_resource()
    _setup_metrics(env, resource)
    _setup_traces(env, resource)


def install_sigterm_flush() -> bool:
    """Flush ledger and telemetry on SIGTERM, in every set-up, keeping whatever handled it before.

    A Python handler installed earlier (the app's, a server framework's) still runs, right after
    the flush; the default disposition still ends the process, by the signal. ``SIG_IGN`` and a
    handler installed from C (``getsignal`` gives ``None``) are left alone, and so is every thread
    but the main one (``signal.signal`` works there only). A handler installed *after* this one
    replaces it: its own exit path (``sys.exit``) runs ``atexit``, where the ledger is flushed too.
    Idempotent; :func:`uninstall_sigterm_flush` puts the previous handler back."""
    global _previous_sigterm
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        current = signal.getsignal(signal.SIGTERM)
        if current is _on_sigterm:
            return True
        if current is signal.SIG_IGN or current is None:
            return False
        _previous_sigterm = current
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # pragma: no cover - embedded interpreters without signals
        return False
    return True


def uninstall_sigterm_flush() -> None:
    """Put back the handler :func:`install_sigterm_flush` chained to, if ours is still the one installed."""
    if threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(ValueError, OSError):
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, _previous_sigterm)


_previous_sigterm: Callable[[int, FrameType | None], Any] | int = signal.SIG_DFL


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Flush ledger and telemetry, then do what SIGTERM did before: the previous handler, or the default.

    The flush runs on a helper thread with a deadline: this handler interrupts the main
    thread between two bytecodes, possibly while it holds a lock the flush needs (an SDK
    aggregation lock, a store lock); waiting on it here would hang the process forever."""
    previous = _previous_sigterm
    if not callable(previous):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends us at once
    helper = threading.Thread(target=_flush_all, args=(_SIGTERM_FLUSH_TIMEOUT_S,),
                              name="otel-llm-usage-sigterm-flush", daemon=True)
    helper.start()
    helper.join(_SIGTERM_FLUSH_TIMEOUT_S + 1.0)
    if callable(previous):
        previous(signum, frame)  # the host's own shutdown, unchanged (it may raise SystemExit: let it)
        return
    os.kill(os.getpid(), signal.SIGTERM)  # default disposition now: the process ends by the signal


def _flush_all(timeout_s: float) -> None:
    from .core import active_runtime

    runtime = active_runtime(create=False)
    if runtime is not None:
        runtime.flush(timeout_s)  # the ledger, then the providers it reports to (ours, normally)
        return
    for provider in list(_installed):
        _force_flush(provider, timeout_s)


def _force_flush(provider: object, timeout_s: float) -> None:
    flush = getattr(provider, "force_flush", None)
    if flush is None:
        return
    try:
        flush(int(timeout_s * 1000))
    except Exception as exc:  # shutting down: report, never raise
        logger.debug("otel-llm-usage: flush of %s failed (%s)", type(provider).__name__, type(exc).__name__)


def _after_fork_in_child() -> None:
    # The Prometheus HTTP thread did not survive the fork: the port is the parent's.
    _started_ports.clear()
    if _installed and not _sdk_renews_instance_id():
        # A pre-fork server forked after zero-code set-up, on an SDK that does not give the child a
        # new service.instance.id: every worker pushes the parent's id. Instrument after the fork.
        logger.warning("otel-llm-usage: process forked after its telemetry providers were installed; "
                       "workers share one service.instance.id. Instrument after fork (see "
                       "examples/gunicorn/gunicorn.conf.py).")


def _sdk_renews_instance_id() -> bool:
    """Newer SDKs detect service.instance.id per process and refresh it in a forked child."""
    from opentelemetry.sdk import resources

    return hasattr(resources, "ServiceInstanceIdResourceDetector")


run_in_child(_after_fork_in_child)


def _setup_metrics(env: Mapping[str, str], resource: Resource) -> None:
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
        # Temporality of the OTLP reader follows OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE
        # (cumulative by default, which the Collector's Prometheus exporters need). The provider
        # registers an atexit shutdown whose last collection exports what a short job recorded.
        provider = MeterProvider(metric_readers=readers, resource=resource)
        metrics.set_meter_provider(provider)
        _installed.append(provider)


def _setup_traces(env: Mapping[str, str], resource: Resource) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    names = _names(env.get("OTEL_TRACES_EXPORTER"), "none")
    if "none" in names:
        return
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=resource)
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
        _installed.append(provider)
