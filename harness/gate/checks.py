"""The gate's checks of one case: accuracy against fp32, the speedup floor, and each metric against the baseline.

Outcomes (OUTCOMES): "pass"; "fail" (a regression); "stale" (a deterministic metric got better than the baseline
beyond its tolerance: refresh the baseline on purpose, it fails); "improved" (a timing or memory gain beyond the
tolerance: reported, never fails); "unjudged" (a planned check that could not be judged: no baseline, a busy
machine, a re-measurement that did not complete, ...; the message says why and what would judge it, and the run's
policy, --unjudged fail|warn, decides what it does to the verdict); "info" (no check was planned here: a variant
without a floor, or whose floor needs hardware this machine lacks; shown, never counted). Timing checks come out of
this module as TimingTests; runner.Gate turns them into Checks with Holm's procedure over the run: a check flagged
by its first measurement is re-measured in a fresh process, and fails only on both runs together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import partial

from harness.gate.metrics import METRICS, Metric, ratio_log_se
from harness.gate.spreads import SpreadModel
from harness.gate.store import IDENTITY_KEYS, UPDATE_HINT, BaselineEntry
from harness.gate.thresholds import Thresholds
from harness.results import CaseResult
from harness.stats import accuracy_drop_exceeds, paired_accuracy
from harness.timing_stats import RunSpread, ShiftTest, flagged, pooled_shift_test, shift_test

PASS, FAIL, STALE, IMPROVED, UNJUDGED, INFO = "pass", "fail", "stale", "improved", "unjudged", "info"
OUTCOMES = (PASS, FAIL, STALE, IMPROVED, UNJUDGED, INFO)
LABELS = {FAIL: "REGRESSION", STALE: "STALE BASELINE", IMPROVED: "IMPROVED", UNJUDGED: "UNJUDGED", INFO: "INFO",
          PASS: "PASS"}
JUDGED = (PASS, FAIL, STALE, IMPROVED)
"""The outcomes of a check that was planned and judged; UNJUDGED was planned and not judged; INFO was not planned."""


@dataclass(frozen=True)
class Check:
    """One check of one case and metric; `source` is the file its limit or baseline came from."""

    case_id: str
    metric: str
    outcome: str
    value: float | None
    limit: float | None
    baseline: float | None
    source: str
    message: str
    p_value: float | None = None

    @property
    def failed(self) -> bool:
        """Return True when this check fails the gate: a regression, or a stale deterministic baseline."""
        return self.outcome in (FAIL, STALE)

    @property
    def unjudged(self) -> bool:
        """Return True when this check was planned but could not be judged (the run's policy decides)."""
        return self.outcome == UNJUDGED

    def line(self) -> str:
        """Return one line naming the case, metric, measured value, limit, baseline value and source file."""
        return (
            f"{LABELS[self.outcome]} {self.case_id} {self.metric}: measured {_fmt(self.value)}, limit "
            f"{_fmt(self.limit)}, baseline {_fmt(self.baseline)} (from {self.source}): {self.message}"
        )

    def to_dict(self) -> dict[str, object]:
        """Return the check for the run record."""
        return asdict(self)


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.6g}"


def not_ok(case: CaseResult, metric: str, source: str, culprit: CaseResult | None = None) -> Check:
    """Return the unjudged check of `case` because `culprit` (the case itself unless given) did not run."""
    culprit = culprit or case
    reason = f"{culprit.case_id} did not run ({culprit.status}: {culprit.reason or 'no reason given'})"
    return Check(case.case_id, metric, UNJUDGED, None, None, None, source, reason)


# --------------------------------------------------------------------------------------------- accuracy


