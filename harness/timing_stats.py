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
from collections.abc import Callable, Sequence
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

    @classmethod
    def of(cls, worse: float, scale: float, dof: float) -> ShiftTest:
        """Return the test of a change `worse` (log units) with standard deviation `scale`, Student's t at `dof`."""
        t = worse / scale if scale > 0 else math.copysign(math.inf, worse) if worse else 0.0
        return cls(worse, scale, dof, float(sps.t.sf(t, dof)), float(sps.t.cdf(t, dof)))

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
    return pooled_shift_test([new_log], [new_se], spread, higher_is_better=higher_is_better, exact_center=exact_center)


def pooled_shift_test(
    new_logs: Sequence[float],
    new_ses: Sequence[float],
    spread: RunSpread,
    *,
    higher_is_better: bool,
    exact_center: bool = False,
) -> ShiftTest:
    """Return how the mean of n fresh-process runs' log values sits against the baseline's runs.

    Each run is one independent draw of a run (a fresh process each: the between-process part of the noise
    averages too), so Var(difference) = sd^2 / K (none when `exact_center`) + mean_i(max(sd^2, se_i^2)) / n.
    With one run this is shift_test.
    """
    logs, ses = list(new_logs), list(new_ses)
    if not logs or len(logs) != len(ses):
        raise HarnessError(f"pooled_shift_test needs one standard error per log value, got {len(logs)} and {len(ses)}")
    if not all(math.isfinite(v) for v in logs) or not all(se >= 0 for se in ses):
        raise HarnessError(f"shift tests need finite log values and standard errors >= 0, got {logs}, {ses}")
    n = len(logs)
    sign = 1.0 if higher_is_better else -1.0
    worse = sign * (spread.center - sum(logs) / n)
    center_var = 0.0 if exact_center else spread.sd**2 / spread.runs
    run_var = sum(max(spread.sd**2, se**2) for se in ses) / n / n
    return ShiftTest.of(worse, math.sqrt(center_var + run_var), spread.dof)


def screen_cut(tolerance: float) -> float:
    """Return the log change beyond which a first measurement is flagged for a fresh-process re-measurement:
    half the tolerance (a floor, tolerance 0: any shortfall)."""
    return math.log1p(tolerance / 2.0)


def flagged(shift: ShiftTest, *, tolerance: float, screen_alpha: float) -> bool:
    """Return True when a first measurement is suspect: worse than half the tolerance and p_worse <= screen_alpha.

    Flagging decides nothing: a flagged check is re-measured in a fresh process and judged on both runs together
    (see confirmed). A check never flagged never fails, so its p-value in the run's Holm family counts as 1.
    """
    return shift.worse > screen_cut(tolerance) and shift.p_worse <= screen_alpha


LOOK_WEIGHTS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
"""How a flagged check spends its share of the family's alpha over its fresh-process re-measurements: look k, after k
re-measurements, tests the mean of all k + 1 runs at LOOK_WEIGHTS[k - 1] of the check's Holm level (Bonferroni over
the looks, so the check's p-value, min_k p_k / w_k, is valid whenever the looks stop). Later looks get more: there
more runs have averaged the between-process noise away."""


@dataclass(frozen=True)
class Look:
    """A flagged check after k fresh-process re-measurements: the test of all k + 1 runs together, the check's
    p-value over its looks so far, how much worse the re-measurements alone are (log units), and the decision:
    "fail" (confirmed), "pass" (the evidence no longer points beyond half the tolerance) or "continue"."""

    pooled: ShiftTest
    p_value: float
    again_worse: float
    decision: str


def look_at(
    logs: Sequence[float],
    ses: Sequence[float],
    spread: RunSpread,
    *,
    higher_is_better: bool,
    exact_center: bool,
    tolerance: float,
    looked_p: float,
    weight: float,
    rejects: Callable[[float], bool],
) -> Look:
    """Return the look at a flagged check's runs so far (the first, flagged one, then the re-measurements).

    It fails when its p-value over the looks (min of each look's pooled p / its weight) is rejected by Holm's
    step-down over the run (`rejects`), the runs together are worse than the tolerance, and the re-measurements on
    their own are worse than half of it (one spoiled first process never decides); it passes once the runs together
    are no longer worse than half the tolerance; else the evidence is not in yet.
    """
    if len(logs) < 2:
        raise HarnessError("a look needs the first run and at least one re-measurement")
    pooled = pooled_shift_test(logs, ses, spread, higher_is_better=higher_is_better, exact_center=exact_center)
    p_value = min(looked_p, min(1.0, pooled.p_worse / weight))
    sign = 1.0 if higher_is_better else -1.0
    again_worse = sign * (spread.center - sum(logs[1:]) / (len(logs) - 1))
    if rejects(p_value) and pooled.worse > math.log1p(tolerance) and again_worse > screen_cut(tolerance):
        return Look(pooled, p_value, again_worse, "fail")
    if pooled.worse <= screen_cut(tolerance):
        return Look(pooled, p_value, again_worse, "pass")
    return Look(pooled, p_value, again_worse, "continue")


