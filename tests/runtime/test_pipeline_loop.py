# SPDX-License-Identifier: Apache-2.0
"""Records submitted on an asyncio event loop: processed on that loop in short slices, the worker the fallback."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from otel_llm_usage._blocking import WouldBlock, may_wait, no_waiting
from otel_llm_usage._pacing import LOOP_SLICE_S
from otel_llm_usage.runtime.pipeline import Pipeline, Stage
from otel_llm_usage.usage import UsageRecord

CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="none")


def record(n: int) -> UsageRecord:
    return UsageRecord(provider="openai", operation="chat", request_model=f"m{n}")


class Seen(Stage):
    """A deferred stage noting, per record, the thread, whether it could wait, and the caller's context."""

    def __init__(self, cost_s: float = 0.0, blocks_on: set[str] | None = None) -> None:
        self.cost_s = cost_s
        self.blocks_on = blocks_on or set()
        self.seen: list[tuple[str, str, bool, str]] = []  # (model, thread, may_wait, CALLER)

    def process(self, rec: UsageRecord) -> None:
        model = rec.request_model or ""
        if model in self.blocks_on and not may_wait():
            raise WouldBlock(model)  # before doing anything, as the contract asks
        if self.cost_s:
            end = time.perf_counter() + self.cost_s
            while time.perf_counter() < end:
                pass
        self.seen.append((model, threading.current_thread().name, may_wait(), CALLER.get()))

    def models(self) -> list[str]:
        return [m for m, *_ in self.seen]


def test_records_of_an_event_loop_are_processed_on_it_in_order_under_no_waiting() -> None:
    first, second = Seen(), Seen()
    pipeline = Pipeline(deferred=[first, second], idle_wait=30.0)
    try:
        async def main() -> str:
            CALLER.set("the call")
            for i in range(40):
                pipeline.submit(record(i))
            assert first.seen == []  # the call returned before anything ran
            for _ in range(100):
                await asyncio.sleep(0)
                if len(second.seen) == 40:
                    break
            return threading.current_thread().name

        loop_thread = asyncio.run(main())
        expected = [f"m{i}" for i in range(40)]
        assert first.models() == expected and second.models() == expected
        # On the loop's thread, where waiting is not allowed, and not in the caller's context.
        assert {(t, w, c) for _, t, w, c in first.seen + second.seen} == {(loop_thread, False, "none")}
        assert pipeline.pending == 0
    finally:
        pipeline.shutdown()


def test_a_slice_ends_after_its_time_and_lets_the_loops_other_callbacks_run() -> None:
    cost = 0.0001  # under half a slice: in one of the threads' 0.5 ms five records would run, above the bound
    stage = Seen(cost_s=cost)
    pipeline = Pipeline(deferred=[stage], idle_wait=30.0)
    per_slice = int(LOOP_SLICE_S / cost) + 1
    try:
        async def main() -> list[int]:
            for i in range(60):
                pipeline.submit(record(i))
            progress = []  # records processed each time another coroutine gets the loop
            while len(stage.seen) < 60:
                await asyncio.sleep(0)
                progress.append(len(stage.seen))
            return progress

        progress = asyncio.run(main())
        steps = [b - a for a, b in zip([0, *progress[:-1]], progress, strict=True)]
        assert sum(steps) == 60
        assert max(steps) <= per_slice + 1  # one slice per loop turn, each about LOOP_SLICE_S long
        assert len([s for s in steps if s]) >= 60 // (per_slice + 1)
    finally:
        pipeline.shutdown()


