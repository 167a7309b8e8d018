"""Sessions: unit tests, lint, types, the regression gate here and on a GPU, the nightly torch/CUDA matrix.

`nox` runs tests, lint, workflows (the zizmor audit) and typecheck; the gate sessions are opt-in (`nox -s bench`,
`nox -s gpu_bench`, `nox -s update_baselines`, `nox -t nightly`). On a preinstalled GPU image or an offline machine,
run any of them with `nox --no-venv -s bench` (or `--force-venv-backend none`): nothing is installed, and the `python`
on PATH is used.
"""

from __future__ import annotations

import os

import nox

nox.options.reuse_venv = "yes"

TORCH = "2.14.1"
TORCHVISION = "0.29.1"
"""What tests/bench install (from PyPI). This machine's pip constraints cap torch at 2.14.1."""

MATRIX: list[dict[str, str]] = [
    {"torch": "2.14.1", "torchvision": "0.29.1", "cuda": "cu130"},
    {"torch": "2.11.0", "torchvision": "0.26.0", "cuda": "cu128"},
    {"torch": "2.9.1", "torchvision": "0.24.1", "cuda": "cpu"},
]
"""The nightly matrix: one torch build per row, its wheels from https://download.pytorch.org/whl/<cuda>."""

RESULTS = "results"


def index_url(cuda: str) -> str:
    """Return the PyTorch wheel index of a CUDA variant ("cu128", "cu130") or of "cpu"."""
    return f"https://download.pytorch.org/whl/{cuda}"


def matrix_id(entry: dict[str, str]) -> str:
    """Return a row's session id, e.g. "torch2.11-cu128"."""
    return f"torch{'.'.join(entry['torch'].split('.')[:2])}-{entry['cuda']}"


def install(session: nox.Session, *args: str) -> None:
    """pip install into the session's venv; nothing under --no-venv, where the image is preinstalled."""
    if session.venv_backend != "none":
        session.install(*args)


def install_project(
    session: nox.Session, torch: str = TORCH, torchvision: str = TORCHVISION, cuda: str | None = None,
    extras: str = "test",
) -> None:
    """Install torch/torchvision (from the PyTorch index of `cuda`, else PyPI), then the project with `extras`."""
    index = ("--index-url", index_url(cuda)) if cuda else ()
    install(session, *index, f"torch=={torch}", f"torchvision=={torchvision}")
    install(session, "-e", f".[{extras}]")


ALL_TESTS = (
    "pytest", "-n", "auto", "--dist", "worksteal", "-m", "", "--hypothesis-profile=ci", "--durations=10",
    "--timeout=900",
)
REDUCED_GATE = ("pytest", "bench", "-p", "no:xdist", "-m", "quick", "--unjudged", "warn")
"""README's test command, in two steps: every test lane in parallel, then the reduced gate alone (it times)."""


@nox.session
def tests(session: nox.Session) -> None:
    """Run the fast lane of the unit tests (what a developer runs on every save)."""
    install_project(session)
    session.run("pytest", "-n", "auto", "--dist", "worksteal", *session.posargs)


@nox.session(default=False)
def tests_all(session: nox.Session) -> None:
    """Run every test lane in parallel, then the reduced gate on its own, as CI does (README's test command)."""
    install_project(session)
    session.run(*ALL_TESTS, *session.posargs)
    session.run(*REDUCED_GATE)


@nox.session
def lint(session: nox.Session) -> None:
    """Lint the code with ruff."""
    install(session, "ruff")
    session.run("ruff", "check", ".", *session.posargs)


@nox.session
def workflows(session: nox.Session) -> None:
    """Audit .github/workflows with zizmor, offline: pinned actions, no persisted credentials, no injection."""
    install(session, "zizmor>=1.0")
    session.run("zizmor", "--offline", ".github/workflows/", *session.posargs)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check harness/ with mypy."""
    install_project(session)
    install(session, "mypy")
    session.run("mypy", "harness", *session.posargs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Run the regression gate on this machine's device against the committed baselines."""
    install_project(session)
    session.run("pytest", "bench", "-p", "no:xdist", "--unjudged", "fail", "--results-json", f"{RESULTS}/bench.json",
                *session.posargs)


@nox.session(default=False, tags=["gpu"])
def gpu_bench(session: nox.Session) -> None:
    """Run the pre-merge GPU gate (fails, not skips, without CUDA); `-- -n <GPUs>`: one worker per GPU. Installs the
    gpu extra (nvidia-ml-py), so each case records the GPU's clocks, throttling and other users."""
    install_project(session, extras="test,gpu")
    session.run(
        "pytest",
        "bench",
        "-n",
        "0",
        "--device",
        "cuda",
        "--require-gpu",
        "--unjudged",
        "fail",
        "--results-json",
        f"{RESULTS}/gpu-bench.json",
        "--benchmark-json",
        f"{RESULTS}/gpu-bench-benchmark.json",
        *session.posargs,
    )


@nox.session(default=False)
def ab(session: nox.Session) -> None:
    """Measure head against base on this machine in one job: `nox -s ab -- BASE [HEAD] [ab options]` (default BASE:
    origin/main; HEAD: the working tree); writes the table as markdown for the pull request; exit 1 on a regression."""
    install_project(session)
    args = session.posargs or ["origin/main"]
    session.run(
        "python", "-m", "harness", "ab", *args, "--out", f"{RESULTS}/ab.json", "--markdown", f"{RESULTS}/ab.md"
    )


@nox.session(default=False)
def update_baselines(session: nox.Session) -> None:
    """Record baselines/<env-key>.json from BASELINE_RUNS (default 3) fresh gate runs, whatever their checks said
    (`baseline write` lists the ones that failed); review the diff, commit it."""
    install_project(session)
    files = [f"{RESULTS}/baseline-run-{i + 1}.json" for i in range(int(os.environ.get("BASELINE_RUNS", "3")))]
    for path in files:  # each run is a fresh process: the baseline learns the spread between processes
        # Recording is measuring: a failing check (exit 1) does not stop it; a usage error or a crash does.
        session.run("pytest", "bench", "-p", "no:xdist", "--unjudged", "warn", "--results-json", path,
                    *session.posargs, success_codes=[0, 1])
    session.run("python", "-m", "harness", "baseline", "write", *files)


@nox.session(default=False, tags=["nightly"])
@nox.parametrize("entry", [nox.param(entry, id=matrix_id(entry)) for entry in MATRIX])
def bench_matrix(session: nox.Session, entry: dict[str, str]) -> None:
    """Run the gate under one torch/CUDA build of MATRIX (`nox -t nightly` runs every row)."""
    install_project(session, entry["torch"], entry["torchvision"], cuda=entry["cuda"])
    out = f"{RESULTS}/nightly/{matrix_id(entry)}"
    device = ["--device", "cpu"] if entry["cuda"] == "cpu" else ["--device", "cuda", "--require-gpu"]
    session.run(
        "pytest",
        "bench",
        "-p",
        "no:xdist",
        "--unjudged",
        "fail",
        *device,
        "--results-json",
        f"{out}.json",
        "--benchmark-json",
        f"{out}-benchmark.json",
        *session.posargs,
    )


@nox.session(default=False)
def harness_cli(session: nox.Session) -> None:
    """Run `python -m harness` with the project installed, e.g. `nox -s harness_cli -- compare OLD NEW`."""
    install_project(session)
    session.run("python", "-m", "harness", *session.posargs)
