"""Measure `ab` and `bisect` themselves on a small model of their own: how often they call identical code different,
how often they catch a real model change, and whether bisect names the commit that made it.

    python scripts/ab_quality.py --runs 10                  # ab no-change and ab change, 10 runs each
    python scripts/ab_quality.py --runs 10 --bisect 10      # and bisect over the 8 commits, 10 times
    python scripts/ab_quality.py --runs 10 --batch-sizes 1  # only batch 1

It builds a git repository (in a temporary folder) holding a factory, `proj.model:cnn`: a 3-conv CNN that runs in a
few milliseconds at batch 1, and 8 commits: c1 the model, c2 a README change, c3 a 1x1 conv block (about +10% of the
MACs: a real model change, not a sleep), c4 a README change, c5-c8 notes. Then, one after another, each a fresh
`python -m harness ab`/`bisect` with the harness of this checkout:
- no change: `ab c1 c2` (only the README differs): a false alarm is an exit 1; the interval of the latency change
  should contain 0;
- change: `ab c2 c3`: caught is exit 1 with a confirmed latency regression (MACs and sizes are judged too);
- bisect: `bisect c1 c8 --case fp32-cpu-bs1`: right when it names c3, wrong when it names another commit, undecided
  otherwise.
Writes OUT.json and OUT.md (default results/ab_quality). Run it on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODEL = '''from torch import nn


def cnn(num_classes: int = 10) -> nn.Module:
    """Three strided 3x3 convolutions{extra_doc}, then global pooling and a linear head."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
{extra}        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )
'''
BLOCK = "        nn.Conv2d(64, 64, 1), nn.BatchNorm2d(64), nn.ReLU(),\n"
"""A 1x1 convolution at the last resolution: about a tenth more multiply-accumulates."""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text, encoding="utf-8")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def build_repository(folder: Path) -> list[str]:
    """Create the test repository in `folder`; return its 8 commits, c1 first."""
    folder.mkdir(parents=True)
    git(folder, "init", "-q")
    git(folder, "config", "user.email", "quality@example.com")
    git(folder, "config", "user.name", "ab quality")
    plain = MODEL.format(extra="", extra_doc="")
    heavier = MODEL.format(extra=BLOCK, extra_doc=" and a 1x1 block")
    steps = [
        ({"proj/__init__.py": "", "proj/model.py": plain, "README.md": "a model\n"}, "c1: the model"),
        ({"README.md": "a model, documented\n"}, "c2: README"),
        ({"proj/model.py": heavier}, "c3: a 1x1 conv block (+10% MACs)"),
        ({"README.md": "a model, documented again\n"}, "c4: README"),
        *(({"NOTES.md": f"note {i}\n"}, f"c{i}: a note") for i in range(5, 9)),
    ]
    return [commit(folder, files, message) for files, message in steps]


def harness(repo: Path, args: list[str], cache: Path, log: Path) -> tuple[int, float]:
    env = {**os.environ, "HARNESS_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        done = subprocess.run([sys.executable, "-m", "harness", *args], cwd=repo, env=env, stdout=out,
                              stderr=subprocess.STDOUT, check=False)
    return done.returncode, time.perf_counter() - start


def ab_run(repo: Path, base: str, head: str, args: argparse.Namespace, work: Path, label: str) -> dict[str, Any]:
    out = work / f"{label}.json"
    code, seconds = harness(repo, ["ab", base, head, "--model", "proj.model:cnn", "--variants", "fp32",
                                   "--batch-sizes", args.batch_sizes, "--device", "cpu", "--out", str(out)],
                            work / "cache", work / f"{label}.log")
    record = json.loads(out.read_text()) if out.exists() else {"cases": []}
    cases = {}
    for case in record["cases"]:
        latency, again = case.get("latency") or {}, case.get("latency_again") or {}
        cases[case["case_id"]] = {
            "change": latency.get("ratio", 0) - 1, "low": latency.get("low", 0) - 1, "high": latency.get("high", 0) - 1,
            "again": (again.get("ratio", 0) - 1) if again else None, "verdict": case["latency_verdict"],
            "regressions": case["regressions"], "rounds": latency.get("rounds"),
        }
    return {"label": label, "exit": code, "seconds": round(seconds), "cases": cases}


def bisect_run(repo: Path, shas: list[str], work: Path, label: str) -> dict[str, Any]:
    out = work / f"{label}.json"
    code, seconds = harness(repo, ["bisect", shas[0], shas[-1], "--case", "fp32-cpu-bs1", "--model", "proj.model:cnn",
                                   "--out", str(out)], work / "cache", work / f"{label}.log")
    record = json.loads(out.read_text()) if out.exists() else {}
    named = record.get("first_bad")
    verdict = "right" if named == shas[2] else "undecided" if named is None else "wrong"
    name = f"c{shas.index(named) + 1}" if named in shas else None
    return {"label": label, "exit": code, "seconds": round(seconds), "named": name, "verdict": verdict,
            "steps": [{"commit": f"c{shas.index(s['commit']) + 1}" if s["commit"] in shas else s["commit"],
                       "bad": s["bad"], "evidence": s["evidence"]} for s in record.get("steps", [])]}


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    same, change, bisects = runs.get("no change", []), runs.get("change", []), runs.get("bisect", [])
    summary: dict[str, Any] = {}
    if same:
        ids = sorted({cid for r in same for cid in r["cases"]})
        summary["no change"] = {
            "runs": len(same), "false_alarms": sum(r["exit"] != 0 for r in same),
            "interval_contains_0": {cid: sum(r["cases"][cid]["low"] <= 0 <= r["cases"][cid]["high"]
                                             for r in same if cid in r["cases"]) for cid in ids},
            "changes": {cid: [round(r["cases"][cid]["change"], 4) for r in same if cid in r["cases"]] for cid in ids},
        }
    if change:
        ids = sorted({cid for r in change for cid in r["cases"]})
        summary["change"] = {
            "runs": len(change), "exit_1": sum(r["exit"] == 1 for r in change),
            "latency_caught": {cid: sum("latency" in r["cases"][cid]["regressions"] for r in change
                                        if cid in r["cases"]) for cid in ids},
            "changes": {cid: [round(r["cases"][cid]["change"], 4) for r in change if cid in r["cases"]] for cid in ids},
        }
    if bisects:
        summary["bisect"] = {"runs": len(bisects), **{v: sum(b["verdict"] == v for b in bisects)
                                                      for v in ("right", "wrong", "undecided")}}
    return summary


def markdown(summary: dict[str, Any]) -> str:
    lines = ["# ab and bisect quality", ""]
    if "no change" in summary:
        s = summary["no change"]
        lines.append(f"- no change (`ab c1 c2`): {s['false_alarms']} false alarms in {s['runs']} runs; interval "
                     f"contains 0: " + ", ".join(f"{k} {v}/{s['runs']}" for k, v in s["interval_contains_0"].items()))
    if "change" in summary:
        s = summary["change"]
        lines.append(f"- +10% MACs (`ab c2 c3`): exit 1 in {s['exit_1']} of {s['runs']}; latency caught: "
                     + ", ".join(f"{k} {v}/{s['runs']}" for k, v in s["latency_caught"].items()))
    if "bisect" in summary:
        s = summary["bisect"]
        lines.append(f"- bisect c1..c8: right (c3) {s['right']}, wrong {s['wrong']}, undecided {s['undecided']} "
                     f"of {s['runs']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="ab runs of each kind (default: 10)")
    parser.add_argument("--bisect", type=int, default=0, help="bisect runs (default: 0)")
    parser.add_argument("--batch-sizes", default="1,32", help="ab's --batch-sizes (default: 1,32)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "ab_quality", help="writes OUT.json, OUT.md")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ab-quality-"))
    repo = work / "project"
    shas = build_repository(repo)
    print(f"ab quality: repository {repo}, logs in {work}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {"no change": [], "change": [], "bisect": []}

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        summary = {"commits": shas, "batch_sizes": args.batch_sizes, "summary": summarize(runs), "runs": runs}
        args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(summary["summary"]))

    for i in range(args.runs):  # alternating, so a slow hour falls on both kinds alike
        for kind, base, head in (("no change", shas[0], shas[1]), ("change", shas[1], shas[2])):
            result = ab_run(repo, base, head, args, work, f"{kind.replace(' ', '-')}-{i}")
            runs[kind].append(result)
            print(f"{kind} {i}: exit {result['exit']} in {result['seconds']} s; " + "; ".join(
                f"{cid} {c['change']:+.1%} ({c['low']:+.1%} to {c['high']:+.1%}) {c['verdict']}"
                for cid, c in result["cases"].items()), flush=True)
            save()
    for i in range(args.bisect):
        result = bisect_run(repo, shas, work, f"bisect-{i}")
        runs["bisect"].append(result)
        print(f"bisect {i}: {result['verdict']} (named {result['named']}) in {result['seconds']} s", flush=True)
        save()
    save()
    print(markdown(summarize(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