def check_accuracy(case: CaseResult, reference: CaseResult, thresholds: Thresholds) -> Check:
    """Return the accuracy check of `case` against fp32 of the same run (`reference`, same images).

    Fails only when the paired test shows, at thresholds.accuracy_alpha, a drop larger than the variant's
    allowance (the sum over its techniques); a gain never fails. limit: fp32's top-1 minus the allowance.
    """
    source = str(thresholds.path)
    for c in (case, reference):
        if c.status != "ok":
            return not_ok(case, "top1_vs_fp32", source, culprit=c)
    check = partial(Check, case.case_id, "top1_vs_fp32")
    if case.top1 is None or reference.top1 is None or not case.correct or not reference.correct:
        return check("fail", case.top1, None, reference.top1, source,
                     "top-1 or its per-image results were not measured; the harness must evaluate every ok case")
    allowed = thresholds.allowed_drop(case.variant)
    drop = paired_accuracy(reference.correct, case.correct)
    failed = accuracy_drop_exceeds(drop, allowed, alpha=thresholds.accuracy_alpha)
    message = (
        f"against {reference.case_id} on the same {drop.n} images: {drop.base_only} right only before, "
        f"{drop.new_only} right only now, change {-drop.drop * 100:+.2f} points (one-sided McNemar "
        f"p={drop.p_value:.3g}); allowed drop {allowed * 100:.2f} points (sum over techniques) at alpha "
        f"{thresholds.accuracy_alpha:g}"
    )
    return check("fail" if failed else "pass", case.top1, reference.top1 - allowed, reference.top1, source, message)


def identity_mismatch(case: CaseResult, entry: BaselineEntry) -> str | None:
    """Return what differs between the case's identity and the baseline entry's, or None when all match."""
    differs = [
        f"{key} {entry.identity.get(key)!r} in the baseline, {case.identity.get(key)!r} now"
        for key in IDENTITY_KEYS
        if entry.identity.get(key) != case.identity.get(key)
    ]
    return "; ".join(differs) or None


def check_accuracy_against_baseline(
    case: CaseResult, entry: BaselineEntry, thresholds: Thresholds, source: str
) -> Check:
    """Return top-1 against the baseline: the paired test on the same images of the same model, else refused."""
    check = partial(Check, case.case_id, "top1")
    stored, bits = entry.values.get("top1"), entry.correct_bits()
    if case.top1 is None or stored is None or not bits or not case.correct:
        return check(UNJUDGED, case.top1, None, stored, source,
                     "top-1 or its per-image results are missing on a side; record the baseline again with "
                     f"{_hint()}")
    mismatch = identity_mismatch(case, entry)
    if mismatch or len(bits) != len(case.correct):
        what = mismatch or f"{len(bits)} images in the baseline, {len(case.correct)} now"
        return check(
            UNJUDGED, case.top1, None, stored, source,
            f"refused: the baseline's per-image results are of another model or other images ({what}), so they "
            "cannot be paired. If the change is on purpose, compare the two runs (python -m harness compare) and "
            f"refresh the baseline with {_hint()}",
        )
    allowed = thresholds.tolerance("top1", case.device)
    drop, gain = paired_accuracy(bits, case.correct), paired_accuracy(case.correct, bits)
    alpha = thresholds.accuracy_alpha
    detail = (
        f"paired test on {drop.n} images of the same model: {drop.base_only} right only in the baseline, "
        f"{drop.new_only} right only now, change {-drop.drop * 100:+.2f} points, allowed {allowed * 100:.2f} at "
        f"alpha {alpha:g}"
    )
    if accuracy_drop_exceeds(drop, allowed, alpha=alpha):
        return check("fail", case.top1, stored - allowed, stored, source, f"worse than the baseline: {detail}")
    if accuracy_drop_exceeds(gain, allowed, alpha=alpha):
        return check("stale", case.top1, stored + allowed, stored, source, f"better than the baseline: {detail}. "
                     f"{_stale_advice()}")
    return check("pass", case.top1, stored - allowed, stored, source, detail)


def _hint() -> str:
    return UPDATE_HINT


def _stale_advice() -> str:
    return (
        f"If the gain is intended, refresh the baseline on purpose with {_hint()}; if not, find out why (a technique "
        "that stopped applying can look like a gain)"
    )


# ------------------------------------------------------------------------------------- deterministic


