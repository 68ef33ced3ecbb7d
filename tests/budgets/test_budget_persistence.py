# SPDX-License-Identifier: Apache-2.0
"""Budget totals and records survive a process restart with the SQLite and Redis ledgers."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.support import redis_fixture

redis_server = redis_fixture.redis_server

APP = textwrap.dedent("""\
    import sys
    from otel_llm_usage import get_budget_status, record_usage
    from otel_llm_usage.config import Config
    from otel_llm_usage.runtime.core import build_runtime
    cfg = Config.model_validate({"ledger": sys.argv[1], "budgets": [
        {"name": "daily", "window": "day", "limit": {"tokens": 1000}, "action": "block"}]})
    runtime = build_runtime(cfg)
    record_usage(provider="openai", model="gpt-4o-mini", input_tokens=int(sys.argv[2]), output_tokens=0)
    (status,) = get_budget_status()
    print(status["used"], len(runtime.records()), flush=True)
    runtime.shutdown()
    """)


def _run(url: str, tokens: int) -> tuple[int, int]:
    proc = subprocess.run([sys.executable, "-c", APP, url, str(tokens)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    used, records = proc.stdout.split()
    return int(used), int(records)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_totals_survive_a_restart(backend, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'ledger.db'}" if backend == "sqlite" else \
        request.getfixturevalue("redis_server").url
    assert _run(url, 100) == (100, 1)  # first process
    assert _run(url, 250) == (350, 2)  # a new interpreter sees the first one's usage and record
