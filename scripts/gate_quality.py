"""Measure the gate itself: how often unchanged code fails it, and how often it catches a planted regression.

    python scripts/gate_quality.py readme --runs 10            # README's test command, fresh clone, empty cache
    python scripts/gate_quality.py bench --runs 3              # `nox -s bench` (the full gate), committed baseline
    python scripts/gate_quality.py bench --runs 10 \\
        --variants fp32,bf16,compile,static_int8,prune_structured,prune_unstructured --plant "slow:fp32:0.15" \\
        --plant "slow:prune_unstructured:0.15,acc:bf16:0.02,mem:compile:0.5,size:static_int8:0.05"

readme: each run clones the committed HEAD into an empty folder, points HARNESS_CACHE_DIR at an empty folder, and
runs the test command README gives there (its exit status is the verdict). bench: each run is `nox --no-venv -s
bench` (or the same pytest command with --no-nox) against the committed baselines, first unchanged, then once per
--plant with scripts/plant_regression.py loaded. A plant counts as caught in a case only when that case's record
has a failed check of the planted metric (slow: the variant's speedup checks, or fp32's latency against the
yardstick; acc: top-1; mem: peak memory; size: size); anything else that fails in a run is a false alarm.
Runs are sequential (the gate times, it must not compete with itself). Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.contention import Contention
from harness.jsonio import read_json_object, write_atomic, write_json_atomic

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
PLANTED_METRICS = {
    "slow": ("speedup_vs_fp32", "speedup_floor", "latency_vs_yardstick"),
    "acc": ("top1", "top1_vs_fp32"),
    "mem": ("peak_memory_bytes",),
    "size": ("size_bytes", "compressed_size_bytes"),
}
COSTLY_PLANTS = ("mem", "acc")
"""Plants that add work to every call of their variant, so its timing checks may rightly fail too (collateral)."""


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Return the 95% Wilson interval of a rate k/n (honest for small n such as 10 runs)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def readme_test_command() -> str:
    """Return the test command README's quick start gives (the line marked '# the tests')."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^(python -m pytest.*?)\s+# the tests", text, flags=re.MULTILINE)
    if match is None:
        raise SystemExit("README.md has no test command marked '# the tests'")
    return match.group(1)


def quiet_enough(limit: float = 0.05, wait_s: float = 120.0, window_s: float = 3.0) -> float | None:
    """Wait (up to wait_s) until others took under `limit` of the machine's CPU over a `window_s` window; return
    the share seen in the last window (None where /proc is missing).

    Not the load average: its one-minute memory is mostly the previous gate run itself, so waiting on it idles
    the machine for most of a minute after every run without telling whether anything else is running now.
    """
    deadline = time.time() + wait_s
    while True:
        with Contention() as window:
            time.sleep(window_s)
        if window.share is None or window.share < limit or time.time() >= deadline:
            return window.share


def run(command: list[str] | str, *, cwd: Path, env: dict[str, str], log: Path) -> tuple[int, float]:
    """Run a command, keep its output in `log`; return (exit status, seconds)."""
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        done = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                              shell=isinstance(command, str), check=False)
    return done.returncode, time.perf_counter() - start


