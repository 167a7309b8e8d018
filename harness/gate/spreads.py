"""Every timing check's spread between fresh-process runs, for one baseline: fitted jointly per device and batch
regime (harness/shrinkage.py), each case shrunk towards its group by its own evidence."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from harness.gate.store import BaselineEntry, TimingRuns
from harness.gate.thresholds import Thresholds, device_kind
from harness.results import parse_case_id
from harness.shrinkage import Level, Shrunk, fit_group
from harness.timing_stats import RunSpread

Group = tuple[str, str]
"""(device kind, spread regime: "small" or "large" batch)."""


@dataclass(frozen=True)
class SpreadModel:
    """The spreads of a baseline's timing checks: per group its shared level, per (case id, metric) its own."""

    thresholds: Thresholds
    levels: Mapping[Group, Level] = field(default_factory=dict)
    spreads: Mapping[tuple[str, str], Shrunk] = field(default_factory=dict)

    @classmethod
    def of(cls, entries: Mapping[str, BaselineEntry], thresholds: Thresholds) -> SpreadModel:
        """Return the model fitted to the timing runs of `entries` (a baseline's, or one run's for `compare`)."""
        grouped: dict[Group, dict[tuple[str, str], TimingRuns]] = {}
        for case_id, entry in entries.items():
            _, device, batch_size = parse_case_id(case_id)
            group = (device_kind(device), thresholds.spread_regime(batch_size))
            for metric, runs in entry.timing.items():
                grouped.setdefault(group, {})[(case_id, metric)] = runs
        levels, spreads = {}, {}
        for group, members in grouped.items():
            prior = thresholds.timing.prior_spread[group[0]][group[1]]
            samples = {"\0".join(key): [math.log(v) for v in runs.values] for key, runs in members.items()}
            level, shrunk = fit_group(samples, prior_var=prior**2, prior_dof=thresholds.timing.prior_dof)
            levels[group] = level
            spreads.update({tuple(key.split("\0")): value for key, value in shrunk.items()})
        return cls(thresholds, levels, spreads)  # type: ignore[arg-type]

    def group_of(self, device: str, batch_size: int) -> Group:
        """Return the group of a case."""
        return device_kind(device), self.thresholds.spread_regime(batch_size)

    def level(self, device: str, batch_size: int) -> Level:
        """Return the shared level of a case's group (the thresholds' prior where the baseline has no fit)."""
        group = self.group_of(device, batch_size)
        if group in self.levels:
            return self.levels[group]
        prior = self.thresholds.prior_spread(device, batch_size)
        return Level(prior**2, self.thresholds.timing.prior_dof, 0, fitted=False)

    def run_spread(self, case_id: str, metric: str, runs: TimingRuns) -> RunSpread:
        """Return where a new run's log value of the check lands: the baseline runs' mean, the shrunk spread."""
        shrunk = self.spreads.get((case_id, metric))
        center = sum(math.log(v) for v in runs.values) / len(runs.values)
        if shrunk is None:
            _, device, batch_size = parse_case_id(case_id)
            level = self.level(device, batch_size)
            return RunSpread(center=center, sd=math.sqrt(level.var), dof=level.dof, runs=len(runs.values))
        return RunSpread(center=center, sd=shrunk.sd, dof=shrunk.dof, runs=len(runs.values))

    def case_spread(self, case_id: str, device: str, batch_size: int) -> tuple[float, float]:
        """Return (sd, dof) of a variant's speedup between runs: its own shrunk spread when the baseline has it,
        else its group's level (what a floor check needs to know about the noise of one run)."""
        shrunk = self.spreads.get((case_id, "speedup_vs_fp32"))
        if shrunk is not None:
            return shrunk.sd, shrunk.dof
        level = self.level(device, batch_size)
        return math.sqrt(level.var), level.dof
