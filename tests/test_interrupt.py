"""Ctrl-C at any moment: every file a command writes is left as it was or complete, no temporary file remains,
and the command exits 130 with one line instead of a traceback.

Each command that writes is run once to the end (to learn how long it takes and what it writes), then started
again over the old files and interrupted (SIGINT to its process group, as a terminal's Ctrl-C) at spread fractions
of that time. The sleeps only choose the moment of the interrupt; nothing here asserts a duration.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _gate import make_case, make_record, with_wrong
from PIL import Image

from harness.gate.store import load_baseline
from harness.results import load_run, save_run

pytestmark = pytest.mark.e2e

FRACTIONS = (0.1, 0.4, 0.7, 0.95)
"""When to interrupt, as fractions of the command's uninterrupted time."""


HARNESS = [sys.executable, "-m", "harness"]
GATE = [sys.executable, "-m", "pytest", str(Path(__file__).resolve().parent.parent / "bench"), "-p", "no:xdist",
        "-p", "no:cacheprovider", "-q"]
INTERRUPTED = {"harness": 130, "gate": int(pytest.ExitCode.INTERRUPTED)}


def harness(argv: list[str], env: dict[str, str], cwd: Path, program: list[str] = HARNESS) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*program, *argv], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], interrupt_after: float | None = None) -> tuple[int, str, str]:
    """Return (exit code, stderr, stdout) of `proc`, sending Ctrl-C to its process group after `interrupt_after`
    seconds."""
    if interrupt_after is not None:
        try:
            proc.wait(timeout=interrupt_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, err, out


def temporary_files(*folders: Path) -> list[Path]:
    """Return the temporary files write_atomic makes (".<name>.<random>.tmp") left anywhere under `folders`."""
    return [p for folder in folders if folder.exists() for p in folder.rglob(".*.tmp")]


def whole_png(path: Path) -> bool:
    with Image.open(path) as image:
        image.load()
    return True


def interrupted_everywhere(
    argv: list[str],
    outputs: dict[Path, Callable[[Path], object]],
    tmp_path: Path,
    env: dict[str, str],
    old: dict[Path, bytes] | None = None,
    fractions: tuple[float, ...] = FRACTIONS,
    program: str = "harness",
) -> None:
    """Run `argv` to the end (twice: the second run's time sets the moments), then over old outputs (`old`, else
    placeholder bytes) interrupted at each of `fractions`; after each, every output is the old bytes or read whole
    by its reader, and no temporary file is left. `program` is "harness" (python -m harness) or "gate" (pytest
    bench)."""
    command = HARNESS if program == "harness" else GATE
    for _warm in range(2):  # the second, warm run sets the moments: the first also fills the fresh cache (the
        start = time.perf_counter()  # byte-counting allocator's build, inductor's), which later runs skip
        proc = harness(argv, env, tmp_path, command)
        code, err, out = finish(proc)
        took = time.perf_counter() - start
        assert code == 0, err + out
    for path, read in outputs.items():
        read(path)  # what the command writes is readable by its reader
    old = old or {path: b"old " + path.name.encode() for path in outputs}
    codes = []
    for fraction in fractions:
        for path, content in old.items():
            path.write_bytes(content)
        code, err, _out = finish(harness(argv, env, tmp_path, command), interrupt_after=max(took * fraction, 0.3))
        codes.append(code)
        # -SIGINT: the interrupt came after main returned, while the interpreter shut down (the shell shows 130)
        assert code in (0, INTERRUPTED[program], -signal.SIGINT), err
        if program == "harness":
            assert "Traceback" not in err, err
            if code == 130:
                assert err.strip().splitlines()[-1].startswith("interrupted: "), err
        for path, read in outputs.items():
            if path.read_bytes() != old[path]:
                read(path)  # raises on a half-written file
        assert temporary_files(tmp_path, Path(env["HARNESS_CACHE_DIR"])) == []
        assert list(tmp_path.rglob(".gate-parts-*")) == []
    assert INTERRUPTED[program] in codes, f"no run was interrupted inside the command (exits {codes}, {took:.1f} s)"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The commands' environment: a private cache, so no other test's writes show up in it."""
    return {**os.environ, "HARNESS_CACHE_DIR": str(tmp_path / "cache")}


def with_default_model(cache: Path) -> None:
    """Put the built-in default model into `cache`: trained once into the suite's cache (shared, locked), copied."""
    from harness.data import load_data
    from harness.models import train_on_data
    from harness.paths import cache_dir

    train_on_data("resnet18", load_data("digits"), device=torch.device("cpu"), progress=False)
    (cache / "models").mkdir(parents=True)
    for entry in (cache_dir() / "models").glob("resnet18-digits-*.pt"):
        shutil.copyfile(entry, cache / "models" / entry.name)


def gate_runs(folder: Path, count: int = 2) -> list[str]:
    """Write `count` results files of gate runs (synthetic cases) and return their paths."""
    paths = []
    for i in range(count):
        cases = [make_case("fp32", correct=with_wrong(2, 100)), make_case(speedup=3.4 + 0.1 * i,
                 correct=with_wrong(4, 100))]
        path = folder / f"gate-run-{i}.json"
        save_run(path, make_record(cases))
        paths.append(str(path))
    return paths


@pytest.mark.slow
def test_run_interrupted_leaves_results_old_or_whole(tmp_path: Path, env: dict[str, str]) -> None:
    """`run` on the built-in default (the model trained once into the suite's cache, then reused)."""
    out = tmp_path / "results" / "run.json"
    argv = ["run", "--device", "cpu", "--variants", "fp32", "--batch-sizes", "1", "--budget", "0.5", "--quiet",
            "--out", str(out)]
    out.parent.mkdir()
    with_default_model(Path(env["HARNESS_CACHE_DIR"]))
    interrupted_everywhere(argv, {out: load_run}, tmp_path, env, fractions=(0.25, 0.6, 0.9))


@pytest.mark.slow
def test_training_interrupted_leaves_no_half_model_in_the_cache(tmp_path: Path) -> None:
    """Ctrl-C while the built-in model trains: the cache holds no entry or a whole one, and no temporary file."""
    cache = tmp_path / "cache"
    env = {**os.environ, "HARNESS_CACHE_DIR": str(cache)}
    proc = harness(["run", "--device", "cpu", "--quiet", "--out", str(tmp_path / "r.json")], env, tmp_path)
    code, err, _out = finish(proc, interrupt_after=8.0)
    # -SIGINT, as interrupted_everywhere allows: a Ctrl-C that lands inside some of torch's C++ calls is marked
    # unhandled by CPython even though `main` caught it (its one line is printed), and CPython then ends the process
    # by SIGINT at exit; a shell shows 130 either way (seen under load; leaving by os._exit instead left torch's
    # worker processes holding the pipes)
    assert code in (130, -signal.SIGINT) and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted: "), err
    assert temporary_files(cache) == []
    assert not (tmp_path / "r.json").exists()
    for entry in (cache / "models").glob("*.pt"):
        assert "state_dict" in torch.load(entry, map_location="cpu", weights_only=True)


def test_compare_interrupted_leaves_markdown_old_or_whole(tmp_path: Path, env: dict[str, str]) -> None:
    old_run, new_run = gate_runs(tmp_path)
    markdown = tmp_path / "comparison.md"
    interrupted_everywhere(["compare", old_run, new_run, "--markdown", str(markdown)],
                           {markdown: lambda p: p.read_text(encoding="utf-8").endswith("\n")}, tmp_path, env)


def test_report_interrupted_leaves_each_file_old_or_whole(tmp_path: Path, env: dict[str, str]) -> None:
    (results,) = gate_runs(tmp_path, count=1)
    stem = Path(results).stem
    outputs = {tmp_path / f"{stem}.md": lambda p: p.read_text(encoding="utf-8").endswith("\n"),
               tmp_path / f"{stem}.png": whole_png}
    interrupted_everywhere(["report", results], outputs, tmp_path, env)


def test_baseline_write_interrupted_leaves_the_baseline_old_or_whole(tmp_path: Path, env: dict[str, str]) -> None:
    runs = gate_runs(tmp_path)
    folder = tmp_path / "baselines"
    folder.mkdir()
    key = load_run(Path(runs[0])).env_key
    path = folder / f"{key}.json"
    code, err, _out = finish(harness(["baseline", "write", runs[0], "--force", "--baselines-dir", str(folder)], env,
                               tmp_path))
    assert code == 0, err
    interrupted_everywhere(["baseline", "write", *runs, "--force", "--baselines-dir", str(folder)],
                           {path: lambda p: load_baseline(p.parent, key)}, tmp_path, env, old={path: path.read_bytes()})


@pytest.mark.slow
def test_the_gate_interrupted_leaves_its_results_old_or_whole(tmp_path: Path, env: dict[str, str]) -> None:
    """`pytest bench --results-json` (one case, the default model copied in): pytest exits 2 on Ctrl-C, and the
    results file is the old one or a whole record of the cases measured before the interrupt."""
    out = tmp_path / "gate.json"
    with_default_model(Path(env["HARNESS_CACHE_DIR"]))
    argv = ["--device", "cpu", "--bench-variants", "fp32", "--bench-batch-sizes", "1", "--bench-budget", "0.3",
            "--baselines-dir", str(tmp_path / "no-baselines"), "--unjudged", "warn", "--results-json", str(out)]
    # after pytest's own start-up (imports): a Ctrl-C before its session begins is pytest's to report, not the gate's
    interrupted_everywhere(argv, {out: load_run}, tmp_path, env, fractions=(0.6, 0.9), program="gate")


@pytest.mark.parametrize("delay", [0.2, 0.4, 0.6, 0.8, 1.0, 1.3])
def test_run_interrupted_while_it_starts_exits_130(tmp_path: Path, delay: float) -> None:
    """Ctrl-C while torch, numpy and scipy are being imported: held until they are, then the one line and 130
    (cut halfway, numpy's lazy import recursed to a RecursionError and torch's start-up made the process die by
    SIGINT: both seen at about 0.6 s)."""
    env = {**os.environ, "HARNESS_CACHE_DIR": str(tmp_path / "cache")}
    proc = harness(["run", "--device", "cpu", "--quiet", "--out", str(tmp_path / "r.json")], env, tmp_path)
    code, err, _out = finish(proc, interrupt_after=delay)
    assert code == 130 and "Traceback" not in err and err.strip().startswith("interrupted: run"), err
    assert not (tmp_path / "r.json").exists()
