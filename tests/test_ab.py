"""`ab` and `bisect` on real git repositories of a small project: worktrees, workers, verdicts, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _repos import HEAVY, MODEL, commit, git, make_project, worktrees

from harness.gate.thresholds import THRESHOLDS_FILE

pytestmark = pytest.mark.e2e

BISECT_ARGS = ["--model", "proj.model:classifier", "--device", "cpu", "--eval-count", "100", "--budget", "1"]
FAST_ARGS = ["--model", "proj.model:classifier", "--variants", "fp32", "--batch-sizes", "1", "--device", "cpu",
             "--eval-count", "100", "--budget", "1"]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git repository holding a small model factory (proj.model:classifier), one commit."""
    return make_project(tmp_path)


def never_busy(tmp_path: Path) -> list[str]:
    """Return --thresholds of a copy of the shipped file whose busy limit is 0.999: these tests time under xdist,
    beside the other workers, so every case would read busy; what they check (worktrees, workers, a several-fold
    slowdown, the search) does not depend on a quiet machine. How well ab judges is measured alone, on a quiet
    machine, by scripts/ab_quality.py."""
    shipped = json.loads(THRESHOLDS_FILE.read_text(encoding="utf-8"))
    shipped["timing"]["busy_limit"] = 0.999  # the largest the file takes: only a CPU fully taken reads busy
    path = tmp_path / "thresholds-never-busy.json"
    path.write_text(json.dumps(shipped), encoding="utf-8")
    return ["--thresholds", str(path)]


def harness(folder: Path, *args: str, cache: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HARNESS_CACHE_DIR": str(cache), "TMPDIR": str(cache.parent)}
    return subprocess.run(
        [sys.executable, "-m", "harness", *args], cwd=folder, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )


def leftovers(tmp: Path) -> list[Path]:
    return list(tmp.glob("harness-ab-*"))


def test_ab_catches_a_heavier_model_and_finds_an_unchanged_one_exactly_equal(project: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    base = git(project, "rev-parse", "HEAD")
    commit(project, {"NOTES.md": "a note, the model unchanged\n"}, "no model change")
    quiet = never_busy(tmp_path)
    same = harness(project, "ab", base, "HEAD", *FAST_ARGS, *quiet, "--out", str(tmp_path / "same.json"), cache=cache)
    assert same.returncode in (0, 1), same.stderr
    record = json.loads((tmp_path / "same.json").read_text())
    case = record["cases"][0]
    assert case["case_id"] == "fp32-cpu-bs1" and case["status"] == "ok"
    assert case["accuracy"]["change"] == 0.0  # the same model trained the same way: the same images right
    assert case["head"]["macs"] == case["base"]["macs"] and case["head"]["size_bytes"] == case["base"]["size_bytes"]
    # Its latency verdict is a timing read beside the other xdist workers (one CPU for both sides): not held here.
    assert set(case["regressions"]) <= {"latency"} and case["latency"]["rounds"] >= 8
    assert (record["verdict"] == "pass") == (same.returncode == 0)

    (project / "proj" / "model.py").write_text(MODEL.format(extra=HEAVY), encoding="utf-8")  # uncommitted: HEAD = tree
    slow = harness(project, "ab", base, *FAST_ARGS, *quiet, "--out", str(tmp_path / "slow.json"),
                   "--markdown", str(tmp_path / "pr.md"), cache=cache)
    assert slow.returncode == 1, slow.stderr
    case = json.loads((tmp_path / "slow.json").read_text())["cases"][0]
    assert {"latency", "macs", "size_bytes"} <= set(case["regressions"])
    assert case["latency"]["ratio"] > 1.5 and case["latency_again"]["ratio"] > 1.5  # confirmed in fresh workers
    assert case["head"]["macs"] > 3 * case["base"]["macs"]
    markdown = (tmp_path / "pr.md").read_text()
    assert "regression(s) in 1 cases" in markdown and "| fp32-cpu-bs1 |" in markdown and "REGRESSION" in markdown
    assert "working tree with uncommitted changes" in slow.stdout
    assert len(worktrees(project)) == 1 and not leftovers(tmp_path)


def test_ab_interrupted_removes_its_worktree_and_workers(project: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    base = git(project, "rev-parse", "HEAD")
    args = [*FAST_ARGS[:-1], "60"]  # a long timing budget: the interrupt lands while the workers time
    env = {**os.environ, "HARNESS_CACHE_DIR": str(cache), "TMPDIR": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "harness", "ab", base, *args, "--out", str(tmp_path / "ab.json")],
        cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stderr is not None
    seen = []
    deadline = time.monotonic() + 300
    for line in process.stderr:
        seen.append(line)
        if line.startswith("timing ") or time.monotonic() > deadline:
            break
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest
    assert len(worktrees(project)) == 1 and not leftovers(tmp_path)
    assert not (tmp_path / "ab.json").exists()
    workers = subprocess.run(["pgrep", "-f", "harness.ab.worker"], capture_output=True, text=True, check=False)
    mine = [pid for pid in workers.stdout.split() if Path(f"/proc/{pid}/cwd").resolve().is_relative_to(tmp_path)]
    assert not mine


def test_bisect_finds_the_commit_that_made_the_model_slow(project: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    good = git(project, "rev-parse", "HEAD")
    shas = []
    for i in range(1, 3):  # two commits after GOOD; the second makes the model several times slower
        files = {"NOTES.md": f"note {i}\n"}
        if i == 2:
            files["proj/model.py"] = MODEL.format(extra=HEAVY)
        shas.append(commit(project, files, f"change {i}"))
    done = harness(project, "bisect", good, "HEAD", "--case", "fp32-cpu-bs1", *BISECT_ARGS, *never_busy(tmp_path),
                   "--out", str(tmp_path / "bisect.json"), cache=cache, timeout=900)
    assert done.returncode == 0, done.stderr
    assert f"first bad commit: {shas[1][:7]} change 2" in done.stdout
    record = json.loads((tmp_path / "bisect.json").read_text())
    assert record["first_bad"] == shas[1]
    measured = {step["commit"]: step["bad"] for step in record["steps"]}
    assert all(bad == (shas.index(c) >= 1) for c, bad in measured.items())
    assert len(measured) == 2  # BAD, then the commit before it (test_bisect.py checks the search itself)
    assert len(worktrees(project)) == 1 and not leftovers(tmp_path)
