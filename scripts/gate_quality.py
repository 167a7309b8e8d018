"""Measure the gate itself: its wall time cold and warm, how often unchanged code fails it, and how often it
catches a planted 15% slowdown and a planted 2-point top-1 drop.

    python scripts/gate_quality.py                      # everything, R=10 (about 40-60 min on a 2-core CPU)
    python scripts/gate_quality.py --runs 3 --skip-wall # a quick look

(a) wall time: the bench command (default: the full CPU gate, what `nox -s bench` runs) once with an empty
    HARNESS_CACHE_DIR and inductor cache (cold: trains the default model, compiles), then again warm.
(b) false failures: R runs of the unchanged code against one baseline taken at the start (or --baselines-dir).
(c) catch rates: R runs each with PLANT=slow:VARIANT:0.15 and PLANT=acc:VARIANT:0.02
    (scripts/plant_regression.py).
To stay cheap, (b) and (c) gate only fp32 and VARIANT (default dynamic_int8) at batch size 1 (--batch-sizes).
Runs are sequential: the gate times on this machine and must not compete with itself.
Writes <out>.json and <out>.md (default results/gate_quality) and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent
CHECK_LINE = re.compile(r"^(REGRESSION|STALE BASELINE) (\S+) (\S+):", re.MULTILINE)
TIMING_METRICS = ("latency_median_ms", "throughput_ips", "speedup_vs_fp32")
ACCURACY_METRICS = ("top1", "top1_vs_fp32")
PYTEST = [sys.executable, "-m", "pytest", "bench", "-p", "no:xdist", "-p", "no:cacheprovider", "-q"]


@dataclass
class GateRun:
    """One run of the gate: its exit status, wall time and the (case, metric) of every failed check."""

    label: str
    exit_code: int
    seconds: float
    failed_checks: list[tuple[str, str, str]] = field(default_factory=list)
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)

    def caught(self, variant: str, metrics: tuple[str, ...]) -> bool:
        """Return True when a check of one of `metrics` on one of `variant`'s cases failed the gate."""
        return any(case.startswith(f"{variant}-") and m in metrics for _, case, m in self.failed_checks)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Return the 95% Wilson interval of a rate k/n (honest for small n such as 10 runs)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def failed_checks(junit: Path) -> list[tuple[str, str, str]]:
    """Return (label, case_id, metric) of every failed check named in a junit XML report."""
    if not junit.exists():
        return []
    found = []
    for failure in ET.parse(junit).getroot().iter("failure"):
        text = (failure.get("message") or "") + "\n" + (failure.text or "")
        found.extend(CHECK_LINE.findall(text))
    return sorted(set(found))


