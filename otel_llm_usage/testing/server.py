# SPDX-License-Identifier: Apache-2.0
"""A loopback HTTP server that speaks enough of the OpenAI and DashScope wire
protocols for the real SDKs to talk to it.

It exists so instrumentation can be tested end to end (real SDK, real HTTP,
real SSE parsing) without network access or API keys, and so awkward provider
behaviour (rate limits, truncated streams, malformed usage) can be produced on
demand through *scenarios*.

Replies are always fixed filler words: the server never echoes request
content, so nothing a test sends can leak back into recorded telemetry.

Run standalone with ``python -m otel_llm_usage.testing.server --port 8000``.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .scenarios import (
    _CREDENTIAL_HEADERS,
    SCENARIO_HEADER,
    RecordedRequest,
    Scenario,
    ScenarioError,
)

ErrorRenderer = Callable[[int, str], dict[str, Any]]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Callable[[Exchange], None]
    render_error: ErrorRenderer


class _Truncated(Exception):
    """Raised inside a handler once ``truncate_after`` frames were sent."""


class SSEWriter:
    """Writes pre-formatted SSE frames with chunked transfer encoding.

    Chunked encoding matters: when a stream is truncated we drop the socket
    without the terminating zero-length chunk, which HTTP clients report as an
    incomplete body (an error) rather than a clean end of stream.
    """

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange
        self._sent = 0

    def send(self, frame: str) -> None:
        scenario = self._exchange.scenario
        if scenario.truncate_after is not None and self._sent >= scenario.truncate_after:
            raise _Truncated()
        if self._sent and scenario.chunk_delay:
            time.sleep(scenario.chunk_delay)
        self._exchange._write_chunk(frame.encode())
        self._sent += 1
        if self._sent == 1 and scenario.malformed_sse:
            self._exchange._write_chunk(b"data: {this is not json\n\n")

    @property
    def sent(self) -> int:
        return self._sent


class Exchange:
    """One request/response pair as seen by a route handler."""

    def __init__(
        self,
        handler: _RequestHandler,
        route: Route,
        params: Mapping[str, str],
        body: Any,
        scenario: Scenario,
        query: dict[str, str],
    ) -> None:
        self._handler = handler
        self.route = route
        self.params = dict(params)
        self.body = body if isinstance(body, dict) else {}
        self.scenario = scenario
        self.query = query
        self.method = handler.command
        self.path = handler.path
        self.headers = handler.headers
        self._streaming = False

    def header(self, name: str) -> str:
        return self.headers.get(name, "") or ""

    def send_json(self, payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        if self.scenario.extra_fields and isinstance(payload, dict) and status == 200:
            payload = {**payload, "x_loopback_future_field": {"nested": [1, 2]}, "service_tier": "default"}
        data = json.dumps(payload).encode()
        if self.scenario.reset_body and status == 200:
            h = self._handler
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            raise _Truncated()
        self.send_bytes(data, status, "application/json", headers)

    def send_bytes(
        self, data: bytes, status: int, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        h = self._handler
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()

    def send_error(self, status: int, message: str) -> None:
        headers = {}
        if self.scenario.retry_after is not None:
            headers["Retry-After"] = self.scenario.retry_after
        self.send_json(self.route.render_error(status, message), status, headers)

    def open_sse(self, headers: Mapping[str, str] | None = None) -> SSEWriter:
        h = self._handler
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Transfer-Encoding", "chunked")
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        self._streaming = True
        return SSEWriter(self)

    def _write_chunk(self, data: bytes) -> None:
        w = self._handler.wfile
        w.write(b"%x\r\n%s\r\n" % (len(data), data))
        w.flush()

    def _finish(self) -> None:
        if self._streaming:
            self._handler.wfile.write(b"0\r\n\r\n")
            self._handler.wfile.flush()


class _RequestHandler(BaseHTTPRequestHandler):
    # Headers and body go out in two sends; with Nagle on, the body would wait for the client's
    # delayed ACK (~40 ms on Linux) on every request. Real servers set TCP_NODELAY too.
    disable_nagle_algorithm = True
    # HTTP/1.1 so SDK connection pools get keep-alive and chunked streaming.
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.owner.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        owner = self.server.owner
        split = urlsplit(self.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = _decode_json(raw)
        route, params = owner._match(self.command, split.path)

        scenario: Scenario | None = None
        scenario_error: str | None = None
        try:
            scenario = owner._scenario_for(self.headers.get(SCENARIO_HEADER))
        except ScenarioError as exc:
            scenario_error = str(exc)
        owner._record(self, split.path, query, body, scenario)

        exchange = Exchange(self, route, params, body, scenario or Scenario(), query)
        if scenario_error is not None:
            exchange.send_error(400, scenario_error)
            return
        if raw and body is None:
            exchange.send_error(400, "request body is not valid JSON")
            return
        if exchange.scenario.delay:
            time.sleep(exchange.scenario.delay)
        if exchange.scenario.status is not None:
            exchange.send_error(
                exchange.scenario.status, f"loopback scenario status={exchange.scenario.status}"
            )
            return
        if exchange.scenario.malformed_json:
            exchange.send_bytes(b'{"id": "broken", "choices": [', 200, "application/json")
            return
        try:
            route.handler(exchange)
            exchange._finish()
        except _Truncated:
            self._abort()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _abort(self) -> None:
        """Drop the connection mid-body, as a crashed upstream would."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _decode_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Concurrency tests open dozens of connections at once; the default backlog of 5 resets them.
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up mid-stream (abandoned and cancelled streams) are a tested case, not a fault.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)
    block_on_close = False
    owner: LoopbackLLMServer


