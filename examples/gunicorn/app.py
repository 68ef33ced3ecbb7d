# SPDX-License-Identifier: Apache-2.0
"""A tiny WSGI app that calls an OpenAI-compatible endpoint once per request.

Run it with the pre-fork recipe next to it (instrumentation happens in each worker)::

    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 gunicorn -c gunicorn.conf.py

``GET /`` makes one chat completion and answers its token count as JSON; a budget
refusal (``action: block``, shared by every worker through the Redis ledger) is a 429.
``GET /healthz`` answers without calling anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import openai

from otel_llm_usage import BudgetExceeded, usage_context

_client: openai.OpenAI | None = None


def client() -> openai.OpenAI:
    """One client per worker, created on first use: an HTTP connection pool must not cross a fork."""
    global _client
    if _client is None:
        _client = openai.OpenAI(base_url=os.environ.get("OPENAI_BASE_URL"),
                                api_key=os.environ.get("OPENAI_API_KEY", "sk-example"), max_retries=0)
    return _client


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/healthz":
        return _reply(start_response, "200 OK", {"pid": os.getpid()})
    try:
        with usage_context(function="gunicorn-example"):
            reply = client().chat.completions.create(
                model=os.environ.get("EXAMPLE_MODEL", "gpt-4o-mini"), max_tokens=5,
                messages=[{"role": "user", "content": "one two three four"}])
        status, body = "200 OK", {"pid": os.getpid(), "tokens": reply.usage.total_tokens if reply.usage else None}
    except BudgetExceeded as exc:
        status, body = "429 Too Many Requests", {"pid": os.getpid(), "budget": exc.budget}
    return _reply(start_response, status, body)


def _reply(start_response: Callable[..., Any], status: str, body: dict[str, Any]) -> Iterable[bytes]:
    payload = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]
