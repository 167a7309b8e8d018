"""Timing rounds where the noise is (harness/gate/budget.py): the plan fits the default budget's total time, gives
rounds to the cases whose noise rounds can lower, and keeps the minimum for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest
from _gate import make_case, make_record

from harness.gate.budget import CaseCost, costs_of, default_rounds, plan_rounds
from harness.gate.cases import GateCase
from harness.gate.spreads import SpreadModel
from harness.gate.store import load_baseline, write_baseline
from harness.gate.thresholds import load_thresholds


def cost(name: str, *, round_ms: float, within: float, between: float, rounds0: int = 20) -> CaseCost:
    return CaseCost(name, round_ms, rounds0, within, between, between / 3)


def test_the_plan_spends_no_more_time_than_the_default_and_evens_the_noise() -> None:
    costs = [cost("within", round_ms=40, within=0.02**2, between=0.005**2),
             cost("between", round_ms=40, within=0.002**2, between=0.03**2),
             cost("quiet", round_ms=40, within=0.005**2, between=0.005**2)]
    plan = plan_rounds(costs, min_rounds=10)
    assert sum(plan[c.case_id] * c.round_ms for c in costs) <= sum(c.rounds0 * c.round_ms for c in costs)
    assert plan["within"] > 20 > plan["between"] == 10  # rounds cannot lower the between-process noise
    spread = [c.variance(plan[c.case_id]) for c in costs if c.case_id != "between"]
    default = [c.variance(c.rounds0) for c in costs if c.case_id != "between"]
    assert max(spread) < max(default)


def test_no_case_gets_fewer_than_the_minimum_or_more_than_four_times_its_default() -> None:
    costs = [cost(f"c{i}", round_ms=10 + i, within=0.01**2 * (i + 1), between=0.0) for i in range(6)]
    plan = plan_rounds(costs, min_rounds=10)
    assert all(10 <= plan[c.case_id] <= 4 * c.rounds0 for c in costs)
    assert plan_rounds([], min_rounds=10) == {}


def test_the_default_rounds_follow_the_budget_above_the_minimum() -> None:
    assert default_rounds(40.0, 1.5, 10) == 38 and default_rounds(2000.0, 1.5, 10) == 10


def test_costs_come_from_the_baselines_latencies_spreads_and_rounds(tmp_path: Path) -> None:
    runs = []
    for value in (3.50, 3.52, 3.47):
        fp32 = make_case("fp32", median=40.0)
        variant = make_case("static_int8", speedup=value, median=12.0)
        for case in (fp32, variant):
            for ratio in case.ratios.values():
                ratio["rounds"] = 30
        runs.append(make_record([fp32, variant]))
    write_baseline(tmp_path, runs, command="test", busy_limit=0.1)
    baseline = load_baseline(tmp_path, runs[0].env_key)
    assert baseline is not None
    thresholds = load_thresholds()
    (fp32_cost, int8_cost) = costs_of([GateCase("fp32", "cpu", 1), GateCase("static_int8", "cpu", 1)], baseline,
                                      SpreadModel.of(baseline.entries, thresholds), budget_s=1.5, min_rounds=10)
    assert fp32_cost.round_ms == 80.0 and int8_cost.round_ms == 52.0
    assert int8_cost.rounds0 == default_rounds(52.0, 1.5, 10)
    assert int8_cost.within_var0 == pytest.approx(0.01**2 * 30 / int8_cost.rounds0)
    assert baseline.entries["static_int8-cpu-bs1"].timing["speedup_vs_fp32"].rounds == (30, 30, 30)
