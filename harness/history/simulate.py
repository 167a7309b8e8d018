"""Simulated nightly series (flat, a step, a slow drift) judged night by night, to tune and test the history rules.

The noise is Gaussian in log space with the sd measured on this machine (thresholds "history" _doc says which runs);
every series is judged as `history check` would judge it each night, on the runs up to that night.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from harness.gate.metrics import get_metric
from harness.gate.thresholds import Thresholds
from harness.history.detect import judge
from harness.history.series import Point, Run, Series, SeriesKey
from harness.history.verdict import Verdict

NIGHTS = 60
STEP_NIGHT = 30
DRIFT_NIGHT = 20
BASE = 2.0
START = datetime(2026, 1, 1, 2, 23, tzinfo=UTC)


@dataclass(frozen=True)
class Scenario:
    """A series shape: a relative `step` (-0.05) from STEP_NIGHT on, a relative `drift` per night from DRIFT_NIGHT."""

    name: str
    step: float = 0.0
    drift: float = 0.0

    @property
    def onset(self) -> int | None:
        """Return the first night that differs from a flat series (None for a flat one)."""
        return STEP_NIGHT if self.step else DRIFT_NIGHT if self.drift else None


FLAT = Scenario("flat")
STEP = Scenario("5% step", step=-0.05)
DRIFT = Scenario("0.5%/night drift", drift=-0.005)


def values(scenario: Scenario, sd: float, seed: int, nights: int = NIGHTS) -> np.ndarray:
    """Return `nights` speedups around BASE: the scenario's shape times log-normal noise of `sd`."""
    rng = np.random.default_rng(seed)
    log = np.full(nights, math.log(BASE)) + rng.normal(0.0, sd, nights)
    nights_idx = np.arange(nights)
    if scenario.step:
        log[nights_idx >= STEP_NIGHT] += math.log1p(scenario.step)
    if scenario.drift:
        since = np.clip(nights_idx - DRIFT_NIGHT + 1, 0, None)
        log += since * math.log1p(scenario.drift)
    return np.exp(log)


def series_of(numbers: np.ndarray) -> Series:
    """Return a speedup series of a CPU case at batch 1, one run per night."""
    key = SeriesKey("sim", "digits", "resnet18", "sim-cpu-bs1", "speedup_vs_fp32")
    series = Series(key, get_metric("speedup_vs_fp32"), "cpu", 1)
    for night, value in enumerate(numbers):
        created = (START + timedelta(days=night)).isoformat()
        run = Run(night + 1, "sim", created, f"{night:07d}", "sim", False)
        series.points.append(Point(run, float(value)))
    return series


def first_failure(numbers: np.ndarray, thresholds: Thresholds, rules: tuple[str, ...]) -> int | None:
    """Return the first night whose check (on the runs up to it) fails by one of `rules`, or None."""
    for night in range(thresholds.history.min_runs, len(numbers) + 1):
        verdict = judge(series_of(numbers[:night]), thresholds)
        if any(f.fails and f.rule in rules for f in verdict.findings):
            return night - 1
    return None


def final_verdict(numbers: np.ndarray, thresholds: Thresholds) -> Verdict:
    """Return the verdict on the whole series (the steps the page marks)."""
    return judge(series_of(numbers), thresholds)


@dataclass(frozen=True)
class Tally:
    """How one scenario fared over its seeds: alarms (nights of first failure, None: none), and final steps."""

    scenario: Scenario
    alarms: tuple[int | None, ...]
    final_steps: tuple[int, ...]

    def within(self, nights: int) -> int:
        """Return how many series failed within `nights` nights of the onset (the onset night counts as the first)."""
        onset = self.scenario.onset or 0
        return sum(1 for a in self.alarms if a is not None and onset <= a < onset + nights)

    @property
    def early(self) -> int:
        """Return how many series failed before the onset (false alarms)."""
        onset = self.scenario.onset if self.scenario.onset is not None else 10**9
        return sum(1 for a in self.alarms if a is not None and a < onset)


def tally(
    scenario: Scenario, thresholds: Thresholds, *, sd: float, seeds: range, rules: tuple[str, ...]
) -> Tally:
    """Return the Tally of `scenario` over `seeds` (seed s -> numpy default_rng(s))."""
    alarms, steps = [], []
    for seed in seeds:
        numbers = values(scenario, sd, seed)
        alarms.append(first_failure(numbers, thresholds, rules))
        steps.append(len(final_verdict(numbers, thresholds).steps))
    return Tally(scenario, tuple(alarms), tuple(steps))
