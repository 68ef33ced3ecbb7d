# SPDX-License-Identifier: Apache-2.0
"""Per-call overhead: every variant in worker processes of its own, rounds interleaved.

One parent drives all workers. A round runs ``n`` units of one surface in one
worker of every variant, one worker at a time (so two cores are never shared
between two measured variants), and the order of variants rotates each round:
drift in CPU frequency, page cache or the loopback server hits every variant
equally. A variant has ``Counts.workers`` processes taking turns by round, as
an interpreter's speed stays with it (see ``FULL``). Each worker's first round
of a surface is a warm-up and is discarded.

Overhead of a variant = its median − the plain SDK's median on the same surface
and transport, from all kept samples. Each kept round's median per variant is kept
too (``round_medians_us``, aligned by round across the variants of a surface): the
machine's speed drifts between rounds, and :func:`benchmarks.stats.paired_ratio`
compares variants round by round to cancel it. Hence many short rounds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from .stats import median, summarize
from .variants import PEER_PATH_ENV, VARIANTS, Variant, availability
from .worker import TAG

__all__ = ["Counts", "OverheadResult", "Worker", "run_overhead"]


@dataclass(frozen=True)
class Counts:
    """Units per round for each surface, the number of kept rounds, and worker processes per variant."""

    rounds: int
    per_round: dict[str, int]
    workers: int = 1


# 40 rounds give the per-round bootstrap a useful interval; units per round are about a quarter
# of what 10 rounds had, so the calls per cell stay as they were. A round costs each worker a
# fixed ~75 ms (its gc.collect and the pipe) on top: about 15 s more per variant than 10 rounds.
# A batch of 100 async calls is one ~100 ms unit whose time moved by a third from batch to batch
# here: with one a round, the same variant in two workers came out 1.06x [0.77-1.47] of itself,
# with five 0.99x [0.89-1.13] (2026-12-07); five cost ~2 min more a full run.
# Three workers per variant, taking turns round by round: one interpreter's speed differs from the
# next one's of the same code (memory layout, hash seed), by as much as the margins judged here. On
# the 100-chunk stream the Redis variant in a second worker came out 0.39x and 0.66x of itself
# (intervals excluding 1, 8 and 24 calls a round), on chat 0.91x [0.75-1.06]: pairing by round
# cannot cancel what stays with a process.
FULL = Counts(rounds=40, workers=3, per_round={
    "chat": 60, "chat_stream_1": 60, "chat_stream_100": 8, "embeddings": 60,
    "async_chat_100": 5, "chat_loopback": 25, "dashscope": 60, "dashscope_stream_100": 15,
})
QUICK = Counts(rounds=2, per_round={
    "chat": 5, "chat_stream_1": 5, "chat_stream_100": 2, "embeddings": 5,
    "async_chat_100": 1, "chat_loopback": 3, "dashscope": 5, "dashscope_stream_100": 2,
})


class Worker:
    """A ``python -m benchmarks.worker`` subprocess speaking the line protocol."""

    def __init__(self, variant: str, redis_url: str | None, loopback_url: str | None) -> None:
        cmd = [sys.executable, "-m", "benchmarks.worker", variant]
        if redis_url:
            cmd += ["--redis-url", redis_url]
        if loopback_url:
            cmd += ["--loopback-url", loopback_url]
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, cwd=root, bufsize=1)
        self.hello = self._read()

    def _read(self) -> dict[str, Any]:
        stdout: IO[str] | None = self.proc.stdout
        assert stdout is not None
        for line in stdout:
            if line.startswith(TAG):
                reply: dict[str, Any] = json.loads(line[len(TAG):])
                return reply
        stderr = self.proc.stderr.read() if self.proc.stderr else ""
        return {"ok": False, "error": f"worker exited ({self.proc.wait()}): {stderr[-2000:]}"}

    def run(self, surface: str, n: int) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": "run", "surface": surface, "n": n}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> dict[str, Any]:
        """Stop the worker; its last reply (facts about the whole run), or ``{}``."""
        bye: dict[str, Any] = {}
        if self.proc.poll() is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.flush()
                bye = self._read()
            except (BrokenPipeError, OSError):
                pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return bye


@dataclass
class OverheadResult:
    variants: list[dict[str, Any]] = field(default_factory=list)
    # surface -> variant -> summary (median_us, p95_us, n, overhead_us, round_medians_us) or {"unavailable": reason}
    surfaces: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def run_overhead(counts: Counts, redis_url: str | None, loopback_url: str | None,
                 variants: Sequence[Variant] = VARIANTS, log: Callable[[str], None] = print) -> OverheadResult:
    """Start ``counts.workers`` workers per available variant, interleave rounds, summarize."""
    started = time.perf_counter()
    pool_size = max(1, counts.workers)
    result = OverheadResult(counts={"rounds": counts.rounds, "warmup_rounds": pool_size, "workers": pool_size,
                                    "per_round": counts.per_round})
    workers: dict[str, list[Worker]] = {}
    for v in variants:
        reason = availability(v, redis_url)
        facts: dict[str, Any] = {}
        pool: list[Worker] = []
        while reason is None and len(pool) < pool_size:
            w = Worker(v.name, redis_url, loopback_url)
            pool.append(w)
            if not w.hello.get("ok"):
                reason = str(w.hello.get("error", "set-up failed")).splitlines()[0][:300]
        if reason is None:
            workers[v.name] = pool
            facts = {**pool[0].hello.get("facts", {}), "worker_pids": [w.proc.pid for w in pool]}
        else:
            for w in pool:
                w.close()
        result.variants.append({"name": v.name, "label": v.label, "kind": v.kind, "note": v.note,
                                "available": reason is None, "reason": reason, "facts": facts,
                                "surfaces": list(v.surfaces)})
        log(f"  variant {v.name}: {'ready' if reason is None else 'unavailable: ' + reason}")
    if os.environ.get(PEER_PATH_ENV):
        result.counts["peer_path"] = os.environ[PEER_PATH_ENV]
    by_name = {v.name: v for v in variants}
    try:
        for surface, n in counts.per_round.items():
            names = [name for name in workers if surface in by_name[name].surfaces]
            samples: dict[str, list[int]] = {name: [] for name in names}
            round_medians: dict[str, list[float]] = {name: [] for name in names}
            errors: dict[str, str] = {}
            # The first round of each worker is its warm-up; then the workers of a variant take turns.
            for rnd in range(counts.rounds + pool_size):
                k = rnd % max(1, len(names))
                for name in names[k:] + names[:k]:
                    if name in errors:
                        continue
                    reply = workers[name][rnd % pool_size].run(surface, n)
                    if not reply.get("ok"):
                        errors[name] = str(reply.get("error", "failed"))[:300]
                    elif rnd >= pool_size:
                        samples[name].extend(reply["ns"])
                        round_medians[name].append(median(reply["ns"]) / 1e3)
            result.surfaces[surface] = _summaries(surface, samples, round_medians, errors, variants, by_name,
                                                  pool_size)
            log(f"  surface {surface}: done ({time.perf_counter() - started:.0f} s)")
    finally:
        by_variant = {v["name"]: v for v in result.variants}
        for name, pool in workers.items():
            ends = [w.close().get("facts") for w in pool]
            after = _merged_facts([e for e in ends if e])
            if after:
                by_variant[name]["facts"]["after_run"] = after
    result.seconds = time.perf_counter() - started
    return result


def _merged_facts(ends: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The end-of-run facts of a variant's workers as one: degraded if any worker's store degraded."""
    if not ends:
        return {}
    merged = dict(ends[0])
    bad = [e for e in ends if e.get("degraded")]
    if bad:
        merged.update(bad[0])
        merged["degraded_workers"] = len(bad)
    return merged


def _summaries(surface: str, samples: dict[str, list[int]], round_medians: dict[str, list[float]],
               errors: dict[str, str], variants: Sequence[Variant],
               by_name: dict[str, Variant], pool_size: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    plain = summarize(samples["plain"]) if samples.get("plain") else None
    for v in variants:
        if surface not in by_name[v.name].surfaces:
            out[v.name] = {"unavailable": "surface not instrumented by this variant"}
        elif v.name in errors:
            out[v.name] = {"unavailable": errors[v.name]}
        elif not samples.get(v.name):
            out[v.name] = {"unavailable": "variant unavailable"}
        else:
            s: dict[str, Any] = summarize(samples[v.name])
            s["round_medians_us"] = rounds = round_medians[v.name]
            # Kept round j was served by worker j % pool_size (each worker warmed up once): how far one
            # interpreter's speed stayed from another's of the same code.
            s["worker_medians_us"] = [median(rounds[i::pool_size]) for i in range(min(pool_size, len(rounds)))]
            if plain is not None:
                s["overhead_us"] = s["median_us"] - plain["median_us"]
                s["overhead_p95_us"] = s["p95_us"] - plain["p95_us"]
            out[v.name] = s
    return out
