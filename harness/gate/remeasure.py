"""Re-time one case in a fresh process, for a timing check its first measurement flagged.

    python -m harness.gate.remeasure --variant compile --device cpu --batch-size 32 --data digits --out OUT.json

Why a fresh process: on a shared 2-core guest the speed of a timing ratio is partly fixed per process (where the
allocator's pages and the threads land), so a re-measurement in the same process repeats that part of the noise
instead of averaging it (README, "How timing is judged"). The child builds the session and the variant from the
cache the first process filled (no retraining), fixes the same threads and allocator, times the case from its own
warm-up, and writes {"ratios", "contention", "env_key", "latency_ms", "gpu_state"} atomically to OUT. The gate
compares the child's environment key with its own and refuses a re-measurement made elsewhere.

HARNESS_PLUGINS (a comma list of module names) are imported first: whatever the first process loaded that changes
what build_variant builds (a technique registered by a plugin, or scripts/plant_regression.py) must shape the
re-measured case too. The re-measuring process inherits the environment, so such a plugin can add itself.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.jsonio import read_json_object, write_json_atomic

PLUGINS_ENV = "HARNESS_PLUGINS"
TIMEOUT_S = 600.0
"""How long a re-measuring process may take (it loads the cached model and variant; nothing trains)."""


@dataclass(frozen=True)
class Request:
    """What to re-time and how the first process was set up (the child must match it)."""

    variant: str
    device: str
    batch_size: int
    data: str
    weights: str | None
    threads: int
    budget_s: float
    model: str = "resnet18"
    busy_limit: float | None = None
    busy_wait_s: float = 0.0
    busy_retries: int = 0
    """A busy re-measurement is timed again after waiting for a quiet machine, as the gate's own (BusyRule)."""
    rounds: int | None = None
    """The rounds the gate's plan gave the case (harness/gate/budget.py); None: the budget decides."""

    def argv(self, out: Path) -> list[str]:
        """Return the child's command line."""
        argv = [sys.executable, "-m", "harness.gate.remeasure", "--variant", self.variant, "--device", self.device,
                "--batch-size", str(self.batch_size), "--data", self.data, "--threads", str(self.threads),
                "--budget-s", repr(self.budget_s), "--out", str(out)]
        if self.busy_limit is not None:
            argv += ["--busy-limit", repr(self.busy_limit), "--busy-wait-s", repr(self.busy_wait_s),
                     "--busy-retries", str(self.busy_retries)]
        if self.rounds is not None:
            argv += ["--rounds", str(self.rounds)]
        argv += ["--model", self.model] if self.model != "resnet18" else []  # the child inherits our cwd and path
        return argv + (["--weights", self.weights] if self.weights else [])


@dataclass(frozen=True)
class Remeasured:
    """A fresh process's timing of one case: its ratios (RatioEstimate.to_dict), contention and env key."""

    ratios: dict[str, dict[str, float]]
    contention: float | None
    env_key: str
    latency_ms: dict[str, Any]
    gpu_unjudged: str | None = None
    """On CUDA: why the GPU's state spoils the window (harness/gpu_state.py: throttled, shared); None when it does
    not."""


def add_plugin(module: str) -> None:
    """Make every re-measuring process this one starts import `module` first (see the module's doc)."""
    names = [n for n in os.environ.get(PLUGINS_ENV, "").split(",") if n]
    if module not in names:
        os.environ[PLUGINS_ENV] = ",".join([*names, module])