def not_found(exchange: Exchange) -> None:
    exchange.send_error(404, f"no loopback route for {exchange.method} {exchange.path}")


class LoopbackLLMServer:
    """A fake OpenAI + DashScope endpoint on localhost.

    >>> with LoopbackLLMServer() as server:
    ...     client = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-test")
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False) -> None:
        self._host = host
        self._port = port
        self.verbose = verbose
        self.default_scenario: str | None = None
        self._lock = threading.Lock()
        self._queue: collections.deque[str] = collections.deque()
        self._requests: list[RecordedRequest] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._routes: list[Route] = self._load_routes()
        # Unmatched paths get an OpenAI-shaped 404 (the most common client).
        from .openai_api import render_error as openai_error

        self._fallback = Route("*", re.compile(".*"), not_found, openai_error)

    @staticmethod
    def _load_routes() -> list[Route]:
        # Imported lazily so the provider modules can import helpers from here.
        from . import dashscope_api, openai_api

        return [*openai_api.routes(), *dashscope_api.routes()]

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> LoopbackLLMServer:
        if self._httpd is not None:
            return self
        httpd = _HTTPServer((self._host, self._port), _RequestHandler)
        httpd.owner = self
        self._httpd = httpd
        # A short poll interval keeps stop() fast; tests start and stop often.
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="loopback-llm-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LoopbackLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses -----------------------------------------------------------

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("LoopbackLLMServer is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def dashscope_base_url(self) -> str:
        return self.url + "/api/v1"

    # -- scenarios and request log ------------------------------------------

    def push_scenario(self, scenario: str) -> None:
        """Queue a scenario for the next request that has no header scenario.

        Validated now so a typo fails in the test, not inside the server."""
        Scenario.parse(scenario)
        with self._lock:
            self._queue.append(scenario)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        """Forget recorded requests and queued scenarios."""
        with self._lock:
            self._requests.clear()
            self._queue.clear()

    def _scenario_for(self, header: str | None) -> Scenario:
        if header:
            return Scenario.parse(header)
        with self._lock:
            queued = self._queue.popleft() if self._queue else None
        return Scenario.parse(queued if queued is not None else self.default_scenario)

    def _record(
        self,
        handler: _RequestHandler,
        path: str,
        query: dict[str, str],
        body: Any,
        scenario: Scenario | None,
    ) -> None:
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _CREDENTIAL_HEADERS}
        entry = RecordedRequest(handler.command, path, query, headers, body, scenario)
        with self._lock:
            self._requests.append(entry)

    def _match(self, method: str, path: str) -> tuple[Route, Mapping[str, str]]:
        for route in self._routes:
            if route.method in (method, "*"):
                m = route.pattern.fullmatch(path)
                if m:
                    return route, m.groupdict()
        # Path known under another provider prefix: still answer in its shape.
        for route in self._routes:
            if route.pattern.fullmatch(path):
                return Route(route.method, route.pattern, not_found, route.render_error), {}
        return self._fallback, {}


def wait_for_interrupt() -> None:
    """Block until Ctrl-C, for commands that serve until the user stops them."""
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve fake OpenAI/DashScope endpoints on localhost.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--scenario", default=None, help="default scenario, e.g. 'cached=10;words=3'")
    args = parser.parse_args(argv)
    server = LoopbackLLMServer(args.host, args.port, verbose=True)
    if args.scenario:
        Scenario.parse(args.scenario)
        server.default_scenario = args.scenario
    server.start()
    print(f"loopback LLM server at {server.url}", flush=True)
    print(f"  OPENAI_BASE_URL={server.openai_base_url}", flush=True)
    print(f"  DASHSCOPE_HTTP_BASE_URL={server.dashscope_base_url}", flush=True)
    try:
        wait_for_interrupt()
    finally:
        server.stop()


if __name__ == "__main__":
    # Under ``python -m`` this file runs as ``__main__``; go through the
    # package module so the route modules share its classes.
    from otel_llm_usage.testing.server import main as _package_main

    _package_main()
