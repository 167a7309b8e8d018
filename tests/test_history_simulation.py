"""The history rules on simulated 60-night series at the noise measured here (issue 12's acceptance numbers).

SD is the pooled between-run log-sd of the reduced gate's three timing ratios on the 2-core Xeon this was tuned on
(thresholds.json "history" _doc; scripts/history_tune.py runs the same simulation with more seeds). Each series is
judged night by night, on the runs up to that night, as `history check` would judge it; seeds are fixed.
"""

from __future__ import annotations

import pytest

from harness.gate.thresholds import Thresholds, load_thresholds
from harness.history import simulate

pytestmark = pytest.mark.statistical

SD = 0.016


@pytest.fixture(scope="module")
def thresholds() -> Thresholds:
    """The reviewed thresholds file of the repository."""
    return load_thresholds()


def test_a_flat_series_yields_no_step_in_19_of_20(thresholds: Thresholds) -> None:
    flat = simulate.tally(simulate.FLAT, thresholds, sd=SD, seeds=range(20), rules=("newest", "step", "drift"))
    assert sum(1 for steps in flat.final_steps if steps == 0) >= 19, flat.final_steps
    assert flat.alarms.count(None) >= 19, flat.alarms  # and no night of the 60 fails the check


def test_a_5_percent_step_is_found_within_3_nights_in_9_of_10(thresholds: Thresholds) -> None:
    step = simulate.tally(simulate.STEP, thresholds, sd=SD, seeds=range(10), rules=("newest", "step"))
    assert step.within(3) >= 9, (simulate.STEP_NIGHT, step.alarms)
    found = [simulate.final_verdict(simulate.values(simulate.STEP, SD, seed), thresholds).steps for seed in range(10)]
    assert all(len(steps) == 1 and steps[0].worse for steps in found), found  # the page shows one step each,
    assert sum(abs(s.after - simulate.STEP_NIGHT) <= 1 for (s,) in found) >= 9, found  # within a night of the truth,
    assert sum(s.low <= simulate.STEP.step <= s.high for (s,) in found) >= 9, found  # its interval holds the -5%


def test_a_drift_of_half_a_percent_a_night_is_flagged_within_20_nights_in_9_of_10(thresholds: Thresholds) -> None:
    drift = simulate.tally(simulate.DRIFT, thresholds, sd=SD, seeds=range(10), rules=("drift",))
    assert drift.within(20) >= 9, (simulate.DRIFT_NIGHT, drift.alarms)
    assert drift.early == 0
