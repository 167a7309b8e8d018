"""The timing statistics, checked by simulation: interval coverage, the false-alarm rate, Holm's family-wise rate,
and that the stated detectable slowdown is caught as often as claimed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as sps

from harness.errors import HarnessError
from harness.timing_stats import (
    LOOK_WEIGHTS,
    DetectionRule,
    HolmFamily,
    OneRemeasurementRule,
    RunSpread,
    confirmed,
    flagged,
    look_at,
    paired_ratio,
    pooled_shift_test,
    run_spread,
    shift_test,
    signed_rank_critical,
)

timings = st.lists(st.floats(min_value=0.5, max_value=500.0), min_size=3, max_size=60)


@given(timings)
def test_identical_timings_give_ratio_one(samples: list[float]) -> None:
    r = paired_ratio(samples, samples)
    assert r.value == pytest.approx(1.0) and r.low == pytest.approx(1.0) and r.high == pytest.approx(1.0)


@given(timings, st.floats(min_value=0.1, max_value=10.0))
def test_scaling_the_new_timings_by_k_gives_one_over_k(samples: list[float], k: float) -> None:
    r = paired_ratio(samples, [s * k for s in samples])
    assert r.value == pytest.approx(1.0 / k, rel=1e-9)
    assert r.low <= r.value <= r.high


@pytest.mark.parametrize(("n", "critical"), [(5, -1), (6, 0), (10, 8), (20, 52), (30, 137)])
def test_signed_rank_critical_values_match_the_tables(n: int, critical: int) -> None:
    assert signed_rank_critical(n, 0.95) == critical


def test_the_normal_approximation_continues_the_exact_values() -> None:
    assert abs(signed_rank_critical(300, 0.95) - signed_rank_critical(301, 0.95)) < 200


def test_paired_ratio_refuses_bad_input() -> None:
    with pytest.raises(HarnessError, match="one sample per round"):
        paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(HarnessError, match="positive finite"):
        paired_ratio([1.0, -1.0], [1.0, 1.0])
    with pytest.raises(HarnessError, match="non-empty"):
        paired_ratio([], [])


def _rounds(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    if kind == "normal":
        return rng.normal(0.0, 0.05, n)
    if kind == "t3":
        return rng.standard_t(3, n) * 0.03
    noise = rng.normal(0.0, 0.02, n)  # plus a round in ten spoiled on one side by a hiccup
    hit = rng.random(n) < 0.1
    return noise + hit * rng.choice([-0.5, 0.5], n)


@pytest.mark.parametrize("kind", ["normal", "t3", "hiccups"])
@pytest.mark.statistical
def test_the_interval_covers_the_true_ratio_95_percent_of_the_time(kind: str) -> None:
    rng = np.random.default_rng(7)
    true, covered, sims = 0.2, 0, 600
    for _ in range(sims):
        drift = rng.normal(0.0, 0.1, 30)  # shared by the round: cancels in its log ratio
        noise = _rounds(rng, kind, 30)
        r = paired_ratio(np.exp(3.0 + drift + true + noise / 2), np.exp(3.0 + drift - noise / 2))
        covered += r.low <= math.exp(true) <= r.high
    assert 0.93 <= covered / sims <= 0.985


def test_run_spread_starts_at_the_prior_and_learns_from_runs() -> None:
    one = run_spread([0.5], prior_sd=0.05, prior_dof=2)
    assert one.sd == pytest.approx(0.05) and one.dof == 2 and one.center == 0.5 and one.runs == 1
    rng = np.random.default_rng(1)
    many = run_spread(list(rng.normal(0.0, 0.2, 400)), prior_sd=0.05, prior_dof=2)
    assert many.sd == pytest.approx(0.2, rel=0.1) and many.dof == 401
    with pytest.raises(HarnessError, match="finite"):
        run_spread([float("nan")], prior_sd=0.05, prior_dof=2)


@pytest.mark.parametrize("alpha", [0.05, 0.01])
@pytest.mark.parametrize(("runs", "true_sd", "prior_factor"), [(3, 0.03, 1.0), (5, 0.08, 1.0), (5, 0.03, 2.0)])
@pytest.mark.statistical
def test_an_unchanged_run_fails_at_most_alpha_of_the_time(
    alpha: float, runs: int, true_sd: float, prior_factor: float
) -> None:
    """The new run and K baseline runs come from one distribution; the prior is right, or too wide."""
    rng = np.random.default_rng(3)
    sims, fired = 4000, 0
    for _ in range(sims):
        values = rng.normal(1.0, true_sd, runs + 1)
        spread = run_spread(list(values[:runs]), prior_sd=true_sd * prior_factor, prior_dof=2)
        test = shift_test(float(values[runs]), 0.0, spread, higher_is_better=True)
        fired += test.p_worse <= alpha
    assert fired / sims <= alpha * 1.1 + 0.005


@pytest.mark.statistical
def test_a_prior_that_is_too_narrow_raises_false_alarms_which_the_baseline_runs_correct() -> None:
    """Why the baseline keeps several fresh-process runs: with one run a confident prior alone sets the spread."""
    rng = np.random.default_rng(4)

    def rate(runs: int) -> float:
        fired = 0
        for _ in range(4000):
            values = rng.normal(1.0, 0.06, runs + 1)
            spread = run_spread(list(values[:runs]), prior_sd=0.02, prior_dof=8)
            fired += shift_test(float(values[runs]), 0.0, spread, higher_is_better=True).p_worse <= 0.01
        return fired / 4000

    assert rate(1) > 0.1 > 0.03 > rate(20)


def test_shift_test_directions() -> None:
    spread = run_spread([0.0, 0.01, -0.01], prior_sd=0.01, prior_dof=2)
    slower = shift_test(math.log(0.8), 0.0, spread, higher_is_better=True)
    assert slower.worse > 0 and slower.p_worse < 0.01 and slower.p_better > 0.99
    longer = shift_test(math.log(1.25), 0.0, spread, higher_is_better=False)  # latency: higher is worse
    assert longer.worse == pytest.approx(math.log(1.25), abs=1e-3) and longer.change == pytest.approx(0.25, abs=0.01)
    exact = shift_test(0.0, 0.0, spread, higher_is_better=True, exact_center=True)
    assert exact.scale < shift_test(0.0, 0.0, spread, higher_is_better=True).scale
    noisy = shift_test(math.log(0.8), 0.5, spread, higher_is_better=True)  # a noisy run widens its own test
    assert noisy.p_worse > slower.p_worse


def test_holm_step_down_and_its_thresholds() -> None:
    family = HolmFamily(5, 0.05)
    assert family.judge("a", 0.02) == (False, 0.01)  # alone it faces alpha / 5
    assert family.judge("b", 0.009) == (True, 0.01)
    assert family.judge("c", 0.011) == (True, 0.0125)  # after b, the next step faces alpha / 4
    assert family.judge("d", 0.5)[0] is False
    with pytest.raises(HarnessError, match="sized for 1"):
        one = HolmFamily(1, 0.05)
        one.judge("x", 0.5)
        one.judge("y", 0.5)


@pytest.mark.statistical
def test_holm_judged_one_at_a_time_keeps_the_family_wise_rate() -> None:
    """30 checks, 25 true nulls and 5 real regressions, judged in random order as cases finish."""
    rng = np.random.default_rng(11)
    sims, false_alarms = 3000, 0
    for _ in range(sims):
        family = HolmFamily(30, 0.05)
        p_null = rng.random(25)
        p_real = sps.norm.sf(rng.normal(3.5, 1.0, 5))
        keys = [f"null{i}" for i in range(25)] + [f"real{i}" for i in range(5)]
        values = list(p_null) + list(p_real)
        order = rng.permutation(30)
        rejected = [family.judge(keys[i], float(values[i]))[0] and keys[i].startswith("null") for i in order]
        false_alarms += any(rejected)
    assert false_alarms / sims <= 0.05 + 0.01


def gate_rule_fails(
    first: float, again: float, spread: RunSpread, *, se: tuple[float, float], tolerance: float, alpha: float
) -> bool:
    """Apply the gate's rule (flag, fresh re-measurement, pooled test) to two runs' log speedups."""
    shift = shift_test(first, se[0], spread, higher_is_better=True)
    if not flagged(shift, tolerance=tolerance, screen_alpha=0.05):
        return False
    retest = shift_test(again, se[1], spread, higher_is_better=True)
    pooled = pooled_shift_test([first, again], list(se), spread, higher_is_better=True)
    return confirmed(retest, pooled, tolerance=tolerance, holm_alpha=alpha)


@pytest.mark.parametrize("tolerance", [0.0, 0.1])
@pytest.mark.parametrize(("between", "within", "runs"), [(0.03, 0.01, 10), (0.01, 0.04, 10), (0.02, 0.03, 5)])
@pytest.mark.statistical
def test_flag_then_confirm_fails_an_unchanged_check_at_most_alpha(
    tolerance: float, between: float, within: float, runs: int
) -> None:
    """Two-level noise, as measured on the 2-core guest: each fresh process draws its own offset (between) and
    each run adds its own error (within, which the run's interval reports). Nothing changed, so any failure is a
    false alarm; at alpha = 0.05 it must stay at or below 5% however the flag selected the run."""
    rng = np.random.default_rng(11)
    sims, alpha, fired = 4000, 0.05, 0
    scale = math.sqrt(between**2 + within**2)
    for _ in range(sims):
        values = rng.normal(0.0, between, runs + 2) + rng.normal(0.0, within, runs + 2)
        spread = run_spread(list(values[:runs]), prior_sd=scale, prior_dof=2)
        # a tolerance of 0 makes the rule as loose as it gets: the significance test alone decides
        fired += gate_rule_fails(values[runs], values[runs + 1], spread, se=(within, within), tolerance=tolerance,
                                 alpha=alpha)
    assert fired / sims <= alpha + 0.01


@pytest.mark.statistical
def test_flag_then_confirm_catches_what_one_noisy_run_misses() -> None:
    """The reason for the rule: a run sd of 0.036 (compile at batch 32 on the 2-core guest) and a 15% slowdown.
    One run judged alone at a family of 22 checks misses often; the pair is caught in at least 9 of 10 runs."""
    rng = np.random.default_rng(12)
    sd, runs, alpha, tol, sims = 0.036, 10, 0.05 / 22, 0.1, 4000
    spread = RunSpread(center=0.0, sd=sd, dof=11.0, runs=runs)
    truth = -math.log(1.15)
    pair = single = 0
    for _ in range(sims):
        center = rng.normal(0.0, sd / math.sqrt(runs))  # the baseline mean's own error, shared by both runs
        first, again = truth + center + rng.normal(0.0, sd, 2)
        pair += gate_rule_fails(first, again, spread, se=(0.0, 0.0), tolerance=tol, alpha=alpha)
        one = shift_test(first, 0.0, spread, higher_is_better=True)
        single += one.p_worse <= alpha and one.worse > math.log1p(tol)
    assert pair / sims >= 0.9 > 0.8 > single / sims


def power_grows_to_its_detectable_change(
    rule: OneRemeasurementRule | DetectionRule, shifts: tuple[float, ...], *, at_zero: float, abs_tol: float
) -> float:
    """Assert the rule's power rises with the shift from below `at_zero` to above 0.99, and that its detectable change
    is caught 80% of the time; return that change."""
    powers = [rule.power(s) for s in shifts]
    assert powers == sorted(powers) and powers[0] < at_zero and powers[-1] > 0.99
    change = rule.detectable_change()
    assert rule.power(math.log1p(change)) == pytest.approx(0.8, abs=abs_tol)
    return change


@pytest.mark.statistical
def test_the_former_rules_power_grows_with_the_shift_and_matches_a_simulation_of_it() -> None:
    run_sd, runs, dof, holm, tol = 0.03, 10, 11.0, 0.05 / 30, 0.1
    rule = OneRemeasurementRule(run_sd=run_sd, center_sd=run_sd / math.sqrt(runs), dof=dof, holm_alpha=holm,
                                screen_alpha=0.05, tolerance=tol)
    change = power_grows_to_its_detectable_change(rule, (0.0, 0.1, 0.2, 0.3), at_zero=1e-3, abs_tol=1e-3)
    rng = np.random.default_rng(5)
    spread = RunSpread(center=0.0, sd=run_sd, dof=dof, runs=runs)
    sims, caught = 6000, 0
    for _ in range(sims):
        center = rng.normal(0.0, run_sd / math.sqrt(runs))
        first, again = -math.log1p(change) + center + rng.normal(0.0, run_sd, 2)
        caught += gate_rule_fails(first, again, spread, se=(0.0, 0.0), tolerance=tol, alpha=holm)
    assert caught / sims == pytest.approx(0.8, abs=0.02)


def test_pooled_shift_test_of_one_run_is_shift_test_and_of_two_halves_the_run_variance() -> None:
    spread = RunSpread(center=0.0, sd=0.04, dof=9.0, runs=8)
    one = shift_test(-0.1, 0.02, spread, higher_is_better=True)
    assert pooled_shift_test([-0.1], [0.02], spread, higher_is_better=True) == one
    two = pooled_shift_test([-0.12, -0.08], [0.02, 0.05], spread, higher_is_better=True)
    assert two.worse == pytest.approx(0.1)
    assert two.scale == pytest.approx(math.sqrt(0.04**2 / 8 + (0.04**2 + 0.05**2) / 4))
    with pytest.raises(HarnessError, match="one standard error per log value"):
        pooled_shift_test([0.1, 0.2], [0.01], spread, higher_is_better=True)


def sequential_fails(
    first: float, again: list[float], spread: RunSpread, *, tolerance: float, alpha: float, se: float = 0.0
) -> tuple[bool, int]:
    """Apply the gate's rule to log speedups (higher is better): flag the first run, then look after each fresh
    re-measurement (look_at) until it decides; return (failed, re-measurements used)."""
    shift = shift_test(first, se, spread, higher_is_better=True)
    if not flagged(shift, tolerance=tolerance, screen_alpha=0.05):
        return False, 0
    logs, p_value = [first], 1.0
    for k, weight in enumerate(LOOK_WEIGHTS):
        logs.append(again[k])
        look = look_at(logs, [se] * len(logs), spread, higher_is_better=True, exact_center=False, tolerance=tolerance,
                       looked_p=p_value, weight=weight, rejects=lambda p: p <= alpha)
        p_value = look.p_value
        if look.decision != "continue":
            return look.decision == "fail", k + 1
    return False, len(LOOK_WEIGHTS)


@pytest.mark.statistical
@pytest.mark.parametrize("tolerance", [0.0, 0.03])
@pytest.mark.parametrize(("between", "within", "runs"), [(0.03, 0.01, 3), (0.01, 0.04, 10), (0.02, 0.03, 5)])
def test_looking_until_the_evidence_decides_fails_an_unchanged_check_at_most_alpha(
    tolerance: float, between: float, within: float, runs: int
) -> None:
    """The sequential rule under the null, two-level noise, the spread estimated from the baseline's runs with the
    prior: however many looks it takes and wherever it stops, it fires at most alpha of the time."""
    rng = np.random.default_rng(21)
    sims, alpha, fired = 4000, 0.05, 0
    scale = math.sqrt(between**2 + within**2)
    for _ in range(sims):
        values = rng.normal(0.0, between, runs + 5) + rng.normal(0.0, within, runs + 5)
        spread = run_spread(list(values[:runs]), prior_sd=scale, prior_dof=2)
        fired += sequential_fails(values[runs], list(values[runs + 1:]), spread, tolerance=tolerance, alpha=alpha,
                                  se=within)[0]
    assert fired / sims <= alpha + 0.01


@pytest.mark.statistical
def test_the_simulated_power_of_the_sequential_rule_is_the_rules_own() -> None:
    """DetectionRule.power (vectorized, fixed seed) against the rule applied run by run through look_at."""
    run_sd, runs, dof, holm, tol = 0.03, 3, 14.0, 0.05 / 19, 0.03
    rule = DetectionRule(run_sd=run_sd, center_sd=run_sd / math.sqrt(runs), dof=dof, holm_alpha=holm,
                         screen_alpha=0.05, tolerance=tol)
    change = power_grows_to_its_detectable_change(rule, (0.0, 0.05, 0.1, 0.2), at_zero=0.01, abs_tol=0.01)
    rng = np.random.default_rng(6)
    spread = RunSpread(center=0.0, sd=run_sd, dof=dof, runs=runs)
    sims, caught, used = 4000, 0, 0
    for _ in range(sims):
        center = rng.normal(0.0, run_sd / math.sqrt(runs))
        draws = -math.log1p(change) + center + rng.normal(0.0, run_sd, 5)
        failed, looks = sequential_fails(float(draws[0]), list(draws[1:]), spread, tolerance=tol, alpha=holm)
        caught += failed
        used += looks
    assert caught / sims == pytest.approx(0.8, abs=0.025)
    assert used / sims == pytest.approx(rule.outcome(math.log1p(change))[1], abs=0.15)


@pytest.mark.statistical
def test_more_looks_catch_what_one_re_measurement_misses() -> None:
    """A 10% slowdown of a case moving 3% between runs, at Holm's first step over 19 checks, against a baseline
    whose spread the group shows (14 degrees of freedom). From 3 baseline runs, looking until the evidence decides
    catches it about 2 times in 3 where one re-measurement at a 10% tolerance (the rule before) caught it half the
    time: the baseline's own mean, off by 0.03 / sqrt(3), is what limits it. From 10 baseline runs, 9 times in 10."""
    shift = math.log(1.10)
    common = {"run_sd": 0.03, "dof": 14.0, "holm_alpha": 0.05 / 19, "screen_alpha": 0.05}
    now = DetectionRule(center_sd=0.03 / math.sqrt(3), tolerance=0.03, **common)
    before = OneRemeasurementRule(center_sd=0.03 / math.sqrt(3), tolerance=0.1, **common)
    assert now.power(shift) >= before.power(shift) + 0.15
    assert 0.6 <= now.power(shift) <= 0.75 and before.power(shift) < 0.6
    ten_runs = DetectionRule(center_sd=0.03 / math.sqrt(10), tolerance=0.03, **common)
    assert ten_runs.power(shift) >= 0.88
    assert now.power(0.0) < 0.01 and ten_runs.power(0.0) < 0.01


def test_a_look_fails_passes_or_waits_for_more_evidence() -> None:
    spread = RunSpread(center=0.0, sd=0.02, dof=20.0, runs=10)
    kwargs = {"higher_is_better": False, "exact_center": False, "tolerance": 0.03, "looked_p": 1.0, "weight": 0.4}
    slow = look_at([0.10, 0.09, 0.11], [0.0] * 3, spread, rejects=lambda p: True, **kwargs)  # type: ignore[arg-type]
    assert slow.decision == "fail" and slow.again_worse == pytest.approx(0.10)
    quiet = look_at([0.05, -0.03], [0.0] * 2, spread, rejects=lambda p: True, **kwargs)  # type: ignore[arg-type]
    assert quiet.decision == "pass"  # the two together are no longer worse than half the tolerance
    unsure = look_at([0.06, 0.03], [0.0] * 2, spread, rejects=lambda p: False, **kwargs)  # type: ignore[arg-type]
    assert unsure.decision == "continue" and unsure.p_value == pytest.approx(min(1.0, unsure.pooled.p_worse / 0.4))
    spoiled = look_at([0.30, 0.0, 0.01], [0.0] * 3, spread, rejects=lambda p: True, **kwargs)  # type: ignore[arg-type]
    assert spoiled.decision != "fail"  # one spoiled first process never decides: the re-measurements alone are fine


def test_holm_peek_records_nothing() -> None:
    family = HolmFamily(4, 0.05)
    assert family.peek("a", 0.01) == (True, 0.0125) and family.p_values == {}
    family.judge("b", 0.001)
    assert family.peek("a", 0.02) == (False, 0.05 / 3) and set(family.p_values) == {"b"}