def _load_plugins() -> list[str]:
    names = [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise HarnessError(f"{PLUGINS_ENV} names {name!r}, which does not import here ({err}); put its folder "
                               "on PYTHONPATH or drop it from the variable") from err
    return names


def remeasure(request: Request, *, timeout_s: float = TIMEOUT_S) -> Remeasured:
    """Return the case re-timed in a fresh Python process; raise HarnessError (with its output's tail) if it fails."""
    with tempfile.TemporaryDirectory(prefix="harness-remeasure-") as folder:
        out = Path(folder) / "remeasured.json"
        try:
            done = subprocess.run(request.argv(out), capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as err:
            raise HarnessError(f"the re-measuring process took more than {timeout_s:.0f} s and was stopped") from err
        if done.returncode != 0 or not out.exists():
            tail = "\n".join((done.stderr or done.stdout or "").strip().splitlines()[-6:])
            raise HarnessError(f"the re-measuring process failed (exit {done.returncode}): {tail or 'no output'}")
        return read_remeasured(out)


def read_remeasured(path: Path) -> Remeasured:
    """Return the re-measurement a child wrote at `path`; any other content raises HarnessError naming it."""
    found = read_json_object(path, "re-measurement", "rerun the gate")
    ratios, contention, key = found.get("ratios"), found.get("contention"), found.get("env_key")
    latency = found.get("latency_ms") or {}

    def finite(value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    if not (
        isinstance(ratios, dict)
        and all(isinstance(r, dict) and all(map(finite, r.values())) for r in ratios.values())
        and isinstance(key, str)
        and isinstance(latency, dict)
        and (contention is None or finite(contention))
    ):
        raise HarnessError(
            f"the re-measuring process wrote {path} in a shape the gate does not read (keys {sorted(found)[:8]}); "
            "a harness of another version? rerun the gate from one checkout"
        )
    gpu = found.get("gpu_state")
    gpu_unjudged = gpu.get("unjudged") if isinstance(gpu, dict) else None
    return Remeasured(ratios, None if contention is None else float(contention), key, latency,
                      gpu_unjudged if isinstance(gpu_unjudged, str) else None)


def parse_request(argv: list[str] | None = None) -> tuple[Request, Path]:
    """Return the Request and output path of a command line made by Request.argv."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--budget-s", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--busy-limit", type=float, default=None)
    parser.add_argument("--busy-wait-s", type=float, default=0.0)
    parser.add_argument("--busy-retries", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=None)
    a = parser.parse_args(argv)
    return Request(a.variant, a.device, a.batch_size, a.data, a.weights, a.threads, a.budget_s, a.model,
                   a.busy_limit, a.busy_wait_s, a.busy_retries, a.rounds), a.out


def main(argv: list[str] | None = None) -> int:
    """Time one case in this (fresh) process and write what remeasure() reads; a HarnessError is one line."""
    args, out = parse_request(argv)
    try:
        _time_and_write(args, out)
    except HarnessError as err:
        print(f"harness.gate.remeasure: {err}", file=sys.stderr)
        return 2
    return 0


def _time_and_write(args: Request, out: Path) -> None:
    plugins = _load_plugins()

    from harness import pipeline
    from harness.contention import BusyRule
    from harness.env import env_key, fingerprint
    from harness.machine import fix_threads, pin_allocator

    pin_device(args.device)
    machine = {"threads": fix_threads(args.threads), **pin_allocator()}
    session = pipeline.open_session(
        data=args.data, device=args.device, weights=args.weights, arch=args.model, progress=False
    )
    built = pipeline.build_variant(session, args.variant)  # a plugin may have replaced it: look it up now
    busy = None if args.busy_limit is None else BusyRule(args.busy_limit, args.busy_wait_s, args.busy_retries)
    timing = pipeline.time_case_quietly(session, built, args.batch_size, budget_s=args.budget_s, busy=busy,
                                        rounds=args.rounds)
    environment = {**fingerprint(), "timing_setup": machine}
    write_json_atomic(out, {
        "ratios": {name: r.to_dict() for name, r in timing.ratios.items()},
        "contention": timing.contention.share,
        "contention_detail": timing.contention.to_dict(),
        "busy_waits": list(timing.waits),
        "env_key": env_key(environment, args.device),
        "latency_ms": timing.latency.to_dict(),
        "gpu_state": timing.gpu.to_dict() if timing.gpu else None,
        "plugins": plugins,
    })


def pin_device(device: str) -> None:
    """Make `device` (cuda:N) this process's current CUDA device, so its fingerprint and every allocation without
    an explicit index are that GPU's: a re-measurement runs on the GPU of the worker that asked for it."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(torch.device(device))


if __name__ == "__main__":
    raise SystemExit(main())
