# SPDX-License-Identifier: Apache-2.0
"""A loopback HTTP server that answers with recorded responses.

Usage::

    with ReplayServer() as server:
        server.arm(interaction)                  # the next request to its path gets its response
        openai.OpenAI(base_url=server.url + "/v1", ...).chat.completions.create(...)
        (request,) = server.take_requests()      # what the SDK actually sent

The server does not decide whether a request *should* match: it serves armed
interactions in order to requests with the same method and path and records
everything it receives, so a test can compare the wire request with the
recording itself (and with the uninstrumented run) and say what differed.
A request nothing was armed for gets a 418 whose body says so; an SDK turns
that into an error the test reports.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

__all__ = ["ReceivedRequest", "ReplayServer", "Replayable"]

# Framing is ours to choose (the body is re-sent over a new connection); cookies are not replayed.
_DROPPED_HEADERS = frozenset({"transfer-encoding", "content-length", "connection", "keep-alive", "set-cookie"})
_STREAM_PIECES = 4


class Replayable(Protocol):
    """What the server needs of a recorded interaction."""

    method: str
    path: str
    status: int
    reason: str
    response_headers: tuple[tuple[str, str], ...]
    wire_body: bytes
    is_sse: bool
    cut: bool  # drop the connection after the body instead of ending the chunked stream


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def split_at_lines(body: bytes, pieces: int) -> list[bytes]:
    """``body`` in about ``pieces`` parts, each cut just after a newline near an even split point.

    Cutting inside an event (between its ``event:`` and ``data:`` lines, or between events)
    makes the SDK's SSE decoder buffer across reads, as it must on a real network.
    """
    cuts = []
    for k in range(1, pieces):
        newline = body.find(b"\n", len(body) * k // pieces)
        if newline != -1 and (not cuts or newline + 1 > cuts[-1]):
            cuts.append(newline + 1)
    bounds = [0, *cuts, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(bounds) if b > a]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body (or each stream piece) are separate writes: with Nagle on, each waits for the
    # client's delayed ACK, 40 ms a response.
    disable_nagle_algorithm = True
    server: ReplayServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test output is not the place for an access log

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        self.server.record(ReceivedRequest(self.command, path, {k.lower(): v for k, v in self.headers.items()},
                                                 body))
        interaction = self.server.next_for(self.command, path)
        if interaction is None:
            self._send_plain(418, {"error": {"message": f"replay: nothing armed for {self.command} {path}",
                                             "type": "replay_mismatch"}})
            return
        # send_response() would add a fresh Date and Server header: replay the recorded ones instead.
        self.send_response_only(interaction.status, interaction.reason)
        for name, value in interaction.response_headers:
            if name.lower() not in _DROPPED_HEADERS:
                self.send_header(name, value)
        if interaction.is_sse:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in split_at_lines(interaction.wire_body, _STREAM_PIECES):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            if interaction.cut:
                self.close_connection = True  # no terminating chunk: the client sees the body break off
                return
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(interaction.wire_body)))
            self.end_headers()
            self.wfile.write(interaction.wire_body)
        self.wfile.flush()

    def _send_plain(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_GET = do_PUT = do_DELETE = _serve


class ReplayServer(ThreadingHTTPServer):
    """Loopback (127.0.0.1, ephemeral port) server replaying armed interactions; see the module docstring.

    ``with ReplayServer() as server`` serves from a daemon thread until the block ends.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self._lock = threading.Lock()
        self._armed: deque[Replayable] = deque()
        self._received: list[ReceivedRequest] = []

    def __enter__(self) -> ReplayServer:
        threading.Thread(target=self.serve_forever, name="replay-server", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return  # a client dropped its idle keep-alive connection: normal, not worth a traceback
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def arm(self, *interactions: Replayable) -> None:
        """Replace whatever was armed: these answer the next matching requests, in order."""
        with self._lock:
            self._armed = deque(interactions)
            self._received = []

    def take_requests(self) -> list[ReceivedRequest]:
        """Every request received since the last ``arm`` / ``take_requests``."""
        with self._lock:
            received, self._received = self._received, []
            return received

    def record(self, request: ReceivedRequest) -> None:
        with self._lock:
            self._received.append(request)

    def next_for(self, method: str, path: str) -> Replayable | None:
        with self._lock:
            if self._armed and (self._armed[0].method, self._armed[0].path) == (method, path):
                return self._armed.popleft()
            return None
