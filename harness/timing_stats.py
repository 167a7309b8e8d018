"""Timing statistics: paired ratios and their intervals, the spread between runs, Holm's procedure, and power.

Every timing the gate judges is a ratio of two callables timed interleaved in rounds (A B, B A, ...): fp32 over
a variant (the speedup) or the model over a fixed yardstick network (the normalized latency). Machine drift that
a round shares cancels in the round's log ratio; what is left is estimated robustly (Hodges-Lehmann) with the
Wilcoxon signed-rank interval. That interval describes one process. Between processes the machine's state moves
more (see README, "How timing is judged"), so a comparison with a baseline uses the spread of several
fresh-process baseline runs, shrunk towards a prior, and Student's t with the matching degrees of freedom.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import stats as sps

from harness.errors import HarnessError

EXACT_SIGNED_RANK_MAX_N = 300
"""Up to this many rounds the signed-rank null distribution is computed exactly; beyond, a normal approximation."""


def _positive(name: str, samples: Sequence[float]) -> np.ndarray:
    arr = np.asarray(samples, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise HarnessError(f"{name} must be a non-empty list of timings, got {arr.size} values")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise HarnessError(f"{name} must hold positive finite timings (ms); got min {arr.min()}, max {arr.max()}")
    return arr


@dataclass(frozen=True)
class RatioEstimate:
    """A ratio of two timings with its interval: value = exp(estimate of the typical per-round log ratio).

    log_se is the standard error of log(value), read off the interval (half-width / z); n is the rounds.
    """

    value: float
    low: float
    high: float
    log_se: float
    n: int

    def to_dict(self) -> dict[str, float]:
        """Return {"value", "low", "high", "log_se", "rounds"} for a results file."""
        return {"value": self.value, "low": self.low, "high": self.high, "log_se": self.log_se, "rounds": self.n}


@cache
def _signed_rank_cdf(n: int) -> np.ndarray:
    """Return P(T <= t) for t = 0..n(n+1)/2, T the Wilcoxon signed-rank statistic of n untied pairs under H0."""
    total = n * (n + 1) // 2
    prob = np.zeros(total + 1)
    prob[0] = 1.0
    top = 0
    for rank in range(1, n + 1):
        # each rank is in the positive set with probability 1/2
        shifted = np.zeros_like(prob)
        shifted[rank : top + rank + 1] = prob[: top + 1]
        prob = 0.5 * (prob + shifted)
        top += rank
    return np.cumsum(prob)


def signed_rank_critical(n: int, confidence: float) -> int:
    """Return the largest t with P(T <= t) <= (1 - confidence) / 2 under H0; -1 when n is too small for the level.

    The interval of the Hodges-Lehmann estimate is then [W_(t+1), W_(M-t)] of the M sorted Walsh averages
    (1-based): the true shift lies below W_(t+1) exactly when T <= t.
    """
    tail = (1.0 - confidence) / 2.0
    if n > EXACT_SIGNED_RANK_MAX_N:
        mean, sd = n * (n + 1) / 4.0, math.sqrt(n * (n + 1) * (2 * n + 1) / 24.0)
        return int(math.floor(mean - float(sps.norm.ppf(1.0 - tail)) * sd - 0.5))
    return int(np.searchsorted(_signed_rank_cdf(n), tail, side="right")) - 1


def hodges_lehmann(differences: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Return (estimate, low, high): the median of the Walsh averages and its signed-rank interval."""
    d = np.asarray(differences, dtype=np.float64)
    i, j = np.triu_indices(d.size)
    walsh = np.sort((d[i] + d[j]) / 2.0)
    t = signed_rank_critical(d.size, confidence)
    low, high = (walsh[t], walsh[walsh.size - 1 - t]) if 0 <= t < walsh.size - 1 - t else (walsh[0], walsh[-1])
    return float(np.median(walsh)), float(low), float(high)


