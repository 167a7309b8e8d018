"""How `ab` judges head against base: latency from interleaved rounds, accuracy on the same images, sizes exactly.

Latency. Each round, each side times its case and the fixed yardstick network in the same burst; the side's value
for the round is log(median model ms / median yardstick ms). A process's own speed (where its threads and pages
landed, the machine's state as it started) scales both calls alike and cancels in that quotient; what drifts
while the two sides take turns cancels in the round's difference head - base. The change is the Hodges-Lehmann
estimate of the rounds' differences with its signed-rank interval (harness/timing_stats.py), and its scale adds
the spread of a process's yardstick-normalized latency around its true value (thresholds "ab".process_sd, twice:
one process per side), which rounds in one process cannot show.

A slowdown fails as the gate's timing checks do: flagged when the first measurement is worse than half the
tolerance and significant at screen_alpha, then confirmed by a second measurement in two fresh workers that is on
its own worse than half the tolerance, the pair's mean worse than the tolerance and significant at its Holm step
over the run's timing checks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from harness.errors import HarnessError
from harness.stats import accuracy_drop_exceeds, drop_interval, paired_accuracy
from harness.timing_stats import ShiftTest, confirmed, flagged, hodges_lehmann

REGRESSION = "regression"
IMPROVEMENT = "improvement"
SAME = "same"
FLAGGED = "flagged, not confirmed"
UNJUDGED = "unjudged"


@dataclass(frozen=True)
class Burst:
    """One side's timed calls in one round: the model's and the yardstick's milliseconds."""

    model_ms: tuple[float, ...]
    yardstick_ms: tuple[float, ...]

    def log_normalized(self) -> float:
        """Return log(median model ms / median yardstick ms)."""
        model, yard = float(np.median(self.model_ms)), float(np.median(self.yardstick_ms))
        if not (model > 0 and yard > 0 and math.isfinite(model) and math.isfinite(yard)):
            raise HarnessError(f"a timed burst must hold positive finite times, got {model} and {yard} ms")
        return math.log(model / yard)


@dataclass(frozen=True)
class LatencyChange:
    """Head's latency over base's, yardstick-normalized: ratio > 1 means head is slower.

    low/high: the 95% interval of the ratio from the rounds alone; log_se its standard error in log units;
    base_ms/head_ms: each side's median latency over all rounds (as measured, not normalized).
    """

    ratio: float
    low: float
    high: float
    log_se: float
    rounds: int
    base_ms: float
    head_ms: float
    per_round: tuple[tuple[float, float, float, float], ...] = ()
    """Each round's medians: base model, base yardstick, head model, head yardstick (ms), for a later look."""
    contention: float | None = None
    """How much others held the workers back while the rounds ran (harness/contention.py), None: not measured."""
    waits: tuple[str, ...] = ()
    """What a busy machine cost before these rounds: each wait for a quiet machine and its re-timing."""
    yardstick: str = ""
    """The yardstick the rounds normalized by (matched to the model's cost)."""

    def interval(self, process_sd: float, confidence: float = 0.95) -> tuple[float, float]:
        """Return the interval of the ratio with the processes' own spread added to the rounds' (what the verdict
        rests on): the rounds' interval alone says nothing of two other processes."""
        z = float(sps.norm.ppf(0.5 + confidence / 2.0))
        half = z * math.sqrt(self.log_se**2 + 2.0 * process_sd**2)
        return self.ratio * math.exp(-half), self.ratio * math.exp(half)

    @property
    def change(self) -> float:
        """Return the relative change of latency (0.10: head 10% slower)."""
        return self.ratio - 1.0

    def shift(self, process_sd: float, dof: float) -> ShiftTest:
        """Return the change as a ShiftTest in the slower-is-worse direction, with the processes' spread added."""
        return ShiftTest.of(math.log(self.ratio), math.sqrt(self.log_se**2 + 2.0 * process_sd**2), dof)

    def to_dict(self) -> dict[str, object]:
        """Return the fields for the results JSON."""
        return {
            "ratio": self.ratio, "low": self.low, "high": self.high, "log_se": self.log_se, "rounds": self.rounds,
            "base_ms": self.base_ms, "head_ms": self.head_ms, "contention": self.contention,
            "busy_waits": list(self.waits), "yardstick": self.yardstick,
            "per_round_ms": [list(r) for r in self.per_round],
        }


