# SPDX-License-Identifier: Apache-2.0
"""What makes a ``ledger:`` URL usable, checked without opening anything.

Shared by the config model (so ``check-config`` and start-up report ``file:line: ledger: …``) and by
:func:`~otel_llm_usage.ledger.open_ledger` (for URLs that never went through a config file)::

    ledger_url_problem("sqlite://relative/x.db")   # "use an absolute path, sqlite:///abs/path.db"
    ledger_url_problem("sqlite:///tmp/x.db")       # None
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["SCHEMES", "ledger_url_problem"]

SCHEMES = ("memory://", "sqlite://", "redis://", "rediss://", "redis+cluster://")


def ledger_url_problem(url: str) -> str | None:
    """Why ``url`` cannot work as a ledger, or ``None``. Does not touch the file or the network."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        return None
    if scheme == "sqlite":
        parts = urlsplit(url)
        raw = unquote(parts.path)
        if parts.netloc or (raw and not raw.startswith("/")):
            return "use an absolute path, sqlite:///abs/path.db (sqlite://NAME/... reads NAME as a host)"
        folder = os.path.dirname(raw) if raw else None
        if folder and not os.path.isdir(folder):
            return f"folder {folder} does not exist"
        return None
    if scheme in ("redis", "rediss"):
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 - urlsplit checks the port only when it is read
        except ValueError:
            return "the port must be a number from 0 to 65535 (redis://HOST:PORT/DB)"
        db = parts.path.strip("/")
        if db and not (db.isascii() and db.isdigit()):  # isdigit() alone passes "²", which int() refuses
            return f"the database must be a number (redis://HOST:PORT/DB), not {db!r}"
        return None
    if scheme == "redis+cluster":
        parts = urlsplit(url)
        nodes = [n for n in parts.netloc.rsplit("@", 1)[-1].split(",") if n]
        if not nodes:
            return "name at least one node: redis+cluster://HOST:PORT[,HOST:PORT...]"
        for node in nodes:
            port = node.rsplit(":", 1)[-1] if ":" in node else ""
            if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
                return f"node {node!r}: give HOST:PORT with a port from 1 to 65535"
        if parts.path.strip("/") not in ("", "0"):
            return "a Redis Cluster has only database 0"
        params = parse_qsl(parts.query, keep_blank_values=True)
        if any(k != "prefix" for k, _ in params):
            return "a redis+cluster:// URL takes no options but ?prefix="
        if any("{" in v or "}" in v for _, v in params):
            # Every counter key's hash tag follows the prefix; a brace would move or void it.
            return "a Redis Cluster key prefix cannot contain { or }"
        return None
    return "must start with memory://, sqlite:///PATH, redis://HOST:PORT/DB or redis+cluster://HOST:PORT,..."
