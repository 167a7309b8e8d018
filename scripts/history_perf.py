"""Time the history at scale: python scripts/history_perf.py [--runs 1000] [--cases 40] [--dir /tmp/history-perf].

Writes RUNS results JSON of CASES cases each (500 eval images, timing ratios with their spread, 1.6% noise,
a 15% slowdown of one case in the last three runs; kept in --dir and reused), then times `history add` of all
of them in one call, `history check` and `history report --html`, each as the CLI runs it, and prints the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from harness.history.cli import check_command, report_command
from harness.history.ingest import add_runs
from harness.results import CaseResult, RunRecord, save_run


def case(variant: str, batch: int, speedup: float, correct: list[bool]) -> CaseResult:
    """Return a measured case; fp32 carries latency_vs_yardstick, the others speedup_vs_fp32."""
    name = "latency_vs_yardstick" if variant == "fp32" else "speedup_vs_fp32"
    value = 1.0 / speedup if variant == "fp32" else speedup
    se = 0.01
    ratio = {"value": value, "low": value * math.exp(-1.96 * se), "high": value * math.exp(1.96 * se), "log_se": se,
             "rounds": 30}
    return CaseResult(
        variant=variant, device="cpu", batch_size=batch, top1=sum(correct) / len(correct), top5=1.0,
        latency_ms={"median": 20.0 / speedup, "p90": 21.0 / speedup, "iqr": 0.2, "rounds": 30},
        throughput_ips=batch * 50.0 * speedup, size_bytes=44_000_000, compressed_size_bytes=41_000_000,
        params=11_000_000, nonzero_params=11_000_000, macs=1_800_000_000, peak_memory_bytes=30_000_000,
        speedup_vs_fp32=1.0 if variant == "fp32" else speedup, eval_images=len(correct), correct=correct,
        ratios={name: ratio}, contention=0.0,
        identity={"data": "digits", "eval_ids_sha256": "e" * 16, "arch": "resnet18", "weights_sha256": "w" * 16},
    )


def write_runs(folder: Path, runs: int, cases: int) -> list[Path]:
    """Write the runs' results JSON into `folder`; return their paths."""
    rng = np.random.default_rng(0)
    variants = ["fp32", *(f"variant{i:02d}" for i in range(cases // 2 - 1))]
    correct = [bool(c) for c in rng.random(500) < 0.97]
    paths = []
    for r in range(runs):
        members = []
        for v, variant in enumerate(variants):
            for batch in (1, 32):
                speedup = (1.0 + v * 0.1) * math.exp(rng.normal(0, 0.016))
                if v == 1 and batch == 1 and r >= runs - 3:
                    speedup /= 1.15
                members.append(case(variant, batch, speedup, correct))
        day = r // 24
        record = RunRecord(
            environment={"git_commit": f"{r:040x}", "git_dirty": False, "torch": "2.14.1"},
            env_key="cpu-perf-2t-torch2.14", cases=members[:cases],
            created=f"2024-{1 + day // 28 % 12:02d}-{1 + day % 28:02d}T{r % 24:02d}:00:00+00:00",
            command="pytest bench", data="digits", model="resnet18",
        )
        path = folder / f"run-{r:04d}.json"
        save_run(path, record)
        paths.append(path)
    return paths


def main() -> None:
    """Print the time of each step."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000, help="runs to ingest (default: 1000)")
    parser.add_argument("--cases", type=int, default=40, help="cases per run (default: 40)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/history-perf"), help="(default: %(default)s)")
    args = parser.parse_args()
    folder = args.dir / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    store = args.dir / "history.sqlite"
    for stale in (store, Path(f"{store}-wal"), Path(f"{store}-shm")):
        stale.unlink(missing_ok=True)
    start = time.perf_counter()
    paths = sorted(folder.glob("run-*.json"))
    if len(paths) != args.runs or args.cases != len(json.loads(paths[0].read_text())["cases"]):
        paths = write_runs(folder, args.runs, args.cases)
        print(f"wrote {len(paths)} results JSON of {args.cases} cases in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    added = add_runs(store, paths)
    print(f"history add: {sum(a.new for a in added)} runs x {args.cases} cases ingested in "
          f"{time.perf_counter() - start:.1f} s ({store.stat().st_size / 1e6:.0f} MB)")
    start = time.perf_counter()
    again = add_runs(store, paths[-10:])
    print(f"history add of 10 runs already there: {sum(a.new for a in again)} new, {time.perf_counter() - start:.2f} s")
    start = time.perf_counter()
    status = check_command(store, None)
    print(f"history check: exit {status} in {time.perf_counter() - start:.1f} s")
    page = args.dir / "history.html"
    start = time.perf_counter()
    report_command(store, None, page)
    print(f"history report: {page} ({page.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