def test_a_busy_loops_records_do_not_pile_up() -> None:
    """One slice a loop turn keeps up with a quiet loop only. Beside 100 tasks whose every step costs
    the SDK's work, 1 000 records were left queued (a metric scrape or the worker then processed
    them in one go, ~100 ms beside the loop); past a short backlog each call schedules a step of its
    own record and one more, on the loop, under ``no_waiting``. The queue then holds at most the
    backlog and one loop turn's submissions (a share runs in the turn after its call). That step is
    not the call's own: a call's step is the host's, and two records more in it were the longest
    holds of the loop (~0.2 ms each, measured with the loop-lag bench)."""
    in_call = False
    inside: list[bool] = []  # per record processed: was it in a call's step

    class Where(Seen):
        def process(self, rec: UsageRecord) -> None:
            super().process(rec)
            inside.append(in_call)

    stage = Where(cost_s=0.0001)
    pipeline = Pipeline(deferred=[stage], idle_wait=30.0)
    tasks, rounds = 100, 8
    seen_pending: list[int] = []
    submitted: list[str] = []
    try:
        async def call(n: int) -> None:
            nonlocal in_call
            CALLER.set(f"task {n}")
            for r in range(rounds):
                end = time.perf_counter() + 0.0002  # the SDK's own work in this step
                while time.perf_counter() < end:
                    pass
                submitted.append(f"m{r * tasks + n}")
                in_call = True
                pipeline.submit(record(r * tasks + n))
                in_call = False
                seen_pending.append(pipeline.pending)
                await asyncio.sleep(0)

        async def main() -> str:
            await asyncio.gather(*(call(n) for n in range(tasks)))
            for _ in range(1000):
                if pipeline.pending == 0:
                    break
                await asyncio.sleep(0)
            return threading.current_thread().name

        loop_thread = asyncio.run(main())
        assert max(seen_pending) <= pipeline_backlog() + tasks, f"{max(seen_pending)} records were left queued"
        assert inside.count(True) == 0, f"{inside.count(True)} records were processed in a call's step"
        assert stage.models() == submitted  # each once, in order
        assert len(submitted) == tasks * rounds
        # On the loop, where waiting is not allowed, and in no caller's context (a slice's or a call's).
        assert {(t, w, c) for _, t, w, c in stage.seen} == {(loop_thread, False, "none")}
        assert pipeline.pending == 0
    finally:
        pipeline.shutdown()


def pipeline_backlog() -> int:
    from otel_llm_usage.runtime import pipeline as pipeline_module

    return pipeline_module._LOOP_BACKLOG


def test_a_stage_that_would_wait_hands_the_record_to_the_worker_from_that_stage_on() -> None:
    first, second, third = Seen(), Seen(blocks_on={"m3"}), Seen()
    pipeline = Pipeline(deferred=[first, second, third], idle_wait=30.0)
    try:
        async def main() -> str:
            for i in range(8):
                pipeline.submit(record(i))
            await asyncio.sleep(0)
            return threading.current_thread().name

        loop_thread = asyncio.run(main())
        assert pipeline.drain(10)
        expected = [f"m{i}" for i in range(8)]
        for stage in (first, second, third):
            assert stage.models() == expected  # each stage once per record, in order
        # On the loop (waiting not allowed) up to m3; m3 went on from the second stage where waiting
        # is allowed (its first stage ran once, on the loop), and every record after it queued behind it.
        assert [w for *_, w, _ in first.seen] == [False] * 4 + [True] * 4
        assert [w for *_, w, _ in second.seen] == [False] * 3 + [True] * 5
        assert {t for _, t, *_ in first.seen[:4]} == {loop_thread}
    finally:
        pipeline.shutdown()


def test_records_left_on_a_closed_loop_are_drained_by_the_worker() -> None:
    stage = Seen()
    pipeline = Pipeline(deferred=[stage], idle_wait=0.2)
    try:
        loop = asyncio.new_event_loop()

        def submit_and_leave() -> None:
            for i in range(5):
                pipeline.submit(record(i))  # the slice is scheduled for a turn this loop never takes
            loop.stop()

        loop.call_soon(submit_and_leave)
        loop.run_forever()
        loop.close()
        deadline = time.monotonic() + 5
        while len(stage.seen) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stage.models() == [f"m{i}" for i in range(5)]
        assert {t for _, t, *_ in stage.seen} == {"otel-llm-usage-pipeline"}
    finally:
        pipeline.shutdown()


def test_a_reader_on_the_loop_that_may_not_wait_gets_would_block_and_the_record_stays_first() -> None:
    first, second = Seen(), Seen(blocks_on={"m0"})
    pipeline = Pipeline(deferred=[first, second], idle_wait=30.0)
    try:
        async def main() -> None:
            pipeline.submit(record(0))
            pipeline.submit(record(1))
            with no_waiting(), pytest.raises(WouldBlock):
                pipeline.drain()  # a budget refusal's drain inside an event loop's pre-call check

        asyncio.run(main())
        assert pipeline.drain(10)  # where waiting is allowed
        assert first.models() == ["m0", "m1"] and second.models() == ["m0", "m1"]
        assert pipeline.pending == 0
    finally:
        pipeline.shutdown()


