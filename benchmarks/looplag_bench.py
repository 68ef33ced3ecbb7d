# SPDX-License-Identifier: Apache-2.0
"""Event-loop lag under 100 concurrent ``AsyncOpenAI`` calls: does the plugin ever hold the loop?

    python -m benchmarks.looplag_bench --case ours_redis --redis-url redis://127.0.0.1:6379/0 --seconds 3

One case per interpreter (patches never collide): ``plain`` (no plugin), ``ours_budgets``
(our plugin and a block budget, in-memory counters), ``ours_redis`` (the same budget on the
Redis ledger) and ``ours_redis_slow`` (the Redis ledger behind :class:`DelayProxy`, which holds
every reply from ``redis-server`` for 50 ms). The plugin is set up exactly as the overhead
benchmark's variants (:func:`benchmarks.variants.setup_ours`); the client is the surfaces'
``AsyncOpenAI`` over the in-process mock transport.

The mock server answers after 10 ms, awaited on the loop (``asyncio.sleep``) as a network wait
would be, so the calls of a batch interleave. After two warm-up batches, a ``flush`` (the
ledger writer's first write, which opens its connection, is a one-time cost) and one more batch
(the flush handed the budget's lease back; the batch takes it again), for ``--seconds`` the
loop runs batches of ``--concurrency`` calls gathered at once, back to back, with the garbage
collector off (a collection pauses whichever step triggers it), while two things are measured
on the same loop:

* a probe coroutine sleeping 0.5 ms over and over; lag = wake time − intended wake time. This
  is what another coroutine of the host (a health check, a websocket) would see: every piece
  of work the loop runs between two of its turns, the 100 calls' own SDK work included;
* the duration of every callback the loop runs (``asyncio.Handle._run``, task steps included):
  the longest one is the longest time a single step held the loop — a stall, where the probe
  lag also counts the many short steps of 100 busy tasks queued before it.

:func:`run_looplag` (the parent side) starts one interpreter per run of a case, and the delay
proxy in a thread of its own (the parent idles while a case runs). With several runs, the cases
take turns by round and a case reports its median run by the plugin's longest hold, each run's
longest hold listed (:func:`median_run` says why).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from .stats import median, percentile
from .subproc import emit, run_module

__all__ = ["CASES", "DelayProxy", "main", "median_run", "run", "run_looplag"]

#: case -> (what it is, the variant of :mod:`benchmarks.variants` it is set up as)
CASES: dict[str, tuple[str, str]] = {
    "plain": ("plain SDK, no plugin", "plain"),
    "ours_budgets": ("ours + block budget, in-memory counters", "ours_budgets"),
    "ours_redis": ("ours + block budget, Redis ledger (healthy)", "ours_redis"),
    "ours_redis_slow": ("ours + block budget, Redis answering after 50 ms", "ours_redis"),
}
PROBE_S = 0.0005
#: the mock server's answer time, awaited on the loop like a network wait (the calls interleave)
NETWORK_S = 0.010
SLOW_REPLY_S = 0.050
_WARMUP_BATCHES = 2


def _lag_summary(values_ns: Sequence[int]) -> dict[str, float]:
    if not values_ns:
        return {"n": 0}
    return {"n": len(values_ns), "p50_us": median(values_ns) / 1e3, "p99_us": percentile(values_ns, 99) / 1e3,
            "p999_us": percentile(values_ns, 99.9) / 1e3, "max_us": max(values_ns) / 1e3}


def _wait_summary(steps_ns: Sequence[int], cpu_ns: Sequence[int]) -> dict[str, float]:
    """Per step, wall time the loop thread spent not running (wall - its CPU): waiting for the GIL
    while another thread ran, or for the machine (a VM's host, interrupts), which plain shows alone."""
    waits = sorted(w - c for w, c in zip(steps_ns, cpu_ns, strict=True))
    if not waits:
        return {"n": 0}
    return {"n": len(waits), "p99_us": percentile(waits, 99) / 1e3, "p999_us": percentile(waits, 99.9) / 1e3,
            "max_us": waits[-1] / 1e3, "over_1ms": sum(1 for w in waits if w > 1_000_000)}


_LONGEST = 5


def _what_ran(handle: asyncio.Handle) -> str:
    """A step's code: a task's coroutine and the line it is suspended at after the step (or
    returned from), else the callback's name."""
    callback = getattr(handle, "_callback", None)
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        coro = task.get_coro()
        where = []
        while coro is not None:
            frame = getattr(coro, "cr_frame", None)
            if frame is None:
                break
            where.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
            coro = getattr(coro, "cr_await", None)
        return "task " + (" > ".join(where[-3:]) if where else f"{task.get_name()} (done)")
    return getattr(callback, "__qualname__", repr(callback))


class _StepTimer:
    """Times every callback the event loop runs (``Handle._run``), while recording: wall time, and
    the loop thread's own CPU time (the difference is waiting: for I/O, or for the GIL while
    another thread runs)."""

    def __init__(self, plugin: _PluginClock | None = None) -> None:
        self.steps: list[int] = []
        self.cpu: list[int] = []
        #: the plugin's time within each step that had any (see :class:`_PluginClock`)
        self.plugin_steps: list[int] = []
        #: the plugin's longest hold of one step, (wall ns, the loop thread's CPU ns in it, wall ns by
        #: method, the loop thread's (voluntary, involuntary) context switches in it): CPU well below
        #: wall means the hold was mostly waiting (for the GIL, the OS, or the machine)
        self.plugin_longest: tuple[int, int, dict[str, int], tuple[int, int]] = (0, 0, {}, (0, 0))
        self.plugin = plugin
        self.recording = False
        #: the longest steps, (wall ns, the plugin's ns in it, what ran), longest first
        self.longest: list[tuple[int, int, str]] = []
        self._original: Callable[[asyncio.Handle], None] | None = None

    def _note(self, wall_ns: int, plugin_ns: int, handle: asyncio.Handle) -> None:
        self.longest.append((wall_ns, plugin_ns, _what_ran(handle)))
        self.longest.sort(reverse=True)
        del self.longest[_LONGEST:]

    def install(self) -> None:
        original = self._original = asyncio.Handle._run
        steps, cpu, clock, thread_clock, timer = self.steps, self.cpu, time.perf_counter_ns, time.thread_time_ns, self
        plugin, plugin_steps = self.plugin, self.plugin_steps

        def timed_run(handle: asyncio.Handle) -> None:
            if not timer.recording:
                original(handle)
                return
            if plugin is not None:
                plugin.take()  # what ran between steps is no step's
            t0, c0 = clock(), thread_clock()
            original(handle)
            if timer.recording:  # the step that switches recording off is not counted either
                cpu.append(thread_clock() - c0)
                wall = clock() - t0
                steps.append(wall)
                ours, ours_cpu, by, switches = plugin.take() if plugin is not None else (0, 0, {}, (0, 0))
                if plugin is not None and not ours and plugin.owns(handle):
                    ours, ours_cpu, by = wall, cpu[-1], {"lease_task": wall}  # the whole step is ours
                if ours:
                    plugin_steps.append(ours)
                    if ours > timer.plugin_longest[0]:
                        timer.plugin_longest = (ours, ours_cpu, by, switches)
                if len(timer.longest) < _LONGEST or wall > timer.longest[-1][0]:
                    timer._note(wall, ours, handle)

        asyncio.Handle._run = timed_run  # type: ignore[method-assign,assignment]

    def uninstall(self) -> None:
        if self._original is not None:
            asyncio.Handle._run = self._original  # type: ignore[method-assign,assignment]


class _PluginClock:
    """The plugin's own time on the loop thread, per step: the call lifecycle's work before the SDK
    call (attribution, the budget's admission, the span) and after it (reading the response, the
    span's end, pricing, the record's submission and any share of the queue done there), and the
    pipeline's slices and shares, and every step of a task the plugin runs on the loop (a lease
    refill awaiting Redis, the loop's connection to it). A step's wall time minus this is the SDK's
    and the host's: so a long step the SDK made long is not counted as the plugin's stall, and a
    long hold of the plugin's is.

    It wraps those four methods of the live classes with a timer (about 1 µs each, counted as the
    plugin's); work of the plugin outside them on the loop (two context-variable writes a call) is not
    counted. The timer also counts the loop thread's context switches in them (``getrusage`` of the
    thread, read just outside the timed part: ~0.6 µs a read, counted in the step, not the plugin):
    voluntary ones are waits (for the GIL another thread of the process holds, or a lock), involuntary
    ones are the kernel running something else on that core. A hold whose wall time is well over its
    CPU time with neither is one the thread did not see: its virtual CPU was not running."""

    def __init__(self) -> None:
        self.in_step = 0
        self.in_step_cpu = 0
        self.in_step_switches = (0, 0)
        self.by_method: dict[str, int] = {}
        self._undo: list[tuple[type, str, Any]] = []
        self._task_codes: set[Any] = set()

    def install(self, loop_thread: int) -> None:
        from otel_llm_usage.instrumentation.lifecycle import CallHandler
        from otel_llm_usage.ledger.leases import LeasedCounterStore
        from otel_llm_usage.ledger.redis import RedisCounterStore
        from otel_llm_usage.ledger.resilient import FailOpenCounterStore
        from otel_llm_usage.runtime.pipeline import _Deferred

        self._task_codes = {LeasedCounterStore._refill_on_loop.__code__, RedisCounterStore.connect_on_loop.__code__,
                            FailOpenCounterStore.connect_on_loop.__code__}

        clock, cpu, get_ident, plugin = time.perf_counter_ns, time.thread_time_ns, threading.get_ident, self
        usage, this_thread = resource.getrusage, resource.RUSAGE_THREAD
        for owner, name in ((CallHandler, "begin"), (CallHandler, "finish_result"), (_Deferred, "loop_slice"),
                             (_Deferred, "loop_share")):
            original = vars(owner)[name]

            def timed(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
                if get_ident() != loop_thread:
                    return _original(*args, **kwargs)
                u0 = usage(this_thread)
                t0, c0 = clock(), cpu()
                try:
                    return _original(*args, **kwargs)
                finally:
                    spent = clock() - t0
                    plugin.in_step += spent
                    plugin.in_step_cpu += cpu() - c0
                    u1 = usage(this_thread)
                    voluntary, involuntary = plugin.in_step_switches
                    plugin.in_step_switches = (voluntary + u1.ru_nvcsw - u0.ru_nvcsw,
                                               involuntary + u1.ru_nivcsw - u0.ru_nivcsw)
                    plugin.by_method[_name] = plugin.by_method.get(_name, 0) + spent

            setattr(owner, name, timed)
            self._undo.append((owner, name, original))

    def owns(self, handle: asyncio.Handle) -> bool:
        """Whether ``handle`` is a step of a task the plugin started on the loop (a lease refill, the
        loop's Redis connection): none of such a step is the host's."""
        task = getattr(getattr(handle, "_callback", None), "__self__", None)
        if not isinstance(task, asyncio.Task):
            return False
        return getattr(task.get_coro(), "cr_code", None) in self._task_codes

    def uninstall(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()

    def take(self) -> tuple[int, int, dict[str, int], tuple[int, int]]:
        """The plugin's (wall, loop-thread CPU, wall by method) ns and the loop thread's (voluntary,
        involuntary) context switches in it since the last take."""
        spent = self.in_step, self.in_step_cpu, self.by_method, self.in_step_switches
        self.in_step = self.in_step_cpu = 0
        self.by_method = {}
        self.in_step_switches = (0, 0)
        return spent


def run(case: str, redis_url: str | None, seconds: float, concurrency: int,
        latency_s: float = NETWORK_S) -> dict[str, Any]:
    from otel_llm_usage import flush

    from . import transports as T
    from .variants import runtime_facts, setup_variant

    teardown, facts = setup_variant(CASES[case][1], redis_url)
    client = T.openai_async_client(latency_s=latency_s)
    messages = [{"role": "user", "content": "Say lorem ipsum."}]
    plugin = None if case == "plain" else _PluginClock()
    timer = _StepTimer(plugin)
    lags: list[int] = []
    calls = batches = 0
    timed_s = 0.0
    loop = asyncio.new_event_loop()

    async def batch() -> None:
        await asyncio.gather(*(client.chat.completions.create(model=T.CHAT_MODEL, messages=messages)
                               for _ in range(concurrency)))

    async def probe(stop: asyncio.Event) -> None:
        clock = time.perf_counter_ns
        period = int(PROBE_S * 1e9)
        while not stop.is_set():
            intended = clock() + period
            await asyncio.sleep(PROBE_S)
            lags.append(max(0, clock() - intended))

    async def main() -> None:
        nonlocal calls, batches, timed_s
        for _ in range(_WARMUP_BATCHES):
            await batch()
        # Steady state: the ledger writer's first write (its connection, made once per process) is
        # done before timing, as the SDK's own first-call costs are by the warm-up batches. flush()
        # also hands a budget's lease back to the store, so one more batch takes it again: the first
        # calls after a hand-back wait for the store on our admission threads, which is startup.
        flush()
        await batch()
        stop = asyncio.Event()
        gc.collect()
        gc.disable()  # a collection pauses whichever step triggers it: not a stall of the plugin's making
        timer.recording = True
        prober = asyncio.create_task(probe(stop))
        t0 = time.perf_counter()
        while time.perf_counter() < t0 + seconds:
            await batch()
            batches += 1
            calls += concurrency
        timed_s = time.perf_counter() - t0
        stop.set()
        await prober
        timer.recording = False
        gc.enable()

    timer.install()
    if plugin is not None:
        plugin.install(threading.get_ident())
    try:
        loop.run_until_complete(main())
        facts.update(runtime_facts())
        loop.run_until_complete(client.close())
    finally:
        gc.enable()
        timer.uninstall()
        if plugin is not None:
            plugin.uninstall()
        loop.close()
        teardown()
    return {"case": case, "what": CASES[case][0], "seconds": timed_s, "batches": batches, "calls": calls,
            "calls_per_s": calls / timed_s if timed_s else 0.0, "concurrency": concurrency, "latency_s": latency_s,
            "lag": _lag_summary(lags), "step": _lag_summary(timer.steps), "step_cpu": _lag_summary(timer.cpu),
            "step_wait": _wait_summary(timer.steps, timer.cpu),
            "steps_over_1ms": sum(1 for d in timer.steps if d > 1_000_000),
            "plugin_in_step": _lag_summary(timer.plugin_steps),
            "plugin_longest": {"us": timer.plugin_longest[0] / 1e3, "cpu_us": timer.plugin_longest[1] / 1e3,
                               "by_method_us": {k: v / 1e3 for k, v in timer.plugin_longest[2].items()},
                               "switches": {"voluntary": timer.plugin_longest[3][0],
                                            "involuntary": timer.plugin_longest[3][1]}},
            "longest_steps": [{"us": wall / 1e3, "plugin_us": ours / 1e3, "what": what}
                              for wall, ours, what in timer.longest],
            "steps_over_slow_reply": sum(1 for d in timer.steps if d >= SLOW_REPLY_S * 1e9), "facts": facts}


# -- the slow Redis -------------------------------------------------------------------------------


class DelayProxy:
    """A TCP proxy on 127.0.0.1 that forwards requests at once and holds every reply for ``delay`` s.

    Each chunk read from the server is written to the client ``delay`` after it arrived, in
    order, so pipelined replies stay pipelined: a server that answers after ``delay``. Runs
    on its own thread (selectors, no asyncio), so it never shares an event loop with a client.
    """

    def __init__(self, target_host: str, target_port: int, delay: float) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="bench-delay-proxy", daemon=True)
        self.connections = 0
        self.replies_delayed = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> DelayProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        peer: dict[socket.socket, socket.socket] = {}  # client <-> upstream, both ways
        upstreams: set[socket.socket] = set()
        held: list[tuple[float, socket.socket, bytes]] = []  # (due, client, reply bytes), in arrival order

        def drop(s: socket.socket) -> None:
            other = peer.pop(s, None)
            for x in (s, other):
                if x is None:
                    continue
                with contextlib.suppress(KeyError, ValueError):
                    sel.unregister(x)
                x.close()
                peer.pop(x, None)
                upstreams.discard(x)

        while not self._stop.is_set():
            now = time.monotonic()
            while held and held[0][0] <= now:
                _, client, data = held.pop(0)
                with contextlib.suppress(OSError):
                    client.setblocking(True)
                    client.sendall(data)
                    client.setblocking(False)
            timeout = 0.05 if not held else max(0.0, held[0][0] - time.monotonic())
            for key, _ in sel.select(timeout):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                if s is self._listener:
                    with contextlib.suppress(BlockingIOError):
                        client, _addr = self._listener.accept()
                        upstream = socket.create_connection(self.target, timeout=5)
                        for x in (client, upstream):
                            x.setblocking(False)
                            x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                            sel.register(x, selectors.EVENT_READ, None)
                        peer[client], peer[upstream] = upstream, client
                        upstreams.add(upstream)
                        self.connections += 1
                    continue
                try:
                    data = s.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    drop(s)
                    continue
                if s in upstreams:  # a reply: hold it
                    held.append((time.monotonic() + self.delay, peer[s], data))
                    self.replies_delayed += 1
                else:  # a request: forward now
                    with contextlib.suppress(OSError):
                        peer[s].setblocking(True)
                        peer[s].sendall(data)
                        peer[s].setblocking(False)
        for s in list(peer):
            with contextlib.suppress(OSError):
                s.close()
        sel.close()


def _held_max(r: dict[str, Any]) -> float:
    """What a run is ranked by: the plugin's longest hold of a step; plain's longest step."""
    return float(r.get("plugin_in_step", {}).get("max_us", r.get("step", {}).get("max_us", 0.0)))


def median_run(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run whose longest hold (:func:`_held_max`) is the median of the runs' (the lower middle one
    of an even count), with every run's figures under ``"runs"``.

    Why not the longest of all runs: a stall the plugin's code makes recurs in every run, while a slow
    moment of the machine lands in one. Here a fixed 0.15 ms of pure-Python work took 1.6 ms of CPU once
    in 52 000 repetitions with both cores busy, and plain's own steps reached 4 ms of CPU (0.1-0.3 ms
    usually), so the longest of a few thousand holds is often the machine's."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return dict(runs[0])
    chosen = dict(sorted(ok, key=_held_max)[(len(ok) - 1) // 2])
    chosen["runs"] = [{"error": r["error"]} if "error" in r else
                      {"held_max_us": _held_max(r), "cpu_us": r.get("plugin_longest", {}).get("cpu_us"),
                       "by_method_us": r.get("plugin_longest", {}).get("by_method_us"),
                       "switches": r.get("plugin_longest", {}).get("switches"),
                       "lag_max_us": r["lag"].get("max_us"), "lag_p999_us": r["lag"].get("p999_us"),
                       "step_max_us": r["step"].get("max_us")} for r in runs]
    return chosen


def _run_case(case: str, redis_url: str | None, seconds: float, concurrency: int) -> dict[str, Any]:
    """One run of ``case`` in an interpreter of its own (the slow Redis one behind a fresh proxy)."""
    args = ["--case", case, "--seconds", str(seconds), "--concurrency", str(concurrency)]
    proxy: DelayProxy | None = None
    if redis_url is not None:
        url = redis_url
        if case == "ours_redis_slow":
            parts = urlsplit(redis_url)
            proxy = DelayProxy(parts.hostname or "127.0.0.1", parts.port or 6379, SLOW_REPLY_S).start()
            url = proxy.url
        args += ["--redis-url", url]
    try:
        r = run_module("benchmarks.looplag_bench", args, timeout=60 + 4 * seconds)
    finally:
        if proxy is not None:
            proxy.close()
    if proxy is not None:
        r["proxy"] = {"connections": proxy.connections, "replies_delayed": proxy.replies_delayed}
    return r


def run_looplag(redis_url: str | None, seconds: float, concurrency: int = 100, runs: int = 1,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every case ``runs`` times, each run in its own interpreter, the cases taking turns by round; a
    case's figures are its :func:`median_run`'s. Redis cases are skipped (with the reason) without
    ``redis_url``."""
    out: dict[str, Any] = {"seconds": seconds, "concurrency": concurrency, "runs": runs, "probe_s": PROBE_S,
                           "slow_reply_s": SLOW_REPLY_S, "latency_s": NETWORK_S, "cases": {}}
    runnable = [case for case in CASES if redis_url is not None or not case.startswith("ours_redis")]
    done: dict[str, list[dict[str, Any]]] = {case: [] for case in runnable}
    for _ in range(runs):
        for case in runnable:
            done[case].append(_run_case(case, redis_url if case.startswith("ours_redis") else None,
                                        seconds, concurrency))
    for case in CASES:
        if case not in done:
            out["cases"][case] = {"error": "redis-server not found on PATH"}
            continue
        r = out["cases"][case] = median_run(done[case])
        log(f"  loop lag {case}: " + ("error: " + r["error"][:200] if "error" in r else
                                      f"max {r['lag'].get('max_us', 0) / 1e3:.1f} ms; longest hold in each run "
                                      + ", ".join(f"{x.get('held_max_us', 0) / 1e3:.2f}" for x in r["runs"]) + " ms"))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.looplag_bench")
    parser.add_argument("--case", choices=list(CASES), required=True)
    parser.add_argument("--redis-url")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args(argv)
    emit(run(args.case, args.redis_url, args.seconds, args.concurrency))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
