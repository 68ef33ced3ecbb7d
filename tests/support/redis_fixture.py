# SPDX-License-Identifier: Apache-2.0
"""A real ``redis-server`` per test, on a free loopback port, with persistence off.

Bind the fixtures in a test module (conftest.py is shared and owned elsewhere); an
assignment rather than an import keeps linters from calling the parameters redefinitions::

    from tests.support import redis_fixture
    redis_url = redis_fixture.redis_url

    def test_x(redis_url: str) -> None: ...

``redis_server`` can be stopped and started again on the same port to test outages;
``redis_cluster_url`` is a three-master Redis Cluster, emptied for each test.
Without a ``redis-server`` binary the test fails when ``CI=true`` and is skipped otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_binary
from tests.support.redis_server import RedisClusterServer, RedisServer

__all__ = ["RedisClusterServer", "RedisServer", "redis_cluster", "redis_cluster_url", "redis_server", "redis_url"]


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


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisClusterServer]:
    """A real Redis Cluster (three masters, no replicas) on loopback, one per test module: starting one
    takes about a second. Tests that need it empty call ``flush()``."""
    cluster = RedisClusterServer(require_binary("redis-server"), require_binary("redis-cli"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServer) -> str:
    redis_cluster.flush()
    return redis_cluster.url
