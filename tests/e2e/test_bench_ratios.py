# SPDX-License-Identifier: Apache-2.0
"""The paired, drift-cancelling ratio of added latencies (benchmarks.stats) and how the report uses it.

The machine the benchmarks run on drifts in speed between rounds; the estimator must give the
exact ratio when a drift scales a whole round, and the report must fall back to pooled medians
for results that carry no per-round medians.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import pytest

from benchmarks.overhead import _summaries
from benchmarks.report import added_ratio, evaluate_targets, render_markdown
from benchmarks.stats import RatioEstimate, paired_added_us, paired_ratio, relative_overheads
from benchmarks.variants import VARIANTS

# Three rounds; in the second the whole machine runs at half speed (every median doubles).
PLAIN = [1000.0, 2000.0, 1000.0]
MEMORY = [1250.0, 2500.0, 1250.0]  # +25 % in every round: 250 us at the plain median of 1000
SQLITE = [1300.0, 2600.0, 1300.0]  # +30 %: 300 us, so SQLite / memory = 0.30 / 0.25 = 1.2


def test_ratio_is_exact_when_machine_speed_doubles_in_one_round() -> None:
    assert relative_overheads(SQLITE, PLAIN) == pytest.approx([0.3, 0.3, 0.3])
    assert paired_added_us(MEMORY, PLAIN) == pytest.approx(250.0)
    assert paired_added_us(SQLITE, PLAIN) == pytest.approx(300.0)
    est = paired_ratio(SQLITE, MEMORY, PLAIN)
    assert est is not None
    assert est.ratio == pytest.approx(1.2)
    # every resample of identical relative overheads gives the same ratio
    assert est.ci_low == pytest.approx(1.2) and est.ci_high == pytest.approx(1.2)


def test_added_latency_takes_median_relative_overhead_times_median_plain() -> None:
    plain = [1100.0, 1000.0, 700.0]  # median 1000 (the mean would be 933)
    variant = [1320.0, 1200.0, 875.0]  # +20 %, +20 %, +25 %: median 0.20 (the mean would be 0.217)
    assert paired_added_us(variant, plain) == pytest.approx(200.0)


@pytest.mark.parametrize("base", [PLAIN, [990.0, 1980.0, 990.0]], ids=["zero", "negative"])
def test_ratio_is_none_when_base_added_nothing(base: list[float]) -> None:
    assert paired_ratio(SQLITE, base, PLAIN) is None


@pytest.mark.parametrize(("variant", "base", "plain"), [
    (None, MEMORY, PLAIN), (SQLITE, None, PLAIN), (SQLITE, MEMORY, None),
    (SQLITE[:2], MEMORY, PLAIN), ([], [], []), (SQLITE, MEMORY, [1000.0, 0.0, 1000.0]),
], ids=["no-variant", "no-base", "no-plain", "misaligned", "empty", "zero-plain"])
def test_ratio_is_none_when_data_is_missing(variant: list[float] | None, base: list[float] | None,
                                            plain: list[float] | None) -> None:
    assert paired_ratio(variant, base, plain) is None
    if variant is not None and plain is not None and len(variant) != len(plain):
        assert paired_added_us(variant, plain) is None


# Relative overheads that vary from round to round, for the bootstrap.
VARYING_PLAIN = [1000.0, 1200.0, 800.0, 1000.0, 1100.0, 900.0, 1000.0]
REL_BASE = [0.20, 0.30, 0.25, 0.22, 0.28, 0.24, 0.26]
REL_VARIANT = [0.30, 0.25, 0.35, 0.28, 0.33, 0.27, 0.31]


def _scaled(rel: list[float], plain: list[float]) -> list[float]:
    return [p * (1 + r) for r, p in zip(rel, plain, strict=True)]


def test_bootstrap_interval_holds_the_estimate_and_is_deterministic() -> None:
    variant, base = _scaled(REL_VARIANT, VARYING_PLAIN), _scaled(REL_BASE, VARYING_PLAIN)
    est = paired_ratio(variant, base, VARYING_PLAIN)
    assert est is not None
    assert est.ratio == pytest.approx(0.30 / 0.25)  # medians of the two relative series
    assert est.ci_low <= est.ratio <= est.ci_high
    assert est.ci_low < est.ci_high  # rounds differ, so resamples do
    # no resample can leave the range of the ratios of the series' extremes
    assert min(REL_VARIANT) / max(REL_BASE) <= est.ci_low
    assert est.ci_high <= max(REL_VARIANT) / min(REL_BASE)
    # The interval does depend on the draws (few resamples make that visible); the seed fixes them.
    def few(seed: int) -> RatioEstimate | None:
        return paired_ratio(variant, base, VARYING_PLAIN, resamples=10, seed=seed)

    assert len({few(seed) for seed in range(5)}) > 1
    assert [few(seed) for seed in range(5)] == [few(seed) for seed in range(5)]
    wider = paired_ratio(variant, base, VARYING_PLAIN, level=0.99)
    assert wider is not None and wider.ci_low <= est.ci_low and wider.ci_high >= est.ci_high


def test_bootstrap_resamples_rounds_in_pairs() -> None:
    # The variant's overhead is 1.2 x the base's in every round: drawing the same rounds for both
    # keeps every resampled ratio at 1.2, where independent draws would spread it.
    base = _scaled(REL_BASE, VARYING_PLAIN)
    est = paired_ratio(_scaled([1.2 * r for r in REL_BASE], VARYING_PLAIN), base, VARYING_PLAIN)
    assert est is not None
    assert est.ci_low == pytest.approx(1.2) and est.ci_high == pytest.approx(1.2)


def test_bootstrap_upper_bound_is_infinite_when_base_often_adds_nothing() -> None:
    plain = [1000.0] * 5
    base = _scaled([0.5, 0.5, -0.1, -0.1, 0.5], plain)  # median 0.5, but 3 of 5 draws negative ~32 % of the time
    est = paired_ratio(_scaled([0.5] * 5, plain), base, plain)
    assert est is not None and est.ratio == pytest.approx(1.0)
    assert math.isinf(est.ci_high)
    # through the report: round 3's memory overhead is negative, 2 of 3 draws of it ~26 % of the time
    result = _result(with_rounds=True, sqlite=[1500.0, 3000.0, 1500.0], memory=[1500.0, 3000.0, 900.0])
    assert _target(result, SQLITE_CHAT)["measured"].startswith("1.00x [90% CI 1.00 to ∞]")


def _cell(pooled_overhead_us: float, rounds: list[float] | None) -> dict[str, Any]:
    cell: dict[str, Any] = {"n": 150, "median_us": 1000.0 + pooled_overhead_us, "p95_us": 1500.0,
                            "overhead_us": pooled_overhead_us, "overhead_p95_us": 0.0}
    if rounds is not None:
        cell["round_medians_us"] = rounds
    return cell


def _result(with_rounds: bool, sqlite: list[float] = SQLITE, memory: list[float] = MEMORY) -> dict[str, Any]:
    """One chat surface whose pooled medians tell a drifted story (SQLite / memory = 1.71x)."""
    def rounds(r: list[float]) -> list[float] | None:
        return r if with_rounds else None

    names = ("plain", "ours_budgets", "ours_sqlite")
    cells = {"plain": _cell(0.0, rounds(PLAIN)), "ours_budgets": _cell(140.0, rounds(memory)),
             "ours_sqlite": _cell(239.4, rounds(sqlite))}
    return {"overhead": {
        "variants": [{"name": v.name, "label": v.label, "available": v.name in names, "reason": "not in this test"}
                     for v in VARIANTS],
        "surfaces": {"chat": {v.name: cells.get(v.name, {"unavailable": "variant unavailable"}) for v in VARIANTS}},
        "counts": {"rounds": 3, "per_round": {"chat": 50}}}}


def _target(result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in evaluate_targets(result) if t["name"] == name)


SQLITE_CHAT = "chat: added latency, budget on SQLite <= 1.15x budget in memory"


def test_added_ratio_is_paired_when_round_medians_are_present() -> None:
    r = added_ratio(_result(with_rounds=True), "chat", "ours_sqlite", "ours_budgets")
    assert r["paired"] is True
    assert r["ratio"] == pytest.approx(1.2) and r["ci_low"] == pytest.approx(1.2)
    assert r["variant_us"] == pytest.approx(300.0) and r["base_us"] == pytest.approx(250.0)
    assert r["diff_us"] == pytest.approx(50.0)
    target = _target(_result(with_rounds=True), SQLITE_CHAT)
    assert target["measured"] == "1.20x [90% CI 1.20 to 1.20] (300.0 us vs 250.0 us ours_budgets, paired per round)"
    assert target["met"] is False  # 1.2 > 1.15


def test_ratio_target_is_met_on_the_point_estimate() -> None:
    # Round 2's SQLite overhead is high (0.4); the median over rounds still gives 0.27 / 0.25.
    result = _result(with_rounds=True, sqlite=[1270.0, 2800.0, 1270.0])
    target = _target(result, SQLITE_CHAT)
    assert target["measured"].startswith("1.08x [90% CI 1.08 to 1.60]")
    assert target["met"] is True


def test_added_ratio_falls_back_to_pooled_medians_without_round_medians() -> None:
    r = added_ratio(_result(with_rounds=False), "chat", "ours_sqlite", "ours_budgets")
    assert r["paired"] is False
    assert r["ratio"] == pytest.approx(239.4 / 140.0)
    assert r["ci_low"] is None and r["ci_high"] is None
    target = _target(_result(with_rounds=False), SQLITE_CHAT)
    assert target["measured"] == "1.71x (239.4 us vs 140.0 us ours_budgets, pooled medians)"
    assert target["met"] is False


def test_ratio_target_is_undefined_when_the_paired_base_added_nothing() -> None:
    result = _result(with_rounds=True, memory=[995.0, 1990.0, 995.0])
    r = added_ratio(result, "chat", "ours_sqlite", "ours_budgets")
    assert r["ratio"] is None and r["base_us"] == pytest.approx(-5.0)
    target = _target(result, SQLITE_CHAT)
    assert target["measured"].startswith("undefined: ours_budgets added -5.0 us (<= 0)")
    assert target["met"] is None


def test_markdown_ratio_table_shows_interval_and_method() -> None:
    paired = render_markdown(_result(with_rounds=True))
    assert "| SQLite / memory [90% CI] |" in paired
    assert "| chat | +250.0 | 1.20x [1.20 to 1.20] | +50.0 |" in paired
    assert "Ratios paired per round" in paired and "drifts" in paired
    pooled = render_markdown(_result(with_rounds=False))
    assert "[90% CI]" not in pooled
    assert "| chat | +140.0 | 1.71x | +99.4 |" in pooled
    assert "medians pooled over the run" in pooled


def test_summaries_keep_round_medians_of_variants_that_ran() -> None:
    by_name = {v.name: v for v in VARIANTS}
    samples = {"plain": [1000, 1000, 2000], "ours": [1300, 1300, 2600], "ours_budgets": [1250]}
    round_medians = {"plain": [1.0, 2.0], "ours": [1.3, 2.6], "ours_budgets": [1.25]}
    out = _summaries("chat", samples, round_medians, {"ours_budgets": "boom"}, VARIANTS, by_name, 1)
    assert out["plain"]["round_medians_us"] == [1.0, 2.0]
    assert out["ours"]["round_medians_us"] == [1.3, 2.6]
    assert out["ours"]["overhead_us"] == pytest.approx(0.3)  # pooled fields stay
    assert out["ours_budgets"] == {"unavailable": "boom"}


def test_each_variant_runs_in_its_own_pool_of_workers_taking_turns_by_round() -> None:
    """An interpreter's speed stays with it, so a variant's rounds are spread over several processes:
    each of them warms up once, then they alternate, and each one's median is in the result."""
    from benchmarks.overhead import Counts, run_overhead

    chosen = [v for v in VARIANTS if v.name in ("plain", "ours")]
    result = run_overhead(Counts(rounds=4, workers=2, per_round={"chat": 3}), None, None, chosen, log=lambda _: None)
    assert result.counts["workers"] == result.counts["warmup_rounds"] == 2
    pids = [v["facts"]["worker_pids"] for v in result.variants]
    assert all(len(set(p)) == 2 for p in pids) and len({pid for p in pids for pid in p}) == 4
    for name in ("plain", "ours"):
        cell = result.surfaces["chat"][name]
        rounds = cell["round_medians_us"]
        assert cell["n"] == 4 * 3 and len(rounds) == 4
        assert cell["worker_medians_us"] == [statistics.median(rounds[0::2]), statistics.median(rounds[1::2])]


