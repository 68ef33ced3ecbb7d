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

ROOT = Path(__file__).resolve().parents[1]


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

    steps = result["breakdown"]["steps"]
    assert set(steps) == set(STEPS)
    # scripts/test installs the official instrumentation there: then it must really have run.
    official_installed = bool(os.environ.get(PEER_PATH_ENV))
    assert variants["otel_genai_openai"]["available"] or not official_installed, variants["otel_genai_openai"]
    for name, (ladder, _) in STEPS.items():
        if ladder == "ours" or official_installed:
            assert steps[name].get("n", 0) > 0 and steps[name]["on_us"] > 0, (name, steps[name])
        else:
            assert "not installed" in steps[name]["error"], (name, steps[name])
    assert "records_per_s" in result["ledger"]["sqlite"], result["ledger"]
    assert "calls_per_s" in result["contention"]["memory"], result["contention"]
    assert len(result["memory"]["rss"]) == 3, result["memory"]
    assert [t["met"] in (True, False, None) for t in result["targets"]] == [True] * 4
    for v in VARIANTS:
        assert v.label in markdown
    for heading in ("## Targets", "## Per-call overhead", "## Where the added latency goes", "## Ledger ingest",
                    "## Memory", "## Budget contention"):
        assert heading in markdown
    assert markdown in proc.stdout
