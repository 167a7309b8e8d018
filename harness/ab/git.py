"""The git side of `ab` and `bisect`: the repository, its refs, and a ref checked out in a temporary worktree.

A worktree shares the repository's objects, so checking a ref out costs no clone; it is always removed again, on
an error and on Ctrl-C too (the `finally` of checked_out; `git worktree prune` clears a leftover of a killed run).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

WORKING_TREE = "WORKTREE"
"""The HEAD side when no ref is given: the working tree as it is, uncommitted changes included."""


class GitError(HarnessError):
    """Not a git repository, an unknown ref, or a git command that failed."""


def git(repo: Path, *args: str) -> str:
    """Return the stripped stdout of `git -C repo ARGS` (GitError with git's own message when it fails)."""
    if shutil.which("git") is None:
        raise GitError("ab and bisect need git on PATH: install git")
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise GitError(f"git {' '.join(args)} failed in {repo}: {message[-1] if message else done.returncode}")
    return done.stdout.strip()


@dataclass(frozen=True)
class Repository:
    """The git repository around the current folder: its top folder, and where the project sits inside it."""

    root: Path
    project: Path
    """The current folder relative to root: a project in a subfolder (examples/tiny_project) is found at the
    same place in each checkout."""

    @classmethod
    def around(cls, folder: Path) -> Repository:
        """Return the repository that holds `folder` (GitError when there is none)."""
        folder = folder.resolve()
        try:
            root = Path(git(folder, "rev-parse", "--show-toplevel")).resolve()
        except GitError as err:
            raise GitError(
                f"{folder} is not inside a git repository: run ab and bisect from your project's checkout ({err})"
            ) from err
        return cls(root=root, project=folder.relative_to(root))

    def commit(self, ref: str) -> str:
        """Return the full commit id `ref` names (GitError naming the ref when it names none)."""
        try:
            return git(self.root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        except GitError:
            raise GitError(
                f"{ref!r} names no commit in {self.root}: give a branch, tag or commit id "
                "(`git log --oneline` lists them)"
            ) from None

    def describe(self, commit: str) -> str:
        """Return "abc1234 subject line" for a commit."""
        return git(self.root, "log", "-1", "--format=%h %s", commit)

    def dirty(self) -> bool:
        """Return True when the working tree has uncommitted changes to tracked files."""
        return bool(git(self.root, "status", "--porcelain", "--untracked-files=no"))

    def commits_between(self, good: str, bad: str) -> list[str]:
        """Return the first-parent commits after `good` up to and including `bad`, oldest first."""
        if not self._is_ancestor(good, bad):
            raise GitError(f"{good[:12]} is not an ancestor of {bad[:12]}: bisect needs GOOD older than BAD")
        listed = git(self.root, "rev-list", "--first-parent", "--reverse", f"{good}..{bad}")
        return listed.split() if listed else []

    def _is_ancestor(self, older: str, newer: str) -> bool:
        done = subprocess.run(
            ["git", "-C", str(self.root), "merge-base", "--is-ancestor", older, newer], capture_output=True, check=False
        )
        return done.returncode == 0

    @contextlib.contextmanager
    def checked_out(self, commit: str) -> Iterator[Path]:
        """Check `commit` out in a temporary worktree and yield the project's folder in it; always remove it."""
        parent = Path(tempfile.mkdtemp(prefix="harness-ab-"))
        tree = parent / commit[:12]
        try:
            git(self.root, "worktree", "add", "--detach", "--quiet", str(tree), commit)
            yield tree / self.project
        finally:
            with _uninterrupted():  # a second Ctrl-C must not leave the worktree behind
                with contextlib.suppress(GitError, OSError):
                    git(self.root, "worktree", "remove", "--force", str(tree))
                shutil.rmtree(parent, ignore_errors=True)
                with contextlib.suppress(GitError, OSError):
                    git(self.root, "worktree", "prune")


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Ignore Ctrl-C inside the block (in the main thread; elsewhere signals are not ours to set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
