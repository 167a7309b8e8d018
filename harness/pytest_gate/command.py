"""`python -m harness gate [pytest args]`: the packaged gate suite, run by pytest in the current project."""

from __future__ import annotations

import importlib.util
import shlex
from collections.abc import Sequence
from pathlib import Path

from harness import project_config
from harness.errors import HarnessError

HERE = Path(__file__).resolve().parent
SUITE_FOLDER = HERE
"""Given to pytest as a folder, not as test_gate.py, so node ids keep the file: test_gate.py::test_gate[<case id>]."""
SETTINGS = HERE / "pytest.ini"
PLUGIN = "harness.pytest_gate.plugin"
GATE_ARGS = ("-c", str(SETTINGS), "-p", PLUGIN, str(SUITE_FOLDER))
"""The gate's own pytest arguments: its settings, its plugin, its suite (then --rootdir=<project>)."""
NEEDED = {"pytest": "pytest", "pytest_benchmark": "pytest-benchmark"}
"""The modules the gate runs on (module -> the distribution that installs it), in the extra `resnet-gate[gate]`."""


def pytest_argv(project: Path, pytest_args: Sequence[str]) -> list[str]:
    """Return pytest's arguments: the gate's settings, plugin and suite, the project's folder as rootdir (where its
    baselines/ and .pytest_cache go), then the user's arguments (a -c or --rootdir of theirs wins)."""
    return [*GATE_ARGS, f"--rootdir={project}", *pytest_args]


def typed_command(args: Sequence[str]) -> str:
    """Return the command a pytest run with arguments `args` was typed as, for its run record:
    `python -m harness gate ARGS` when gate_command started it, else `pytest ARGS`."""
    head, rest = tuple(args[: len(GATE_ARGS) + 1]), args[len(GATE_ARGS) + 1 :]
    if head[:-1] == GATE_ARGS and head[-1].startswith("--rootdir="):
        return shlex.join(["python", "-m", "harness", "gate", *rest])
    return shlex.join(["pytest", *args])


def gate_command(pytest_args: Sequence[str]) -> int:
    """Run the gate in the project of the current folder (its pyproject.toml's folder, else the current folder) with
    the defaults of its [tool.resnet-gate]; return pytest's exit status (0 passed, 1 a case failed, 2 interrupted,
    4 a usage error, 5 no case selected). A missing pytest or a broken table raises HarnessError first."""
    missing = [dist for module, dist in NEEDED.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise HarnessError(
            f"`python -m harness gate` runs the gate with pytest, and {', '.join(missing)} is not installed here: "
            "pip install 'resnet-gate[gate]'"
        )
    config = project_config.load()  # a broken table is one line before pytest starts, as for `run`
    project = config.folder or Path.cwd()
    import pytest

    return int(pytest.main(pytest_argv(project, pytest_args)))
