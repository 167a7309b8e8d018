"""`python -m harness gate` in a project of its own: the packaged suite collects the cases the project's
[tool.resnet-gate] configures (a flag still wins), and a pip-installed harness needs nothing else copied.
Every run here stops at collection (--collect-only), so nothing is trained or timed."""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from harness import techniques
from harness.errors import HarnessError
from harness.gate.cases import gate_cases
from harness.gate.thresholds import THRESHOLDS_FILE
from harness.project_config import load
from harness.pytest_gate import command

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tiny_project"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of examples/tiny_project as a repository of its own (its pyproject.toml and factory, nothing else)."""
    folder = tmp_path / "tiny_project"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__", "results", ".nox"))
    (folder / ".git").mkdir()
    return folder


def collect(python: str, project: Path, *flags: str, pythonpath: str | None) -> tuple[list[str], str]:
    """Return the case ids `python -m harness gate --collect-only` lists in `project`, and its output (with its
    header unless `flags` hold -q)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTEST_", "PYTHONPATH"))}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the table leaves device to auto: cpu here, on any machine
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run(
        [python, "-m", "harness", "gate", "--collect-only", "-p", "no:cacheprovider", *flags],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return re.findall(r"test_gate\[([^\]]+)\]", done.stdout), done.stdout


def configured_ids(project: Path) -> list[str]:
    """Return the case ids the project's table names, in the gate's order."""
    values = load(project).values
    sizes = tuple(values["batch-sizes"])
    return [c.case_id for c in gate_cases(techniques.select_variants(values["variants"]), ("cpu",), {"cpu": sizes})]


@pytest.mark.e2e
def test_the_gate_collects_exactly_the_cases_the_project_configures(project: Path) -> None:
    before = sorted(project.rglob("*"))
    ids, out = collect(sys.executable, project, pythonpath=str(ROOT))
    assert ids == configured_ids(project) == [
        "fp32-cpu-bs1", "fp32-cpu-bs32", "dynamic_int8-cpu-bs1", "dynamic_int8-cpu-bs32",
        "prune_unstructured-cpu-bs1", "prune_unstructured-cpu-bs32",
    ]
    assert "gate defaults from pyproject.toml [tool.resnet-gate]: model, data, variants, batch-sizes, baselines" in out
    # no results, no baselines (the committed one stays as it is); pytest-benchmark makes its empty storage folder
    # .benchmarks on start-up, which the example's .gitignore names
    ignored = {"__pycache__", ".benchmarks"}
    written = [p for p in sorted(project.rglob("*")) if p not in before and not ignored & set(p.parts)]
    assert written == [], "collecting wrote files"


@pytest.mark.e2e
def test_a_flag_beats_the_projects_table(project: Path) -> None:
    ids, out = collect(sys.executable, project, "--bench-variants", "fp32", "--bench-batch-sizes", "4",
                       pythonpath=str(ROOT))
    assert ids == ["fp32-cpu-bs4"]
    assert "gate defaults from pyproject.toml [tool.resnet-gate]: model, data, baselines" in out


@pytest.mark.e2e
def test_the_packaged_suite_without_a_table_is_the_built_in_gate(tmp_path: Path) -> None:
    folder = tmp_path / "bare"
    (folder / ".git").mkdir(parents=True)
    ids, out = collect(sys.executable, folder, "--bench-batch-sizes", "1", "-q", pythonpath=str(ROOT))
    assert ids == [c.case_id for c in gate_cases(techniques.variants(), ("cpu",), {"cpu": (1,)})]
    assert out.startswith("test_gate.py::test_gate[fp32-cpu-bs1]\n")  # the node id keeps its file, as bench/'s


def test_the_gate_needs_pytest_benchmark_and_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pytest_benchmark", None)  # what Python does for a module that cannot import
    needs = r"pytest-benchmark is not installed here: pip install 'resnet-gate\[gate\]'"
    with pytest.raises(HarnessError, match=needs):
        command.gate_command(["--collect-only"])


@pytest.mark.e2e
def test_a_pip_installed_harness_runs_the_gate_with_nothing_else_copied(project: Path, tmp_path: Path) -> None:
    """Build the wheel, install it into a fresh environment (torch from this one's site-packages) and run the gate
    in the project with no PYTHONPATH: the suite, its plugin, its settings and the thresholds file all ship.

    The fresh environment reaches this one's packages through a .pth file naming this interpreter's site-packages
    (whether it is a venv or not), behind its own: `--system-site-packages` would give it the base interpreter's,
    which has no torch when these tests run in a venv."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "harness", source / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(source), "--no-build-isolation", "--no-deps", "-w", str(tmp_path / "dist")],
                   check=True, timeout=120)
    wheel = next((tmp_path / "dist").glob("resnet_gate-*.whl"))
    shipped = set(zipfile.ZipFile(wheel).namelist())
    suite = command.SUITE_FOLDER
    needed = {THRESHOLDS_FILE, command.SETTINGS, suite / "test_gate.py", suite / "plugin.py"}
    assert {path.relative_to(ROOT).as_posix() for path in needed} <= shipped
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    own = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True,
                         capture_output=True, check=True).stdout.strip()
    (Path(own) / "outer-site-packages.pth").write_text("\n".join(site.getsitepackages()) + "\n", encoding="utf-8")
    subprocess.run([*pip, "--python", python, "install", "--no-deps", str(wheel)], check=True, timeout=120)
    ids, _out = collect(python, project, pythonpath=None)
    assert ids == configured_ids(project)
    where = subprocess.run([python, "-c", "import harness; print(harness.__file__)"], cwd=project, text=True,
                           capture_output=True, check=True, env={k: v for k, v in os.environ.items()
                                                                 if k != "PYTHONPATH"}).stdout
    assert Path(where.strip()).is_relative_to(venv), "the run imported the harness from somewhere else"


def test_a_run_record_keeps_the_command_as_typed() -> None:
    argv = command.pytest_argv(Path("/somewhere/project"), ["-m", "not slow", "--device", "cpu"])
    assert command.typed_command(argv) == "python -m harness gate -m 'not slow' --device cpu"
    assert command.typed_command(["bench", "-p", "no:xdist"]) == "pytest bench -p no:xdist"
