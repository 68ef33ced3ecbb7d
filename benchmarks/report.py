# SPDX-License-Identifier: Apache-2.0
"""Targets and the Markdown rendering of one benchmark run (the JSON is the source of truth)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The four targets of the benchmark issue, each with its measured value and verdict."""
    targets: list[dict[str, Any]] = []
    ours = _overhead(result, "chat", OURS_FULL)
    peer_name = next((p for p in OFFICIAL_PEERS if _overhead(result, "chat", p) is not None), None)
    peer = _overhead(result, "chat", peer_name) if peer_name else None
    ratio = ours / peer if ours is not None and peer is not None and peer > 0 else None
    targets.append({
        "name": "non-stream added latency (spans+metrics+pricing+budget) <= 0.5x official instrumentation",
        "measured": None if ratio is None else f"{ratio:.2f}x ({ours:.1f} us vs {peer:.1f} us, {peer_name})",
        "met": None if ratio is None else ratio <= 0.5,
    })
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
    lines += ["", f"Samples per cell: {counts.get('rounds')} interleaved rounds × per-round units "
              f"{counts.get('per_round')} (one warm-up round discarded). `n/i` = not instrumented by "
              "that variant; `n/a` = variant unavailable (see notes)."]
    ratios = []
    for s in surfaces:
        ours = _overhead(result, s, OURS_FULL)
        for p in (*OFFICIAL_PEERS, "openlit"):
            peer = _overhead(result, s, p)
            if ours is not None and peer is not None and peer > 0:
                ratios.append(f"| {s} | {p} | {ours / peer:.2f}x |")
    if ratios:
        lines += ["", f"### Ratio of added latency, `{OURS_FULL}` / peer", "", "| surface | peer | ratio |",
                  "|---|---|---:|", *ratios]
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

    lines = [f"## Where the added latency goes (OpenAI chat, non-stream; one process per step, "
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
        verdict = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['name']} | {t['measured'] or '–'} | {verdict} |")
    lines += ["", "## Per-call overhead", "", *_overhead_tables(result)]
    if "breakdown" in result:
        lines += breakdown_lines(result["breakdown"])

    lines += _results_table(
        "## Ledger ingest (LedgerWriter, batch 500)",
        ["store", "records", "records/s sustained", "enqueue median µs", "enqueue p95 µs", "written", "dropped"],
        result.get("ledger", {}),
        lambda name, r: [name, f"{r['records']:,}", f"{r['records_per_s']:,.0f}", f"{r['enqueue_us_median']:.2f}",
                         f"{r['enqueue_us_p95']:.2f}", f"{r['written']:,}", f"{r['dropped']:,}"])

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
            notes.append(f"`{v['name']}` pipeline: {f['pipeline']}; pre-call budget check: {f['pre_call']}; "
                         f"DashScope patched: {f.get('dashscope_patched')}")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