def _looplag_run(held_us: float, cpu_us: float) -> dict[str, Any]:
    return {"plugin_in_step": {"n": 10, "max_us": held_us},
            "plugin_longest": {"us": held_us, "cpu_us": cpu_us, "by_method_us": {"finish_result": held_us},
                               "switches": {"voluntary": 2, "involuntary": 0}},
            "lag": {"n": 10, "max_us": held_us + 100, "p999_us": held_us}, "step": {"n": 10, "max_us": held_us + 200},
            "calls_per_s": 1000.0}


def test_a_loop_lag_case_reports_its_median_run_and_lists_every_run() -> None:
    """One slow moment of the machine in one run is not the case's figure; a stall in every run is."""
    from benchmarks.looplag_bench import median_run
    from benchmarks.report import _looplag_targets, looplag_lines

    once = median_run([_looplag_run(3200, 3100), _looplag_run(600, 500), _looplag_run(800, 700)])
    assert once["plugin_in_step"]["max_us"] == 800
    assert [r["held_max_us"] for r in once["runs"]] == [3200, 600, 800]
    assert [r["cpu_us"] for r in once["runs"]] == [3100, 500, 700]
    every = median_run([_looplag_run(1500, 1400), _looplag_run(1300, 1200), _looplag_run(1700, 1600)])
    assert every["plugin_in_step"]["max_us"] == 1500
    # an even count takes the lower middle run; a run that failed is listed but never chosen
    assert median_run([_looplag_run(900, 1), _looplag_run(400, 1)])["plugin_in_step"]["max_us"] == 400
    failed = median_run([{"error": "boom"}, _looplag_run(700, 1), _looplag_run(2000, 1)])
    assert failed["plugin_in_step"]["max_us"] == 700 and failed["runs"][0] == {"error": "boom"}

    def looplag(case: dict[str, Any]) -> dict[str, Any]:
        return {"runs": 3, "cases": {"plain": median_run([_looplag_run(0, 0)]), "ours_budgets": case}}

    def target(case: dict[str, Any]) -> dict[str, Any]:
        return _looplag_targets({"looplag": looplag(case)})[0]

    met, missed = target(once), target(every)
    assert met["met"] is True and "median of 3 runs" in met["name"]
    assert ("[runs: 3.20 (CPU 3.10, switched out 2 + 0), 0.60 (CPU 0.50, switched out 2 + 0), "
            "0.80 (CPU 0.70, switched out 2 + 0) ms]") in met["measured"]
    assert missed["met"] is False and missed["measured"].startswith("1.50 ms")
    notes = looplag_lines({"seconds": 3.0, "concurrency": 100, **looplag(once)})[-2]
    assert notes.endswith("ours_budgets 3.20 (CPU 3.10, switched out 2 + 0), 0.60 (CPU 0.50, switched out 2 + 0), "
                          "0.80 (CPU 0.70, switched out 2 + 0) ms."), notes
