"""Spreads that borrow strength: the between-run spread of every timing check, estimated jointly over the checks of
one device and batch regime (an empirical-Bayes model), so a 3-run baseline is judged with the degrees of freedom
of all its cases together, while a case that is truly noisier keeps its larger spread.

The model (Smyth 2004, "Linear models and empirical Bayes methods for assessing differential expression", the
moderated t of limma). Case c of a group has K_c fresh-process runs; their sample variance s_c^2 (d_c = K_c - 1
degrees of freedom) estimates its own variance sigma_c^2 (s_c^2 ~ sigma_c^2 chi^2_d / d), and the sigma_c^2 of the
group scatter around a shared level s0^2 as a scaled inverse chi-square with d0 degrees of freedom. d0 and s0^2 are
fitted to the group's s_c^2 by the method of moments on log s^2 (limma's fitFDist): E[log s_c^2] and
Var[log s_c^2] are known functions (digamma, trigamma) of d_c, d0 and s0^2. With a dozen cases of three runs that
estimate is noisy, and a case noisier than the group is shrunk a little too far towards it (HETEROGENEITY_Z says
by how much; the gate then fails a case only when fresh re-measurements put it beyond the tolerance). Each case's
variance is then shrunk towards the level:

    sigma~_c^2 = (d0 s0^2 + d_c s_c^2) / (d0 + d_c)      with d0 + d_c degrees of freedom.

When the cases agree (their spreads scatter as sampling alone predicts), d0 is large and every case gets about the
group's spread with the group's degrees of freedom; d0 is capped at the group's total sum of d_c, the information
the data hold about s0^2. When they disagree, d0 is small and each case keeps mostly its own. A case whose spread is
far beyond the group's (its F-test against the level at 0.01 / cases) is fitted alone, as an outlier, so one noisy
case neither inflates the others nor is shrunk towards them. Groups with fewer than MIN_CASES fitted cases fall
back on the thresholds file's prior spread and its degrees of freedom.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from harness.errors import HarnessError

MIN_CASES = 3
"""A group needs at least this many cases with two or more runs to fit its shared level."""
OUTLIER_ALPHA = 0.01
"""A case's spread is an outlier when its F-test against the group's level rejects at this level over the group."""
HETEROGENEITY_Z = 0.0
"""d0 comes from the excess scatter plus this many of its own standard errors (0: the estimate itself, limma's
choice). Simulated (tests/test_shrinkage.py; 12 cases of 3 runs, sds scattered by a factor exp(N(0, s))), an
unchanged case's new run failed a 1% test 0.9%, 1.5% and 1.8% of the time at s = 0, 0.4, 0.7 with 0; 0.7%, 1.0% and
1.2% with 1.0, which leaves d0 about 3 even where the spreads agree and loses most of the power pooling buys."""
FLOOR_VAR = 1e-8
"""Sample variances below this (identical runs) count as this much: log s^2 must stay finite."""


@dataclass(frozen=True)
class Level:
    """A group's shared spread: s0^2 (the variance the cases scatter around), d0 (its degrees of freedom as a prior
    for each case), how many cases it was fitted on, and the cases left out as outliers."""

    var: float
    dof: float
    cases: int
    outliers: tuple[str, ...] = ()
    fitted: bool = True
    """False: too few cases to fit; the level is the thresholds file's prior spread and dof."""


@dataclass(frozen=True)
class Shrunk:
    """One case's spread after shrinkage: its posterior variance and degrees of freedom, and its own sample variance
    (None with fewer than two runs) for the record."""

    var: float
    dof: float
    own_var: float | None
    own_dof: int
    outlier: bool = False

    @property
    def sd(self) -> float:
        """Return the posterior standard deviation of one run's log value."""
        return math.sqrt(self.var)


def _trigamma_inverse(value: float) -> float:
    """Return x with trigamma(x) = value (Newton's method on 1/trigamma, as limma's trigammaInverse)."""
    if value > 1e7:
        return 1.0 / math.sqrt(value)
    if value < 1e-6:
        return 1.0 / value
    y = 0.5 + 1.0 / value
    for _ in range(50):
        tri = float(special.polygamma(1, y))
        step = tri * (1.0 - tri / value) / float(special.polygamma(2, y))
        y += step
        if -step / y < 1e-8:
            break
    return y


