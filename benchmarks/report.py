# SPDX-License-Identifier: Apache-2.0
"""Targets and the Markdown rendering of one benchmark run (the JSON is the source of truth)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .stats import RESAMPLES, paired_added_us, paired_ratio
from .surfaces import SURFACE_INFO

__all__ = ["breakdown_lines", "evaluate_targets", "render_markdown"]

#: the variant the targets are judged on: spans + metrics + pricing + an in-memory budget
OURS_FULL = "ours_budgets"
#: the official OpenTelemetry GenAI OpenAI instrumentation, first one available wins
OFFICIAL_PEERS = ("otel_genai_openai", "otel_openai_v2")
STREAM_CHUNKS = 100


def _overhead(result: dict[str, Any], surface: str, variant: str) -> float | None:
    cell = result.get("overhead", {}).get("surfaces", {}).get(surface, {}).get(variant, {})
    value = cell.get("overhead_us")
    return float(value) if value is not None else None


def per_chunk_us(result: dict[str, Any], variant: str) -> float | None:
    """Added µs per chunk after the first: (overhead at 100 chunks − overhead at 1 chunk) / 99.

    Both streams share request building, the first chunk and finalization, so the difference
    isolates what each further chunk costs (better founded than stream − non-stream)."""
    hundred = _overhead(result, f"chat_stream_{STREAM_CHUNKS}", variant)
    one = _overhead(result, "chat_stream_1", variant)
    if hundred is None or one is None:
        return None
    return (hundred - one) / (STREAM_CHUNKS - 1)


#: surfaces on which the shared ledgers are held against the in-memory budget path
STORE_SURFACES = ("chat", "chat_stream_1", "chat_stream_100", "embeddings", "async_chat_100")
#: (variant, store) of the shared ledgers, each compared with :data:`OURS_FULL`
STORE_VARIANTS = (("ours_sqlite", "SQLite"), ("ours_redis", "Redis"))
#: (surface, variant) pairs with a "≤ 1.15 × the in-memory budget" target
STORE_TARGETS = (*((s, v) for s in STORE_SURFACES[:4] for v, _ in STORE_VARIANTS), ("async_chat_100", "ours_redis"))
STORE_RATIO_MAX = 1.15
LOOP_STALL_MAX_US = 1000.0
#: confidence level of the bootstrap interval of a ratio
CI_LEVEL = 0.90


def _round_medians(result: dict[str, Any], surface: str, variant: str) -> list[float] | None:
    cell = result.get("overhead", {}).get("surfaces", {}).get(surface, {}).get(variant, {})
    rounds = cell.get("round_medians_us")
    return [float(x) for x in rounds] if rounds else None


def added_ratio(result: dict[str, Any], surface: str, variant: str, base: str) -> dict[str, Any]:
    """Added latency of ``variant`` over that of ``base`` on ``surface``: ``{"ratio", "ci_low", "ci_high",
    "variant_us", "base_us", "diff_us", "paired"}``; ``ratio`` is ``None`` when either is missing or the base
    added nothing measurable (≤ 0).

    Paired per round (:func:`benchmarks.stats.paired_ratio`) when the result has round medians; results of
    older runs fall back to the pooled medians' differences, with no interval."""
    plain = _round_medians(result, surface, "plain")
    v_rounds, b_rounds = _round_medians(result, surface, variant), _round_medians(result, surface, base)
    v, b = paired_added_us(v_rounds, plain), paired_added_us(b_rounds, plain)
    paired = v is not None and b is not None
    ratio: float | None = None
    low: float | None = None
    high: float | None = None
    if paired:
        est = paired_ratio(v_rounds, b_rounds, plain, CI_LEVEL)
        if est is not None:
            ratio, low, high = est
    else:
        v, b = _overhead(result, surface, variant), _overhead(result, surface, base)
        ratio = v / b if v is not None and b is not None and b > 0 else None
    return {"ratio": ratio, "ci_low": low, "ci_high": high, "variant_us": v, "base_us": b,
            "diff_us": None if v is None or b is None else v - b, "paired": paired}


def _added_us(result: dict[str, Any], surface: str, variant: str) -> float | None:
    """Added latency of one variant, estimated as :func:`added_ratio` does."""
    paired = paired_added_us(_round_medians(result, surface, variant), _round_medians(result, surface, "plain"))
    return paired if paired is not None else _overhead(result, surface, variant)


def _ci(r: dict[str, Any]) -> str:
    """``0.91 to 1.22`` (an upper bound is ``∞`` when the base added nothing in some resamples)."""
    high = "∞" if math.isinf(r["ci_high"]) else f"{r['ci_high']:.2f}"
    return f"{r['ci_low']:.2f} to {high}"