def check_value(case: CaseResult, entry: BaselineEntry, metric: Metric, thresholds: Thresholds, source: str) -> Check:
    """Return an exact or memory metric against the baseline: worse beyond the tolerance fails; better beyond it
    is stale (exact metrics, which only a change can move) or improved (memory, which is measured)."""
    check = partial(Check, case.case_id, metric.name)
    value, stored = metric.read(case), entry.values.get(metric.name)
    if value is None or stored is None:
        if metric.judged == "memory" and value is None:
            why = ("not measured on this platform (the byte-counting CPU allocator needs g++ to build: "
                   "install it, or run with --unjudged warn)")
        else:
            why = "not in this run" if value is None else f"not in the baseline; record it with {_hint()}"
        return check(UNJUDGED, value, None, stored, source, f"{metric.name} is {why}")
    tolerance = thresholds.tolerance(metric.name, case.device)
    slack = max(abs(stored) * tolerance, thresholds.min_change(metric.name))
    sign = 1.0 if metric.higher_is_better else -1.0
    gain = sign * (value - stored)
    worse_limit, better_limit = stored - sign * slack, stored + sign * slack
    change = f"{(value - stored) / stored:+.2%}" if stored else f"{value - stored:+.6g}"
    how = f"change {change}, tolerance {tolerance:.1%}" + (f" (changes up to {slack:g} ignored)" if slack else "")
    if gain < -slack:
        return check("fail", value, worse_limit, stored, source, f"worse than the baseline: {how}")
    if gain > slack:
        if metric.judged == "exact":
            return check("stale", value, better_limit, stored, source,
                         f"better than the baseline: {how}. {_stale_advice()}")
        return check("improved", value, better_limit, stored, source,
                     f"better than the baseline: {how}; reported, not failed: refresh the baseline to keep the gain")
    return check("pass", value, worse_limit, stored, source, how)


# ------------------------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class TimingTest:
    """A timing ratio of one case against its baseline runs (or a floor), before Holm's verdict.

    key: the check's name in the run's Holm family; limit: the value beyond which the change exceeds the
    tolerance (a floor: the floor itself); reference: the baseline's mean ratio (or the floor); shift: the test of
    this run against `spread` (the baseline's runs, or the floor with the case's spread); log_se: this run's own
    standard error of log(value); about_one: the variant runs at about 1x, so a gain is never reported.
    """

    case_id: str
    metric: str
    value: float
    limit: float
    reference: float
    tolerance: float
    shift: ShiftTest
    source: str
    spread: RunSpread
    log_se: float
    higher_is_better: bool
    exact_center: bool = False
    about_one: bool = False

    @property
    def key(self) -> str:
        """Return the check's name in the run's family of timing checks."""
        return f"{self.case_id}:{self.metric}"

    @property
    def beyond_tolerance(self) -> bool:
        """Return True when the measured change is worse than the tolerance allows."""
        return self.shift.worse > math.log1p(self.tolerance)

    def flagged(self, screen_alpha: float) -> bool:
        """Return True when this first measurement must be re-measured in a fresh process (timing_stats.flagged)."""
        return flagged(self.shift, tolerance=self.tolerance, screen_alpha=screen_alpha)

    def pooled_with(self, again: TimingTest) -> ShiftTest:
        """Return the test of this run and a fresh-process re-measurement together, against the same spread."""
        return pooled_shift_test(
            [math.log(self.value), math.log(again.value)],
            [self.log_se, again.log_se],
            self.spread,
            higher_is_better=self.higher_is_better,
            exact_center=self.exact_center,
        )

    def describe(self) -> str:
        """Return how the value sits against its reference, for a check's message."""
        noise = f"a spread of {self.shift.scale:.3f} in log units (t, {self.shift.dof:g} dof)"
        if self.metric == "speedup_floor":
            where = f"{abs(self.value / self.reference - 1):.1%} {'below' if self.value < self.reference else 'above'}"
            return (
                f"speedup {self.value:.4g}x against the floor {self.reference:g}x ({where} it), one-sided "
                f"p={self.shift.p_worse:.2g} of being below it, with {noise}"
            )
        direction = "worse" if self.shift.worse >= 0 else "better"
        return (
            f"{self.value:.4g} against the baseline mean {self.reference:.4g}: {abs(self.shift.change):.1%} "
            f"{direction} (tolerance {self.tolerance:.0%}), one-sided p={self.shift.p_worse:.2g} of being worse, "
            f"with {noise}"
        )


