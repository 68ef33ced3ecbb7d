# SPDX-License-Identifier: Apache-2.0
"""A throw-away local ``redis-server`` (or a three-node Redis Cluster) on free loopback ports,
persistence off.

Used by the test suite, the benchmarks and anyone trying the Redis ledger locally::

    with RedisServer.start_if_available() as server:   # None when the binary is missing
        ...  server.url -> "redis://127.0.0.1:PORT/0"
    with RedisClusterServer.start_if_available() as cluster:   # None without redis-server/redis-cli
        ...  cluster.url -> "redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/0"

``stop()`` kills the process abruptly (what outage tests want); ``start()`` again reuses
the same port, so clients reconnect to "the same" Redis: empty, or with what it had persisted
when built with ``persistence="aof"`` (every write fsynced before its reply) or ``"rdb"``
(the last ``SAVE``), both kept in ``workdir``.

:class:`RedisClusterServer` is three masters with no replicas (the smallest cluster
``redis-cli --cluster create`` accepts), the 16384 slots split between them; ``stop()``
ends all three.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from otel_llm_usage._ports import free_port, port_is_free

__all__ = ["RedisClusterServer", "RedisServer"]

_PERSISTENCE = {
    "none": ("--save", "", "--appendonly", "no"),
    "aof": ("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
    "rdb": ("--save", "3600 1", "--appendonly", "no"),
}


class RedisServer:
    def __init__(self, binary: str, workdir: str | Path | None = None, *, persistence: str = "none",
                 port: int | None = None, args: Sequence[str] = ()) -> None:
        """``args`` are extra ``redis-server`` options (a cluster node's)."""
        if persistence not in _PERSISTENCE:
            raise ValueError(f"persistence must be one of {sorted(_PERSISTENCE)}, got {persistence!r}")
        self.binary = binary
        self.persistence = persistence
        self._own_dir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="llm-usage-redis-"))
        self.port = free_port() if port is None else port
        self.args = tuple(args)
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start_if_available(cls) -> RedisServer | None:
        binary = shutil.which("redis-server")
        if binary is None:
            return None
        server = cls(binary)
        server.start()
        return server

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", *_PERSISTENCE[self.persistence],
             "--dir", str(self.workdir), "--protected-mode", "no", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} (port {self.port} taken?)")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not answer PING in time")

    def flush(self) -> None:
        """Empty the database (between benchmarks, so each starts from the same state)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.kill()  # SIGKILL: an outage; what survives is what the persistence mode kept
        proc.wait(10)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


_NODES = 3


def _cluster_port() -> int:
    """A free port P whose cluster bus port, P + 10000, is free too. Drawn below the kernel's
    ephemeral range (where :func:`free_port` lands, and P + 10000 could pass 65535)."""
    for _ in range(200):
        port = random.randrange(20_000, 32_000)
        if port_is_free("127.0.0.1", port) and port_is_free("127.0.0.1", port + 10_000):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


class RedisClusterServer:
    """A local Redis Cluster: three masters on loopback ports, no replicas, persistence off.

    ``url`` is the ledger URL of the whole cluster (every node listed, so a client starts from any).
    Each node's slot map lives in ``nodes-PORT.conf`` in ``workdir``."""

    def __init__(self, binary: str, cli: str, workdir: str | Path | None = None) -> None:
        self.cli = cli
        self._own_dir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else \
            Path(tempfile.mkdtemp(prefix="llm-usage-redis-cluster-"))
        self.nodes: list[RedisServer] = []
        for _ in range(_NODES):
            port = _cluster_port()
            self.nodes.append(RedisServer(binary, self.workdir, port=port, args=(
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", "2000")))

    @classmethod
    def start_if_available(cls) -> RedisClusterServer | None:
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            return None
        cluster = cls(binary, cli)
        cluster.start()
        return cluster

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports) + "/0"

    def start(self, timeout: float = 30.0) -> None:
        """Start the nodes, assign the slots, and return once every node reports ``cluster_state:ok``."""
        deadline = time.monotonic() + timeout
        try:
            for node in self.nodes:
                node.start()
            subprocess.run([self.cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                            "--cluster-replicas", "0", "--cluster-yes"],
                           check=True, capture_output=True, timeout=timeout)
            # create returns once the nodes agree on the slots; each one says ok only after its own check.
            while not all("cluster_state:ok" in self._cli(p, "CLUSTER", "INFO") for p in self.ports):
                if time.monotonic() > deadline:
                    raise RuntimeError("the Redis Cluster did not reach cluster_state:ok in time")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def _cli(self, port: int, *command: str) -> str:
        return subprocess.run([self.cli, "-h", "127.0.0.1", "-p", str(port), *command],
                              check=True, capture_output=True, text=True, timeout=10).stdout

    def flush(self) -> None:
        """Empty every node (between benchmarks, so each starts from the same state)."""
        for node in self.nodes:
            node.flush()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisClusterServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
