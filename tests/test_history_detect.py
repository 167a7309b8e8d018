"""The history rules on hand-made series: the newest run's window, steps located, outliers, drift, exact and top1."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from harness.gate.metrics import get_metric
from harness.gate.thresholds import Thresholds, load_thresholds
from harness.history.changepoints import change_points
from harness.history.detect import judge
from harness.history.series import Point, Run, Series, SeriesKey
from harness.history.verdict import Verdict


@pytest.fixture(scope="module")
def thresholds() -> Thresholds:
    """The reviewed thresholds file of the repository."""
    return load_thresholds()


def series(metric: str, values: list[float], *, correct: list[str] | None = None) -> Series:
    """Return a series of `metric` of dynamic_int8 on the CPU, one run per value."""
    key = SeriesKey("cpu-test", "digits", "resnet18", "dynamic_int8-cpu-bs1", metric)
    out = Series(key, get_metric(metric), "cpu", 1)
    for i, value in enumerate(values):
        created = f"2026-11-{1 + i // 24:02d}T{i % 24:02d}:00:00+00:00"
        run = Run(i + 1, "cpu-test", created, f"c{i:06d}", "x.json", False)
        out.points.append(Point(run, value, correct=None if correct is None else correct[i], identity="same"))
    return out


def noisy(n: int, sd: float = 0.016, seed: int = 0, level: float = 2.0) -> list[float]:
    return list(level * np.exp(np.random.default_rng(seed).normal(0, sd, n)))


def failing(verdict: Verdict) -> set[str]:
    return {f.rule for f in verdict.findings if f.fails}


def test_ten_steady_runs_pass_and_a_15_percent_slower_one_fails_at_once(thresholds: Thresholds) -> None:
    steady = noisy(10)
    assert failing(judge(series("speedup_vs_fp32", steady), thresholds)) == set()
    verdict = judge(series("speedup_vs_fp32", [*steady, steady[-1] / 1.15]), thresholds)
    assert failing(verdict) == {"newest"}
    newest = next(f for f in verdict.findings if f.rule == "newest")
    assert "speedup_vs_fp32" in newest.message and "outside the window" in newest.message
    assert "run #11" in newest.message and "c000010" in newest.message
    assert verdict.limit is not None and steady[-1] / 1.15 < verdict.limit < min(steady)


def test_later_nights_confirm_and_locate_the_step(thresholds: Thresholds) -> None:
    values = noisy(25)
    slow = [v / 1.15 if i >= 14 else v for i, v in enumerate(values)]
    verdict = judge(series("speedup_vs_fp32", slow[:16]), thresholds)
    (step,) = verdict.steps
    assert (step.before, step.after) == (13, 14) and step.worse and step.confirmed and step.new
    assert step.low < step.change < step.high and step.change == pytest.approx(-0.13, abs=0.03)
    assert "step" in failing(verdict)
    message = next(f.message for f in verdict.findings if f.rule == "step")
    assert "run #14" in message and "run #15" in message and "95% interval" in message
    later = judge(series("speedup_vs_fp32", slow), thresholds)  # a week on: no longer new, the window moved on
    assert not later.steps[0].new and "newest" not in failing(later)


def test_a_lone_outlier_is_not_a_step_and_a_gain_does_not_fail(thresholds: Thresholds) -> None:
    values = noisy(30, seed=3)
    values[12] *= 0.8
    found = change_points(np.log(values), 0.016, penalty=thresholds.history.penalty)
    assert found.cuts == [] and found.outliers == [12]
    assert not judge(series("speedup_vs_fp32", values), thresholds).steps
    faster = [v * 1.2 if i >= 20 else v for i, v in enumerate(noisy(25, seed=4))]
    verdict = judge(series("speedup_vs_fp32", faster), thresholds)
    assert len(verdict.steps) == 1 and not verdict.steps[0].worse and not verdict.failed


def test_latency_is_worse_when_it_rises(thresholds: Thresholds) -> None:
    values = noisy(12, level=1.0)
    assert failing(judge(series("latency_vs_yardstick", [*values, 1.2]), thresholds)) == {"newest"}
    assert failing(judge(series("latency_vs_yardstick", [*values, 0.8]), thresholds)) == set()


def test_ten_nights_of_one_and_a_half_percent_are_drift(thresholds: Thresholds) -> None:
    values = noisy(30, seed=5)
    drifting = [v * (0.985 ** max(0, i - 19)) for i, v in enumerate(values)]
    verdict = judge(series("speedup_vs_fp32", drifting), thresholds)
    assert "drift" in failing(verdict)
    drift = next(f for f in verdict.findings if f.rule == "drift")
    assert "best level" in drift.message and "newest 20 runs" in drift.message


def test_too_few_runs_are_not_judged(thresholds: Thresholds) -> None:
    verdict = judge(series("speedup_vs_fp32", [2.0, 1.0]), thresholds)
    assert not verdict.judged and not verdict.failed


def test_any_change_of_an_exact_metric_is_a_step(thresholds: Thresholds) -> None:
    sizes = [11_800_000.0] * 8 + [11_900_000.0]
    verdict = judge(series("size_bytes", sizes), thresholds)
    (step,) = verdict.steps
    assert step.after == 8 and step.worse and failing(verdict) == {"step"}
    shrunk = judge(series("size_bytes", [11_800_000.0] * 8 + [11_000_000.0]), thresholds)
    assert shrunk.steps and not shrunk.failed
    old = judge(series("size_bytes", sizes + [11_900_000.0] * thresholds.history.new_runs), thresholds)
    assert old.steps and not old.failed


def test_top1_steps_come_from_the_paired_test(thresholds: Thresholds) -> None:
    base = "1" * 480 + "0" * 20
    one_image = "0" + "1" * 479 + "1" + "0" * 19
    twenty_worse = "0" * 20 + "1" * 460 + "0" * 20
    same = judge(series("top1", [0.96] * 8 + [0.96], correct=[base] * 8 + [one_image]), thresholds)
    assert not same.steps
    worse = judge(series("top1", [0.96] * 8 + [0.92], correct=[base] * 8 + [twenty_worse]), thresholds)
    (step,) = worse.steps
    assert step.worse and step.change == pytest.approx(-0.04) and step.low < step.change < step.high
    assert failing(worse) == {"step"}


def test_the_rules_read_the_thresholds_file(thresholds: Thresholds) -> None:
    values = noisy(12)
    jump = [*values, values[-1] / 1.15]
    strict = dataclasses.replace(thresholds, history=dataclasses.replace(thresholds.history, z=20.0))
    assert judge(series("speedup_vs_fp32", jump), thresholds).failed
    assert not judge(series("speedup_vs_fp32", jump), strict).failed
    assert math.isclose(thresholds.history.z, 4.0)
