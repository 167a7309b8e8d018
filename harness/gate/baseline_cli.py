"""`python -m harness baseline write|show`: record a baseline from several runs, and say what it can detect."""

from __future__ import annotations

import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.env import env_key as key_of
from harness.env import fingerprint, machine_of_key
from harness.errors import HarnessError
from harness.gate.cases import GateCase, planned_timing_checks
from harness.gate.spreads import SpreadModel
from harness.gate.store import DEFAULT_ARCH, Baseline, baseline_key, load_baseline, write_baseline
from harness.gate.thresholds import Thresholds, load_thresholds
from harness.results import load_run, parse_case_id
from harness.timing_stats import DetectionRule, OneRemeasurementRule


def write_command(results: Sequence[Path], *, baselines_dir: Path, thresholds: Path | None, force: bool) -> int:
    """Build this environment's baseline from results files of fresh-process gate runs; print what was written."""
    records = [load_run(path) for path in results]
    th = load_thresholds(thresholds)
    for path, record in zip(results, records, strict=True):  # recorded whatever they said: say it
        failing = [c for case in record.cases for c in case.checks if c.get("outcome") in ("fail", "stale")]
        if failing:
            print(f"{path}: {len(failing)} checks failed in this run (recorded all the same: a baseline records what "
                  "this machine measures):")
            for check in failing:
                print(f"  {check.get('case_id')} {check.get('metric')}: {check.get('message')}")
    command = "python -m harness baseline write " + shlex.join(map(str, results))
    paths = write_baseline(baselines_dir, records, command=command, busy_limit=th.timing.busy_limit, force=force)
    if not paths:
        raise HarnessError("no case ran ok in every run, so there is nothing to write; look at the runs' errors")
    for path in paths:
        print(f"wrote {path} from {len(records)} runs")
    return 0


def case_of(case_id: str) -> GateCase:
    """Return the GateCase of an id "<variant>-<device>-bs<N>" (results.parse_case_id)."""
    return GateCase(*parse_case_id(case_id))


def detection_rows(baseline: Baseline, thresholds: Thresholds, family_size: int | None = None) -> list[list[str]]:
    """Return, per timing check of the baseline, its runs, spread and the slowdown it catches with 80% power: by the
    gate's rule (spreads fitted over the baseline's cases, flagged, then re-measured until the evidence decides) and,
    beside it, by the rule before (each case's own spread with the prior, one re-measurement).

    The family is the baseline's own cases (every timing check a gate run over them makes) unless given; the
    power is that of a run whose only regression is this one (the first step of Holm).
    """
    cases = [case_of(cid) for cid in baseline.entries]
    size = family_size or planned_timing_checks(cases, thresholds, machine_of_key(baseline.env_key))
    first_alpha = thresholds.timing.family_alpha / size
    spreads = SpreadModel.of(baseline.entries, thresholds)
    rows = []
    for (cid, entry), case in zip(baseline.entries.items(), cases, strict=True):
        for metric, runs in entry.timing.items():
            tolerance = thresholds.tolerance(metric, case.device)
            spread = spreads.run_spread(cid, metric, runs)
            now = DetectionRule(
                run_sd=spread.sd, center_sd=spread.sd / math.sqrt(spread.runs), dof=spread.dof, holm_alpha=first_alpha,
                screen_alpha=thresholds.timing.screen_alpha, tolerance=tolerance,
            ).detectable_change()
            own = runs.spread(prior_sd=thresholds.prior_spread(case.device, case.batch_size),
                              prior_dof=thresholds.timing.prior_dof)
            before = OneRemeasurementRule(
                run_sd=own.sd, center_sd=own.sd / math.sqrt(own.runs), dof=own.dof, holm_alpha=first_alpha,
                screen_alpha=thresholds.timing.screen_alpha, tolerance=BEFORE_TOLERANCE,
            ).detectable_change()
            shrunk = spreads.spreads.get((cid, metric))
            mark = " (outlier)" if shrunk is not None and shrunk.outlier else ""
            values = ", ".join(f"{v:.3f}" for v in runs.values)
            rows.append([cid, metric, str(spread.runs), f"{runs.center:.3f}", values, f"{own.sd:.3f}",
                         f"{spread.sd:.3f}{mark}", f"{spread.dof:.0f}", f"{now:.1%}", f"{before:.1%}"])
    return rows


BEFORE_TOLERANCE = 0.10
"""The timing tolerance the rule before used (thresholds.json baseline.*.tolerance until schema 6)."""


def show_command(
    *, baselines_dir: Path, env_key: str | None, thresholds: Path | None, device: str, model: str = DEFAULT_ARCH
) -> int:
    """Print the baseline's timing checks of `model`: runs, spread, and the smallest slowdown each catches at 80%
    power."""
    from harness.model_spec import parse_model

    key = baseline_key(env_key or key_of(fingerprint(), device), parse_model(model).arch)
    baseline = load_baseline(baselines_dir, key)
    if baseline is None:
        raise HarnessError(f"no baseline {key}.json in {baselines_dir}; record one with `nox -s update_baselines`")
    th = load_thresholds(thresholds)
    header = ["case", "metric", "runs", "mean", "per run", "own sd", "sd (shrunk)", "dof", "80% power at",
              "before"]
    rows = detection_rows(baseline, th)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"{baseline.path}: {len(baseline.entries)} cases, {baseline.provenance.get('runs')} runs, commit "
          f"{str(baseline.provenance.get('git_commit'))[:12]}, recorded {baseline.provenance.get('date')}")
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    family = planned_timing_checks([case_of(c) for c in baseline.entries], th, machine_of_key(key))
    print(
        "80% power at: the smallest slowdown caught in 80% of runs where it is the run's only regression (Holm's first "
        f"step over the {family} timing checks of these cases): the spread shrunk over the baseline's cases of one "
        "device and batch regime, flagged by the first run, re-measured in fresh processes until the evidence decides "
        "(simulated, fixed seed). before: the rule it replaced (the case's own spread with the prior, one "
        "re-measurement, a 10% tolerance)",
        file=sys.stderr,
    )
    return 0