def readme_runs(runs: int, work: Path, progress: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
    """Run README's test command `runs` times, each in a fresh clone with an empty cache; `progress` after each."""
    command = readme_test_command()
    results: list[dict[str, Any]] = []
    for i in range(runs):
        clone, cache = work / f"clone-{i}", work / f"cache-{i}"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        env = {**os.environ, "HARNESS_CACHE_DIR": str(cache), "CI": "true"}
        env.pop("TORCHINDUCTOR_CACHE_DIR", None)
        others = quiet_enough()
        code, seconds = run(command, cwd=clone, env=env, log=work / f"readme-{i}.log")
        results.append({"run": i, "exit": code, "seconds": round(seconds, 1), "others_before": others, "caught": {},
                        "false_alarms": [] if code == 0 else [f"exit {code}"]})
        print(f"  readme run {i}: exit {code} in {seconds:.0f} s", flush=True)
        shutil.rmtree(clone, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        progress(results)
    return results


def failed_checks(results_json: Path) -> list[dict[str, Any]]:
    """Return every failed check (outcome fail or stale) of a run record, with its case's variant and batch."""
    if not results_json.exists():
        return []
    found = []
    record = read_json_object(results_json, "gate run record", "look at the run's log; rerun the gate")
    for case in record["cases"]:
        for check in case.get("checks") or []:
            if check["outcome"] in ("fail", "stale"):
                found.append({**check, "variant": case["variant"], "batch_size": case["batch_size"]})
    return found


def parse_plants(text: str) -> list[tuple[str, str, float]]:
    """Return (kind, variant, fraction) of a PLANT value (see scripts/plant_regression.py)."""
    plants = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, rest = part.partition(":")
        variant, _, fraction = rest.rpartition(":")
        plants.append((kind, variant, float(fraction)))
    return plants


def catches(
    failed: list[dict[str, Any]], plants: list[tuple[str, str, float]]
) -> tuple[dict[str, bool], list[str], list[str]]:
    """Return ({"<kind> <case_id>": caught}, false alarms, collateral) for the failed checks of one run.

    A plant is caught in a case only by a failed ("fail", not "stale") check of the planted metric on the planted
    variant. Collateral: a timing check that fails on a variant carrying a plant that adds work to every call
    (COSTLY_PLANTS: the mem plant allocates a buffer, the acc plant hashes every image), which really made it
    slower; it is listed apart, never counted as a catch. Every other failed or stale check is a false alarm.
    """
    caught: dict[str, bool] = {}
    alarms, collateral = [], []
    for check in failed:
        hit = next((k for k, v, _ in plants if v == check["variant"] and check["metric"] in PLANTED_METRICS[k]), None)
        costly = any(v == check["variant"] and k in COSTLY_PLANTS for k, v, _ in plants)
        if hit and check["outcome"] == "fail":  # "stale" (better than the baseline) never catches a regression
            caught[f"{hit} {check['case_id']}"] = True
        elif costly and check["outcome"] == "fail" and check["metric"] in PLANTED_METRICS["slow"]:
            collateral.append(f"{check['case_id']} {check['metric']}")
        else:
            alarms.append(f"{check['case_id']} {check['metric']}")
    return caught, alarms, collateral


def bench_runs(runs: int, work: Path, args: argparse.Namespace, plant: str | None,
               progress: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
    """Run the gate `runs` times (each a fresh process) with `plant` planted; `progress` after each run."""
    label = re.sub(r"[^a-z0-9]+", "-", (plant or "unchanged").lower()).strip("-")
    extra = ["--bench-variants", args.variants] if args.variants else []
    results = []
    for i in range(runs):
        out = work / f"{label}-{i}.json"
        pytest_args = [*extra, "--results-json", str(out), *(["-p", "plant_regression"] if plant else [])]
        command = [sys.executable, "-m", "pytest", "bench", "-p", "no:xdist", "-p", "no:cacheprovider", "-q",
                   *pytest_args] if args.no_nox else ["nox", "--no-venv", "-s", "bench", "--", *pytest_args]
        paths = [str(SCRIPTS), str(REPO), os.environ.get("PYTHONPATH")]  # the plant imports harness from this tree
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
        env.pop("PLANT", None)
        cold = bool(args.cold_first and i == 0 and not plant)
        if plant:
            env["PLANT"] = plant
        elif cold:
            env["HARNESS_CACHE_DIR"] = str(work / "cold-cache")
            env.pop("TORCHINDUCTOR_CACHE_DIR", None)
        others = quiet_enough()
        code, seconds = run(command, cwd=REPO, env=env, log=work / f"{label}-{i}.log")
        failed = failed_checks(out)
        caught, alarms, collateral = catches(failed, parse_plants(plant) if plant else [])
        if not out.exists():  # the gate never got to judge: a broken run, never "nothing to report"
            alarms.append(f"no record (exit {code}): see {work / (label + f'-{i}.log')}")
        results.append({"run": i, "exit": code, "seconds": round(seconds, 1), "others_before": others,
                        "caught": caught, "false_alarms": alarms, "collateral": collateral,
                        "cold": cold})
        print(f"  {label} run {i}: exit {code} in {seconds:.0f} s; caught {sorted(caught) or '-'}; "
              f"false alarms {alarms or '-'}; collateral {collateral or '-'}", flush=True)
        progress(results)
    return results


def summarize(name: str, runs: list[dict[str, Any]], plant: str | None) -> dict[str, Any]:
    """Return a scenario's rates: false alarms per run and, per planted case, how often it was caught."""
    n = len(runs)
    alarmed = sum(1 for r in runs if r["false_alarms"] or (not plant and r["exit"] != 0))
    row: dict[str, Any] = {"scenario": name, "runs": n, "false_alarm_runs": alarmed,
                           "false_alarm_interval95": wilson(alarmed, n),
                           "mean_seconds": round(sum(r["seconds"] for r in runs) / max(n, 1), 1)}
    targets = sorted({key for r in runs for key in r["caught"]} | set())
    row["caught"] = {t: sum(1 for r in runs if r["caught"].get(t)) for t in targets}
    row["collateral_runs"] = sum(1 for r in runs if r.get("collateral"))
    return row


def markdown(summary: dict[str, Any]) -> str:
    """Return the summary as a short markdown report."""
    lines = ["# Gate quality", "", f"- machine: {summary['machine']}", f"- command: `{summary['command']}`", ""]
    lines += ["| scenario | runs | runs with a false alarm (95% interval) | caught | runs with collateral | mean s |",
              "|---|---|---|---|---|---|"]
    for row in summary["scenarios"]:
        low, high = row["false_alarm_interval95"]
        caught = "; ".join(f"{k}: {v}/{row['runs']}" for k, v in row.get("caught", {}).items()) or "-"
        lines.append(f"| {row['scenario']} | {row['runs']} | {row['false_alarm_runs']} ({low:.0%}-{high:.0%}) | "
                     f"{caught} | {row.get('collateral_runs', 0)} | {row['mean_seconds']} |")
    lines += ["", "A plant is caught in a case only when that case fails a check of the planted metric; any other "
              "failed check is a false alarm, except collateral: a timing check failing on a variant whose plant adds "
              "work to every call (mem, acc). A case the table does not list was never caught."]
    return "\n".join(lines) + "\n"


def write_report(out: Path, summary: dict[str, Any]) -> None:
    """Write OUT.json and OUT.md, each atomically (harness.jsonio: a killed run leaves the previous report whole)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out.with_suffix(".json"), summary)
    text = markdown(summary).encode("utf-8")
    write_atomic(out.with_suffix(".md"), lambda handle: handle.write(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", choices=("readme", "bench"), help="which configuration to measure")
    parser.add_argument("--runs", type=int, default=10, help="runs per scenario (default: 10)")
    parser.add_argument("--variants", default=None, help="bench: --bench-variants for every run (default: all)")
    parser.add_argument("--plant", action="append", default=[], help="bench: a PLANT value; one scenario each")
    parser.add_argument("--skip-unchanged", action="store_true", help="bench: only the planted scenarios")
    parser.add_argument("--no-nox", action="store_true", help="bench: run pytest directly instead of nox --no-venv")
    parser.add_argument("--cold-first", action="store_true",
                        help="bench: the first unchanged run starts from an empty cache (retrains, recompiles)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "gate_quality", help="writes OUT.json, OUT.md")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    work = Path(tempfile.mkdtemp(prefix="gate-quality-"))
    print(f"gate quality: logs in {work}", flush=True)
    machine = subprocess.run([sys.executable, "-c", "from harness.env import fingerprint, env_key; "
                              "print(env_key(fingerprint(), 'cpu'))"], capture_output=True, text=True, cwd=REPO)
    summary: dict[str, Any] = {"machine": machine.stdout.strip(), "work": str(work), "scenarios": [], "runs": {}}

    def progress(name: str, plant: str | None) -> Callable[[list[dict[str, Any]]], None]:
        def save(results: list[dict[str, Any]]) -> None:  # after every run: a killed job keeps what it measured
            summary["runs"][name] = results
            summary["scenarios"] = [row for row in summary["scenarios"] if row["scenario"] != name]
            summary["scenarios"].append(summarize(name, results, plant))
            write_report(args.out, summary)
        return save

    if args.config == "readme":
        summary["command"] = readme_test_command()
        readme_runs(args.runs, work, progress("README test command, fresh clone, empty cache", None))
    else:
        chosen = f" -- --bench-variants {args.variants}" if args.variants else ""
        summary["command"] = "nox --no-venv -s bench" + chosen
        scenarios = ([] if args.skip_unchanged else [None]) + list(args.plant)
        for plant in scenarios:
            print(f"{plant or 'unchanged'}: {args.runs} runs", flush=True)
            bench_runs(args.runs, work, args, plant, progress(plant or "unchanged", plant))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
