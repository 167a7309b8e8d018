"""Judging a series of runs: the newest run against its recent window, steps (ruptures), and drift against the best
level of the window; deterministic metrics are left to harness/history/exact.py.

Timing ratios are judged in log space, where a slowdown of x% is the same size at any speed. The noise of one run is
estimated from the series itself (first the robust spread of first differences, then the spread around the levels
between the steps found with it), pooled with the thresholds file's prior spread. Three rules, with the numbers of
the thresholds file's "history":

- newest: the newest run against the mean of the `window` runs before it (outliers left out; since the last step
  when at least 3 runs follow it), in standard deviations of one run (the window's spread pooled with the prior, as
  Conbench's lookback z-score): it fails beyond `z` on the bad side when the change is at least `min_change`, so a
  one-night jump fails at once and the later nights confirm and locate the step.
- step: ruptures' kernel change-point search over the whole series in units of its noise (changepoints.py: a lone
  outlier is not two steps), with step_penalty per step; a step is reported with its size, a 95% interval, and the
  last run before and first run after it. A worse step of at least `min_change`, confirmed by `confirm` runs after
  it, fails the check while its first run is among the newest `new_runs`.
- drift: the level (mean of the newest `smooth` runs) against the best level of the `window` newest runs (PyTorch
  HUD's rule): it fails when it is worse by more than `drift_limit` and by more than `z` standard deviations of the
  difference of two levels, so ten nights of 1.5% fail although each night passes.
"""

from __future__ import annotations

import math

import numpy as np

from harness.gate.thresholds import History, Thresholds
from harness.history.changepoints import Segmentation, change_points, noise_sd, residual_sd, step_penalty
from harness.history.exact import accuracy_test, judge_changes, relative_test
from harness.history.series import Series
from harness.history.verdict import Finding, Step, Verdict, pct, step_message, worse_side

Z95 = 1.959964
MIN_WINDOW = 3
"""The fewest runs after a step that make a window of their own (fewer: the window reaches back across it)."""


def _pooled_sd(values: np.ndarray, prior_sd: float, prior_dof: float) -> float:
    k = int(values.size)
    var = float(values.var(ddof=1)) if k > 1 else 0.0
    return math.sqrt((prior_dof * prior_sd**2 + (k - 1) * var) / (prior_dof + k - 1))


def judge(series: Series, thresholds: Thresholds) -> Verdict:
    """Return the verdict on `series` under the thresholds file's "history" rules (module docstring)."""
    history = thresholds.history
    n = len(series.points)
    if n < history.min_runs:
        note = Finding("newest", f"{n} run(s) of the {history.min_runs} a series needs before it is judged", False)
        return Verdict(series, (), tuple(p.value for p in series.points), None, None, (note,))
    kind = series.metric.judged
    if kind == "timing":
        return _judge_timing(series, thresholds)
    if kind == "accuracy":
        return judge_changes(series, thresholds, accuracy_test(series, thresholds))
    return judge_changes(series, thresholds, relative_test(series, thresholds))


def _judge_timing(series: Series, thresholds: Thresholds) -> Verdict:
    history = thresholds.history
    up = bool(series.metric.higher_is_better)
    prior_sd = thresholds.prior_spread(series.device, series.batch_size)
    prior_dof = thresholds.timing.prior_dof
    y = np.log(np.array([p.value for p in series.points], dtype=np.float64))
    n = int(y.size)
    rough = noise_sd(y, prior_sd, prior_dof)
    penalty = step_penalty(history, n)
    first = change_points(y, rough, penalty=penalty)
    sigma = residual_sd(y[first.kept], first.cuts, rough, prior_sd, prior_dof)
    seg = change_points(y, sigma, penalty=penalty)
    kept = y[seg.kept]
    bounds = [0, *seg.cuts, int(kept.size)]
    steps, findings = [], []
    for i, cut in enumerate(seg.cuts):
        before, after = kept[bounds[i]:cut], kept[cut:bounds[i + 2]]
        delta = float(after.mean() - before.mean())
        half = Z95 * sigma * math.sqrt(1 / before.size + 1 / after.size)
        worse = worse_side(delta, up) > 0
        first_after = int(seg.kept[cut])
        step = Step(int(seg.kept[cut - 1]), first_after, math.expm1(delta), math.expm1(delta - half),
                    math.expm1(delta + half), worse, first_after >= n - history.new_runs, after.size >= history.confirm)
        steps.append(step)
        if step.new:
            fails = worse and step.confirmed and abs(step.change) >= history.min_change
            findings.append(Finding("step", step_message(series, step, "ratio"), fails))
    # every run, outliers included, is drawn against the level of the stretch it falls in
    stretch = np.searchsorted([s.after for s in steps], np.arange(n), side="right")
    means = [float(kept[bounds[i]:bounds[i + 1]].mean()) for i in range(len(bounds) - 1)]
    levels = tuple(math.exp(means[s]) for s in stretch)
    newest, limit, window_start = _newest(series, y, seg, history, prior_sd, prior_dof)
    findings.insert(0, newest)
    drift = _drift(series, seg.kept, kept, sigma, history)
    if drift is not None:
        findings.append(drift)
    return Verdict(series, tuple(steps), levels, limit, window_start, tuple(findings), sigma)