def paired_ratio(base_ms: Sequence[float], new_ms: Sequence[float], *, confidence: float = 0.95) -> RatioEstimate:
    """Return base / new from round-aligned interleaved timings (value > 1: new is faster).

    The estimate is exp(Hodges-Lehmann of the per-round log ratios log(base_i / new_i)); its interval is the
    Wilcoxon signed-rank interval, exact up to EXACT_SIGNED_RANK_MAX_N rounds. A round's shared drift cancels in
    its log ratio, and a round that one call of either side spoiled moves the estimate little.
    """
    if not 0.0 < confidence < 1.0:
        raise HarnessError(f"confidence must be strictly between 0 and 1, got {confidence}")
    base, new = _positive("base_ms", base_ms), _positive("new_ms", new_ms)
    if base.size != new.size:
        raise HarnessError(
            f"paired timings need one sample per round for both; got {base.size} and {new.size} "
            "(time them with measure.time_interleaved)"
        )
    estimate, low, high = hodges_lehmann(np.log(base) - np.log(new), confidence)
    z = float(sps.norm.ppf(0.5 + confidence / 2.0))
    log_se = (high - low) / (2.0 * z)
    return RatioEstimate(math.exp(estimate), math.exp(low), math.exp(high), log_se, int(base.size))


# ------------------------------------------------------------------------------------ between runs


@dataclass(frozen=True)
class RunSpread:
    """Where a timing ratio of one case lands across fresh-process runs, in log space.

    center: the mean of the runs' log values; sd: the spread of one run's log value around it (between and within
    process together), shrunk towards a prior; dof: its degrees of freedom; runs: how many runs were measured.
    """

    center: float
    sd: float
    dof: float
    runs: int


