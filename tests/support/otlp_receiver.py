# SPDX-License-Identifier: Apache-2.0
"""A stand-in for the OpenTelemetry Collector's OTLP/HTTP receiver, for tests.

No Collector binary is installable here, so tests push to this instead: a ``http.server``
on a free loopback port that accepts ``POST /v1/metrics`` and ``POST /v1/traces`` with
protobuf bodies (gzip or not), decodes them with the ``opentelemetry-proto`` messages and
keeps every request::

    with OtlpReceiver() as receiver:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        ...  # run the process
        receiver.wait_for(lambda r: r.instance_ids())
        totals = receiver.cumulative_totals("llm.usage.tokens")   # {service.instance.id: value}

Decoding checks what the Collector's Prometheus exporters rely on and raises
:class:`AssertionError` (answered as HTTP 400, and kept in ``errors``) otherwise: every
resource carries ``service.name`` and ``service.instance.id``, and every ``llm.usage.*``
sum is monotonic with cumulative temporality.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

__all__ = ["OtlpReceiver", "SumPoint"]


@dataclass(frozen=True)
class SumPoint:
    """One data point of a Sum metric, flattened with the resource it came from."""

    instance_id: str
    service_name: str
    metric: str
    attributes: tuple[tuple[str, str], ...]
    value: float
    time_unix_nano: int
    start_time_unix_nano: int


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return None if kind is None else getattr(v, kind)


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs if isinstance(kv, KeyValue)}


class OtlpReceiver:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.traces: list[ExportTraceServiceRequest] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The value for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (exporters append ``/v1/<signal>``)."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> OtlpReceiver:
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- HTTP ----------------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding", "").lower() == "gzip":
                    body = gzip.decompress(body)
                try:
                    reply = receiver._accept(self.path, self.headers.get("Content-Type", ""), body)
                except AssertionError as exc:
                    with receiver._lock:
                        receiver.errors.append(str(exc))
                    self._send(400, str(exc).encode(), "text/plain")
                    return
                if reply is None:
                    self._send(404, b"unknown path", "text/plain")
                else:
                    self._send(200, reply, "application/x-protobuf")

            def _send(self, status: int, payload: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler

    def _accept(self, path: str, content_type: str, body: bytes) -> bytes | None:
        assert content_type.startswith("application/x-protobuf"), f"unexpected Content-Type {content_type!r}"
        if path == "/v1/metrics":
            request = ExportMetricsServiceRequest.FromString(body)
            _check_metrics(request)
            with self._lock:
                self.metrics.append(request)
            return bytes(ExportMetricsServiceResponse().SerializeToString())
        if path == "/v1/traces":
            traces = ExportTraceServiceRequest.FromString(body)
            with self._lock:
                self.traces.append(traces)
            return bytes(ExportTraceServiceResponse().SerializeToString())
        return None

    # --- reading what arrived --------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[OtlpReceiver], Any], timeout: float = 20.0) -> Any:
        """Poll ``predicate(self)`` until it is truthy (returned) or ``timeout`` passes (AssertionError)."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate(self)
            if result:
                return result
            if time.monotonic() >= deadline:
                raise AssertionError(f"OTLP receiver: condition not met within {timeout}s "
                                     f"({len(self.metrics)} metric exports, errors={self.errors})")
            time.sleep(0.05)

    def sum_points(self, metric: str) -> Iterator[SumPoint]:
        with self._lock:
            requests = list(self.metrics)
        for request in requests:
            for rm in request.resource_metrics:
                res = _attrs(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        if m.name != metric or m.WhichOneof("data") != "sum":
                            continue
                        for dp in m.sum.data_points:
                            value = dp.as_int if dp.WhichOneof("value") == "as_int" else dp.as_double
                            yield SumPoint(str(res["service.instance.id"]), str(res.get("service.name")), m.name,
                                           tuple(sorted((k, str(v)) for k, v in _attrs(dp.attributes).items())),
                                           float(value), dp.time_unix_nano, dp.start_time_unix_nano)

    def cumulative_totals(self, metric: str, **match: str) -> dict[str, float]:
        """Per ``service.instance.id``: the sum over attribute sets of each series' *latest* cumulative
        value (what Prometheus shows after ``sum without (service_instance_id)`` per process).
        ``match`` keeps only series whose attributes include those values."""
        latest: dict[tuple[str, tuple[tuple[str, str], ...]], SumPoint] = {}
        for p in self.sum_points(metric):
            attrs = dict(p.attributes)
            if any(attrs.get(k) != v for k, v in match.items()):
                continue
            key = (p.instance_id, p.attributes)
            if key not in latest or p.time_unix_nano >= latest[key].time_unix_nano:
                latest[key] = p
        totals: dict[str, float] = {}
        for (instance, _), p in latest.items():
            totals[instance] = totals.get(instance, 0.0) + p.value
        return totals

    def instance_ids(self) -> set[str]:
        with self._lock:
            requests = list(self.metrics)
        return {str(_attrs(rm.resource.attributes)["service.instance.id"])
                for r in requests for rm in r.resource_metrics}

    def service_names(self) -> set[str]:
        with self._lock:
            requests = list(self.metrics)
        return {str(_attrs(rm.resource.attributes).get("service.name"))
                for r in requests for rm in r.resource_metrics}


def _check_metrics(request: ExportMetricsServiceRequest) -> None:
    for rm in request.resource_metrics:
        res = _attrs(rm.resource.attributes)
        assert res.get("service.name"), "resource without service.name"
        assert res.get("service.instance.id"), "resource without service.instance.id: replicas would collide"
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name.startswith("llm.usage.") and m.WhichOneof("data") == "sum":
                    assert m.sum.is_monotonic, f"{m.name} is not monotonic"
                    assert m.sum.aggregation_temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE, \
                        f"{m.name} is not cumulative"
