# SPDX-License-Identifier: Apache-2.0
"""Background threads of the plugin hand the interpreter back to the host's threads often.

A thread that wants the GIL while another runs Python waits for the interpreter's switch
interval (5 ms by default) before it may force a switch, and after the switch it waits for the
other thread's next release. A pipeline worker pricing and settling a burst of records would so
hold an asyncio event loop for up to 5 ms at a time, however short each record is. Our
background loops call :meth:`Pacer.pace` between items of work instead: past :data:`SLICE_S`
of running they sleep :data:`PAUSE_S`, and the sleep releases the GIL long enough for a
waiting thread to take it. (``time.sleep(0)`` would not: it releases and retakes the GIL
before a waiter has woken up.) The cost is a pause of ``PAUSE_S`` per ``SLICE_S`` of
background work, paid by the background thread alone.

Measured with ``benchmarks.looplag_bench`` (100 concurrent async calls), runs of the two
settings interleaved: 0.1 ms slices with 0.3 ms pauses did no better than 0.5 ms with 0.1 ms
(92-123 against 109-121 loop steps per 3 s waiting over 1 ms; an hour earlier, not interleaved,
2-7 against 4-32: the machine's hour moved it more than the setting), so the cheaper one stays.
A thread that is behind (its backlog past what it drains in a moment) does not pause until it
has caught up: a host producing faster than we drain is better served by the draining (its
callers would do it otherwise).
::

    pacer = Pacer()
    for record in batch:
        process(record)
        pacer.pace()
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["LOOP_SLICE_S", "PAUSE_S", "SLICE_S", "Pacer"]

#: The longest a background thread runs before it lets a waiting thread have the interpreter.
SLICE_S = 0.0005
#: The longest the pipeline's work holds an event loop in one slice. Shorter than a thread's: the
#: loop's other callbacks wait it out whole, and a slice costs the loop only a ``call_soon`` (a
#: thread's costs a pause and a hand-over of the interpreter). 0.1 ms rather than 0.25: 100 async
#: calls, runs of the two interleaved (3 each, memory and Redis), the plugin's p99 hold of a step
#: went from 296-370 to 199-293 us and its p99.9 from 371-750 to 277-542 us, at the same call rate;
#: a slice is one record or two here, and a slow moment of the machine stretches whatever it lands in.
LOOP_SLICE_S = 0.0001
#: Long enough for a thread woken by the release to take the GIL (a futex wake-up of an idle thread
#: is ~30 us at the median, ~70 us at p99 here).
PAUSE_S = 0.0001


class Pacer:
    """Times one thread's slice; not shared between threads.

    ``clock`` is what a slice is measured in. A background thread passes ``time.thread_time``: its
    own CPU time is what it held the interpreter for, while its wall time also counts its waits for
    the GIL, and beside a busy event loop a wall-clock slice ran out in those waits, so the thread
    paused (and took the GIL back once more) after almost no work. An event loop's slice stays in
    wall time (the default): that is how long the loop's other callbacks wait."""

    __slots__ = ("_clock", "_since", "_slice")

    def __init__(self, clock: Callable[[], float] = time.perf_counter, slice_s: float = SLICE_S) -> None:
        self._clock = clock
        self._slice = slice_s
        self._since = clock()

    def restart(self) -> None:
        """Start a new slice, e.g. after the thread has waited for work (the wait released the GIL)."""
        self._since = self._clock()

    def due(self) -> bool:
        return self._clock() - self._since >= self._slice

    def pause(self) -> None:
        time.sleep(PAUSE_S)
        self._since = self._clock()

    def pace(self) -> None:
        if self.due():
            self.pause()