def _newest(
    series: Series, y: np.ndarray, seg: Segmentation, history: History, prior_sd: float, prior_dof: float
) -> tuple[Finding, float, int]:
    """Return the newest run's finding against its window, the value it would fail beyond, and the window's start.

    The window is the `window` runs before the newest, outliers left out, starting after the last step that at least
    MIN_WINDOW runs follow.
    """
    n = int(y.size)
    up = bool(series.metric.higher_is_better)
    start = max(0, n - 1 - history.window)
    settled = [int(seg.kept[c]) for c in seg.cuts if n - 1 - int(seg.kept[c]) >= MIN_WINDOW]
    if settled:
        start = max(start, settled[-1])
    window = np.array([y[i] for i in seg.kept if start <= i < n - 1])
    if window.size == 0:
        window = y[start:n - 1]
    mean = float(window.mean())
    sd = _pooled_sd(window, prior_sd, prior_dof) * math.sqrt(1 + 1 / window.size)
    delta = float(y[-1] - mean)
    z = worse_side(delta, up) / sd
    change = math.expm1(delta)
    fails = z > history.z and abs(change) >= history.min_change
    reach = max(history.z * sd, math.log1p(history.min_change) if up else math.log(1 / (1 - history.min_change)))
    limit = math.exp(mean - reach) if up else math.exp(mean + reach)
    run = series.points[-1].run
    name = series.metric.name
    verb = "outside" if fails else "within"
    message = (
        f"newest {run.label}: {name} {math.exp(y[-1]):.4g} is {pct(change)} against the mean "
        f"{math.exp(mean):.4g} of the {window.size} runs before it: {verb} the window (z {z:+.1f} on the bad side; "
        f"fails beyond z {history.z:g} with a change of at least {history.min_change:.0%}; limit {limit:.4g})"
    )
    return Finding("newest", message, fails), limit, start


def _drift(series: Series, index: np.ndarray, y: np.ndarray, sigma: float, history: History) -> Finding | None:
    """Return the drift rule's finding: the newest level against the best level of the window (None: none worse).

    `y` are the log values of the runs that are not outliers, `index` their positions in the series.
    """
    n, k = int(y.size), history.smooth
    if n < k + 1:
        return None
    levels = np.convolve(y, np.ones(k) / k, mode="valid")  # levels[j] is the mean of runs j .. j+k-1
    first = max(0, n - history.window)  # the window's runs; a level counts when its newest run is in it
    offset = max(0, first - k + 1)
    candidates = levels[offset:]
    up = bool(series.metric.higher_is_better)
    best_at = int(np.argmax(candidates) if up else np.argmin(candidates))
    best = float(candidates[best_at])
    now = float(levels[-1])
    drift = worse_side(now - best, up)
    lost = -math.expm1(-drift)
    noise = history.z * sigma * math.sqrt(2.0 / k)
    fails = lost > history.drift_limit and drift > noise
    best_run = series.points[int(index[offset + best_at + k - 1])].run
    name = series.metric.name
    message = (
        f"level (mean of the newest {k} runs) {name} {math.exp(now):.4g} is {lost:.1%} worse than the best level "
        f"{math.exp(best):.4g} of the newest {min(n, history.window)} runs (reached at {best_run.label}); fails beyond "
        f"{history.drift_limit:.0%} and {history.z:g} sd of a level difference ({-math.expm1(-noise):.1%})"
    )
    return Finding("drift", message, fails) if lost > 0 else None