def test_records_from_threads_still_go_to_the_worker() -> None:
    stage = Seen()
    pipeline = Pipeline(deferred=[stage], idle_wait=30.0)
    try:
        for i in range(3):
            pipeline.submit(record(i))
        assert pipeline.drain(10)
        deadline = time.monotonic() + 5
        while len(stage.seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stage.models() == ["m0", "m1", "m2"]
        assert all(w for _, _, w, _ in stage.seen)
    finally:
        pipeline.shutdown()


def test_a_slice_that_finds_the_queue_locked_neither_waits_nor_spins_on_the_loop() -> None:
    gate, entered = threading.Event(), threading.Event()

    class Held(Seen):
        def process(self, rec: UsageRecord) -> None:
            if rec.request_model == "m0":
                entered.set()
                assert gate.wait(10)  # a host callback blocking on the worker, the queue's lock held
            super().process(rec)

    stage = Held()
    pipeline = Pipeline(deferred=[stage], idle_wait=0.05)
    try:
        pipeline.submit(record(0))  # from this thread: the worker takes it at its poll and blocks
        assert entered.wait(10)

        async def main() -> float:
            for i in range(1, 4):
                pipeline.submit(record(i))
            cpu0 = time.thread_time()
            await asyncio.sleep(0.1)  # the loop idles: its slice must not retry in a busy loop
            cpu = time.thread_time() - cpu0
            gate.set()
            for _ in range(200):
                await asyncio.sleep(0.005)
                if len(stage.seen) == 4:
                    break
            return cpu

        cpu = asyncio.run(main())
        assert cpu < 0.03, f"the loop thread spent {cpu * 1e3:.1f} ms of CPU in 100 ms of idling"
        assert stage.models() == ["m0", "m1", "m2", "m3"]
    finally:
        gate.set()
        pipeline.shutdown()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_an_event_loops_records_are_encoded_on_the_loop_and_the_writer_thread_only_writes(
        kind: str, llm_server, tmp_path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Encoding a record for SQLite or Redis is ~15 us of Python: on the writer thread it competes with
    the loop for the interpreter the whole time a batch is written (every loop step that waited > 1 ms
    in the Redis loop-lag runs overlapped a write). It runs in the loop's slices instead; every record
    reaches the store, exactly once."""
    import openai

    from otel_llm_usage import flush
    from otel_llm_usage.config import Config
    from otel_llm_usage.ledger import RecordQuery
    from otel_llm_usage.ledger import redis as redis_ledger
    from otel_llm_usage.ledger import sqlite as sqlite_ledger
    from otel_llm_usage.runtime.core import active_runtime
    from tests.conftest import close_otel, make_otel, require_binary
    from tests.support.redis_server import RedisServer

    if kind == "sqlite":
        url, module, name = f"sqlite:///{tmp_path / 'ledger.db'}", sqlite_ledger, "to_row"
    else:
        server = RedisServer(require_binary("redis-server"), tmp_path)
        server.start()
        request.addfinalizer(server.stop)
        url, module, name = server.url, redis_ledger, "to_mapping"
    encoded_on: list[str] = []
    real_encode = getattr(module, name)

    def watched(rec: UsageRecord):  # the real encoding, with the thread it ran on noted
        encoded_on.append(threading.current_thread().name)
        return real_encode(rec)

    monkeypatch.setattr(module, name, watched)
    llm_server.clear()
    otel = make_otel(llm_server, Config.model_validate({"provider_hosts": {"127.0.0.1": "openai"}, "ledger": url}))
    try:
        async def main() -> str:
            client = openai.AsyncOpenAI(base_url=llm_server.openai_base_url, api_key="sk-x", max_retries=0)
            for _ in range(3):
                await asyncio.gather(*(client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three four"}], max_tokens=5)
                    for _ in range(20)))
            await client.close()
            return threading.current_thread().name

        loop_thread = asyncio.run(main())
        assert flush()
        runtime = active_runtime(create=False)
        assert runtime is not None
        stored = runtime.store.query(RecordQuery())
        assert len(stored) == 60 and len({r.record_id for r in stored}) == 60
        assert sum(r.tokens.total_tokens for r in stored) == 60 * 9  # the loopback server bills 4 + 5 per call
        assert encoded_on.count(loop_thread) == 60, sorted(set(encoded_on))
    finally:
        close_otel(otel)
