# SPDX-License-Identifier: Apache-2.0
"""A real ``redis-server`` per test, on a free loopback port, with persistence off.

Bind the fixtures in a test module (conftest.py is shared and owned elsewhere); an
assignment rather than an import keeps linters from calling the parameters redefinitions::

    from . import redis_fixture
    redis_url = redis_fixture.redis_url

    def test_x(redis_url: str) -> None: ...

``redis_server`` can be stopped and started again on the same port to test outages.
Without a ``redis-server`` binary the test fails when ``CI=true`` and is skipped otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_llm_usage.testing.redis_server import RedisServer

from .conftest import require_binary

__all__ = ["RedisServer", "redis_server", "redis_url"]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(require_binary("redis-server"), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url
