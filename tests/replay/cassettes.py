# SPDX-License-Identifier: Apache-2.0
"""Reading VCR-style cassettes from ``<repo>/../shared/replay/cassettes`` (never copied into the repo).

Usage::

    for interaction in load_all(root):
        interaction.id, interaction.request_json, interaction.events()

Bodies are kept exactly as recorded (``wire_body``, what the server re-sends, gzip
included) and decoded once for the tests' own parsing (``body``). Which interactions
are replayed: the first of each distinct request body in a file, and at most two per
file for the LiteLLM recordings, which repeat one request a dozen times
(see ``SOURCES.md`` next to the cassettes).
"""

from __future__ import annotations

import functools
import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

__all__ = ["CASSETTE_ROOT", "Interaction", "cut_after_first_event", "load_all", "sse_events"]

REPO_ROOT = Path(__file__).resolve().parents[2]
CASSETTE_ROOT = REPO_ROOT.parent / "shared" / "replay" / "cassettes"

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml reads the 5 MB in a blink, pure Python in seconds
_MAX_PER_FILE = {"loongsuite-litellm": 2}


def _header_items(raw: dict[str, Any] | None) -> tuple[tuple[str, str], ...]:
    items: list[tuple[str, str]] = []
    for name, value in (raw or {}).items():
        for one in value if isinstance(value, list) else [value]:
            items.append((str(name), str(one)))
    return tuple(items)


def _raw_bytes(body: Any) -> bytes:
    """A VCR body (``{"string": ...}``, a bare string, or ``!!binary`` bytes) as bytes."""
    value = body.get("string", "") if isinstance(body, dict) else body
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


def _decode(data: bytes, encoding: str) -> bytes:
    encoding = encoding.lower()
    if "gzip" in encoding:
        return gzip.decompress(data)
    if "deflate" in encoding:
        return zlib.decompress(data)
    if "br" in encoding:
        raise ValueError("brotli-encoded cassette bodies are not supported")
    return data


@dataclass(frozen=True)
class Interaction:
    cassette: str  # "<folder>/<file name without .yaml>"
    index: int
    method: str
    uri: str
    request_headers: dict[str, str]  # lower-cased; first value of each
    request_body: Any  # parsed JSON (or the recorder's mapping), None when empty
    status: int
    reason: str
    response_headers: tuple[tuple[str, str], ...]
    wire_body: bytes  # as recorded, still content-encoded
    body: bytes  # content-decoded
    # A derived variant: only the first event is sent, then the connection drops (see cut_after_first_event).
    cut: bool = False

    @property
    def id(self) -> str:
        # ":" because pytest -k accepts it and "#" not.
        return f"{self.cassette}:{self.index}" + ("-cut" if self.cut else "")

    @property
    def folder(self) -> str:
        return self.cassette.split("/", 1)[0]

    @property
    def path(self) -> str:
        return urlsplit(self.uri).path

    @property
    def host(self) -> str:
        return urlsplit(self.uri).hostname or ""

    def response_header(self, name: str) -> str:
        name = name.lower()
        return next((v for k, v in self.response_headers if k.lower() == name), "")

    @property
    def is_sse(self) -> bool:
        return "text/event-stream" in self.response_header("content-type").lower()

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def requested_stream(self) -> bool:
        """The caller asked for a stream: OpenAI's ``stream`` field, DashScope's X-DashScope-SSE header
        (dashscope >= 1.25.13 also copied ``stream`` into ``parameters``)."""
        params = self.request_json.get("parameters")
        return (self.request_json.get("stream") is True
                or self.request_headers.get("x-dashscope-sse") == "enable"
                or (isinstance(params, dict) and params.get("stream") is True))

    @property
    def request_json(self) -> dict[str, Any]:
        return self.request_body if isinstance(self.request_body, dict) else {}

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[tuple[str | None, Any]]:
        """The SSE body as (event name, parsed data) pairs, ``[DONE]`` left out."""
        return sse_events(self.body)


def cut_after_first_event(it: Interaction) -> Interaction:
    """The recording as a network failure would leave it: the first SSE event arrives (OpenAI's
    first chunk, the Responses API's ``response.created``, DashScope's first frame), then the
    connection drops mid-body. Only for uncompressed SSE recordings."""
    end = it.wire_body.find(b"\n\n")
    if not it.is_sse or end == -1 or it.wire_body != it.body:
        raise ValueError(f"{it.id}: not an uncompressed event stream")
    first = it.wire_body[: end + 2]
    return replace(it, wire_body=first, body=first, cut=True)


def sse_events(body: bytes) -> list[tuple[str | None, Any]]:
    """Parse an SSE body independently of any SDK: ``field:value`` lines, blank line ends an event."""
    events: list[tuple[str | None, Any]] = []
    name: str | None = None
    data: list[str] = []
    for raw in [*body.decode("utf-8").splitlines(), ""]:  # the final "" ends a last unterminated event
        if not raw:
            if data and "".join(data).strip() != "[DONE]":
                events.append((name, json.loads("\n".join(data))))
            name, data = None, []
            continue
        if raw.startswith(":"):
            continue  # a comment (DashScope's ":HTTP_STATUS/200")
        field, _, value = raw.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
    return events


def _request_body(raw: Any) -> Any:
    if isinstance(raw, dict) and "string" not in raw:
        return raw  # the recorder kept the JSON body as a YAML mapping
    data = _raw_bytes(raw)
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")


def _body_key(raw: Any) -> str:
    return raw if isinstance(raw, str) else json.dumps(raw, sort_keys=True, default=str)


def _load_file(path: Path) -> Iterator[Interaction]:
    with path.open("rb") as fh:
        doc = yaml.load(fh, Loader=_LOADER)  # a safe loader either way
    cassette = f"{path.parent.name}/{path.stem}"
    seen: set[str] = set()
    limit = _MAX_PER_FILE.get(path.parent.name)
    for index, item in enumerate(doc.get("interactions") or []):
        req, resp = item["request"], item["response"]
        key = _body_key(req.get("body"))
        if key in seen:
            continue
        if limit is not None and len(seen) >= limit:
            break
        seen.add(key)
        response_headers = _header_items(resp.get("headers"))
        encoding = next((v for k, v in response_headers if k.lower() == "content-encoding"), "")
        wire = _raw_bytes(resp.get("body"))  # YAML !!binary (base64 on disk) arrives as bytes
        yield Interaction(
            cassette=cassette,
            index=index,
            method=str(req["method"]).upper(),
            uri=str(req["uri"]),
            request_headers={k.lower(): v for k, v in _header_items(req.get("headers"))[::-1]},
            request_body=_request_body(req.get("body")),
            status=int(resp["status"]["code"]),
            reason=str(resp["status"].get("message") or ""),
            response_headers=response_headers,
            wire_body=wire,
            body=_decode(wire, encoding),
        )


@functools.lru_cache(maxsize=4)
def load_all(root: Path = CASSETTE_ROOT) -> tuple[Interaction, ...]:
    """Every replayed interaction under ``root``, in file-name order."""
    out: list[Interaction] = []
    for path in sorted(root.glob("*/*.yaml")):
        out.extend(_load_file(path))
    return tuple(out)
