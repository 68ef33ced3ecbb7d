# SPDX-License-Identifier: Apache-2.0
"""The benchmark harness runs end to end in ``--quick`` mode and reports every variant.

No timing is asserted: on a shared CI machine only the shape of the report is stable.
Peers that are not installed must show up as unavailable, not break the run.
The official GenAI instrumentation, which ``scripts/test`` installs, must have run beside ours.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_run_writes_complete_json_and_markdown(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]

    from benchmarks.surfaces import SURFACE_INFO
    from benchmarks.variants import PEER_PATH_ENV, VARIANTS

    result = json.loads((tmp_path / "results-quick.json").read_text())
    markdown = (tmp_path / "results-quick.md").read_text()
    assert result["mode"] == "quick"

    variants = {v["name"]: v for v in result["overhead"]["variants"]}
    assert set(variants) == {v.name for v in VARIANTS}
    for name, v in variants.items():
        assert v["available"] or v["reason"], name
    assert variants["plain"]["available"] and variants["ours"]["available"]
    assert set(result["overhead"]["surfaces"]) == set(SURFACE_INFO)
    for surface, cells in result["overhead"]["surfaces"].items():
        assert set(cells) == set(variants), surface
        for name, cell in cells.items():
            if variants[name]["available"] and surface in variants[name]["surfaces"]:
                assert cell.get("n", 0) > 0 and cell["median_us"] > 0, (surface, name, cell)
            else:
                assert "unavailable" in cell, (surface, name, cell)

    from benchmarks.breakdown import STEPS

    # scripts/test installs the official instrumentation there: then it must really have run.
    official_installed = bool(os.environ.get(PEER_PATH_ENV))
    assert variants["otel_genai_openai"]["available"] or not official_installed, variants["otel_genai_openai"]
    for key, surface in (("breakdown", "chat"), ("breakdown_embeddings", "embeddings")):
        assert result[key]["surface"] == surface
        steps = result[key]["steps"]
        assert set(steps) == set(STEPS)
        for name, (ladder, _) in STEPS.items():
            if ladder == "ours" or official_installed:
                assert steps[name].get("n", 0) > 0 and steps[name]["on_us"] > 0, (key, name, steps[name])
            else:
                assert "not installed" in steps[name]["error"], (key, name, steps[name])
    assert "records_per_s" in result["ledger"]["sqlite"], result["ledger"]
    assert "calls_per_s" in result["contention"]["memory"], result["contention"]
    assert len(result["memory"]["rss"]) == 3, result["memory"]
    from benchmarks.looplag_bench import CASES
    from benchmarks.report import STORE_TARGETS

    # 4 original targets, the shared-ledger ratios, embeddings vs official, 4 loop-lag rows (the plugin's
    # hold of a step, probe lag, longest step, waiting within a step), 3 fleet rows
    targets = result["targets"]
    assert len(targets) == 4 + len(STORE_TARGETS) + 1 + 4 + 3, [t["name"] for t in targets]
    assert all(t["met"] in (True, False, None) for t in targets), targets
    by_name = {t["name"]: t for t in targets}
    # The ratios are computed whenever the variants ran (their verdict is whatever the run measured).
    for surface, variant in STORE_TARGETS:
        name = next(n for n in by_name if n.startswith(f"{surface}: added latency, budget on"))
        if variants[variant]["available"]:
            assert by_name[name]["measured"], (name, by_name[name])
    embeddings = by_name["embeddings: added latency of ours <= official instrumentation's"]
    assert embeddings["measured"] or not official_installed, embeddings

    looplag = result["looplag"]["cases"]
    assert set(looplag) == set(CASES)
    redis_available = variants["ours_redis"]["available"]
    for case, r in looplag.items():
        if case.startswith("ours_redis") and not redis_available:
            assert "error" in r, (case, r)
            continue
        assert "error" not in r, (case, r)
        assert r["calls"] > 0 and r["lag"]["n"] > 0 and r["step"]["n"] > 0, (case, r)
        assert r["lag"]["max_us"] >= r["lag"]["p50_us"] >= 0, (case, r)
        # The plugin's share of a step is timed inside the step: never more than the step, and none in plain.
        assert r["longest_steps"] and all(0 <= s["plugin_us"] <= s["us"] for s in r["longest_steps"]), (case, r)
        if case == "plain":
            assert r["plugin_in_step"] == {"n": 0}, r["plugin_in_step"]
        else:
            assert r["plugin_in_step"]["n"] > 0 and r["plugin_in_step"]["max_us"] <= r["step"]["max_us"], (case, r)
    if redis_available:
        assert looplag["ours_redis_slow"]["proxy"]["connections"] > 0, looplag["ours_redis_slow"]

    fleet = result["fleet"]
    assert set(fleet) == {"redis", "redis_cluster", "sqlite"}
    for store in ("sqlite", "redis") if redis_available else ("sqlite",):
        runs = fleet[store]["runs"]
        assert runs and all("error" not in r for r in runs), (store, runs)
        for r in runs:
            assert r["calls"] > 0 and r["refused_threads"] == fleet[store]["procs"] * fleet[store]["threads"], r
            assert isinstance(r["within_bound"], bool) and r["over_tokens"] == r["used_tokens"] - \
                fleet[store]["limit_tokens"], r
    for store, f in fleet.items():  # measured, or skipped with the reason in the report
        assert "runs" in f or "skipped" in f or "error" in f, (store, f)

    for v in VARIANTS:
        assert v.label in markdown
    for heading in ("## Targets", "## Per-call overhead", "## Where the added latency goes (OpenAI chat",
                    "## Where the added latency goes (OpenAI embeddings", "## Ledger ingest",
                    "## Memory", "## Budget contention", "### Budget on a shared ledger vs in memory",
                    "### Ratio of added latency, ours / peer", "## Event-loop lag", "## Fleet overshoot"):
        assert heading in markdown
    for what, _ in CASES.values():
        assert what in markdown
    assert markdown in proc.stdout
