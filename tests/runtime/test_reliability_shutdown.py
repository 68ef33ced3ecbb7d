# SPDX-License-Identifier: Apache-2.0
"""Records survive SIGTERM, a SQLite file locked by another process, and a read-only ledger folder.

Real subprocesses, real signals, real SQLite files; a read-only folder is made with ``chattr +i``
(the suite runs as root, which ignores permission bits but not the immutable attribute).
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

import otel_llm_usage
from otel_llm_usage.budgets.config import BudgetConfig
from otel_llm_usage.config import Config
from tests.conftest import close_otel, make_otel

APP = Path(__file__).parents[1] / "apps" / "ledger_app.py"


def rows(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM records").fetchone()[0])


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "code"), [("wait", -signal.SIGTERM), ("handler", 3)])
def test_sigterm_keeps_every_record_with_the_apps_own_providers(tmp_path, mode, code):
    db = tmp_path / "ledger.db"
    proc = subprocess.Popen([sys.executable, str(APP), f"sqlite://{db}", "200", mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY", proc.stderr
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err  # the default action, or the app's own handler, still decides
    assert ("APP HANDLER" in out) is (mode == "handler") and "NOT KILLED" not in out
    assert rows(db) == 200


@pytest.fixture
def locked_for(tmp_path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A ledger file and another process that holds ``BEGIN EXCLUSIVE`` on it for 3 s once told to."""
    db = tmp_path / "ledger.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time\n"
         f"c = sqlite3.connect({str(db)!r}, isolation_level=None); sys.stdin.readline()\n"
         "c.execute('BEGIN EXCLUSIVE'); print('LOCKED', flush=True); time.sleep(3); c.execute('COMMIT')"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    yield db, holder
    holder.kill()
    holder.wait()


@pytest.mark.slow
def test_a_locked_sqlite_file_does_not_stall_host_calls(llm_server, locked_for):
    db, holder = locked_for
    budget = BudgetConfig.model_validate({"name": "b", "limit": {"tokens": 10**9}, "window": "day"})
    otel = make_otel(llm_server, Config(provider_hosts={"127.0.0.1": "openai"}, ledger=f"sqlite://{db}",
                                        budgets=(budget,)))
    try:
        client = openai.OpenAI(base_url=llm_server.openai_base_url, api_key="sk-x", max_retries=0)
        call = lambda: client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])  # noqa: E731
        call()
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "LOCKED"
        worst, calls, end = 0.0, 1, time.monotonic() + 2.5
        while time.monotonic() < end:
            started = time.perf_counter()
            call()
            worst, calls = max(worst, time.perf_counter() - started), calls + 1
        assert worst < 0.5, f"a host call waited {worst:.2f} s on the locked ledger"
        holder.wait(timeout=10)  # lock released
        assert otel.instrumentor.runtime.flush_ledger(30)
        assert rows(db) == calls  # every record landed once the lock was gone
    finally:
        close_otel(otel)


@pytest.mark.slow
def test_a_file_locked_for_long_holds_calls_the_lease_cannot_cover_for_the_busy_timeout_at_most_twice(
        llm_server, tmp_path):
    """Every call here reserves more than a lease holds (max_tokens 8 000 against a 200 000-token
    budget), so each one asks the store, while another process holds ``BEGIN EXCLUSIVE`` on the file for
    8 s. A budget admission waits for a busy file up to the busy timeout (2 s), which a held lock
    outlasts: the first calls wait it, then calls wait as a host read does (0.1 s) and are admitted
    locally, the lease thread's request included (a call waiting for it had waited ~3 s). Every
    record and every token reach the file once it is free."""
    db = tmp_path / "ledger.db"
    budget = BudgetConfig.model_validate({"name": "b", "limit": {"tokens": 200_000}, "window": "day",
                                          "action": "block"})
    otel = make_otel(llm_server, Config(provider_hosts={"127.0.0.1": "openai"}, ledger=f"sqlite://{db}",
                                        budgets=(budget,)))
    holder = None
    try:
        client = openai.OpenAI(base_url=llm_server.openai_base_url, api_key="sk-x", max_retries=0)
        tokens = 0

        def call() -> None:
            nonlocal tokens
            usage = client.chat.completions.create(model="gpt-4o-mini", max_tokens=8000,
                                                   messages=[{"role": "user", "content": "hi"}]).usage
            assert usage is not None
            tokens += usage.total_tokens

        call()
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sqlite3, time\n"
             f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
             "c.execute('BEGIN EXCLUSIVE'); print('LOCKED', flush=True); time.sleep(8); c.execute('COMMIT')"],
            stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "LOCKED"
        waits: list[float] = []
        end = time.monotonic() + 7
        while time.monotonic() < end:
            started = time.perf_counter()
            call()
            waits.append(time.perf_counter() - started)
        holder.wait(timeout=10)
        assert otel.instrumentor.runtime.flush_ledger(30)
        shown = [round(w, 2) for w in waits]
        assert sum(1 for w in waits if w > 0.5) <= 2 and max(waits) < 2.5, shown
        calls = len(waits) + 1
        assert rows(db) == calls, shown
        with contextlib.closing(sqlite3.connect(db)) as conn:
            assert conn.execute("SELECT SUM(input_tokens + output_tokens) FROM records").fetchone()[0] == tokens
        status = otel_llm_usage.get_budget_status()
        assert [(row["used"], row["in_flight"]) for row in status] == [(tokens, 0)], status
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        close_otel(otel)


@pytest.fixture
def read_only_dir(tmp_path) -> Iterator[Path]:
    folder = tmp_path / "ro"
    folder.mkdir()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this file system")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.slow
def test_an_unwritable_ledger_is_named_counted_and_does_not_delay_exit(read_only_dir):
    url = f"sqlite://{read_only_dir / 'ledger.db'}"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(APP), url, "400", "exit"], capture_output=True, text=True,
                          timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert '{"dropped": {"unwritable": 400}}' in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if "cannot be written" in line]
    assert errors and str(read_only_dir) in errors[0] and "Operation not permitted" in errors[0], proc.stderr
    assert elapsed < 6, f"exit took {elapsed:.1f} s"  # interpreter + imports ~2 s, plus at most ~1 s waiting
    report = subprocess.run([sys.executable, "-m", "otel_llm_usage.cli", "report", "--ledger", url],
                            capture_output=True, text=True, timeout=60)
    assert report.returncode == 1 and "Traceback" not in report.stderr
    assert report.stderr.startswith(f"error: ledger {url}: cannot read it") and report.stderr.count("\n") == 1
