# SPDX-License-Identifier: Apache-2.0
"""The pipeline's two halves: stages on the calling thread, deferred stages on a worker, nothing lost."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from otel_llm_usage.ledger import RecordQuery, SqliteRecordStore
from otel_llm_usage.runtime.pipeline import Pipeline, Stage
from otel_llm_usage.usage import UsageRecord

REPO = Path(__file__).resolve().parents[2]


def record(n: int = 0) -> UsageRecord:
    return UsageRecord(provider="openai", operation="chat", request_model=f"m{n}")


class Seen(Stage):
    def __init__(self, gate: threading.Event | None = None) -> None:
        self.records: list[UsageRecord] = []
        self.threads: set[str] = set()
        self.gate = gate

    def process(self, rec: UsageRecord) -> None:
        if self.gate is not None:
            assert self.gate.wait(10)
        self.threads.add(threading.current_thread().name)
        self.records.append(rec)


def test_submit_returns_before_deferred_stages_run_and_drain_catches_up() -> None:
    gate = threading.Event()
    sync, deferred = Seen(), Seen(gate)
    pipeline = Pipeline([sync], deferred=[deferred], clock=lambda: 42.0)
    try:
        recs = [record(i) for i in range(3)]
        for rec in recs:
            pipeline.submit(rec)  # would block here if the gated stage ran on this thread
        assert sync.records == recs and sync.threads == {threading.current_thread().name}
        assert all(r.submitted_at == 42.0 for r in recs)
        assert deferred.records == []
        gate.set()
        assert pipeline.drain(10)
        assert deferred.records == recs  # in submission order
        assert pipeline.pending == 0
    finally:
        gate.set()
        pipeline.shutdown()


def test_worker_processes_without_being_asked() -> None:
    done = threading.Event()

    class Signal(Stage):
        def process(self, rec: UsageRecord) -> None:
            done.set()

    pipeline = Pipeline([], deferred=[Signal()])
    try:
        pipeline.submit(record())
        assert done.wait(10)
    finally:
        pipeline.shutdown()


def test_a_burst_shorter_than_a_batch_leaves_the_worker_asleep_until_its_poll() -> None:
    """Waking the worker on every burst made it wait for the GIL through a CPU-bound host's calls,
    and every brief release by the host (one system call per SDK call) handed the GIL's condition
    to it and back: 1.2 futex calls and 20-40 us more CPU per call, for nothing processed. Records
    below a batch wait for the worker's poll (readers drain them first anyway)."""
    from otel_llm_usage.runtime import pipeline as pipeline_module

    seen = Seen()
    pipeline = Pipeline([], deferred=[seen], idle_wait=0.6)
    try:
        pipeline.submit(record(0))  # starts the worker, which then sleeps for its poll
        assert pipeline.drain(10)
        for i in range(1, pipeline_module._WAKE_AT):
            pipeline.submit(record(i))
        threading.Event().wait(0.2)
        assert len(seen.records) == 1  # nobody woke the worker
        for _ in range(100):
            if len(seen.records) == pipeline_module._WAKE_AT:
                break
            threading.Event().wait(0.02)
        assert len(seen.records) == pipeline_module._WAKE_AT  # the poll took them, nothing lost
        assert seen.threads == {threading.current_thread().name, "otel-llm-usage-pipeline"}
    finally:
        pipeline.shutdown()


def test_a_full_batch_wakes_the_worker_at_once() -> None:
    from otel_llm_usage.runtime import pipeline as pipeline_module

    done = threading.Event()
    seen = Seen()

    class Last(Stage):
        def process(self, rec: UsageRecord) -> None:
            if len(seen.records) == pipeline_module._WAKE_AT:
                done.set()

    pipeline = Pipeline([], deferred=[seen, Last()], idle_wait=30.0)
    try:
        for i in range(pipeline_module._WAKE_AT):
            pipeline.submit(record(i))
        assert done.wait(5)  # long before the 30 s poll
        assert seen.threads == {"otel-llm-usage-pipeline"}
    finally:
        pipeline.shutdown()


def test_a_broken_deferred_stage_does_not_stop_the_next() -> None:
    class Broken(Stage):
        def process(self, rec: UsageRecord) -> None:
            raise RuntimeError("boom")

    after = Seen()
    pipeline = Pipeline([], deferred=[Broken(), after])
    try:
        pipeline.submit(record())
        assert pipeline.drain(10)
        assert len(after.records) == 1
    finally:
        pipeline.shutdown()