def run_gate(label: str, args: list[str], env: dict[str, str], work: Path) -> GateRun:
    """Run the gate once (a subprocess in the repository) and return what it found."""
    junit, results = work / f"{label}.xml", work / f"{label}.json"
    command = [*PYTEST, *args, f"--junitxml={junit}", f"--results-json={results}"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    (work / f"{label}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    cases = {}
    if results.exists():
        for case in json.loads(results.read_text(encoding="utf-8"))["cases"]:
            cid = f"{case['variant']}-{case['device']}-bs{case['batch_size']}"
            cases[cid] = {k: case.get(k) for k in ("status", "top1", "speedup_vs_fp32")}
            cases[cid]["latency_median_ms"] = (case.get("latency_ms") or {}).get("median")
    run = GateRun(label, done.returncode, seconds, failed_checks(junit), cases)
    if done.returncode not in (0, 1):
        print(f"  {label}: pytest exited {done.returncode} (not a gate verdict); see {work / (label + '.log')}")
    print(
        f"  {label}: exit {run.exit_code} in {seconds:.0f} s; failed checks: "
        f"{', '.join(f'{c} {m}' for _, c, m in run.failed_checks) or 'none'}",
        flush=True,
    )
    return run


def base_env(**extra: str) -> dict[str, str]:
    """Return this environment with scripts/ importable (for -p plant_regression) plus `extra`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SCRIPTS), env.get("PYTHONPATH", "")) if p)
    env.pop("PLANT", None)
    env.update(extra)
    return env


def wall_times(bench_args: list[str], work: Path) -> dict[str, Any]:
    """Return the bench command's wall time cold (empty caches) and warm (the same caches again)."""
    cache = Path(tempfile.mkdtemp(prefix="gate-cold-cache-"))
    env = base_env(HARNESS_CACHE_DIR=str(cache), TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"))
    try:
        cold = run_gate("wall-cold", bench_args, env, work)
        warm = run_gate("wall-warm", bench_args, env, work)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {
        "command": " ".join(["pytest bench -p no:xdist", *bench_args]),
        "cold_s": round(cold.seconds, 1),
        "cold_exit": cold.exit_code,
        "warm_s": round(warm.seconds, 1),
        "warm_exit": warm.exit_code,
    }


def rate(runs: list[GateRun], hit: Any) -> dict[str, Any]:
    """Return k/n, the rate, its Wilson interval and the metrics that fired."""
    k = sum(1 for r in runs if hit(r))
    low, high = wilson(k, len(runs))
    failed = sum(1 for r in runs if r.exit_code != 0)
    fired: dict[str, int] = {}
    for r in runs:
        for _, case, metric in r.failed_checks:
            fired[f"{case} {metric}"] = fired.get(f"{case} {metric}", 0) + 1
    return {
        "hits": k,
        "runs": len(runs),
        "rate": k / len(runs) if runs else None,
        "interval95": [round(low, 3), round(high, 3)],
        "gate_failed": failed,
        "fired": fired,
        "mean_seconds": round(sum(r.seconds for r in runs) / len(runs), 1) if runs else None,
    }


def realized(
    runs: list[GateRun], clean: list[GateRun], case_id: str, metric: str, *, relative: bool = True
) -> float | None:
    """Return the planted case's mean `metric` against the clean runs' (relative, or the difference)."""

    def mean(rs: list[GateRun]) -> float | None:
        values = [r.cases[case_id][metric] for r in rs if r.cases.get(case_id, {}).get(metric) is not None]
        return sum(values) / len(values) if values else None

    planted, base = mean(runs), mean(clean)
    if planted is None or not base:
        return None
    return planted / base - 1.0 if relative else planted - base


def markdown(summary: dict[str, Any]) -> str:
    """Return the summary as a short markdown report."""
    lines = [
        "# Gate quality",
        "",
        f"- quality runs: `{summary['quality_command']}`, R = {summary['runs']}",
        f"- baselines: {summary['baselines']}",
    ]
    wall = summary.get("wall")
    if wall:
        lines.append(
            f"- wall time of `{wall['command']}`: cold {wall['cold_s']} s (exit {wall['cold_exit']}), "
            f"warm {wall['warm_s']} s (exit {wall['warm_exit']})"
        )
    lines += [
        "",
        "| scenario | caught | rate | 95% interval | gate failed at all | checks that fired | realized effect |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["scenarios"].items():
        fired = "; ".join(f"{k} x{v}" for k, v in sorted(row["fired"].items())) or "-"
        effect = row.get("realized") or "-"
        lines.append(
            f"| {name} | {row['hits']}/{row['runs']} | {row['rate']:.0%} | "
            f"{row['interval95'][0]:.0%}-{row['interval95'][1]:.0%} | {row['gate_failed']}/{row['runs']} | "
            f"{fired} | {effect} |"
        )
    lines += [
        "",
        "caught: a timing check (latency, throughput, speedup) of the slowed variant, or an accuracy check (top1 "
        "vs baseline, top1 vs fp32) of the corrupted one, failed. For unchanged code the rate is the false-failure "
        "rate: any failed check.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="R, runs per scenario (default: 10)")
    parser.add_argument("--variant", default="dynamic_int8", help="the variant to plant in (default: dynamic_int8)")
    parser.add_argument("--batch-sizes", default="1", help="batch sizes of the quality runs (default: 1)")
    parser.add_argument("--slowdown", type=float, default=0.15, help="planted slowdown (default: 0.15)")
    parser.add_argument("--accuracy-drop", type=float, default=0.02, help="planted share of images (default: 0.02)")
    parser.add_argument(
        "--baselines-dir",
        type=Path,
        default=None,
        help="judge against these baselines (default: a fresh one taken by a first clean run)",
    )
    parser.add_argument(
        "--bench-args",
        default="--device cpu",
        help="arguments of the timed bench command for (a) (default: --device cpu, the full gate)",
    )
    parser.add_argument("--skip-wall", action="store_true", help="skip (a), the cold and warm wall times")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "results" / "gate_quality",
        help="writes OUT.json and OUT.md (default: results/gate_quality)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")

    work = Path(tempfile.mkdtemp(prefix="gate-quality-"))
    print(f"gate quality: logs and reports in {work}", flush=True)
    quality = [
        "--device",
        "cpu",
        "--bench-variants",
        f"fp32,{args.variant}",
        "--bench-batch-sizes",
        args.batch_sizes,
    ]
    summary: dict[str, Any] = {"runs": args.runs, "variant": args.variant, "work_dir": str(work)}
    if not args.skip_wall:
        summary["wall"] = wall_times(args.bench_args.split(), work)

    if args.baselines_dir is None:
        baselines = work / "baselines"
        run_gate("baseline", [*quality, "--update-baselines", f"--baselines-dir={baselines}"], base_env(), work)
        summary["baselines"] = f"fresh, taken by one clean run at the start ({baselines})"
    else:
        baselines = args.baselines_dir
        summary["baselines"] = str(baselines)
    quality.append(f"--baselines-dir={baselines}")
    summary["quality_command"] = " ".join(["pytest bench -p no:xdist", *quality])

    plants = {
        "unchanged code": None,
        f"slow:{args.variant}:{args.slowdown:g}": f"slow:{args.variant}:{args.slowdown}",
        f"acc:{args.variant}:{args.accuracy_drop:g}": f"acc:{args.variant}:{args.accuracy_drop}",
    }
    runs: dict[str, list[GateRun]] = {}
    for name, plant in plants.items():
        print(f"{name}: {args.runs} runs", flush=True)
        env = base_env(PLANT=plant) if plant else base_env()
        extra = ["-p", "plant_regression"] if plant else []
        tag = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        runs[name] = [run_gate(f"{tag}-{i}", [*quality, *extra], env, work) for i in range(args.runs)]

    clean = runs["unchanged code"]
    case_id = f"{args.variant}-cpu-bs{args.batch_sizes.split(',')[0]}"
    slow_name, acc_name = list(plants)[1:]
    # A plant counts as caught only by a check of its own kind on its own variant: timing noise failing
    # some other check is not a catch (it is counted in "gate failed at all").
    hits = {
        "unchanged code": lambda r: r.exit_code != 0,
        slow_name: lambda r: r.caught(args.variant, TIMING_METRICS),
        acc_name: lambda r: r.caught(args.variant, ACCURACY_METRICS),
    }
    scenarios = {name: rate(runs[name], hits[name]) for name in plants}
    latency = realized(runs[slow_name], clean, case_id, "latency_median_ms")
    top1 = realized(runs[acc_name], clean, case_id, "top1", relative=False)
    scenarios[slow_name]["realized"] = f"latency {latency:+.1%}" if latency is not None else None
    scenarios[acc_name]["realized"] = f"top-1 {top1 * 100:+.2f} points" if top1 is not None else None
    summary["scenarios"] = scenarios
    summary["runs_detail"] = {name: [asdict(r) for r in rs] for name, rs in runs.items()}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    text = markdown(summary)
    args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