def _ratio_target(name: str, r: dict[str, Any], limit: float, base_label: str) -> dict[str, Any]:
    ratio = r["ratio"]
    if ratio is not None and r["ci_low"] is not None:
        measured = (f"{ratio:.2f}x [{CI_LEVEL:.0%} CI {_ci(r)}] ({r['variant_us']:.1f} us vs {r['base_us']:.1f} us "
                    f"{base_label}, paired per round)")
    elif ratio is not None:
        measured = f"{ratio:.2f}x ({r['variant_us']:.1f} us vs {r['base_us']:.1f} us {base_label}, pooled medians)"
    elif r["variant_us"] is not None and r["base_us"] is not None:
        measured = f"undefined: {base_label} added {r['base_us']:.1f} us (<= 0); this one {r['variant_us']:+.1f} us"
    else:
        measured = None
    return {"name": name, "measured": measured, "met": None if ratio is None else ratio <= limit}


def _run_holds(case: dict[str, Any]) -> str:
    """``a, b, c ms``: each run's longest hold (its CPU, switches), or ``""`` when the case ran once."""
    runs = case.get("runs") or []
    if len(runs) < 2:
        return ""
    return ", ".join("error" if "error" in r else f"{r['held_max_us'] / 1e3:.2f}"
                     + (f" (CPU {r['cpu_us'] / 1e3:.2f}{_switches(r.get('switches'))})"
                        if r.get("cpu_us") is not None else "")
                     for r in runs) + " ms"


def _per_run(case: dict[str, Any]) -> str:
    """`` [runs: a, b, c ms]`` (:func:`_run_holds`), when the case ran more than once."""
    holds = _run_holds(case)
    return f" [runs: {holds}]" if holds else ""


def _switches(switches: dict[str, int] | None) -> str:
    """``, switched out 2 + 0``: the loop thread's voluntary + involuntary context switches in a hold."""
    if not switches:
        return ""
    return f", switched out {switches['voluntary']} + {switches['involuntary']}"


