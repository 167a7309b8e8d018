"""Change points of a series in units of its noise: ruptures' kernel search, outliers set aside, the noise itself."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import ruptures as rpt

from harness.gate.thresholds import History

MAD_EFFICIENCY = 0.37
"""The median absolute deviation is worth about 37% of the runs of a standard deviation (normal noise)."""


def noise_sd(log_values: np.ndarray, prior_sd: float, prior_dof: float) -> float:
    """Return the sd of one run around its level: the robust spread of first differences pooled with the prior."""
    diffs = np.diff(log_values)
    if diffs.size < 2:
        return prior_sd
    mad = float(np.median(np.abs(diffs - np.median(diffs)))) * 1.4826 / math.sqrt(2.0)
    dof = MAD_EFFICIENCY * diffs.size
    return math.sqrt((prior_dof * prior_sd**2 + dof * mad**2) / (prior_dof + dof))


def residual_sd(log_values: np.ndarray, cuts: list[int], rough: float, prior_sd: float, prior_dof: float) -> float:
    """Return the sd of one run around the level of its stretch between `cuts`, pooled with the prior.

    Residuals beyond 3 `rough` sds are clipped there (a busy night must not make every step look like noise).
    """
    residuals = np.clip(log_values - _levels(log_values, cuts), -3 * rough, 3 * rough)
    dof = log_values.size - len(cuts) - 1
    if dof < 1:
        return rough
    return math.sqrt((prior_dof * prior_sd**2 + float(np.sum(residuals**2))) / (prior_dof + dof))


def _levels(log_values: np.ndarray, cuts: list[int]) -> np.ndarray:
    bounds = [0, *cuts, int(log_values.size)]
    levels = np.empty(log_values.size)
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        levels[start:end] = log_values[start:end].mean()
    return levels


def _search(log_values: np.ndarray, sigma: float, penalty: float) -> list[int]:
    """Return ruptures' change points (linear-kernel CPD: least squares on the level, `penalty` per step)."""
    if log_values.size < 2:
        return []
    signal = ((log_values - log_values.mean()) / sigma).reshape(-1, 1)
    found = rpt.KernelCPD(kernel="linear", min_size=1, jump=1).fit(signal).predict(pen=penalty)
    return [int(b) for b in found[:-1]]


@dataclass(frozen=True)
class Segmentation:
    """Where the level of a series changes: `kept` (indices of the runs that are not outliers), `cuts` (positions in
    `kept` of the first run after each step), `outliers` (indices of lone runs set aside)."""

    kept: np.ndarray
    cuts: list[int]
    outliers: list[int]


def change_points(log_values: np.ndarray, sigma: float, *, penalty: float) -> Segmentation:
    """Return the steps of a series in units of its noise `sigma` (ruptures, `penalty` per step).

    A single run between two steps, inside the series, is an outlier (a busy night), not two steps: it is set aside
    and the search runs again without it, until none is left. A single run after the last step stays: it is the
    newest run's jump, which later runs confirm or not.
    """
    kept = np.arange(log_values.size)
    outliers: list[int] = []
    while True:
        cuts = _search(log_values[kept], sigma, penalty)
        bounds = [0, *cuts, int(kept.size)]
        lone = [bounds[i] for i in range(len(bounds) - 2) if bounds[i + 1] - bounds[i] == 1]
        if not lone:
            return Segmentation(kept, cuts, sorted(outliers))
        outliers.extend(int(i) for i in kept[lone])
        kept = np.delete(kept, lone)


def step_penalty(history: History, runs: int) -> float:
    """Return the penalty per step on a series of `runs` runs: `penalty` up to `penalty_runs` runs, then growing
    with ln(runs) as the largest split that chance alone makes does (BIC), so that a thousand nights show no more
    chance steps than the sixty the penalty was tuned on."""
    return history.penalty * max(1.0, math.log(runs) / math.log(history.penalty_runs))
