"""Timing rounds where the noise is: each case's rounds sized from its baseline, so that the run's timing checks
together detect the smallest slowdowns they can, in no more time than the run takes at the default budget.

A run's log ratio varies by a between-process part (the host's state, where the process's pages and threads landed:
more rounds do not touch it) and a within-process part (the rounds' own noise, which falls as 1 / rounds). The
baseline knows both for each case: the spread of its runs (shrunk, harness/gate/spreads.py) and each run's own
standard error at the rounds it had. The plan (plan_rounds) gives rounds where they lower a check's detectable
slowdown the most per millisecond: cases whose noise is mostly within the process get more rounds, cases whose noise
no number of rounds would lower get the minimum, and the total time stays the default's.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from harness.gate.cases import GateCase
from harness.gate.metrics import REFERENCE
from harness.gate.spreads import SpreadModel
from harness.gate.store import Baseline
from harness.results import case_id

MAX_FACTOR = 4
"""A case gets at most this many times the rounds the default budget would give it."""


@dataclass(frozen=True)
class CaseCost:
    """What one case's timing costs and how noisy it is: a round's milliseconds (both callables), the rounds the
    default budget gives it, the within-process variance of a run's log ratio at those rounds, the rest of a run's
    variance (between processes), and the variance of the baseline's mean."""

    case_id: str
    round_ms: float
    rounds0: int
    within_var0: float
    between_var: float
    center_var: float

    def variance(self, rounds: int) -> float:
        """Return one run's variance plus the baseline mean's, at `rounds` rounds."""
        return self.between_var + self.center_var + self.within_var0 * self.rounds0 / rounds


def default_rounds(round_ms: float, budget_s: float, min_rounds: int) -> int:
    """Return the rounds the default budget gives a case whose round takes `round_ms`."""
    return max(min_rounds, math.ceil(budget_s * 1000.0 / max(round_ms, 1e-6)))


def plan_rounds(costs: Sequence[CaseCost], *, min_rounds: int) -> dict[str, int]:
    """Return {case id: rounds} that make the sum of the checks' detectable slowdowns (each in proportion to the
    standard deviation of its run against the baseline, CaseCost.variance) smallest, in at most the time the
    default rounds take.

    At the optimum a round's last millisecond lowers every case's standard deviation alike (a Lagrange multiplier
    `rate`): d sqrt(variance) / d rounds = -rate * round_ms. A case whose noise is mostly within the process gains
    from rounds; one whose noise is between processes gains little and keeps the minimum.
    """
    if not costs:
        return {}
    budget = sum(c.rounds0 * c.round_ms for c in costs)

    def gain(c: CaseCost, rounds: float) -> float:  # minus d sqrt(variance) / d rounds, per millisecond
        return c.within_var0 * c.rounds0 / rounds**2 / (2.0 * math.sqrt(c.variance(int(rounds)) or 1e-30)) / c.round_ms

    def rounds_at(rate: float) -> dict[str, int]:
        plan = {}
        for c in costs:
            low, high = float(min_rounds), float(max(min_rounds, MAX_FACTOR * c.rounds0))
            if gain(c, low) <= rate:
                plan[c.case_id] = min_rounds
                continue
            for _ in range(40):  # gain falls as rounds grow: find where it meets the rate
                middle = (low + high) / 2.0
                low, high = (middle, high) if gain(c, middle) > rate else (low, middle)
            plan[c.case_id] = max(min_rounds, math.floor(low))
        return plan

    def spent(plan: Mapping[str, int]) -> float:
        return sum(plan[c.case_id] * c.round_ms for c in costs)

    low, high = 0.0, max(gain(c, float(min_rounds)) for c in costs) * 2.0 + 1e-30
    if spent(rounds_at(high)) > budget:  # the minimum rounds alone exceed the budget: keep the default
        return {c.case_id: c.rounds0 for c in costs}
    for _ in range(60):
        middle = (low + high) / 2.0
        low, high = (low, middle) if spent(rounds_at(middle)) <= budget else (middle, high)
    return rounds_at(high)


def costs_of(
    cases: Sequence[GateCase], baseline: Baseline, spreads: SpreadModel, *, budget_s: float, min_rounds: int
) -> list[CaseCost]:
    """Return the cost and noise of every case the baseline knows well enough to plan (its entry and fp32's at the
    same batch size, with latencies and a timing ratio); other cases keep the default budget."""
    costs = []
    for case in cases:
        entry = baseline.entries.get(case.case_id)
        reference = baseline.entries.get(case_id(REFERENCE, case.device, case.batch_size))
        metric = "latency_vs_yardstick" if case.variant == REFERENCE else "speedup_vs_fp32"
        runs = entry.timing.get(metric) if entry else None
        if entry is None or reference is None or runs is None or not entry.latency_median_ms \
                or not reference.latency_median_ms:
            continue
        fp32_ms = statistics.median(reference.latency_median_ms)
        other_ms = fp32_ms if case.variant == REFERENCE else statistics.median(entry.latency_median_ms)
        round_ms = fp32_ms + other_ms  # the yardstick costs about what fp32 ResNet18 does
        rounds0 = default_rounds(round_ms, budget_s, min_rounds)
        recorded = sum(se**2 for se in runs.log_se) / len(runs.log_se)  # at the rounds the baseline ran
        per_round = runs.within_var_per_round
        within0 = per_round / rounds0 if per_round is not None else recorded
        spread = spreads.run_spread(case.case_id, metric, runs)
        costs.append(CaseCost(
            case_id=case.case_id, round_ms=round_ms, rounds0=rounds0, within_var0=within0,
            between_var=max(spread.sd**2 - recorded, 0.0), center_var=spread.sd**2 / spread.runs,
        ))
    return costs