def confirmed(again: ShiftTest, pooled: ShiftTest, *, tolerance: float, holm_alpha: float) -> bool:
    """Return True when a flagged check fails: the fresh re-measurement on its own is also worse than half the
    tolerance, and the two runs together are worse than the tolerance and significant at `holm_alpha`.

    The false-alarm rate of a check is at most holm_alpha: failing needs pooled.p_worse <= holm_alpha, and the
    pooled test is valid for the two runs whatever the flag did (test_timing_stats simulates it).
    """
    return (
        again.worse > screen_cut(tolerance)
        and pooled.worse > math.log1p(tolerance)
        and pooled.p_worse <= holm_alpha
    )


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
        return self._step_down(self.p_values, key)

    def peek(self, key: str, p: float) -> tuple[bool, float]:
        """Return what judge(key, p) would return now, recording nothing (a sequential check asks at every look)."""
        return self._step_down({**self.p_values, key: p}, key)

    def _step_down(self, p_values: dict[str, float], key: str) -> tuple[bool, float]:
        ordered = sorted(p_values.items(), key=lambda kv: (kv[1], kv[0]))
        for step, (name, value) in enumerate(ordered):
            threshold = self.alpha / (self.size - step)
            if value > threshold:
                rank = next(i for i, (other, _) in enumerate(ordered) if other == key)
                return False, self.alpha / (self.size - rank)
            if name == key:
                return True, threshold
        raise AssertionError("unreachable: key is in the family")


# ------------------------------------------------------------------------------------------- power


def detectable_change(power_at: Callable[[float], float], power: float = 0.8, *, steps: int) -> float:
    """Return the smallest relative slowdown (0.12: 12%) whose log shift `power_at` catches with `power`, by halving
    the interval of shifts 0 to 5 `steps` times (power_at must not fall as the shift grows)."""
    if not 0.0 < power < 1.0:
        raise HarnessError(f"power must be strictly between 0 and 1, got {power}")
    lo, hi = 0.0, 5.0
    for _ in range(steps):
        mid = (lo + hi) / 2.0
        lo, hi = (lo, mid) if power_at(mid) >= power else (mid, hi)
    return math.expm1(hi)


@dataclass(frozen=True)
class OneRemeasurementRule:
    """The gate's rule before the sequential looks (one fresh-process re-measurement), kept so `baseline show` can
    print what the rule that replaced it gained. As its power is computed: each run's log value is the true value plus
    an independent draw of sd `run_sd`; the baseline's mean is off by a draw of sd `center_sd` that both runs
    share (0 for a floor); `dof` is the spread's degrees of freedom; `holm_alpha` the Holm step the check meets
    (family_alpha / size when it is the run's only regression); `screen_alpha` the level that flags a first run;
    `tolerance` the relative change allowed.
    """

    run_sd: float
    center_sd: float
    dof: float
    holm_alpha: float
    screen_alpha: float
    tolerance: float

    def __post_init__(self) -> None:
        if not self.run_sd > 0 or not self.center_sd >= 0:
            raise HarnessError(
                f"the detection rule needs run_sd > 0 and center_sd >= 0, got {self.run_sd} and {self.center_sd}"
            )

    def power(self, shift: float) -> float:
        """Return the probability that a true `shift` (log units, worse) fails the check by the gate's rule.

        The rule (flagged, then confirmed): a first run is flagged when it is worse than half the tolerance and
        significant at `screen_alpha`; a second, fresh-process run must on its own be worse than half the
        tolerance; the mean of the two must be worse than the tolerance and significant at `holm_alpha`. Computed
        by quadrature, not simulation: the same inputs give the same number.
        """
        run_sd, center_sd = self.run_sd, self.center_sd
        first_scale = math.sqrt(center_sd**2 + run_sd**2)
        pooled_scale = math.sqrt(center_sd**2 + run_sd**2 / 2.0)
        half = screen_cut(self.tolerance)
        screen = max(half, float(sps.t.isf(self.screen_alpha, self.dof)) * first_scale)
        final = max(math.log1p(self.tolerance), float(sps.t.isf(self.holm_alpha, self.dof)) * pooled_scale)
        nodes, weights = np.polynomial.hermite_e.hermegauss(48)  # the baseline mean's error, N(0, center_sd)
        weights = weights / weights.sum()
        z = np.linspace(-9.0, 9.0, 1801)  # the first run's noise, in run_sd units
        dz = z[1] - z[0]
        power = 0.0
        for node, weight in zip(nodes, weights, strict=True):
            first = shift + center_sd * node + run_sd * z  # what the first run measures (worse, log units)
            second_needs = np.maximum(half, 2.0 * final - first)
            second_ok = sps.norm.sf((second_needs - (shift + center_sd * node)) / run_sd)
            density = sps.norm.pdf(z) * dz
            power += weight * float(np.sum(density * second_ok * (first > screen)))
        return float(min(1.0, max(0.0, power)))

    def detectable_change(self, power: float = 0.8) -> float:
        """Return the smallest relative slowdown (0.12: 12%) the rule catches with `power`."""
        return detectable_change(self.power, power, steps=60)


