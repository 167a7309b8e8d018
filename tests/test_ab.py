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

from harness.ab.cli import parse_case
from harness.ab.git import GitError, Repository
from harness.errors import HarnessError

MODEL = '''from torch import nn


def classifier(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
{extra}        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )
'''
HEAVY = "".join("        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),\n" for _ in range(6))
"""Six more 16-channel convolutions at full resolution: several times the work, a slowdown no noise hides."""
BISECT_ARGS = ["--model", "proj.model:classifier", "--device", "cpu", "--eval-count", "100", "--budget", "1"]
FAST_ARGS = ["--model", "proj.model:classifier", "--variants", "fp32", "--batch-sizes", "1", "--device", "cpu",
             "--eval-count", "100", "--budget", "1"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git repository holding a small model factory (proj.model:classifier), one commit."""
    repo = tmp_path / "project"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "test@example.com")
    git(repo, "config", "user.name", "test")
    commit(repo, {"proj/__init__.py": "", "proj/model.py": MODEL.format(extra=""), "NOTES.md": "0\n"}, "base")
    return repo


def harness(folder: Path, *args: str, cache: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HARNESS_CACHE_DIR": str(cache), "TMPDIR": str(cache.parent)}
    return subprocess.run(
        [sys.executable, "-m", "harness", *args], cwd=folder, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )


def worktrees(repo: Path) -> list[str]:
    return [line for line in git(repo, "worktree", "list").splitlines() if line.strip()]


def leftovers(tmp: Path) -> list[Path]:
    return list(tmp.glob("harness-ab-*"))


def test_refs_and_worktrees(project: Path, tmp_path: Path) -> None:
    repo = Repository.around(project / "proj")
    assert repo.root == project.resolve() and repo.project == Path("proj")
    base = repo.commit("HEAD")
    with pytest.raises(GitError, match="names no commit"):
        repo.commit("no-such-branch")
    with pytest.raises(GitError, match="not inside a git repository"):
        Repository.around(tmp_path)
    with pytest.raises(RuntimeError, match="inside"), repo.checked_out(base) as folder:
        assert (folder / "model.py").is_file() and folder.name == "proj"
        raise RuntimeError("inside")
    assert len(worktrees(project)) == 1 and not folder.exists()
    later = [commit(project, {"NOTES.md": f"note {i}\n"}, f"note {i}") for i in range(3)]
    assert repo.commits_between(base, later[-1]) == later
    with pytest.raises(GitError, match="not an ancestor"):
        repo.commits_between(later[-1], base)


def test_case_ids() -> None:
    assert parse_case("fp32-cpu-bs1") == ("fp32", "cpu", 1)
    assert parse_case("prune_structured+static_int8-cuda-bs256") == ("prune_structured+static_int8", "cuda", 256)
    for bad in ("fp32", "fp32-gpu-bs1", "fp32-cpu-1", "-cpu-bs1"):
        with pytest.raises(HarnessError, match="VARIANT-DEVICE-bsN"):
            parse_case(bad)


def test_ab_catches_a_heavier_model_and_passes_an_unchanged_one(project: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    base = git(project, "rev-parse", "HEAD")
    commit(project, {"NOTES.md": "a note, the model unchanged\n"}, "no model change")
    same = harness(project, "ab", base, "HEAD", *FAST_ARGS, "--out", str(tmp_path / "same.json"), cache=cache)
    assert same.returncode == 0, same.stderr
    record = json.loads((tmp_path / "same.json").read_text())
    assert record["verdict"] == "pass" and record["cases"][0]["case_id"] == "fp32-cpu-bs1"
    assert record["cases"][0]["accuracy"]["change"] == 0.0  # the same model trained the same way: same images right
    assert "no regression in 1 cases" in same.stdout

    (project / "proj" / "model.py").write_text(MODEL.format(extra=HEAVY), encoding="utf-8")  # uncommitted: HEAD = tree
    slow = harness(project, "ab", base, *FAST_ARGS, "--out", str(tmp_path / "slow.json"),
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


def test_ab_refuses_bad_input_before_any_work(project: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    for args, message in [
        (["nope"], "names no commit"),
        (["HEAD", "--variants", "nonesuch"], "nonesuch"),
        (["HEAD", "--model", "not a spec"], "not a model spec"),
        (["HEAD", "--budget", "0"], "--budget must be positive"),
        (["HEAD", "--seed", "-1"], "--seed must be between 0 and"),
    ]:
        done = harness(project, "ab", *args, cache=cache, timeout=120)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert len(worktrees(project)) == 1


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
    for i in range(1, 9):  # eight commits after GOOD; the fifth makes the model several times slower
        files = {"NOTES.md": f"note {i}\n"}
        if i == 5:
            files["proj/model.py"] = MODEL.format(extra=HEAVY)
        shas.append(commit(project, files, f"change {i}"))
    done = harness(project, "bisect", good, "HEAD", "--case", "fp32-cpu-bs1", *BISECT_ARGS,
                   "--out", str(tmp_path / "bisect.json"), cache=cache, timeout=900)
    assert done.returncode == 0, done.stderr
    assert f"first bad commit: {shas[4][:7]} change 5" in done.stdout
    record = json.loads((tmp_path / "bisect.json").read_text())
    assert record["first_bad"] == shas[4]
    measured = {step["commit"]: step["bad"] for step in record["steps"]}
    assert all(bad == (shas.index(c) >= 4) for c, bad in measured.items())
    assert len(measured) <= 5  # BAD, then log2(8) = 3 steps (+1 at most)
    assert len(worktrees(project)) == 1 and not leftovers(tmp_path)


def test_bisect_says_so_when_bad_is_not_worse(project: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    good = git(project, "rev-parse", "HEAD")
    commit(project, {"NOTES.md": "just a note\n"}, "note")
    done = harness(project, "bisect", good, "HEAD", "--case", "fp32-cpu-bs1", "--metric", "macs", *BISECT_ARGS,
                   "--out", str(tmp_path / "bisect.json"), cache=cache)
    assert done.returncode == 1, done.stderr
    assert "does not regress fp32-cpu-bs1 on macs" in done.stdout


def test_bisect_counts_a_commit_whose_model_does_not_run_as_bad(project: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    good = git(project, "rev-parse", "HEAD")
    shas = [commit(project, {"NOTES.md": "note 1\n"}, "change 1")]
    shas.append(commit(project, {"proj/model.py": "def classifier(:\n"}, "change 2 breaks the model"))
    shas.append(commit(project, {"proj/model.py": MODEL.format(extra=HEAVY)}, "change 3 mends it, heavier"))
    done = harness(project, "bisect", good, "HEAD", "--case", "fp32-cpu-bs1", "--metric", "macs", *BISECT_ARGS,
                   "--out", str(tmp_path / "bisect.json"), cache=cache)
    assert done.returncode == 0, done.stderr
    assert f"first bad commit: {shas[1][:7]} change 2 breaks the model" in done.stdout
    assert "the model does not run here: head: open failed" in done.stdout and "SyntaxError" in done.stdout
    assert len(worktrees(project)) == 1 and not leftovers(tmp_path)