def latency_change(base: Sequence[Burst], head: Sequence[Burst], *, confidence: float = 0.95) -> LatencyChange:
    """Return head against base from round-aligned bursts (base[i] and head[i] were timed in round i)."""
    if len(base) != len(head) or len(base) < 2:
        raise HarnessError(f"need the same number (>= 2) of rounds from each side, got {len(base)} and {len(head)}")
    differences = np.array([h.log_normalized() - b.log_normalized() for b, h in zip(base, head, strict=True)])
    estimate, low, high = hodges_lehmann(differences, confidence)
    z = float(sps.norm.ppf(0.5 + confidence / 2.0))
    return LatencyChange(
        ratio=math.exp(estimate),
        low=math.exp(low),
        high=math.exp(high),
        log_se=(high - low) / (2.0 * z),
        rounds=len(base),
        base_ms=float(np.median([t for b in base for t in b.model_ms])),
        head_ms=float(np.median([t for h in head for t in h.model_ms])),
        per_round=tuple(
            (float(np.median(b.model_ms)), float(np.median(b.yardstick_ms)),
             float(np.median(h.model_ms)), float(np.median(h.yardstick_ms)))
            for b, h in zip(base, head, strict=True)
        ),
    )


@dataclass(frozen=True)
class TimingRule:
    """The numbers a latency change is judged by (thresholds "ab" and "timing")."""

    tolerance: float
    process_sd: float
    dof: float
    screen_alpha: float

    def flags(self, first: LatencyChange) -> bool:
        """Return True when a first measurement is suspect and must be re-measured in fresh workers."""
        return flagged(first.shift(self.process_sd, self.dof), tolerance=self.tolerance, screen_alpha=self.screen_alpha)

    def pooled(self, first: LatencyChange, again: LatencyChange) -> ShiftTest:
        """Return the mean of two measurements' log changes as one ShiftTest (independent processes: half the
        variance of one)."""
        a, b = first.shift(self.process_sd, self.dof), again.shift(self.process_sd, self.dof)
        return ShiftTest.of((a.worse + b.worse) / 2.0, math.sqrt(a.scale**2 + b.scale**2) / 2.0, self.dof)

    def confirms(self, first: LatencyChange, again: LatencyChange, holm_alpha: float) -> bool:
        """Return True when the re-measurement confirms the flagged slowdown at `holm_alpha`."""
        return confirmed(
            again.shift(self.process_sd, self.dof), self.pooled(first, again),
            tolerance=self.tolerance, holm_alpha=holm_alpha,
        )

    def faster(self, change: LatencyChange, alpha: float) -> bool:
        """Return True when head is faster beyond the tolerance, significantly at `alpha` (the run's family alpha
        over its timing checks: a gain is claimed as carefully as a regression is failed)."""
        shift = change.shift(self.process_sd, self.dof)
        return -shift.worse > math.log1p(self.tolerance) and shift.p_better <= alpha


@dataclass(frozen=True)
class AccuracyChange:
    """Head's top-1 against base's on the same images: change in points with its 95% interval, and the verdict."""

    base: float
    head: float
    change: float
    low: float
    high: float
    verdict: str

    def to_dict(self) -> dict[str, float | str]:
        """Return the fields for the results JSON."""
        return {
            "base": self.base, "head": self.head, "change": self.change, "low": self.low, "high": self.high,
            "verdict": self.verdict,
        }


def accuracy_change(base_correct: str, head_correct: str, *, tolerance: float, alpha: float) -> AccuracyChange:
    """Return the paired top-1 change (strings of 0/1 per eval image, same images in the same order).

    A regression: the drop is larger than `tolerance` (points, 0.005 = half a point), significantly at `alpha`
    (the paired test the gate uses); an improvement: the same the other way round.
    """
    if len(base_correct) != len(head_correct):
        raise HarnessError(
            f"base and head evaluated {len(base_correct)} and {len(head_correct)} images: the same data spec, "
            "seed and eval count must give both sides the same images"
        )
    base = [c == "1" for c in base_correct]
    head = [c == "1" for c in head_correct]
    paired = paired_accuracy(base, head)
    low_drop, high_drop = drop_interval(paired)
    drop = sum(base) / len(base) - sum(head) / len(head)
    if accuracy_drop_exceeds(paired, tolerance, alpha=alpha):
        verdict = REGRESSION
    elif accuracy_drop_exceeds(paired_accuracy(head, base), tolerance, alpha=alpha):
        verdict = IMPROVEMENT
    else:
        verdict = SAME
    return AccuracyChange(sum(base) / len(base), sum(head) / len(head), -drop, -high_drop, -low_drop, verdict)


def exact_change(base: float | None, head: float | None, *, tolerance: float, min_abs: float = 0.0) -> str:
    """Return the verdict on a deterministic metric where lower is better (sizes, MACs, peak memory): a change of
    more than `tolerance` (relative) and more than `min_abs` (absolute) either way."""
    if base is None or head is None:
        return SAME
    difference = head - base
    if abs(difference) <= min_abs or difference == 0:
        return SAME
    relative = difference / base if base > 0 else math.copysign(math.inf, difference)
    if relative > tolerance:
        return REGRESSION
    return IMPROVEMENT if -relative > tolerance else SAME