@dataclass(frozen=True)
class DetectionRule:
    """The gate's rule for one timing check, as its power is computed: each run's log value is the true value plus an
    independent draw of sd `run_sd`; the baseline's mean is off by a draw of sd `center_sd` that every run shares (0
    for a floor); `dof` is the spread's degrees of freedom; `holm_alpha` the Holm level the check meets
    (family_alpha / size when it is the run's only regression); `screen_alpha` the level that flags a first run;
    `tolerance` the relative change allowed; `weights` the looks' shares of the alpha (LOOK_WEIGHTS).

    The rule (look_at): a first run worse than half the tolerance at screen_alpha is flagged; fresh-process runs are
    added one at a time until a look fails it, passes it, or the looks run out.
    """

    run_sd: float
    center_sd: float
    dof: float
    holm_alpha: float
    screen_alpha: float
    tolerance: float
    weights: tuple[float, ...] = LOOK_WEIGHTS
    paths: int = 4000
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.run_sd > 0 or not self.center_sd >= 0:
            raise HarnessError(
                f"the detection rule needs run_sd > 0 and center_sd >= 0, got {self.run_sd} and {self.center_sd}"
            )

    def outcome(self, shift: float) -> tuple[float, float]:
        """Return (the probability that a true `shift` (log units, worse) fails the check, the mean number of fresh
        re-measurements it takes), by simulating `paths` runs of the rule (a fixed seed: the same inputs give the same
        numbers, and a larger shift never fails less often)."""
        rng = np.random.default_rng(self.seed)
        center = rng.normal(0.0, self.center_sd, self.paths) if self.center_sd > 0 else np.zeros(self.paths)
        noise = rng.normal(0.0, self.run_sd, (self.paths, len(self.weights) + 1))
        half, full = screen_cut(self.tolerance), math.log1p(self.tolerance)
        first = shift - center + noise[:, 0]
        scale = math.sqrt(self.center_sd**2 + self.run_sd**2)
        active = (first > half) & (sps.t.sf(first / scale, self.dof) <= self.screen_alpha)
        failed = np.zeros(self.paths, dtype=bool)
        p_value = np.ones(self.paths)
        looks = np.zeros(self.paths)
        for k, weight in enumerate(self.weights, start=1):
            looks += active
            runs = k + 1
            pooled = shift - center + noise[:, :runs].mean(axis=1)
            scale = math.sqrt(self.center_sd**2 + self.run_sd**2 / runs)
            p_value = np.minimum(p_value, np.minimum(1.0, sps.t.sf(pooled / scale, self.dof) / weight))
            again = shift - center + noise[:, 1:runs].mean(axis=1)
            fail = active & (p_value <= self.holm_alpha) & (pooled > full) & (again > half)
            failed |= fail
            active &= ~fail & (pooled > half)
        return float(failed.mean()), float(looks.mean())

    def power(self, shift: float) -> float:
        """Return the probability that a true `shift` (log units, worse) fails the check by the gate's rule."""
        return self.outcome(shift)[0]

    def detectable_change(self, power: float = 0.8) -> float:
        """Return the smallest relative slowdown (0.12: 12%) the rule catches with `power` (30 halvings: each power is
        a simulation)."""
        return detectable_change(self.power, power, steps=30)
