"""A small git project for the `ab` and `bisect` tests: a model factory (proj.model:classifier) and its commits."""

from __future__ import annotations

import subprocess
from pathlib import Path

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


def git(repo: Path, *args: str) -> str:
    """Return the output of `git -C repo args` (a failure raises)."""
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    """Write `files` (path: text), commit them all with `message`; return the new commit."""
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def worktrees(repo: Path) -> list[str]:
    """Return the lines of `git worktree list`."""
    return [line for line in git(repo, "worktree", "list").splitlines() if line.strip()]


def make_project(tmp_path: Path) -> Path:
    """Return a git repository holding the small model factory (proj.model:classifier), one commit."""
    repo = tmp_path / "project"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "test@example.com")
    git(repo, "config", "user.name", "test")
    commit(repo, {"proj/__init__.py": "", "proj/model.py": MODEL.format(extra=""), "NOTES.md": "0\n"}, "base")
    return repo
