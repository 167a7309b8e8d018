"""Paired accuracy tests for the regression gate (timing statistics: harness.timing_stats); all deterministic."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from harness.errors import HarnessError

_BISECTION_STEPS = 80
CONTINUITY = 0.5
"""Half a count of continuity correction in the score test, so the gate's false-alarm rate stays <= alpha."""


def _check_probability(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise HarnessError(f"{name} must be strictly between 0 and 1, got {value}")


# ---------------------------------------------------------------------------------------- paired accuracy


@dataclass(frozen=True)
class PairedAccuracy:
    """Two models' per-image correctness on the same images, compared pair by pair.

    drop is base accuracy minus new accuracy (positive: the new model is worse). p_value is the one-sided
    exact McNemar test of "no change" against "new is worse": P(X >= base_only) for X ~ Binomial(base_only +
    new_only, 1/2). Its confidence bounds are drop_lower_bound's (Tango's score interval).
    """

    n: int
    base_correct: int
    new_correct: int
    base_only: int
    new_only: int
    drop: float
    p_value: float


def tango_z(n: int, base_only: int, new_only: int, drop: float, *, correction: float = CONTINUITY) -> float:
    """Return Tango's score statistic for "true drop == `drop`"; large values say the drop is larger.

    Z = (b - c - n*drop) / sqrt(n * (2*pc + drop*(1 - drop))), with b = base_only, c = new_only and pc the
    maximum-likelihood probability of a "new only" pair under the hypothesis. The numerator is shrunk towards
    0 by `correction` counts (a continuity correction; without it the test fires in up to ~7% of runs at
    alpha = 5% when discordant pairs are few).
    """
    b, c, d = float(base_only), float(new_only), float(drop)
    a_coef = 2.0 * n
    b_coef = -b - c + (2.0 * n - b + c) * d
    c_coef = -c * d * (1.0 - d)
    disc = max(b_coef * b_coef - 4.0 * a_coef * c_coef, 0.0)
    pc = max((math.sqrt(disc) - b_coef) / (2.0 * a_coef), 0.0)
    numerator = b - c - n * d
    numerator = math.copysign(max(abs(numerator) - correction, 0.0), numerator)
    variance = n * (2.0 * pc + d * (1.0 - d))
    if variance <= 1e-300:
        return 0.0 if abs(numerator) < 1e-12 else math.copysign(math.inf, numerator)
    return numerator / math.sqrt(variance)


def _tango_bound(n: int, base_only: int, new_only: int, z: float, *, upper: bool) -> float:
    """Return the drop at which Tango's Z equals -z (upper bound) or +z (lower bound), found by bisection."""
    target = -z if upper else z
    lo, hi = -1.0, 1.0
    # Z falls as the hypothesised drop rises; keep lo where Z > target and hi where Z <= target.
    if tango_z(n, base_only, new_only, hi) > target:
        return 1.0
    if tango_z(n, base_only, new_only, lo) <= target:
        return -1.0
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2.0
        if tango_z(n, base_only, new_only, mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def paired_accuracy(base: Sequence[bool], new: Sequence[bool]) -> PairedAccuracy:
    """Return the paired comparison of per-image correctness `base` and `new` (same images, same order)."""
    if len(base) != len(new):
        raise HarnessError(
            f"paired accuracy needs one result per image for both models; got {len(base)} and {len(new)} "
            "(evaluate both on the same images)"
        )
    if len(base) == 0:
        raise HarnessError("paired accuracy needs at least one image; got empty correctness lists")
    a = np.asarray(base, dtype=bool)
    b = np.asarray(new, dtype=bool)
    n = int(a.size)
    base_only = int(np.count_nonzero(a & ~b))
    new_only = int(np.count_nonzero(~a & b))
    discordant = base_only + new_only
    p_value = (
        float(sps.binomtest(base_only, discordant, 0.5, alternative="greater").pvalue) if discordant else 1.0
    )
    return PairedAccuracy(
        n=n,
        base_correct=int(a.sum()),
        new_correct=int(b.sum()),
        base_only=base_only,
        new_only=new_only,
        drop=(base_only - new_only) / n,
        p_value=min(max(p_value, 0.0), 1.0),
    )


def drop_interval(result: PairedAccuracy, *, confidence: float = 0.95) -> tuple[float, float]:
    """Return the two-sided `confidence` interval (low, high) of the true drop (Tango score interval)."""
    _check_probability("confidence", confidence)
    z = float(sps.norm.ppf(0.5 + confidence / 2))
    return (
        _tango_bound(result.n, result.base_only, result.new_only, z, upper=False),
        _tango_bound(result.n, result.base_only, result.new_only, z, upper=True),
    )


def drop_lower_bound(result: PairedAccuracy, *, alpha: float = 0.05) -> float:
    """Return the one-sided (1 - alpha) lower confidence bound of the true drop (Tango score interval)."""
    _check_probability("alpha", alpha)
    z = float(sps.norm.ppf(1.0 - alpha))
    return _tango_bound(result.n, result.base_only, result.new_only, z, upper=False)


def accuracy_drop_exceeds(result: PairedAccuracy, allowed_drop: float, *, alpha: float = 0.05) -> bool:
    """Return True only when the data show, at level alpha, that the true drop is larger than `allowed_drop`.

    This is Tango's one-sided score test of "drop <= allowed_drop", equivalent to asking whether the
    (1 - alpha) lower confidence bound of the drop (drop_lower_bound) lies above the allowance. When the true
    drop equals the allowance it fires in at most about alpha of runs (simulated at alpha = 0.05: 2.5-5%,
    thanks to the continuity correction; tests/test_stats.py checks it); a smaller true drop fires less.
    Power: a true drop exceeding the allowance by detectable_drop(n, discordant rate, alpha) is caught in
    about 80% of runs, so a small eval set can only catch large regressions, and a measured drop above the
    allowance is not a failure unless it is clear of the noise.
    """
    _check_probability("alpha", alpha)
    if not 0.0 <= allowed_drop < 1.0:
        raise HarnessError(
            f"allowed_drop must be a fraction in [0, 1), e.g. 0.01 for one point; got {allowed_drop}"
        )
    z = float(sps.norm.ppf(1.0 - alpha))
    return tango_z(result.n, result.base_only, result.new_only, allowed_drop) > z


def detectable_drop(n: int, discordant_rate: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Return roughly how far beyond the allowance a true drop must be to fail the gate with `power`.

    Normal approximation: (z_{1-alpha} + z_{power}) * sqrt(discordant_rate / n), where discordant_rate is
    the fraction of images on which the two models disagree about correctness (pairs where one is right).
    E.g. n=500, 5% discordant, alpha=0.05, power=0.8: about 2.5 points.
    """
    if n < 1:
        raise HarnessError(f"n must be the number of eval images (>= 1), got {n}")
    if not 0.0 < discordant_rate <= 1.0:
        raise HarnessError(f"discordant_rate must be a fraction in (0, 1], got {discordant_rate}")
    _check_probability("alpha", alpha)
    _check_probability("power", power)
    z_sum = float(sps.norm.ppf(1.0 - alpha) + sps.norm.ppf(power))
    return z_sum * math.sqrt(discordant_rate / n)
