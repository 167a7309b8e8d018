"""Sessions of a project gated by resnet-gate: the gate on the CPU, the GPU gate, and recording the baseline.

The model, data, variants, batch sizes and baselines folder come from [tool.resnet-gate] in pyproject.toml, so no
session names them. On a preinstalled machine, `nox --no-venv -s bench` installs nothing and uses the `python` on PATH.
"""

from __future__ import annotations

import os

import nox

nox.options.reuse_venv = "yes"

RESNET_GATE = os.environ.get("RESNET_GATE", "../..")
"""Where pip takes resnet-gate from: this example sits in the harness's repository, so its checkout. A project of its
own names its requirement here (a version, a git URL or a wheel)."""
RESULTS = "results"
GATE = ("python", "-m", "harness", "gate")


def install(session: nox.Session) -> None:
    """pip install the harness with its gate extra, then this project; nothing under --no-venv."""
    if session.venv_backend != "none":
        session.install(f"{RESNET_GATE}[gate]")
        session.install("-e", ".")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Run the gate on the CPU against this project's committed baseline."""
    install(session)
    session.run(*GATE, "-p", "no:xdist", "--device", "cpu", "--unjudged", "fail", "--results-json",
                f"{RESULTS}/bench.json", *session.posargs)


@nox.session(default=False, tags=["gpu"])
def gpu_bench(session: nox.Session) -> None:
    """Run the pre-merge GPU gate (fails, not skips, without CUDA); `-- -n <GPUs>`: one worker per GPU."""
    install(session)
    session.run(
        *GATE, "-n", "0", "--device", "cuda", "--require-gpu", "--unjudged", "fail", "--results-json",
        f"{RESULTS}/gpu-bench.json",
        "--benchmark-json", f"{RESULTS}/gpu-bench-benchmark.json", *session.posargs,
    )


@nox.session(default=False)
def update_baselines(session: nox.Session) -> None:
    """Record baselines/<env-key>+<model>.json from BASELINE_RUNS (default 3) fresh gate runs, whatever their checks
    said (`baseline write` lists the ones that failed); review it, commit it."""
    install(session)
    files = [f"{RESULTS}/baseline-run-{i + 1}.json" for i in range(int(os.environ.get("BASELINE_RUNS", "3")))]
    for path in files:  # each run is a fresh process: the baseline learns the spread between processes
        session.run(*GATE, "-p", "no:xdist", "--unjudged", "warn", "--results-json", path, *session.posargs,
                    success_codes=[0, 1])
    session.run("python", "-m", "harness", "baseline", "write", *files)  # into the table's `baselines`
