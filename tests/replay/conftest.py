# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the replay suite: one replay server per session, the DashScope globals pointed at it.

The cassettes live outside the repository (``<repo>/../shared/replay/cassettes``). Without
them the suite skips, saying why, except in CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dashscope
import pytest

from ..conftest import IN_CI
from .cassettes import CASSETTE_ROOT
from .harness import API_KEY, Env
from .server import ReplayServer

_MISSING: list[str] = []


def require_cassettes() -> Path:
    """The cassette folder, for a test module to call at import: fail in CI, skip the module elsewhere."""
    if CASSETTE_ROOT.is_dir() and any(CASSETTE_ROOT.glob("*/*.yaml")):
        return CASSETTE_ROOT
    message = (f"replay cassettes not found at {CASSETTE_ROOT} (expected next to the repository: "
               "../shared/replay/cassettes); the replay suite did not run")
    if message not in _MISSING:
        _MISSING.append(message)
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)
    raise AssertionError("unreachable")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for message in _MISSING:
        terminalreporter.write_line(f"replay suite: {message}", yellow=True)


@pytest.fixture(scope="package")  # torn down (and the heap unfrozen) before the rest of the suite runs
def replay_env() -> Iterator[Env]:
    saved = dashscope.base_http_api_url, dashscope.api_key
    with ReplayServer() as server:
        dashscope.base_http_api_url = server.url + "/api/v1"
        dashscope.api_key = API_KEY
        # Each case collects garbage twice (abandoned streams finalize then); with the SDKs and the
        # cassettes loaded a full collection walks >10^5 objects, ~80 ms. The harness freezes what
        # survives each case, so collections only walk what the current case created.
        gc.collect()
        gc.freeze()
        try:
            yield Env(server)
        finally:
            gc.unfreeze()
            dashscope.base_http_api_url, dashscope.api_key = saved
