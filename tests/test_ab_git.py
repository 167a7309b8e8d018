"""`ab`'s git plumbing, its case ids and its input checks, on a real repository: refs, worktrees removed, commits
between two refs, bad input refused in one line before any worktree."""

from __future__ import annotations

from pathlib import Path

import pytest
from _repos import commit, make_project, worktrees

from harness.__main__ import main
from harness.ab.cli import parse_case
from harness.ab.git import GitError, Repository
from harness.errors import HarnessError


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git repository holding a small model factory, one commit."""
    return make_project(tmp_path)


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


def test_ab_refuses_bad_input_before_any_work(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(project)
    for args, message in [
        (["nope"], "names no commit"),
        (["HEAD", "--variants", "nonesuch"], "nonesuch"),
        (["HEAD", "--model", "not a spec"], "not a model spec"),
        (["HEAD", "--budget", "0"], "--budget must be positive"),
        (["HEAD", "--seed", "-1"], "--seed must be between 0 and"),
    ]:
        assert main(["ab", *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert len(worktrees(project)) == 1
