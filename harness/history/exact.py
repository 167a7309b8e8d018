"""Steps of the deterministic metrics: sizes and MACs (any change beyond the tolerance), top1 (the paired test)."""

from __future__ import annotations

import math
from collections.abc import Callable

from harness.gate.thresholds import Thresholds
from harness.history.series import Point, Series
from harness.history.verdict import Finding, Step, Verdict, step_message, worse_side
from harness.stats import accuracy_drop_exceeds, drop_interval, paired_accuracy

ChangeTest = Callable[[Point, Point], "tuple[float, float, float] | None"]
"""Returns (change, low, high) when the second run differs from the first beyond the tolerance, else None."""


def relative_test(series: Series, thresholds: Thresholds) -> ChangeTest:
    """Return the test of a deterministic metric: a change beyond the baseline tolerance (and min_abs_change)."""
    tolerance = thresholds.tolerance(series.metric.name, series.device)
    floor = thresholds.min_change(series.metric.name)

    def test(old: Point, new: Point) -> tuple[float, float, float] | None:
        if abs(new.value - old.value) <= max(tolerance * abs(old.value), floor):
            return None
        change = new.value / old.value - 1 if old.value else math.inf
        return change, change, change

    return test


def accuracy_test(series: Series, thresholds: Thresholds) -> ChangeTest:
    """Return the test of top1: the paired test on per-image correctness beyond the tolerance (same model, images)."""
    tolerance = thresholds.tolerance("top1", series.device)
    alpha = thresholds.accuracy_alpha

    def test(old: Point, new: Point) -> tuple[float, float, float] | None:
        if old.correct is None or new.correct is None or len(old.correct) != len(new.correct) or (
            old.identity != new.identity
        ):
            change = new.value - old.value
            return (change, change, change) if abs(change) > tolerance else None
        if old.correct == new.correct:
            return None
        base = [c == "1" for c in old.correct]
        now = [c == "1" for c in new.correct]
        drop, gain = paired_accuracy(base, now), paired_accuracy(now, base)
        if not any(accuracy_drop_exceeds(p, tolerance, alpha=alpha) for p in (drop, gain)):
            return None
        low, high = drop_interval(drop)
        return -drop.drop, -high, -low

    return test


def judge_changes(series: Series, thresholds: Thresholds, test: ChangeTest) -> Verdict:
    """Return the verdict on a deterministic series: a step wherever `test` finds a change between two runs."""
    history = thresholds.history
    n = len(series.points)
    up = bool(series.metric.higher_is_better)
    steps, findings = [], []
    for i in range(1, n):
        found = test(series.points[i - 1], series.points[i])
        if found is None:
            continue
        change, low, high = found
        step = Step(i - 1, i, change, low, high, worse_side(change, up) > 0, i >= n - history.new_runs)
        steps.append(step)
        if step.new:
            unit = "points" if series.metric.judged == "accuracy" else "ratio"
            findings.append(Finding("step", step_message(series, step, unit), step.worse))
    last = series.points[-1]
    newest = Finding(
        "newest",
        f"newest {last.run.label}: {series.metric.name} {last.value:.6g}, "
        + ("a change from the run before it" if steps and steps[-1].after == n - 1 else "as the run before it"),
        False,
    )
    return Verdict(series, tuple(steps), tuple(p.value for p in series.points), None, max(0, n - 1 - history.window),
                   (newest, *findings))