def _looplag_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The longest the plugin itself held the loop in one step (the target), and, for context, the
    plugin's worst case against plain on the probe's max lag and on the longest step (not judged:
    both are dominated by work that is not the plugin's, see the notes)."""
    cases = result.get("looplag", {}).get("cases", {})
    plain = cases.get("plain", {})
    ours = {k: v for k, v in cases.items() if k != "plain" and "error" not in v}
    out: list[dict[str, Any]] = []
    runs = result.get("looplag", {}).get("runs", 1)
    name = ("event loop, 100 concurrent async calls: the plugin's longest hold of the loop within one step "
            "<= 1 ms (every plugin case" + (f"; each case's median of {runs} runs" if runs > 1 else "") + ")")
    holds = {k: v["plugin_in_step"]["max_us"] for k, v in ours.items() if "max_us" in v.get("plugin_in_step", {})}
    if not holds:
        out.append({"name": name, "measured": None, "met": None})
    else:
        case = max(holds, key=lambda k: holds[k])
        each = ", ".join(f"{k} {us / 1e3:.2f} ms" + _per_run(ours[k]) for k, us in holds.items())
        longest = ours[case].get("longest_steps") or [{}]
        measured = f"{holds[case] / 1e3:.2f} ms ({each})"
        hold = ours[case].get("plugin_longest", {})
        if "cpu_us" in hold:
            parts = ", ".join(f"{k} {us / 1e3:.2f}" for k, us in hold.get("by_method_us", {}).items())
            measured += f"; the loop thread's CPU in that hold: {hold['cpu_us'] / 1e3:.2f} ms ({parts} ms)"
            if hold.get("switches"):
                measured += (f", its context switches in it: {hold['switches']['voluntary']} voluntary (waits for "
                             f"the GIL or a lock), {hold['switches']['involuntary']} involuntary")
        if "us" in longest[0]:
            measured += (f"; the longest step of {case}: {longest[0]['us'] / 1e3:.2f} ms, of which the plugin's "
                         f"{longest[0]['plugin_us'] / 1e3:.2f} ms")
        out.append({"name": name, "measured": measured, "met": holds[case] <= LOOP_STALL_MAX_US})
    for key, what in (("lag", "max probe lag (0.5 ms sleeps)"), ("step", "longest single loop step")):
        name = f"event loop, 100 concurrent async calls: {what}, plugin - plain (context, not judged)"
        base = plain.get(key, {}).get("max_us")
        worst = max(ours.items(), key=lambda kv: kv[1].get(key, {}).get("max_us", 0.0), default=None)
        if base is None or worst is None or "max_us" not in worst[1].get(key, {}):
            out.append({"name": name, "measured": None, "met": None})
            continue
        diff = worst[1][key]["max_us"] - base
        measured = (f"{diff / 1e3:+.2f} ms ({worst[0]} {worst[1][key]['max_us'] / 1e3:.2f} ms "
                    f"vs plain {base / 1e3:.2f} ms)")
        if key == "step":
            cpu = worst[1].get("step_cpu", {}).get("max_us")
            if cpu is not None:
                measured += f"; loop-thread CPU of a step at most {cpu / 1e3:.2f} ms"
            slow = ours.get("ours_redis_slow", {}).get("steps_over_slow_reply")
            if slow is not None:
                measured += f"; steps >= one 50 ms Redis reply with Redis slow: {slow}"
        out.append({"name": name, "measured": measured, "met": None})
    # The longest step is one sample: on a VM, plain itself shows steps of several ms of waiting for the
    # machine. The 99.9th percentile of waiting per step tells the plugin's threads apart from that.
    name = ("event loop, 100 concurrent async calls: loop thread waiting within a step (GIL, machine), "
            "p99.9, plugin - plain <= 1 ms (worst plugin case)")
    base_wait = plain.get("step_wait", {}).get("p999_us")
    waits = {k: v["step_wait"] for k, v in ours.items() if "p999_us" in v.get("step_wait", {})}
    if base_wait is None or not waits:
        out.append({"name": name, "measured": None, "met": None})
    else:
        case, w = max(waits.items(), key=lambda kv: kv[1]["p999_us"])
        diff = w["p999_us"] - base_wait
        counts = ", ".join(f"{k} {v.get('over_1ms', 0)}" for k, v in waits.items())
        measured = (f"{diff / 1e3:+.2f} ms ({case} {w['p999_us'] / 1e3:.2f} ms vs plain {base_wait / 1e3:.2f} ms); "
                    f"steps waiting > 1 ms: plain {plain['step_wait'].get('over_1ms', 0)}, {counts}")
        out.append({"name": name, "measured": measured, "met": diff <= LOOP_STALL_MAX_US})
    return out


def _fleet_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for store, f in result.get("fleet", {}).items():
        name = f"fleet overshoot <= one call's reservation, every run ({store})"
        runs = [r for r in f.get("runs", []) if "error" not in r] if "error" not in f else []
        if not runs:
            out.append({"name": name, "measured": None, "met": None})
            continue
        worst = max(r["over_tokens"] for r in runs)
        bad = sum(1 for r in runs if not r["within_bound"])
        measured = (f"worst usage - limit {worst:+d} tokens, bound {f['bound_tokens']} tokens; "
                    f"{bad} of {len(runs)} runs over the bound")
        if any(r.get("degraded") for r in runs):
            measured += " (counter store degraded in some runs)"
        out.append({"name": name, "measured": measured, "met": bad == 0 and len(runs) == len(f.get("runs", []))})
    return out


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of the benchmark issues, each with its measured value and verdict (never raises)."""
    targets: list[dict[str, Any]] = []
    name = "non-stream added latency (spans+metrics+pricing+budget) <= 0.5x official instrumentation"
    peer_name = next((p for p in OFFICIAL_PEERS if _overhead(result, "chat", p) is not None), None)
    if peer_name is None:
        targets.append({"name": name, "measured": None, "met": None})
    else:
        targets.append(_ratio_target(name, added_ratio(result, "chat", OURS_FULL, peer_name), 0.5, peer_name))
    chunk = per_chunk_us(result, OURS_FULL)
    isolated = result.get("chunk", {}).get("per_chunk_us")
    # The proxy's own per-chunk cost decides the target; the end-to-end difference of two ~8 ms
    # medians is shown beside it but moves by microseconds between runs.
    decisive = isolated if isolated is not None else chunk
    targets.append({
        "name": "stream: <= 2 us added per chunk after the first",
        "measured": None if decisive is None else
        f"{decisive:.2f} us/chunk (proxy on real SDK streams)" + ("" if chunk is None else
                                                            f"; end to end {chunk:.2f} us/chunk"),
        "met": None if decisive is None else decisive <= 2.0,
    })
    sqlite = result.get("ledger", {}).get("sqlite", {})
    enqueue = sqlite.get("enqueue_us_median")
    targets.append({
        "name": "ledger enqueue (calling thread) <= 10 us",
        "measured": None if enqueue is None else f"{enqueue:.2f} us (p95 {sqlite['enqueue_us_p95']:.2f} us)",
        "met": None if enqueue is None else enqueue <= 10.0,
    })
    rate = sqlite.get("records_per_s")
    targets.append({
        "name": "SQLite ingest >= 50k records/s",
        "measured": None if rate is None else f"{rate:,.0f} records/s",
        "met": None if rate is None else rate >= 50_000,
    })
    for surface, variant in STORE_TARGETS:
        store = dict(STORE_VARIANTS)[variant]
        targets.append(_ratio_target(
            f"{surface}: added latency, budget on {store} <= {STORE_RATIO_MAX}x budget in memory",
            added_ratio(result, surface, variant, OURS_FULL), STORE_RATIO_MAX, OURS_FULL))
    embed_peer = next((p for p in OFFICIAL_PEERS if _overhead(result, "embeddings", p) is not None), None)
    if embed_peer is None:
        targets.append({"name": "embeddings: added latency of ours <= official instrumentation's",
                        "measured": None, "met": None})
    else:
        targets.append(_ratio_target("embeddings: added latency of ours <= official instrumentation's",
                                     added_ratio(result, "embeddings", "ours", embed_peer), 1.0, embed_peer))
    targets += _looplag_targets(result)
    targets += _fleet_targets(result)
    return targets


def _fmt(value: float | None, digits: int = 1, sign: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _overhead_tables(result: dict[str, Any]) -> list[str]:
    oh = result.get("overhead", {})
    variants = oh.get("variants", [])
    surfaces = list(oh.get("surfaces", {}))
    if not surfaces:
        return ["_overhead benchmark not run_", ""]
    head = "| variant | " + " | ".join(surfaces) + " |"
    rule = "|---|" + "---:|" * len(surfaces)
    lines = ["### Added latency per unit: variant median − plain median (µs)", "", head, rule]
    cells: dict[str, list[str]] = {}
    for v in variants:
        row, raw = [], []
        for s in surfaces:
            cell = oh["surfaces"][s].get(v["name"], {})
            if "unavailable" in cell:
                row.append("n/i" if cell["unavailable"].startswith("surface not") else "n/a")
                raw.append(row[-1])
            else:
                row.append("0 (base)" if v["name"] == "plain" else _fmt(cell.get("overhead_us"), sign=True))
                raw.append(f"{cell['median_us']:.0f} / {cell['p95_us']:.0f}")
        lines.append(f"| {v['label']} | " + " | ".join(row) + " |")
        cells[v["label"]] = raw
    lines += ["", "### Median / p95 per unit (µs)", "", head, rule]
    lines += [f"| {label} | " + " | ".join(raw) + " |" for label, raw in cells.items()]
    lines += ["", "Surfaces (one unit = one call, or one batch for `async_chat_100`):", ""]
    lines += [f"- `{s}`: {SURFACE_INFO[s][0]}" for s in surfaces if s in SURFACE_INFO]
    counts = oh.get("counts", {})
    pool = counts.get("workers", 1)
    lines += ["", f"Samples per cell: {counts.get('rounds')} interleaved rounds × per-round units "
              f"{counts.get('per_round')}, each variant in {pool} worker process{'es' if pool != 1 else ''} "
              f"taking turns by round (each worker's first round discarded). `n/i` = not instrumented by "
              "that variant; `n/a` = variant unavailable (see notes)."]
    lines += _ratio_tables(result, surfaces)
    chunk_rows = []
    for v in variants:
        c = per_chunk_us(result, v["name"])
        if c is not None and v["name"] != "plain":
            s100 = _overhead(result, f"chat_stream_{STREAM_CHUNKS}", v["name"])
            chat = _overhead(result, "chat", v["name"])
            naive = (s100 - chat) / STREAM_CHUNKS if s100 is not None and chat is not None else None
            chunk_rows.append(f"| {v['label']} | {_fmt(c, 2)} | {_fmt(naive, 2)} |")
    if chunk_rows:
        lines += ["", "### Streaming: added µs per chunk", "",
                  "| variant | (ovh@100 − ovh@1) / 99 | (ovh stream@100 − ovh non-stream) / 100 |",
                  "|---|---:|---:|", *chunk_rows]
    return [*lines, ""]


def _ratio_tables(result: dict[str, Any], surfaces: list[str]) -> list[str]:
    """Ours against the peers, and the shared ledgers against the in-memory budget, with their intervals."""
    paired = any(_round_medians(result, s, "plain") for s in surfaces)
    ci_head = f" [{CI_LEVEL:.0%} CI]" if paired else ""
    store_rows = []
    for s in STORE_SURFACES:
        if s not in surfaces:
            continue
        store_cells: list[str] = []
        for variant, _ in STORE_VARIANTS:
            r = added_ratio(result, s, variant, OURS_FULL)
            store_cells += [_ratio_cell(r), _fmt(r["diff_us"], sign=True)]
        store_rows.append(f"| {s} | {_fmt(_added_us(result, s, OURS_FULL), sign=True)} | "
                          + " | ".join(store_cells) + " |")
    ratios = []
    for s in surfaces:
        for p in (*OFFICIAL_PEERS, "openlit"):
            peer = _overhead(result, s, p)
            if peer is None:
                continue
            ratio_cells = [_ratio_cell(added_ratio(result, s, v, p)) for v in ("ours", OURS_FULL)]
            ratios.append(f"| {s} | {p} | " + " | ".join(ratio_cells) + " |")
    lines: list[str] = []
    if ratios:
        # The method is explained once, under the store table; in full here only without one, or when pooled.
        note = (f"Ratios paired per round against the plain SDK, [{CI_LEVEL:.0%} CI] a bootstrap over rounds: "
                "how and why under the next table." if paired and store_rows else _method_note(paired, "the peer"))
        lines += ["", "### Ratio of added latency, ours / peer", "",
                  f"| surface | peer | `ours` / peer{ci_head} | `{OURS_FULL}` / peer{ci_head} |",
                  "|---|---|---:|---:|", *ratios, "", note]
    if store_rows:
        lines += ["", "### Budget on a shared ledger vs in memory: ratio of added latency "
                  f"(target <= {STORE_RATIO_MAX}x)", "",
                  f"| surface | `{OURS_FULL}` added µs | SQLite / memory{ci_head} | SQLite − memory µs "
                  f"| Redis / memory{ci_head} | Redis − memory µs |", "|---|---:|---:|---:|---:|---:|", *store_rows, "",
                  _method_note(paired, f"`{OURS_FULL}` (memory)") + " `–` where the in-memory figure is ≤ 0 "
                  "(within noise) or a variant is unavailable."]
    return lines


def _cell(text: str, limit: int = 300) -> str:
    """``text`` fit for one Markdown table cell: one line, no column separators."""
    return " ".join(text.split()).replace("|", "/")[:limit]


def _error_cell(text: str) -> str:
    """An error for a table cell: its first line and, for a traceback, the exception line (the last)."""
    lines = [x for x in str(text).splitlines() if x.strip()]
    if len(lines) > 1:
        return _cell(f"{lines[0]} … {lines[-1]}")
    return _cell(lines[0] if lines else "")


def _ratio_cell(r: dict[str, Any]) -> str:
    if r["ratio"] is None:
        return "–"
    return f"{r['ratio']:.2f}x" + ("" if r["ci_low"] is None else f" [{_ci(r)}]")


def _method_note(paired: bool, base: str) -> str:
    """How the ratios of a table were estimated, and why."""
    if not paired:
        return (f"Ratio = (variant median − plain median) / ({base} median − plain median), medians pooled over "
                "the run (this result has no per-round medians, so no interval).")
    return (f"Ratios paired per round: in each interleaved round a variant's relative overhead is its median / "
            f"the plain SDK's median in the same round − 1; ratio = median over rounds of the variant's relative "
            f"overhead / that of {base}, [{CI_LEVEL:.0%} CI] a bootstrap over rounds ({RESAMPLES} resamples, fixed "
            "seed); added µs = median relative overhead × median plain round median. Why: this machine's speed "
            "drifts by tens of percent over seconds, which moves a ~1 ms plain median by more than the overheads "
            "compared; dividing by the plain SDK's median of the same round cancels it, a difference of pooled "
            "medians does not.")


def _ms(summary: dict[str, Any], key: str) -> str:
    value = summary.get(key)
    return "–" if value is None else f"{value / 1e3:.2f}"


def looplag_lines(looplag: dict[str, Any]) -> list[str]:
    """The event-loop lag cases of :mod:`benchmarks.looplag_bench`, plain first."""
    from .looplag_bench import CASES

    cases = looplag.get("cases", {})
    plain = cases.get("plain", {})
    lines = [f"## Event-loop lag: AsyncOpenAI, {looplag.get('concurrency')} concurrent calls per batch, "
             f"{looplag.get('seconds')} s per case"
             + (f", each case's median of {looplag['runs']} runs" if looplag.get("runs", 1) > 1 else ""), "",
             "| case | calls/s | probe lag p50 / p99 / max ms | max − plain ms | longest step ms (p99) "
             "| − plain ms | the plugin's time in a step, p50 / p99 / p99.9 / max ms "
             "| loop-thread CPU of a step, max ms | steps > 1 ms / ≥ 50 ms | counter store |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in cases.items():
        what = CASES.get(name, (name,))[0]
        if "error" in r:
            lines.append(f"| {what} | error: {_error_cell(r['error'])} | | | | | | | | |")
            continue
        lag, step = r.get("lag", {}), r.get("step", {})
        d_lag = d_step = "–"
        if name != "plain" and "max_us" in plain.get("lag", {}) and "max_us" in lag:
            d_lag = f"{(lag['max_us'] - plain['lag']['max_us']) / 1e3:+.2f}"
        if name != "plain" and "max_us" in plain.get("step", {}) and "max_us" in step:
            d_step = f"{(step['max_us'] - plain['step']['max_us']) / 1e3:+.2f}"
        held = r.get("plugin_in_step", {})
        hold = (f"{_ms(held, 'p50_us')} / {_ms(held, 'p99_us')} / {_ms(held, 'p999_us')} / {_ms(held, 'max_us')}"
                if "max_us" in held else "–")
        facts = r.get("facts", {})
        store = facts.get("counter_store", "–")
        if facts.get("degraded"):
            store += " (**degraded**)"
        if "proxy" in r:
            store += f"; {r['proxy']['replies_delayed']} replies delayed by the proxy"
        lines.append(f"| {what} | {r['calls_per_s']:,.0f} | {_ms(lag, 'p50_us')} / {_ms(lag, 'p99_us')} / "
                     f"{_ms(lag, 'max_us')} | {d_lag} | {_ms(step, 'max_us')} ({_ms(step, 'p99_us')}) | {d_step} "
                     f"| {hold} | {_ms(r.get('step_cpu', {}), 'max_us')} | {r.get('steps_over_1ms', '–')} / "
                     f"{r.get('steps_over_slow_reply', '–')} | {store} |")
    latency = looplag.get("latency_s") or next((r.get("latency_s") for r in cases.values() if "latency_s" in r), None)
    lines += ["", "Each case in its own interpreter; the mock server answers after "
              f"{'–' if latency is None else f'{latency * 1e3:.0f} ms'} (awaited on the loop), the calls of a batch "
              "are gathered at once and batches run back to back. Probe lag: a coroutine sleeping "
              f"{looplag.get('probe_s', 0.0005) * 1e3:.1f} ms, lag = wake time − intended; it counts all the work "
              "queued before it, so with 100 busy tasks it tracks their total CPU per loop turn. Step: the wall time "
              "of one callback of the loop (`Handle._run`, task steps included), i.e. how long one piece of code "
              "held the loop. The plugin's time in a step: the call lifecycle's work before and after the SDK call "
              "and the pipeline's slices on the loop, timed on the loop thread and summed per step (steps with "
              "none not counted); a step's wall time minus it is the SDK's and the host's. That is the target: the "
              "longest step and the probe lag are set by the SDK's own steps (plain's longest is ~1 ms of its "
              "request building) and by 100 tasks' CPU queued ahead of the probe, and only the plugin's share of a "
              "step is the plugin's stall. The loop thread's CPU column is the longest CPU time of a step, the rest "
              "of a step's "
              "wall time is waiting (for I/O, or for the GIL while another thread runs: up to one switch interval, "
              "5 ms). GC is off while measuring. The slow Redis case puts a TCP proxy holding every reply "
              f"{looplag.get('slow_reply_s', 0.05) * 1e3:.0f} ms between the plugin and `redis-server`."
              + (f" Each case ran {looplag['runs']} times, one interpreter per run, the cases taking turns; a row is "
                 "the case's median run by the plugin's longest hold (plain: by its longest step), because a stall "
                 "the plugin's code makes recurs in every run and a slow moment of the machine lands in one. "
                 "Each run's longest hold (the loop thread's CPU in it, and how often the thread was switched "
                 "out in it, voluntarily (waiting for the GIL or a lock) + by the kernel; wall time well over CPU "
                 "with neither is time the machine did not run the thread's virtual CPU): "
                 + "; ".join(f"{name} {holds}" for name, holds in
                             ((name, _run_holds(r)) for name, r in cases.items() if name != "plain") if holds) + "."
                 if looplag.get("runs", 1) > 1 else ""), ""]
    return lines


def fleet_lines(fleet: dict[str, Any]) -> list[str]:
    """The fleet overshoot runs of :mod:`benchmarks.fleet_bench`, one table per store."""
    lines = ["## Fleet overshoot: processes × threads spending one token budget", ""]
    for store, f in fleet.items():
        if "error" in f or "skipped" in f:
            lines += [f"**{store}**: not measured: {_cell(str(f.get('error') or f.get('skipped')), 500)}", ""]
            continue
        lines += [f"**{store}** — {f['procs']} processes × {f['threads']} threads, limit {f['limit_tokens']:,} tokens; "
                  f"every call reserves and spends {f['reservation_tokens']} tokens ({f['estimated_input_tokens']} "
                  f"estimated input + max_tokens {f['max_tokens']}), so {f['calls_within_limit']} calls fit and the "
                  f"documented bound is usage − limit < {f['bound_tokens']} tokens (one call).", "",
                  "| run | calls | final usage | usage − limit (tokens) | (calls) | calls − calls that fit "
                  "| in flight left | store = calls × reservation | within bound | counter store |",
                  "|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
        for r in f.get("runs", []):
            if "error" in r:
                lines.append(f"| {r['run']} | error: {_error_cell(r['error'])} | | | | | | | | |")
                continue
            store_cell = (r.get("counter_store") or "–") + (
                f" (**degraded**: {_cell(str(r.get('degraded_by_op') or ''), 120)})" if r.get("degraded") else "")
            if r.get("errors"):
                store_cell += "; errors: " + _cell("; ".join(r["errors"]), 200)
            lines.append(f"| {r['run']} | {r['calls']:,} | {r['used_tokens']:,} | {r['over_tokens']:+,} "
                         f"| {r['over_calls']:+.2f} | {r['calls_over_fit']:+d} | {r['in_flight_tokens']:,} "
                         f"| {'yes' if r['store_matches_calls'] else '**no**'} "
                         f"| {'yes' if r['within_bound'] else '**EXCEEDS**'} | {store_cell} |")
        lines.append("")
    lines += ["Processes are released together once all are instrumented; each thread calls (real `OpenAI` chat "
              "calls, `max_tokens` set, in-process mock transport) until it gets `BudgetExceeded`. Final usage is "
              "read from the store after every process shut the plugin down, as `otel-llm-usage budget status` "
              "reads it. A negative usage − limit is under-admission (calls refused with allowance left).", ""]
    return lines


def _results_table(title: str, columns: list[str], results: dict[str, dict[str, Any]],
                   row: Callable[[str, dict[str, Any]], list[str]]) -> list[str]:
    """A titled table with one row per named result; a failed one shows its error instead."""
    lines = [title, "", "| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    for name, r in results.items():
        cells = [name, f"error: {r['error']}"] + [""] * (len(columns) - 2) if "error" in r else row(name, r)
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def breakdown_lines(breakdown: dict[str, Any]) -> list[str]:
    """The two ladders of :mod:`benchmarks.breakdown` side by side, level by level."""
    from .breakdown import LEVELS, STEPS

    steps = breakdown.get("steps", {})
    ladders: dict[str, dict[str, dict[str, Any]]] = {"ours": {}, "official": {}}
    for step, (ladder, level) in STEPS.items():
        ladders[ladder][level] = steps.get(step, {"error": "not run"})
    official_full = ladders["official"]["metrics"]

    def cell(r: dict[str, Any] | None, key: str, before: dict[str, Any] | None) -> str:
        if r is None:
            return "–"
        if "error" in r:
            return "n/a"
        step = f" ({r[key] - before[key]:+.1f})" if before and key in before else ""
        return f"{r[key]:.1f}{step}"

    def ratio(ours: dict[str, Any], official: dict[str, Any] | None, key: str) -> str:
        if official is None or key not in ours or key not in official or not official[key]:
            return "–"
        return f"{ours[key] / official[key]:.2f}"

    surface = {"chat": "OpenAI chat, non-stream", "embeddings": "OpenAI embeddings"}.get(
        breakdown.get("surface", "chat"), str(breakdown.get("surface")))
    lines = [f"## Where the added latency goes ({surface}; one process per step, "
             f"{breakdown.get('blocks')} × 2 blocks of {breakdown.get('calls')} calls)", "",
             "µs added per call, with the step over the level before in brackets.", "",
             "| level | ours, median | official, median | ours ÷ official | ours, all work | official, all work "
             "| ours ÷ official |", "|---|---:|---:|---:|---:|---:|---:|"]
    before: dict[str, dict[str, Any] | None] = {"ours": None, "official": None}
    for level, what in LEVELS.items():
        ours = ladders["ours"].get(level)
        official = ladders["official"].get(level)
        # The budget level has no official counterpart: it is held against the official's whole.
        against = official if official is not None else official_full
        lines.append(f"| {what} | {cell(ours, 'added_us', before['ours'])} "
                     f"| {cell(official, 'added_us', before['official'])} | {ratio(ours or {}, against, 'added_us')} "
                     f"| {cell(ours, 'added_all_work_us', before['ours'])} "
                     f"| {cell(official, 'added_all_work_us', before['official'])} "
                     f"| {ratio(ours or {}, against, 'added_all_work_us')} |")
        before = {"ours": ours, "official": official or before["official"]}
    lines += ["", "Median: latency on the calling thread. All work: adds what the pipeline's worker thread did "
              "for those calls after they returned (metrics, budget settlement, the ledger), which a host "
              "without idle time pays in throughput; where calls wait on the network, it runs meanwhile. "
              "The budget row's ratios are against the official instrumentation's full figure."]
    failed: dict[str, list[str]] = {}
    for step, r in steps.items():
        if "error" in r:
            failed.setdefault(r["error"], []).append(step)
    lines += [f"\nn/a ({', '.join(names)}): {error}" for error, names in failed.items()]
    return [*lines, ""]


def render_markdown(result: dict[str, Any]) -> str:
    env = result.get("environment", {})
    lines = [f"# otel-llm-usage benchmarks ({result.get('mode')} mode)", "",
             f"{env.get('cpu')} · {env.get('nproc')} cores · Python {env.get('python')} · "
             f"openai {env.get('openai')} · dashscope {env.get('dashscope')} · "
             f"{result.get('started')} · took {result.get('seconds', 0):.0f} s", ""]
    lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for t in result.get("targets", []):
        verdict = {True: "yes", False: "**no**", None: "not judged" if t["measured"] else "not measured"}[t["met"]]
        lines.append(f"| {t['name']} | {t['measured'] or '–'} | {verdict} |")
    lines += ["", "## Per-call overhead", "", *_overhead_tables(result)]
    for key in ("breakdown", "breakdown_embeddings"):
        if key in result:
            lines += breakdown_lines(result[key])

    lines += _results_table(
        "## Ledger ingest (LedgerWriter, batch 500)",
        ["store", "records", "records/s sustained", "enqueue median µs", "enqueue p95 µs", "written", "dropped"],
        result.get("ledger", {}),
        lambda name, r: [name, f"{r['records']:,}", f"{r['records_per_s']:,.0f}", f"{r['enqueue_us_median']:.2f}",
                         f"{r['enqueue_us_p95']:.2f}", f"{r['written']:,}", f"{r['dropped']:,}"])

    if "looplag" in result:
        lines += ["", *looplag_lines(result["looplag"])]
    if "fleet" in result:
        lines += ["", *fleet_lines(result["fleet"])]

    mem = result.get("memory", {})
    lines += ["", "## Memory: high-cardinality users through `record_usage` (label cap on)", ""]
    if "error" in mem or not mem:
        lines.append(f"_not measured: {mem.get('error', 'skipped')}_")
    else:
        lines += ["| calls | RSS MiB | allocated blocks |", "|---:|---:|---:|", f"| 0 | {mem['rss_start_mib']} | |"]
        lines += [f"| {p['calls']:,} | {p['rss_mib']} | {p['blocks']:,} |" for p in mem["rss"]]
        tm = mem["tracemalloc"]
        lines += ["", f"tracemalloc over {tm['window_calls']:,} further calls: {tm['held_kib']:,} KiB left alive "
                  f"({tm['held_bytes_per_call']} B per call; the record store keeps the newest records, each "
                  f"replacing an older untraced one), peak {tm['peak_kib']:,} KiB. "
                  f"Distinct `user` label values exported: {mem['distinct_user_label_values']} "
                  f"(cap {mem['max_label_values']} + `__overflow__`). {mem['us_per_call']:.1f} µs per "
                  f"`record_usage`. Pipeline: {mem['pipeline']}.", "",
                  "Largest holders: " + "; ".join(f"`{g['where']}` {g['kib']:,} KiB" for g in tm["top_held"])]

    lines += ["", *_results_table(
        "## Budget contention (one budget, pre-call check + settle per call)",
        ["counter store", "threads", "calls/s", "calls", "errors"],
        result.get("contention", {}),
        lambda name, r: [f"{name} ({r['store']})", str(r["threads"]), f"{r['calls_per_s']:,.0f}",
                         f"{r['calls']:,}", "; ".join(r["errors"]) or "none"])]

    notes = result.get("notes", [])
    for v in result.get("overhead", {}).get("variants", []):
        if not v["available"]:
            notes.append(f"`{v['name']}` unavailable: {v['reason']}")
        elif v.get("facts", {}).get("pipeline"):
            f = v["facts"]
            after = f.get("after_run", {})
            store = "" if not after else (f"; counter store: {after.get('counter_store')}"
                                          + (" — **degraded** during the run (its figures measured the fail-open "
                                             f"fallback: {after.get('degraded_by_op')})" if after.get("degraded")
                                             else ""))
            notes.append(f"`{v['name']}` pipeline: {f['pipeline']}; pre-call budget check: {f['pre_call']}; "
                         f"DashScope patched: {f.get('dashscope_patched')}{store}")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
