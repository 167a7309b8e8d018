"""`bisect`'s search on a real git repository, each step's `ab` replaced by a verdict the test chooses: the first bad
commit, how many steps it takes, a regression that does not show, a commit whose model does not run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _repos import commit, make_project, worktrees

from harness.ab import bisect as bisect_module
from harness.ab.client import WorkerError
from harness.ab.git import Repository
from harness.ab.runner import CaseOutcome, Comparison, Settings, Side
from harness.gate.thresholds import load_thresholds

SETTINGS = Settings(model="proj.model:classifier", data="digits", weights=None, variants=("fp32",),
                    batch_sizes=(1,), device="cpu", threads=1, budget_s=1.0, thresholds=load_thresholds())


def history(tmp_path: Path, count: int) -> tuple[Path, str, list[str]]:
    """Return (repository, GOOD, the `count` commits after it)."""
    repo = make_project(tmp_path)
    good = Repository.around(repo).commit("HEAD")
    return repo, good, [commit(repo, {"NOTES.md": f"note {i}\n"}, f"change {i}") for i in range(1, count + 1)]


def fake_compare(bad_from: str | None, shas: list[str], broken: str | None = None, seen: list[str] | None = None):
    """Return a stand-in for ab's compare: head is slower from `bad_from` on; `broken`'s model does not run."""

    def compare(settings: Settings, base: Side, head: Side, report: Any) -> Comparison:
        assert head.commit is not None and (head.folder / "model.py").is_file()  # a real checkout of the step
        if seen is not None:
            seen.append(head.commit)
        if head.commit == broken:
            raise WorkerError("head", "open failed: SyntaxError")
        outcome = CaseOutcome("fp32", "cpu", 1)
        before = shas.index(base.commit) if base.commit in shas else -1  # GOOD is before every commit
        if bad_from is not None and shas.index(head.commit) >= shas.index(bad_from) > before:
            outcome.latency_verdict = "regression"
        return Comparison(base, head, settings, [outcome], environment={}, models={})

    return compare


@pytest.mark.parametrize("first_bad", [0, 3, 4, 7])
def test_bisect_names_the_first_bad_commit_in_log2_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first_bad: int
) -> None:
    repo, good, shas = history(tmp_path, 8)
    seen: list[str] = []
    monkeypatch.setattr(bisect_module, "compare", fake_compare(shas[first_bad], shas, seen=seen))
    found = bisect_module.bisect(Repository.around(repo / "proj"), good, "HEAD", SETTINGS, "latency", print)
    assert found.verdict == "found" and found.first_bad is not None and found.first_bad.commit == shas[first_bad]
    # BAD first, then log2(8) halvings, then the first bad commit against its own parent
    assert seen[0] == shas[-1] and len(found.steps) == len(seen) <= 1 + 3 + 1
    assert seen[-1] == shas[first_bad] and found.first_bad.bad
    assert len(worktrees(repo)) == 1


def test_a_slowdown_spread_over_commits_is_undecided(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of two commits adds half a slowdown: the search ends on the second, which is not (confirmed) worse than
    its parent by enough; bisect says it cannot decide rather than naming it."""
    repo, good, shas = history(tmp_path, 4)

    def compare(settings: Settings, base: Side, head: Side, report: Any) -> Comparison:
        outcome = CaseOutcome("fp32", "cpu", 1)
        steps_after = shas.index(head.commit) - (shas.index(base.commit) if base.commit in shas else -1)
        if base.commit not in shas and shas.index(head.commit) >= 2:
            outcome.latency_verdict = "regression"  # against GOOD, both halves together show
        elif steps_after >= 2 and shas.index(head.commit) >= 2:
            outcome.latency_verdict = "regression"
        return Comparison(base, head, settings, [outcome], environment={}, models={})

    monkeypatch.setattr(bisect_module, "compare", compare)
    found = bisect_module.bisect(Repository.around(repo / "proj"), good, "HEAD", SETTINGS, "latency", print)
    assert found.verdict == "undecided" and found.first_bad is not None and found.first_bad.commit == shas[2]
    assert "not, confirmed, than its parent" in found.why


def test_bisect_says_so_when_bad_is_not_worse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, good, shas = history(tmp_path, 3)
    monkeypatch.setattr(bisect_module, "compare", fake_compare(None, shas))
    found = bisect_module.bisect(Repository.around(repo / "proj"), good, "HEAD", SETTINGS, "latency", print)
    assert found.verdict == "nothing" and found.first_bad is None and [s.commit for s in found.steps] == [shas[-1]]


def test_a_commit_whose_model_does_not_run_counts_as_bad(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, good, shas = history(tmp_path, 4)
    monkeypatch.setattr(bisect_module, "compare", fake_compare(shas[2], shas, broken=shas[1]))
    found = bisect_module.bisect(Repository.around(repo / "proj"), good, "HEAD", SETTINGS, "latency", print)
    assert found.verdict == "found" and found.first_bad is not None and found.first_bad.commit == shas[1]
    assert "the model does not run here: head: open failed: SyntaxError" in found.first_bad.evidence


def test_good_itself_not_running_stops_the_bisection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, good, shas = history(tmp_path, 2)

    def compare(settings: Settings, base: Side, head: Side, report: Any) -> Comparison:
        raise WorkerError("base", "open failed: ImportError")

    monkeypatch.setattr(bisect_module, "compare", compare)
    with pytest.raises(WorkerError, match="base: open failed"):
        bisect_module.bisect(Repository.around(repo / "proj"), good, "HEAD", SETTINGS, "latency", print)
    assert len(worktrees(repo)) == 1


def test_an_unknown_metric_is_refused_before_any_checkout(tmp_path: Path) -> None:
    repo, good, _ = history(tmp_path, 1)
    with pytest.raises(Exception, match="is not one bisect can chase"):
        bisect_module.bisect(Repository.around(repo / "proj"), good, "HEAD", SETTINGS, "speed", print)
