"""ab's judgement: latency from interleaved bursts, accuracy on the same images, exact metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from harness.ab.judge import (
    IMPROVEMENT,
    REGRESSION,
    SAME,
    Burst,
    TimingRule,
    accuracy_change,
    exact_change,
    latency_change,
)
from harness.errors import HarnessError
from harness.timing_stats import HolmFamily

RULE = TimingRule(tolerance=0.03, process_sd=0.004, dof=9, screen_alpha=0.05)


def sides(
    rng: np.random.Generator, rounds: int, *, slowdown: float = 0.0, noise: float = 0.02, base_speed: float = 1.0,
    head_speed: float = 1.0,
) -> tuple[list[Burst], list[Burst]]:
    """Return round-aligned bursts: 30 ms models, 20 ms yardsticks, a drift every round shares, each process's own
    speed scaling its model and yardstick alike, and per-call noise."""
    base, head = [], []
    for r in range(rounds):
        drift = 1.0 + 0.3 * math.sin(r / 5.0)  # the machine's state moves a lot between rounds
        def burst(speed: float, model_ms: float, drift: float = drift) -> Burst:
            calls = 3
            model = model_ms * drift * speed * np.exp(rng.normal(0, noise, calls))
            yard = 20.0 * drift * speed * np.exp(rng.normal(0, noise, calls))
            return Burst(tuple(model), tuple(yard))
        base.append(burst(base_speed, 30.0))
        head.append(burst(head_speed, 30.0 * (1.0 + slowdown)))
    return base, head


def test_the_change_is_found_whatever_drift_and_process_speed() -> None:
    changes = []
    for seed in range(100):  # head's process 17% faster than base's: the yardstick takes it out
        changes.append(latency_change(*sides(np.random.default_rng(seed), 60, slowdown=0.10, head_speed=0.83)))
    covered = sum(c.low < 1.10 < c.high for c in changes)
    assert covered >= 88, covered  # a 95% interval (92.5 of 100 in a 200-seed check)
    assert abs(np.mean([math.log(c.ratio) for c in changes]) - math.log(1.10)) < 0.002  # no bias
    assert changes[0].rounds == 60
    assert changes[0].head_ms < changes[0].base_ms  # the raw medians carry the process speed: not what is judged


def test_no_change_has_an_interval_around_one() -> None:
    base, head = sides(np.random.default_rng(2), 40, base_speed=1.2)
    change = latency_change(base, head)
    assert change.low < 1.0 < change.high
    assert not RULE.flags(change)


def test_mismatched_or_too_few_rounds_are_refused() -> None:
    base, head = sides(np.random.default_rng(3), 5)
    with pytest.raises(HarnessError, match="same number"):
        latency_change(base, head[:4])
    with pytest.raises(HarnessError, match="positive finite"):
        latency_change([Burst((0.0,), (1.0,))] * 2, [Burst((1.0,), (1.0,))] * 2)


def judged(slowdown: float, seed: int, process_sd: float = 0.004) -> bool:
    """Return whether one simulated ab run fails one case: flagged first, then confirmed by fresh processes."""
    rng = np.random.default_rng(seed)
    def measure() -> object:
        speeds = np.exp(rng.normal(0, process_sd, 2))  # each side's fresh process has its own speed
        return latency_change(*sides(rng, 30, slowdown=slowdown, base_speed=speeds[0], head_speed=speeds[1]))
    first = measure()
    if not RULE.flags(first):
        return False
    again = measure()
    family = HolmFamily(2, 0.05)
    _, threshold = family.judge("case", RULE.pooled(first, again).p_worse)
    return RULE.confirms(first, again, threshold)


def test_simulated_false_alarms_are_rare_and_a_10_percent_slowdown_is_caught() -> None:
    false_alarms = sum(judged(0.0, seed) for seed in range(200))
    caught = sum(judged(0.10, 1000 + seed) for seed in range(50))
    assert false_alarms <= 2, false_alarms
    assert caught >= 48, caught


def test_a_head_faster_beyond_the_tolerance_is_an_improvement_never_a_regression() -> None:
    base, head = sides(np.random.default_rng(4), 40, slowdown=-0.2)
    change = latency_change(base, head)
    assert RULE.faster(change, 0.025)
    assert not RULE.flags(change)


def test_accuracy_is_paired_on_the_same_images() -> None:
    base = "1" * 450 + "0" * 50
    same = accuracy_change(base, base, tolerance=0.005, alpha=0.05)
    assert same.verdict == SAME and same.change == 0.0
    worse = accuracy_change(base, "0" * 40 + "1" * 410 + "0" * 50, tolerance=0.005, alpha=0.05)  # 8 points down
    assert worse.verdict == REGRESSION
    assert worse.change == pytest.approx(-0.08) and worse.low < -0.08 < worse.high < 0
    better = accuracy_change("0" * 40 + base[40:], base, tolerance=0.005, alpha=0.05)
    assert better.verdict == IMPROVEMENT
    one_image = accuracy_change(base, "0" + base[1:], tolerance=0.005, alpha=0.05)
    assert one_image.verdict == SAME  # a single image is noise, not a regression
    with pytest.raises(HarnessError, match="same images"):
        accuracy_change(base, base[:-1], tolerance=0.005, alpha=0.05)


@pytest.mark.parametrize(
    ("base", "head", "tolerance", "min_abs", "verdict"),
    [
        (1000, 1000, 0.0, 0.0, SAME),
        (1000, 1001, 0.0, 0.0, REGRESSION),
        (1000, 999, 0.0, 0.0, IMPROVEMENT),
        (1000, 1040, 0.05, 0.0, SAME),
        (1000, 1060, 0.05, 0.0, REGRESSION),
        (10_000_000, 10_600_000, 0.05, 1_048_576, SAME),  # under the absolute floor
        (0, 5, 0.0, 0.0, REGRESSION),
        (None, 5, 0.0, 0.0, SAME),
    ],
)
def test_exact_metrics(base: float | None, head: float | None, tolerance: float, min_abs: float, verdict: str) -> None:
    assert exact_change(base, head, tolerance=tolerance, min_abs=min_abs) == verdict


def flagged_with_pooled_p(case: str, p: float, rule: TimingRule) -> object:
    """Return a flagged ab case whose two measurements are alike, 10% slower, with the pooled one-sided p `p`."""
    from harness.ab.judge import LatencyChange
    from harness.ab.runner import CaseOutcome

    worse = math.log(1.10)
    scale = worse * math.sqrt(2) / float(sps.t.isf(p, rule.dof))  # one measurement's scale; pooled: scale / sqrt 2
    log_se = math.sqrt(scale**2 - 2 * rule.process_sd**2)
    change = LatencyChange(1.10, 1.0, 1.2, log_se, 20, 10.0, 11.0)
    outcome = CaseOutcome(case, "cpu", 1)
    outcome.latency, outcome.latency_again, outcome.latency_verdict = change, change, "flagged, not confirmed"
    assert rule.pooled(change, change).p_worse == pytest.approx(p, rel=1e-6)
    return outcome


def test_abs_confirmation_is_holms_step_down_exactly() -> None:
    """Ten timing checks, two flagged with pooled p 0.0051 and 0.0052: Holm's first step needs p <= 0.005, so it
    rejects neither, and neither is a regression (the second's own step, 0.0056, must not be used out of turn)."""
    from harness.ab.runner import Settings, judge_flagged
    from harness.gate.thresholds import load_thresholds

    settings = Settings(model="m", data="digits", weights=None, variants=("fp32",), batch_sizes=(1, 32), device="cpu",
                        threads=2, budget_s=1.0, thresholds=load_thresholds())
    rule = settings.rule
    cases = [flagged_with_pooled_p("fp32", 0.0051, rule), flagged_with_pooled_p("bf16", 0.0052, rule)]
    judge_flagged(settings, cases, timed=10)  # type: ignore[arg-type]
    assert [c.latency_verdict for c in cases] == ["flagged, not confirmed"] * 2  # type: ignore[attr-defined]
    both = [flagged_with_pooled_p("fp32", 0.004, rule), flagged_with_pooled_p("bf16", 0.0052, rule)]
    judge_flagged(settings, both, timed=10)  # type: ignore[arg-type]
    assert [c.latency_verdict for c in both] == [REGRESSION, REGRESSION]  # type: ignore[attr-defined]
