# SPDX-License-Identifier: Apache-2.0
"""A throw-away local ``redis-server`` on a free loopback port, persistence off.

Used by the test suite, the benchmarks and anyone trying the Redis ledger locally::

    with RedisServer.start_if_available() as server:   # None when the binary is missing
        ...  server.url -> "redis://127.0.0.1:PORT/0"

``stop()`` kills the process abruptly (what outage tests want); ``start()`` again reuses
the same port, so clients reconnect to "the same" Redis: empty, or with what it had persisted
when built with ``persistence="aof"`` (every write fsynced before its reply) or ``"rdb"``
(the last ``SAVE``), both kept in ``workdir``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .ports import free_port

__all__ = ["RedisServer"]

_PERSISTENCE = {
    "none": ("--save", "", "--appendonly", "no"),
    "aof": ("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
    "rdb": ("--save", "3600 1", "--appendonly", "no"),
}


class RedisServer:
    def __init__(self, binary: str, workdir: str | Path | None = None, *, persistence: str = "none") -> None:
        if persistence not in _PERSISTENCE:
            raise ValueError(f"persistence must be one of {sorted(_PERSISTENCE)}, got {persistence!r}")
        self.binary = binary
        self.persistence = persistence
        self._own_dir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="llm-usage-redis-"))
        self.port = free_port()
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
             "--dir", str(self.workdir), "--protected-mode", "no"],
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