def run_spread(log_values: Sequence[float], *, prior_sd: float, prior_dof: float) -> RunSpread:
    """Return the spread of `log_values` (one per fresh-process run) pooled with a prior of `prior_dof` dof.

    sd^2 = (prior_dof * prior_sd^2 + (K - 1) * s^2) / (prior_dof + K - 1), the conjugate (scaled inverse
    chi-square) update: with one run the prior alone speaks, with many runs the data do.
    """
    values = np.asarray(log_values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise HarnessError(f"run_spread needs finite log values, one per run; got {values.tolist()!r}")
    if not prior_sd > 0 or not prior_dof > 0:
        raise HarnessError(f"the prior spread and its dof must be positive, got {prior_sd} and {prior_dof}")
    k = int(values.size)
    sample_var = float(values.var(ddof=1)) if k > 1 else 0.0
    dof = prior_dof + k - 1
    sd = math.sqrt((prior_dof * prior_sd**2 + (k - 1) * sample_var) / dof)
    return RunSpread(center=float(values.mean()), sd=sd, dof=dof, runs=k)


@dataclass(frozen=True)
class ShiftTest:
    """A new run's log value against a baseline's RunSpread, in the metric's direction.

    worse: how much worse, in log units (negative: better); scale: the standard deviation of that difference;
    p_worse / p_better: one-sided p-values of "no change" against "worse" / "better" (Student's t, dof).
    """

    worse: float
    scale: float
    dof: float
    p_worse: float
    p_better: float

    @property
    def change(self) -> float:
        """Return the relative change in the metric's bad direction (0.15: 15% worse)."""
        return math.exp(self.worse) - 1.0


def shift_test(
    new_log: float, new_se: float, spread: RunSpread, *, higher_is_better: bool, exact_center: bool = False
) -> ShiftTest:
    """Return how a new run's log value sits against the baseline's runs (or against a fixed number).

    Var(difference) = sd^2 / K (the baseline mean's error; none when `exact_center`, e.g. a floor) +
    max(sd^2, new_se^2): the new run is one more draw of a run, unless its own interval says it was noisier
    than the baseline's runs were.
    """
    if not math.isfinite(new_log) or not new_se >= 0:
        raise HarnessError(f"shift_test needs a finite log value and a standard error >= 0, got {new_log}, {new_se}")
    sign = 1.0 if higher_is_better else -1.0
    worse = sign * (spread.center - new_log)
    center_var = 0.0 if exact_center else spread.sd**2 / spread.runs
    scale = math.sqrt(center_var + max(spread.sd**2, new_se**2))
    t = worse / scale if scale > 0 else math.copysign(math.inf, worse) if worse else 0.0
    return ShiftTest(worse, scale, spread.dof, float(sps.t.sf(t, spread.dof)), float(sps.t.cdf(t, spread.dof)))


# -------------------------------------------------------------------------------- multiple testing


class HolmFamily:
    """Holm's step-down procedure over a family of `size` timing checks whose p-values arrive one at a time.

    `judge(key, p)` runs the step-down over the p-values known so far (unknown ones count as 1) with the full
    family size, and says whether `key` is rejected. This keeps the family-wise error rate at `alpha`: the first
    true null ever rejected is rejected at a step j whose j - 1 earlier rejections are false nulls, so its
    threshold alpha / (size - j + 1) is at most alpha / m0 (m0 true nulls), which Holm's own proof bounds. Any
    subset of the family, e.g. one pytest-xdist worker's cases, may be judged this way with the same `size`.
    """

    def __init__(self, size: int, alpha: float) -> None:
        if size < 1 or not 0.0 < alpha < 1.0:
            raise HarnessError(f"a Holm family needs size >= 1 and 0 < alpha < 1, got {size} and {alpha}")
        self.size, self.alpha = size, alpha
        self.p_values: dict[str, float] = {}

    def judge(self, key: str, p: float) -> tuple[bool, float]:
        """Record `p` for `key`; return (rejected, the threshold `key` was compared with)."""
        self.p_values[key] = p
        if len(self.p_values) > self.size:
            raise HarnessError(
                f"the Holm family was sized for {self.size} timing checks but {len(self.p_values)} were judged; "
                "the gate must count every planned timing check"
            )
        for step, (name, value) in enumerate(sorted(self.p_values.items(), key=lambda kv: (kv[1], kv[0]))):
            threshold = self.alpha / (self.size - step)
            if value > threshold:
                return False, self.alpha / (self.size - self._rank(key))
            if name == key:
                return True, threshold
        raise AssertionError("unreachable: key is in the family")

    def _rank(self, key: str) -> int:
        ordered = sorted(self.p_values.items(), key=lambda kv: (kv[1], kv[0]))
        return next(i for i, (name, _) in enumerate(ordered) if name == key)


# ------------------------------------------------------------------------------------------- power


def detection_power(
    shift: float, scale: float, dof: float, *, first_alpha: float, confirm_alpha: float, tolerance: float
) -> float:
    """Return the probability that a true `shift` (log units, worse) fails a timing check and is then confirmed.

    A check fails when the measured shift is beyond log(1 + tolerance) and significant at `first_alpha` (the
    Holm step it meets; alpha / size when it is the run's only regression), and a fresh re-measurement agrees
    at `confirm_alpha`. Both measurements are modelled as independent draws with standard deviation `scale`.
    """
    floor = math.log1p(tolerance)

    def stage(alpha: float) -> float:
        cut = max(floor, float(sps.t.isf(alpha, dof)) * scale)
        return float(sps.norm.sf((cut - shift) / scale)) if scale > 0 else float(shift > cut)

    return stage(first_alpha) * stage(confirm_alpha)


def detectable_change(
    scale: float,
    dof: float,
    *,
    first_alpha: float,
    confirm_alpha: float,
    tolerance: float,
    power: float = 0.8,
) -> float:
    """Return the smallest relative slowdown (0.12: 12%) caught with `power` by detection_power's rule."""
    if not 0.0 < power < 1.0:
        raise HarnessError(f"power must be strictly between 0 and 1, got {power}")
    lo, hi = 0.0, 5.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        caught = detection_power(
            mid, scale, dof, first_alpha=first_alpha, confirm_alpha=confirm_alpha, tolerance=tolerance
        )
        lo, hi = (lo, mid) if caught >= power else (mid, hi)
    return math.expm1(hi)
