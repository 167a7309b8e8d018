"""Tune the history rules on simulated nightly series: python scripts/history_tune.py [--sd 0.023] [--seeds 100].

Each scenario (harness/history/simulate.py) is judged night by night as `history check` would; the table gives, per
setting, flat series with any failure or any final step, 5% steps found within 3 nights, and 0.5%/night drifts
flagged within 20 nights. `--grid` tries penalties and z around the thresholds file's values; without it, only the
file's own setting is run.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time

from harness.gate.thresholds import load_thresholds
from harness.history import simulate


def main() -> None:
    """Print one line of counts per setting."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sd", type=float, default=0.023, help="log-sd of one run (default: 0.023)")
    parser.add_argument("--seeds", type=int, default=100, help="series per scenario (default: 100)")
    parser.add_argument("--grid", action="store_true", help="try penalties, z and windows around the file's values")
    args = parser.parse_args()
    base = load_thresholds()
    settings = [base.history]
    if args.grid:
        settings = [
            dataclasses.replace(base.history, penalty=p, z=z, window=w, smooth=k)
            for p, z, w, k in itertools.product((8.0, 10.0, 12.0, 14.0, 16.0), (3.5, 4.0), (20, 30), (5,))
        ]
    seeds = range(args.seeds)
    print(f"sd {args.sd}, {args.seeds} series per scenario, {simulate.NIGHTS} nights")
    for history in settings:
        t = dataclasses.replace(base, history=history)
        start = time.perf_counter()
        flat_any = simulate.tally(simulate.FLAT, t, sd=args.sd, seeds=seeds, rules=("newest", "step", "drift"))
        step = simulate.tally(simulate.STEP, t, sd=args.sd, seeds=seeds, rules=("newest", "step"))
        step_only = simulate.tally(simulate.STEP, t, sd=args.sd, seeds=seeds, rules=("step",))
        drift = simulate.tally(simulate.DRIFT, t, sd=args.sd, seeds=seeds, rules=("drift",))
        drift_any = simulate.tally(simulate.DRIFT, t, sd=args.sd, seeds=seeds, rules=("newest", "step", "drift"))
        n = args.seeds
        print(
            f"penalty {history.penalty:4.1f} z {history.z:3.1f} window {history.window:2d} smooth {history.smooth}: "
            f"flat failed {n - flat_any.alarms.count(None):3d}/{n}, final steps in "
            f"{sum(1 for s in flat_any.final_steps if s):3d}/{n} | 5% step within 3 nights {step.within(3):3d}/{n} "
            f"(step rule alone {step_only.within(3):3d}, early {step.early}) | drift within 20 nights "
            f"{drift.within(20):3d}/{n} (any rule {drift_any.within(20):3d}, early {drift_any.early}) "
            f"[{time.perf_counter() - start:.0f} s]"
        )


if __name__ == "__main__":
    main()
