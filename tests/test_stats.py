"""Tests of harness.stats: paired accuracy tests, the gate's false-alarm rate, and timing-ratio intervals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import HarnessError
from harness.stats import (
    _tango_bound,
    accuracy_drop_exceeds,
    detectable_drop,
    drop_lower_bound,
    paired_accuracy,
    tango_z,
)

pairs = st.integers(1, 200).flatmap(
    lambda n: st.tuples(
        st.lists(st.booleans(), min_size=n, max_size=n), st.lists(st.booleans(), min_size=n, max_size=n)
    )
)
timings = st.lists(st.floats(0.01, 1000.0, allow_nan=False), min_size=1, max_size=80)


def vectors(n: int, base_only: int, new_only: int) -> tuple[list[bool], list[bool]]:
    """Return correctness vectors with the given discordant counts (the rest: both right)."""
    rest = n - base_only - new_only
    base = [True] * base_only + [False] * new_only + [True] * rest
    new = [False] * base_only + [True] * new_only + [True] * rest
    return base, new


# ---------------------------------------------------------------------------------- paired accuracy


@settings(deadline=None, max_examples=50)
@given(pair=pairs)
def test_paired_accuracy_is_consistent(pair: tuple[list[bool], list[bool]]) -> None:
    base, new = pair
    r = paired_accuracy(base, new)
    assert 0.0 <= r.p_value <= 1.0
    assert r.n == len(base) and r.base_correct == sum(base) and r.new_correct == sum(new)
    assert r.base_correct - r.new_correct == r.base_only - r.new_only
    assert r.drop == pytest.approx((r.base_correct - r.new_correct) / r.n)
    lower = drop_lower_bound(r)
    assert -1.0 <= lower <= r.drop + 1e-9


@settings(deadline=None, max_examples=40)
@given(pair=pairs)
def test_swapping_roles_flips_the_drop(pair: tuple[list[bool], list[bool]]) -> None:
    base, new = pair
    forward, backward = paired_accuracy(base, new), paired_accuracy(new, base)
    assert forward.drop == pytest.approx(-backward.drop)
    assert (forward.base_only, forward.new_only) == (backward.new_only, backward.base_only)
    # The interval is the score interval of the difference: one direction's bound mirrors the other's.
    upper = _tango_bound(forward.n, forward.base_only, forward.new_only, 1.6448536269514722, upper=True)
    assert upper == pytest.approx(-drop_lower_bound(backward), abs=1e-9)


@settings(deadline=None, max_examples=40)
@given(correct=st.lists(st.booleans(), min_size=1, max_size=300), allowed=st.floats(0.0, 0.99))
def test_identical_results_never_fail_the_gate(correct: list[bool], allowed: float) -> None:
    r = paired_accuracy(correct, correct)
    assert r.drop == 0.0 and r.p_value == 1.0 and r.base_only == r.new_only == 0
    assert not accuracy_drop_exceeds(r, allowed)


@settings(deadline=None, max_examples=40)
@given(pair=pairs, allowed=st.floats(0.0, 0.5), alpha=st.sampled_from([0.01, 0.05, 0.2]))
def test_gate_rule_is_the_lower_confidence_bound(
    pair: tuple[list[bool], list[bool]], allowed: float, alpha: float
) -> None:
    r = paired_accuracy(*pair)
    lower = drop_lower_bound(r, alpha=alpha)
    if abs(lower - allowed) > 1e-9:  # away from the boundary the two formulations must agree
        assert accuracy_drop_exceeds(r, allowed, alpha=alpha) == (lower > allowed)
    if r.drop <= allowed:
        assert not accuracy_drop_exceeds(r, allowed, alpha=alpha)


def test_exact_mcnemar_p_value() -> None:
    r = paired_accuracy(*vectors(100, 5, 0))
    assert r.p_value == pytest.approx(1 / 32)
    assert paired_accuracy(*vectors(100, 0, 5)).p_value == pytest.approx(1.0)
    assert paired_accuracy(*vectors(100, 3, 3)).p_value == pytest.approx(0.65625)


def test_a_drop_equal_to_the_allowance_rarely_fails() -> None:
    # 200 simulated evals of 500 images where the new model is truly 1 point worse (3% vs 2% discordant).
    rng = np.random.default_rng(12345)
    n, allowed, alpha = 500, 0.01, 0.05
    cells = rng.multinomial(n, [0.03, 0.02, 0.95], size=200)
    flagged = sum(
        accuracy_drop_exceeds(paired_accuracy(*vectors(n, b, c)), allowed, alpha=alpha) for b, c, _ in cells
    )
    assert flagged / 200 <= alpha + 0.03


def test_a_clear_regression_is_caught() -> None:
    rng = np.random.default_rng(7)
    n, allowed = 1000, 0.01
    # True drop 5 points: well beyond allowance + detectable_drop (~2.2 points at 8% discordant).
    cells = rng.multinomial(n, [0.065, 0.015, 0.92], size=100)
    caught = sum(accuracy_drop_exceeds(paired_accuracy(*vectors(n, b, c)), allowed) for b, c, _ in cells)
    assert caught / 100 >= 0.9
    assert detectable_drop(n, 0.08) < 0.04


def test_detectable_drop_shrinks_with_more_images() -> None:
    assert detectable_drop(500, 0.05) == pytest.approx(0.0249, abs=5e-4)
    assert detectable_drop(5000, 0.05) < detectable_drop(500, 0.05)
    assert detectable_drop(500, 0.05, power=0.9) > detectable_drop(500, 0.05)
    with pytest.raises(HarnessError, match="discordant_rate"):
        detectable_drop(500, 0.0)
    with pytest.raises(HarnessError, match="n must"):
        detectable_drop(0, 0.1)


def test_paired_accuracy_rejects_bad_input() -> None:
    with pytest.raises(HarnessError, match="got 3 and 2"):
        paired_accuracy([True] * 3, [True] * 2)
    with pytest.raises(HarnessError, match="at least one image"):
        paired_accuracy([], [])
    r = paired_accuracy([True], [False])
    with pytest.raises(HarnessError, match="allowed_drop"):
        accuracy_drop_exceeds(r, -0.01)
    with pytest.raises(HarnessError, match="alpha"):
        accuracy_drop_exceeds(r, 0.01, alpha=0.0)


def test_tango_z_without_discordant_pairs() -> None:
    assert tango_z(100, 0, 0, 0.0) == 0.0
    assert tango_z(100, 0, 0, 0.05) < 0 < tango_z(100, 0, 0, -0.05)
