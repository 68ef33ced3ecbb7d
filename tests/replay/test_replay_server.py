# SPDX-License-Identifier: Apache-2.0
"""The replay server itself, read with a bare HTTP client: what the SDK cases rely on."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
from collections.abc import Callable

import pytest

from .cassettes import Interaction, cut_after_first_event, load_all, sse_events
from .conftest import require_cassettes
from .harness import Env
from .server import split_at_lines

ROOT = require_cassettes()


def _first(predicate: Callable[[Interaction], bool]) -> Interaction:
    return next(it for it in load_all(ROOT) if predicate(it))


def _post(env: Env, it: Interaction) -> http.client.HTTPResponse:
    host, port = env.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(it.method, it.path, body=json.dumps(it.request_json), headers={"Content-Type": "application/json"})
    return conn.getresponse()


def _raw_exchange(env: Env, it: Interaction) -> bytes:
    """The response bytes exactly as they crossed the socket (framing included)."""
    host, port = env.url.removeprefix("http://").split(":")
    body = json.dumps(it.request_json).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (it.path.encode(), len(body), body))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _dechunk(raw: bytes) -> tuple[bytes, list[bytes], bool]:
    """(head, body pieces, whether the chunked body was terminated) of a raw chunked response."""
    head, _, framed = raw.partition(b"\r\n\r\n")
    pieces = []
    while framed:
        size_line, _, framed = framed.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return head, pieces, True
        pieces.append(framed[:size])
        framed = framed[size + 2:]
    return head, pieces, False


def test_sse_body_is_replayed_byte_for_byte_in_several_chunks(replay_env: Env) -> None:
    it = _first(lambda i: i.is_sse and i.path == "/v1/chat/completions" and len(i.body) > 2000)
    replay_env.server.arm(it)
    head, pieces, terminated = _dechunk(_raw_exchange(replay_env, it))
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"text/event-stream" in head.lower()
    assert len(pieces) > 1, "a stream should arrive in several reads, as over a network"
    assert terminated
    assert b"".join(pieces) == it.body
    assert sse_events(b"".join(pieces)) == it.events()
    (request,) = replay_env.server.take_requests()
    assert request.json() == it.request_json


def test_gzip_body_keeps_its_encoding(replay_env: Env) -> None:
    it = _first(lambda i: "gzip" in i.response_header("content-encoding"))
    replay_env.server.arm(it)
    response = _post(replay_env, it)
    assert response.status == it.status
    assert response.getheader("Content-Encoding") == "gzip"
    assert gzip.decompress(response.read()) == it.body


def test_recorded_status_and_headers_are_replayed(replay_env: Env) -> None:
    it = _first(lambda i: i.status == 404 and not i.response_header("content-encoding"))
    replay_env.server.arm(it)
    response = _post(replay_env, it)
    assert (response.status, response.reason) == (it.status, it.reason)
    assert response.getheader("x-request-id") == it.response_header("x-request-id")
    assert response.getheader("Date") == it.response_header("Date")  # the recorded one, not now
    assert response.getheader("Set-Cookie") is None
    assert json.loads(response.read()) == it.json()


def test_unarmed_request_is_refused_visibly(replay_env: Env) -> None:
    it = _first(lambda i: i.path == "/v1/embeddings")
    replay_env.server.arm()
    response = _post(replay_env, it)
    assert response.status == 418
    assert "nothing armed" in json.loads(response.read())["error"]["message"]


def test_cut_stream_breaks_off_after_the_first_event(replay_env: Env) -> None:
    it = cut_after_first_event(_first(lambda i: i.is_sse and i.path == "/v1/responses"))
    assert [name for name, _ in it.events()] == ["response.created"]
    replay_env.server.arm(it)
    _, pieces, terminated = _dechunk(_raw_exchange(replay_env, it))
    assert b"".join(pieces) == it.body
    assert not terminated, "the connection closes without ending the chunked body"


@pytest.mark.parametrize("pieces", [1, 2, 4, 7])
def test_split_at_lines_keeps_every_byte(pieces: int) -> None:
    body = b"event: a\ndata: {}\n\nevent: b\ndata: {\"x\": 1}\n\ndata: [DONE]\n\n"
    parts = split_at_lines(body, pieces)
    assert b"".join(parts) == body
    assert all(p.endswith(b"\n") for p in parts)
    assert len(parts) <= pieces
