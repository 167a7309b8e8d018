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
from harness.gate.store import DEFAULT_ARCH, Baseline, baseline_key, load_baseline, write_baseline
from harness.gate.thresholds import Thresholds, load_thresholds
from harness.results import load_run
from harness.timing_stats import DetectionRule


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
    """Return the GateCase of an id "<variant>-<device>-bs<N>" (variant names hold no '-')."""
    variant, device, batch = case_id.rsplit("-", 2)
    if not batch.startswith("bs") or not batch[2:].isdigit():
        raise HarnessError(f"{case_id!r} is not a case id like fp32-cpu-bs1")
    return GateCase(variant, device, int(batch[2:]))


def detection_rows(baseline: Baseline, thresholds: Thresholds, family_size: int | None = None) -> list[list[str]]:
    """Return, per timing check of the baseline, its runs, spread and the slowdown it catches with 80% power.

    The family is the baseline's own cases (every timing check a gate run over them makes) unless given; the
    power is that of a run whose only regression is this one (the first step of Holm), by the gate's rule: flagged
    by a first run, confirmed by a fresh-process re-measurement and the two runs together.
    """
    cases = [case_of(cid) for cid in baseline.entries]
    size = family_size or planned_timing_checks(cases, thresholds, machine_of_key(baseline.env_key))
    first_alpha = thresholds.timing.family_alpha / size
    rows = []
    for (cid, entry), case in zip(baseline.entries.items(), cases, strict=True):
        for metric, runs in entry.timing.items():
            spread = runs.spread(
                prior_sd=thresholds.prior_spread(case.device, case.batch_size), prior_dof=thresholds.timing.prior_dof
            )
            catch = DetectionRule(
                run_sd=spread.sd,
                center_sd=spread.sd / math.sqrt(spread.runs),
                dof=spread.dof,
                holm_alpha=first_alpha,
                screen_alpha=thresholds.timing.screen_alpha,
                tolerance=thresholds.tolerance(metric, case.device),
            ).detectable_change()
            values = ", ".join(f"{v:.3f}" for v in runs.values)
            rows.append([cid, metric, str(spread.runs), f"{runs.center:.3f}", values, f"{spread.sd:.3f}",
                         f"{spread.dof:g}", f"{catch:.1%}"])
    return rows


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
    header = ["case", "metric", "runs", "mean", "per run", "sd (log)", "dof", "80% power at"]
    rows = detection_rows(baseline, th)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"{baseline.path}: {len(baseline.entries)} cases, {baseline.provenance.get('runs')} runs, commit "
          f"{str(baseline.provenance.get('git_commit'))[:12]}, recorded {baseline.provenance.get('date')}")
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(
        f"80% power at: the smallest slowdown caught in 80% of runs where it is the run's only regression (Holm's "
        f"first step over the {planned_timing_checks([case_of(c) for c in baseline.entries], th, machine_of_key(key))} "
        "timing checks of "
        "these cases), flagged by the first run and confirmed by a fresh-process re-measurement and both runs together",
        file=sys.stderr,
    )
    return 0