def fit_level(variances: Sequence[float], dofs: Sequence[int], *, max_dof: float | None = None) -> tuple[float, float]:
    """Return (s0^2, d0) fitted to sample variances with their degrees of freedom (limma's fitFDist, moments of
    log s^2); d0 is capped at `max_dof` (default: the sum of the dofs)."""
    s2 = np.maximum(np.asarray(variances, dtype=np.float64), FLOOR_VAR)
    d = np.asarray(dofs, dtype=np.float64)
    if s2.size < 2 or np.any(d < 1):
        raise HarnessError("fit_level needs at least two sample variances, each of at least one degree of freedom")
    cap = float(d.sum()) if max_dof is None else max_dof
    e = np.log(s2) - special.digamma(d / 2.0) + np.log(d / 2.0)
    mean = float(e.mean())
    sampling = special.polygamma(1, d / 2.0)  # the variance of log s^2 that sampling alone gives
    excess = float(((e - mean) ** 2).sum() / (e.size - 1) - sampling.mean())
    # The excess is an estimate, and a noisy one from a few cases of few runs (HETEROGENEITY_Z: how far above it d0
    # is set); at or below zero the cases share one level, worth the data's degrees of freedom.
    kurtosis = float((special.polygamma(3, d / 2.0) / sampling**2).mean())
    noise = float(sampling.mean()) * math.sqrt(2.0 / (e.size - 1) + kurtosis / e.size)
    upper = excess + HETEROGENEITY_Z * noise
    d0 = min(2.0 * _trigamma_inverse(upper), cap) if upper > 0 else cap
    var = math.exp(mean + float(special.digamma(d0 / 2.0)) - math.log(d0 / 2.0))
    return var, d0


def fit_group(
    samples: Mapping[str, Sequence[float]], *, prior_var: float, prior_dof: float
) -> tuple[Level, dict[str, Shrunk]]:
    """Return the group's level and every case's shrunk spread, from each case's log values (one per run).

    Outliers are found and fitted alone (their own variance with the prior's dof added), then the level is refitted
    without them; cases with one run get the level itself.
    """
    own: dict[str, tuple[float | None, int]] = {}
    for key, values in samples.items():
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
            raise HarnessError(f"{key}: a spread needs finite log values, one per run; got {list(values)!r}")
        own[key] = (float(arr.var(ddof=1)) if arr.size > 1 else None, int(arr.size - 1))
    informative = {k: v for k, v in own.items() if v[0] is not None}
    outliers: list[str] = []
    while len(informative) - len(outliers) > MIN_CASES:  # the noisiest case, tested against the others' level
        kept = [k for k in informative if k not in outliers]
        worst = max(kept, key=lambda k: informative[k][0] or 0.0)
        others = [k for k in kept if k != worst]
        var, dof = fit_level([informative[k][0] or 0.0 for k in others], [informative[k][1] for k in others])
        s2, d = informative[worst]
        if float(stats.f.sf(max(s2 or 0.0, FLOOR_VAR) / var, d, dof)) > OUTLIER_ALPHA / len(kept):
            break
        outliers.append(worst)
    fitted = [k for k in informative if k not in outliers]
    level = Level(prior_var, prior_dof, 0, fitted=False)
    if len(fitted) >= MIN_CASES:
        var, dof = fit_level([informative[k][0] or 0.0 for k in fitted], [informative[k][1] for k in fitted])
        level = Level(var, dof, len(fitted), tuple(sorted(outliers)))
    shrunk: dict[str, Shrunk] = {}
    for key, (s2, d) in own.items():
        base_var, base_dof = (prior_var, prior_dof) if key in outliers else (level.var, level.dof)
        var = (base_dof * base_var + d * (s2 or 0.0)) / (base_dof + d)
        shrunk[key] = Shrunk(max(var, FLOOR_VAR), base_dof + d, s2, d, outlier=key in outliers)
    return level, shrunk