def test_a_producer_outpacing_the_worker_is_held_back_not_dropped() -> None:
    gate = threading.Event()
    slow = Seen(gate)
    pipeline = Pipeline([], deferred=[slow])
    try:
        pipeline.submit(record())
        while pipeline.pending:  # the worker took it and is now stuck in the stage
            threading.Event().wait(0.01)
        threading.Timer(0.5, gate.set).start()  # the producer's own drain waits for the worker
        for i in range(5000):
            pipeline.submit(record(i))
            assert pipeline.pending <= 1001
        assert pipeline.drain(10)
        assert len(slow.records) == 5001
    finally:
        gate.set()
        pipeline.shutdown()


def test_past_the_bound_a_producer_does_a_small_share_not_the_whole_backlog(monkeypatch: pytest.MonkeyPatch) -> None:
    """Draining the whole backlog on the calling thread held an event loop for ~100 ms once the queue
    reached its bound; a call now processes its own share and one record more."""
    from otel_llm_usage.runtime import pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module._Deferred, "start", lambda self: None)  # no worker: the queue only grows
    seen = Seen()
    pipeline = Pipeline([], deferred=[seen])
    try:
        bound = pipeline_module._MAX_PENDING
        recs = [record(i) for i in range(bound + 3)]
        for rec in recs[:bound]:
            pipeline.submit(rec)
        assert seen.records == [] and pipeline.pending == bound
        # Each call that brings the queue past the bound processes the two oldest records itself.
        for rec, processed, pending in zip(recs[bound:], (2, 2, 4), (bound - 1, bound, bound - 1), strict=True):
            pipeline.submit(rec)
            assert seen.records == recs[:processed] and pipeline.pending == pending
        assert seen.threads == {threading.current_thread().name}
        assert pipeline.drain(10)
        assert seen.records == recs  # nothing lost, in submission order
    finally:
        pipeline.shutdown()


def test_after_shutdown_submit_runs_every_stage_at_once() -> None:
    seen = Seen()
    pipeline = Pipeline([], deferred=[seen])
    pipeline.shutdown()
    pipeline.submit(record())
    assert len(seen.records) == 1


_EXIT_SCRIPT = """
import sys
import otel_llm_usage.runtime.pipeline
otel_llm_usage.runtime.pipeline._POLL_S = 3600  # the worker never takes what is queued
otel_llm_usage.runtime.pipeline._WAKE_AT = 10**9
from otel_llm_usage import record_usage
from otel_llm_usage.config import Config
from otel_llm_usage.runtime.core import build_runtime
build_runtime(Config(ledger="sqlite:///" + sys.argv[1]))
for i in range(3000):
    record_usage(provider="openai", model="gpt-4o-mini", input_tokens=i, output_tokens=1)
# no flush, no shutdown: only the exit hooks can drain the pipeline into the writer, in that order
"""


def test_records_still_queued_at_interpreter_exit_reach_the_ledger(tmp_path: Path) -> None:
    path = tmp_path / "exit.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_EXIT_SCRIPT), str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    store = SqliteRecordStore(str(path))
    try:
        rows = store.query(RecordQuery())
    finally:
        store.close()
    assert len(rows) == 3000
    assert sorted(r.tokens.input_tokens for r in rows) == list(range(3000))


def test_shutdown_closes_every_stage_after_its_last_record_and_a_failing_close_stops_no_other() -> None:
    events: list[str] = []

    class Closing(Stage):
        def __init__(self, name: str, fail: bool = False) -> None:
            self.name, self.fail = name, fail

        def process(self, rec: UsageRecord) -> None:
            events.append(f"{self.name}:{rec.request_model}")

        def close(self) -> None:
            events.append(f"{self.name}:closed")
            if self.fail:
                raise RuntimeError("close failed")

    class Quiet(Stage):  # holds nothing: the base class's close is enough
        def process(self, rec: UsageRecord) -> None:
            events.append(f"quiet:{rec.request_model}")

    pipeline = Pipeline([Closing("inline", fail=True)], deferred=[Quiet(), Closing("deferred")])
    pipeline.submit(UsageRecord(provider="openai", operation="chat", request_model="m1"))
    pipeline.shutdown()
    assert events == ["inline:m1", "quiet:m1", "deferred:m1", "inline:closed", "deferred:closed"]