def speedup_floor_test(
    case: CaseResult, thresholds: Thresholds, spread_sd: float, spread_dof: float, machine: Mapping[str, object]
) -> TimingTest | Check:
    """Return the floor test of a variant's speedup on `machine` (an environment fingerprint), or an info check
    saying why the case has no floor here (none configured, or the hardware lacks what the speedup rests on)."""
    source = str(thresholds.path)
    found = thresholds.floor(case.variant, case.device, case.batch_size, machine)
    floor = found.value
    value = (case.ratios.get("speedup_vs_fp32") or {}).get("value")
    if floor is None:
        return Check(case.case_id, "speedup_floor", INFO, value, None, None, source, f"no floor: {found.why}")
    if not isinstance(value, int | float) or value <= 0:
        return Check(case.case_id, "speedup_floor", "fail", None, floor, None, source,
                     "no speedup was measured but the case has a floor; the harness must time it against fp32")
    at_floor = RunSpread(center=math.log(floor), sd=spread_sd, dof=spread_dof, runs=1)
    log_se = ratio_log_se(case, "speedup_vs_fp32")
    shift = shift_test(math.log(value), log_se, at_floor, higher_is_better=True, exact_center=True)
    return TimingTest(case.case_id, "speedup_floor", float(value), floor, floor, 0.0, shift, source,
                      spread=at_floor, log_se=log_se, higher_is_better=True, exact_center=True)


def baseline_timing_test(
    case: CaseResult, entry: BaselineEntry, metric: Metric, thresholds: Thresholds, source: str, spreads: SpreadModel
) -> TimingTest | Check:
    """Return the timing ratio `metric` of the case against the baseline's runs (their spread from `spreads`, fitted
    over the baseline's cases: harness/gate/spreads.py), or an unjudged check."""
    value, runs = metric.read(case), entry.timing.get(metric.name)
    if value is None or runs is None:
        side = "this run" if value is None else f"the baseline; record it with {UPDATE_HINT}"
        return Check(case.case_id, metric.name, UNJUDGED, value, None, None, source, f"{metric.name} is not in {side}")
    spread = spreads.run_spread(case.case_id, metric.name, runs)
    log_se = ratio_log_se(case, metric.name)
    shift = shift_test(math.log(value), log_se, spread, higher_is_better=bool(metric.higher_is_better))
    tolerance = thresholds.tolerance(metric.name, case.device)
    sign = 1.0 if metric.higher_is_better else -1.0
    center = math.exp(spread.center)
    limit = center * (1.0 + tolerance) ** (-sign)
    speedup = entry.timing.get("speedup_vs_fp32")
    about_one = speedup is not None and abs(math.log(speedup.center)) < math.log1p(thresholds.timing.about_one)
    return TimingTest(case.case_id, metric.name, value, limit, center, tolerance, shift, source, spread=spread,
                      log_se=log_se, higher_is_better=bool(metric.higher_is_better), about_one=about_one)


def baseline_checks(
    case: CaseResult, entry: BaselineEntry, thresholds: Thresholds, source: str, spreads: SpreadModel
) -> list[Check | TimingTest]:
    """Return every metric of `case` that applies to it, checked against its baseline entry (timing ratios against
    the spreads the baseline's runs show, `spreads`)."""
    found: list[Check | TimingTest] = []
    for metric in METRICS:
        if not metric.applies(case):
            continue
        if metric.judged == "accuracy":
            found.append(check_accuracy_against_baseline(case, entry, thresholds, source))
        elif metric.judged == "timing":
            found.append(baseline_timing_test(case, entry, metric, thresholds, source, spreads))
        else:
            found.append(check_value(case, entry, metric, thresholds, source))
    return found
