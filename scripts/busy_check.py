"""Does the gate see a busy machine, and only a busy one? Runs the gate with and without busy loops beside it.

    python scripts/busy_check.py --runs 3                       # the reduced gate, 3 runs quiet, 3 beside busy loops
    python scripts/busy_check.py --runs 3 --cgroup              # the same inside a cgroup (v1 cpu, or v2) of its own
    python scripts/busy_check.py --runs 1 -- --bench-variants fp32 --bench-batch-sizes 1   # extra gate arguments

Each run is `python -m pytest bench -p no:xdist -m quick --unjudged fail --results-json OUT` (plus the arguments after
`--`), a fresh process, one after another. "busy" runs start one spinning process per CPU this process may use before
the gate and stop them after it, so every timing (the gate's, its waits for a quiet machine and its fresh-process
re-measurements) has them beside it. With --cgroup, the gate and the spinners run in a new cgroup whose CPU quota is
the CPUs they may use (root needed): the reading then comes from the cgroup's own pressure and throttling where the
kernel gives them (v2) and the machine's otherwise (v1), as a container's gate would read it.

For each run it prints the exit status, how many planned checks were judged and unjudged, each unjudged check's reason,
and the contention every case read (harness/contention.py), then a summary. Run it on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GATE = [sys.executable, "-m", "pytest", "bench", "-p", "no:xdist", "-p", "no:cacheprovider", "-q", "-m", "quick",
        "--unjudged", "fail"]
SPIN = "import time\nwhile True: pass"


@contextmanager
def cgroup(name: str) -> Iterator[list[str]]:
    """Yield a command prefix that starts a process inside a new cgroup limited to this process's CPUs (v1 cpu, else
    v2), removed afterwards."""
    cpus = len(os.sched_getaffinity(0))
    v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
    if (v1 / "cpu.cfs_quota_us").exists():
        folder = v1 / name
        folder.mkdir(exist_ok=True)
        (folder / "cpu.cfs_period_us").write_text("100000")
        (folder / "cpu.cfs_quota_us").write_text(str(100000 * cpus))
    elif (v2 / "cgroup.controllers").exists():
        folder = v2 / name
        folder.mkdir(exist_ok=True)
        (folder / "cpu.max").write_text(f"{100000 * cpus} 100000")
    else:
        raise SystemExit("no cgroup v1 cpu controller or v2 hierarchy here")
    procs = folder / "cgroup.procs"
    try:
        yield ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "in-cgroup"]
    finally:
        for _ in range(20):
            try:
                folder.rmdir()
                break
            except OSError:
                time.sleep(0.5)


def spinners(count: int, prefix: list[str]) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([*prefix, sys.executable, "-c", SPIN]) for _ in range(count)]


def one_run(label: str, out: Path, busy: bool, prefix: list[str], extra: list[str]) -> dict[str, Any]:
    loops = spinners(len(os.sched_getaffinity(0)), prefix) if busy else []
    try:
        time.sleep(1.0 if busy else 0.0)
        start = time.perf_counter()
        done = subprocess.run([*prefix, *GATE, "--results-json", str(out), *extra], cwd=REPO, capture_output=True,
                              text=True, check=False)
        seconds = time.perf_counter() - start
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    record = json.loads(out.read_text()) if out.exists() else {"cases": []}
    checks = [c for case in record["cases"] for c in case.get("checks") or []]
    unjudged = [f"{c['case_id']} {c['metric']}: {c['message'][:160]}" for c in checks if c["outcome"] == "unjudged"]
    judged = sum(c["outcome"] in ("pass", "fail", "stale", "improved") for c in checks)
    readings = {case["variant"] + f"-bs{case['batch_size']}": case.get("extra", {}).get("contention", {})
                for case in record["cases"]}
    remeasured = [case["variant"] for case in record["cases"] if case.get("confirmation")]
    return {"label": label, "exit": done.returncode, "seconds": round(seconds), "judged": judged,
            "unjudged": unjudged, "readings": readings, "remeasured": remeasured,
            "tail": done.stdout.strip().splitlines()[-3:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind (default: 3)")
    parser.add_argument("--cgroup", action="store_true", help="run the gate and the spinners in a cgroup of their own")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "busy_check.json", help="the summary JSON")
    parser.add_argument("extra", nargs="*", help="arguments for the gate (after --)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="busy-check-"))
    results = []
    with cgroup("resnet-gate-busy-check") if args.cgroup else _nothing() as prefix:
        for i in range(args.runs):
            for busy in (False, True):
                label = f"{'busy' if busy else 'quiet'} {i + 1}"
                result = one_run(label, work / f"{label.replace(' ', '-')}.json", busy, prefix, args.extra)
                results.append(result)
                print(f"{label}: exit {result['exit']} in {result['seconds']} s; {result['judged']} judged, "
                      f"{len(result['unjudged'])} unjudged; re-measured {result['remeasured'] or '-'}", flush=True)
                for line in result["unjudged"]:
                    print(f"    UNJUDGED {line}", flush=True)
                for case, reading in result["readings"].items():
                    print(f"    {case}: contention {reading.get('share')} ({reading.get('source')})", flush=True)
    quiet = [r for r in results if r["label"].startswith("quiet")]
    busy = [r for r in results if r["label"].startswith("busy")]
    summary = {
        "cgroup": args.cgroup, "extra": args.extra, "runs": results,
        "quiet_exit_0_all_judged": sum(r["exit"] == 0 and not r["unjudged"] for r in quiet),
        "busy_exit_nonzero_unjudged_named": sum(r["exit"] != 0 and bool(r["unjudged"]) for r in busy),
        "of": args.runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"quiet: exit 0 with every planned check judged in {summary['quiet_exit_0_all_judged']} of {args.runs}; "
          f"busy: exit non-zero with the unjudged checks named in {summary['busy_exit_nonzero_unjudged_named']} of "
          f"{args.runs} ({'in a cgroup' if args.cgroup else 'no cgroup'}); {args.out}")
    return 0


@contextmanager
def _nothing() -> Iterator[list[str]]:
    yield []


if __name__ == "__main__":
    sys.exit(main())
