# SPDX-License-Identifier: Apache-2.0
"""``otel-llm-usage serve``: a small JSON HTTP API over the ledger (stdlib, threaded).

    otel-llm-usage serve --ledger sqlite:///var/lib/app/llm-usage.db              # http://127.0.0.1:8787
    otel-llm-usage serve --host 0.0.0.0 --token "$TOKEN"                          # a token is then required

    GET  /api/usage?since=7d&until=&group_by=model|function|user|anchor|provider|session
    GET  /api/budgets
    GET  /api/top?by=user|anchor|function&n=10
    POST /api/record   {"provider": "openai", "model": "gpt-4o", "input": "1.2M", "output": 3000, "user": "u1"}

Security model: it binds 127.0.0.1 by default. ``--token`` turns on bearer auth for every request
(``Authorization: Bearer TOKEN``). Binding any non-loopback address without a token is refused,
so a manual-record endpoint is never open to the network. Errors are JSON: ``{"error": ..., "status": N}``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit

import typer

from ..budgets.status import BudgetStatus
from ..config import Config
from ..ledger import RecordQuery
from ..ledger.totals import breakdown, summarize
from ..runtime.core import Runtime
from ..tooling.reports import DIMENSIONS
from . import _common as C
from .amounts import MAX_AMOUNT, AmountError, parse_amount
from .budget import budget_status
from .record import record_json

__all__ = ["ApiError", "UsageAPI", "is_loopback", "make_server", "serve"]

logger = logging.getLogger("otel_llm_usage.serve")
MAX_BODY = 64 * 1024
# A client that opens a connection and sends nothing (or half a request) is cut off after this, and at
# most MAX_HANDLERS requests are served at once: a slow or hostile client cannot pin every thread.
READ_TIMEOUT_S = 10.0
MAX_HANDLERS = 16
# Query values: the period must be a real instant between these years, n a short number.
_YEARS = (1970, 9999)
_TOP_DIMENSIONS = ("user", "anchor", "function")
_ATTRIBUTION = ("function", "user", "session", "anchor")


class ApiError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname may resolve anywhere: treat it as exposed


def _one(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[-1] if values and values[-1] != "" else None


def _instant(name: str, text: str, tz: Any, now: float, *, end: bool) -> float:
    """A ``since``/``until`` value as epoch seconds; 400 for anything that is not a real instant."""
    lo, hi = (datetime(year, 1, 1, tzinfo=timezone.utc).timestamp() for year in _YEARS)
    try:
        value = C.parse_when(text, tz, now, end=end)
    except (ValueError, OverflowError) as exc:  # OverflowError: the day after 9999-12-31
        message = str(exc) if isinstance(exc, ValueError) else "out of range"
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{name}: {message}") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{name}: must fall between {_YEARS[0]} and {_YEARS[1]}")
    return value


def _tokens(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{name}: a token amount is an integer or a string like '1.2M'")
    if isinstance(value, int):
        if not 0 <= value <= MAX_AMOUNT:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{name}: must be between 0 and {MAX_AMOUNT}")
        return value
    try:
        return parse_amount(value)
    except AmountError as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{name}: {exc}") from None


class UsageAPI:
    """The endpoints as plain methods over one :class:`Runtime` (its store, counters and pipeline)."""

    def __init__(self, cfg: Config, runtime: Runtime) -> None:
        self.cfg = cfg
        self.runtime = runtime
        self.convert = C.converter(cfg)
        self.tz = C.resolve_tz(None)
        self._record_lock = threading.Lock()

    def _period(self, params: dict[str, list[str]]) -> tuple[float | None, float | None]:
        now = time.time()
        since, until = _one(params, "since"), _one(params, "until")
        return (_instant("since", since, self.tz, now, end=False) if since else None,
                _instant("until", until, self.tz, now, end=True) if until else None)

    def usage(self, params: dict[str, list[str]]) -> dict[str, Any]:
        group_by = _one(params, "group_by") or "model"
        if group_by not in DIMENSIONS:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"group_by must be one of {', '.join(DIMENSIONS)}")
        since, until = self._period(params)
        records = self.runtime.records(RecordQuery(since=since, until=until))
        return {"since": since, "until": until, "currency": self.convert.currency, "group_by": group_by,
                "totals": summarize(records, self.convert).as_dict(),
                "groups": [{"key": k, **t.as_dict()} for k, t in breakdown(records, group_by, self.convert)]}

    def top(self, params: dict[str, list[str]]) -> dict[str, Any]:
        by = _one(params, "by") or "user"
        if by not in _TOP_DIMENSIONS:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"by must be one of {', '.join(_TOP_DIMENSIONS)}")
        n_text = _one(params, "n") or "10"
        # Length first: int() of a 5,000-digit string raises (Python's digit limit) instead of answering.
        if not (n_text.isascii() and n_text.isdigit() and len(n_text) <= 4 and 1 <= int(n_text) <= 1000):
            raise ApiError(HTTPStatus.BAD_REQUEST, "n must be an integer from 1 to 1000")
        since, until = self._period(params)
        rows = breakdown(self.runtime.records(RecordQuery(since=since, until=until)), by, self.convert)
        return {"by": by, "n": int(n_text), "currency": self.convert.currency,
                "top": [{"key": k, **t.as_dict()} for k, t in rows[: int(n_text)]]}

    def budgets(self, params: dict[str, list[str]]) -> list[BudgetStatus]:
        return budget_status(self.cfg, self.runtime.store, self.runtime.counters)

    def record(self, body: Any) -> dict[str, Any]:
        from .. import record_usage

        if not isinstance(body, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        unknown = set(body) - {"provider", "model", "input", "output", "total", *_ATTRIBUTION}
        if unknown:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"unknown field(s): {', '.join(sorted(unknown))}")
        for name in ("provider", "model"):
            if not isinstance(body.get(name), str) or not body[name].strip() or len(body[name]) > 200:
                raise ApiError(HTTPStatus.BAD_REQUEST, f"{name} is required (a non-empty string)")
        for name in _ATTRIBUTION:
            if body.get(name) is not None and not isinstance(body[name], str):
                raise ApiError(HTTPStatus.BAD_REQUEST, f"{name} must be a string")
        inp, out, total = (_tokens(body, n) for n in ("input", "output", "total"))
        if (total is not None) == (inp is not None or out is not None):
            raise ApiError(HTTPStatus.BAD_REQUEST, "give input/output tokens or total (priced as input), not both")
        with self._record_lock:
            rec = record_usage(provider=body["provider"], model=body["model"],
                               input_tokens=total if total is not None else inp or 0, output_tokens=out or 0,
                               function=body.get("function"), user=body.get("user"), session=body.get("session"),
                               anchor=body.get("anchor"))
            if not self.runtime.flush_ledger(30):
                raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "the ledger did not accept the record in time")
        return {"recorded": record_json(rec, self.convert)}


def _same_site(headers: Any, own_hosts: frozenset[str] | None) -> str | None:
    """Why a request may come from another site (a web page the user has open), or ``None``.

    A browser lets any page POST ``text/plain`` to 127.0.0.1 without asking, and a DNS-rebound name
    reaches it too; such a request carries a foreign ``Origin`` or ``Host``. ``own_hosts`` is the
    ``Host`` values of a loopback server (``None`` when bound elsewhere: the token guards it).
    """
    host = (headers.get("Host") or "").lower()
    if own_hosts is not None and host not in own_hosts:
        return f"Host {host or '(none)'} is not this server"
    origin = headers.get("Origin")
    if origin is not None and urlsplit(origin.lower()).netloc != host:
        return "cross-origin requests are not accepted"
    return None


def _handler(api: UsageAPI, token: str | None,
             own_hosts: frozenset[str] | None = None) -> type[BaseHTTPRequestHandler]:
    routes: dict[tuple[str, str], Callable[..., Any]] = {
        ("GET", "/api/usage"): api.usage, ("GET", "/api/budgets"): api.budgets, ("GET", "/api/top"): api.top,
    }

    class Handler(BaseHTTPRequestHandler):
        server_version = "otel-llm-usage"
        protocol_version = "HTTP/1.1"
        timeout = READ_TIMEOUT_S  # socket read timeout (StreamRequestHandler.setup applies it)

        def log_message(self, format: str, *args: Any) -> None:
            logger.info("%s %s", self.address_string(), format % args)

        def _send(self, status: HTTPStatus, payload: Any) -> None:
            body = (C.dump_json(payload) + "\n").encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            if status == HTTPStatus.UNAUTHORIZED:
                self.send_header("WWW-Authenticate", 'Bearer realm="otel-llm-usage"')
            self.end_headers()
            self.wfile.write(body)

        def _authorized(self) -> bool:
            if token is None:
                return True
            given = self.headers.get("Authorization", "")
            return given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())

        def _dispatch(self, method: str) -> None:
            try:
                foreign = _same_site(self.headers, own_hosts)
                if foreign is not None:
                    raise ApiError(HTTPStatus.FORBIDDEN, foreign)
                if not self._authorized():
                    raise ApiError(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token")
                url = urlsplit(self.path)
                params = parse_qs(url.query, keep_blank_values=True)
                if method == "POST" and url.path == "/api/record":
                    self._send(HTTPStatus.CREATED, api.record(self._json_body()))
                    return
                route = routes.get((method, url.path))
                if route is None:
                    known = {p for _, p in routes} | {"/api/record"}
                    raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED if url.path in known else HTTPStatus.NOT_FOUND,
                                   f"{method} {url.path} is not an endpoint of this API")
                self._send(HTTPStatus.OK, route(params))
            except ApiError as exc:
                if exc.status in (HTTPStatus.BAD_REQUEST, HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                  HTTPStatus.UNSUPPORTED_MEDIA_TYPE) and method == "POST":
                    self.close_connection = True  # the unread body would be taken for the next request
                self._send(exc.status, {"error": str(exc), "status": int(exc.status)})
            except Exception:
                logger.exception("serve: %s %s failed", method, self.path)
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error", "status": 500})

        def _json_body(self) -> Any:
            # Only JSON: a form or text/plain POST is what a page on another site can send unasked.
            if self.headers.get_content_type() != "application/json":
                raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "the body must be application/json")
            text = self.headers.get("Content-Length", "0").strip()
            # isdigit: int() accepts "-1" (read() would then read to EOF) and "+5", " 5", "1_0".
            if not (text.isascii() and text.isdigit()):
                raise ApiError(HTTPStatus.BAD_REQUEST, "bad Content-Length")
            length = int(text) if len(text) <= 9 else MAX_BODY + 1
            if length > MAX_BODY:
                raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY} bytes")
            try:
                return json.loads(self.rfile.read(length) or b"null")
            except ValueError:
                raise ApiError(HTTPStatus.BAD_REQUEST, "the body is not valid JSON") from None

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

        def do_DELETE(self) -> None:
            self._dispatch("DELETE")

    return Handler


def make_server(api: UsageAPI, host: str, port: int, token: str | None) -> ThreadingHTTPServer:
    """A bound, not yet serving, server; refuses a non-loopback address without a token."""
    if token is None and not is_loopback(host):
        raise ValueError(f"refusing to bind {host} without --token: the API includes POST /api/record; "
                         "set --token (or OTEL_LLM_USAGE_SERVE_TOKEN) or bind 127.0.0.1")
    server = _BoundedServer((host, port), _handler(api, token))
    if is_loopback(host):
        names = {"localhost", "127.0.0.1", "[::1]", host.lower() if ":" not in host else f"[{host.lower()}]"}
        server.RequestHandlerClass = _handler(api, token, frozenset(
            f"{name}:{server.server_port}" for name in names))
    return server


class _BoundedServer(ThreadingHTTPServer):
    """At most MAX_HANDLERS requests at once; beyond that a connection is closed at once, unread."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_HANDLERS)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def serve(
    host: Annotated[str, typer.Option(help="Address to bind (non-loopback requires --token).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port, printed).")] = 8787,
    token: Annotated[str | None, typer.Option(envvar="OTEL_LLM_USAGE_SERVE_TOKEN",
                                              help="Require 'Authorization: Bearer TOKEN' on every request.")] = None,
    config: C.ConfigOption = None,
    ledger: C.LedgerOption = None,
) -> None:
    """Serve a JSON API over the ledger: usage, budgets, top spenders, and POST /api/record."""
    from ..runtime.core import build_runtime, clear_runtime

    if token is not None and not token.strip():
        C.fail("--token must not be empty", 2)
    cfg = C.load(config, ledger)
    runtime = build_runtime(cfg)
    try:
        server = make_server(UsageAPI(cfg, runtime), host, port, token)
    except (ValueError, OSError) as exc:
        clear_runtime(runtime)
        runtime.shutdown()
        C.fail(str(exc), 2)
    # The port line is what scripts (and the tests) wait for: with --port 0 it is the only way to learn it.
    typer.echo(f"serving http://{host}:{server.server_port} over {cfg.ledger}"
               f"{' (bearer token required)' if token else ''}; Ctrl-C to stop")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # service managers stop with SIGTERM: shut down cleanly
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        clear_runtime(runtime)
        runtime.shutdown()
        typer.echo("stopped", err=True)
