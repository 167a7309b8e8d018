"""Synthetic cases, runs and baselines for the gate's tests: no model is built, every number is chosen."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from harness.gate.runner import GateSettings
from harness.gate.store import Baseline, load_baseline, write_baseline
from harness.results import CaseResult, RunRecord

IDENTITY = {"data": "digits", "eval_ids_sha256": "e" * 16, "arch": "resnet18", "weights_sha256": "w" * 16}
ENVIRONMENT: dict[str, object] = {
    "torch": "2.14.1",
    "cpu_model": "Test CPU",
    "cpu_family_model": "6.1",
    "cpu_int8": "amx",
    "cpu_bf16": "amx",
    "torch_threads": 2,
    "git_commit": "abc123",
    "git_dirty": False,
    "xdist_workers": 0,
    "cuda_available": False,
}
ENV_KEY = "cpu-test-6.1-i8amx-bf16amx-2t-torch2.14"
"""The test environment's key: a CPU with AMX, so every CPU speedup floor applies (test_floors.py fakes others)."""


def ratio(value: float, log_se: float = 0.01, rounds: int = 30) -> dict[str, float]:
    """Return a timing ratio as a case records it (timing_stats.RatioEstimate.to_dict)."""
    return {
        "value": value,
        "low": value * math.exp(-1.96 * log_se),
        "high": value * math.exp(1.96 * log_se),
        "log_se": log_se,
        "rounds": rounds,
    }


def with_wrong(n_wrong: int, n: int = 500) -> list[bool]:
    """Return correctness with the first `n_wrong` of `n` images wrong."""
    return [False] * n_wrong + [True] * (n - n_wrong)


def make_case(
    variant: str = "static_int8",
    *,
    device: str = "cpu",
    batch_size: int = 1,
    correct: list[bool] | None = None,
    speedup: float | None = 3.5,
    log_se: float = 0.01,
    latency_ratio: float = 1.0,
    median: float = 10.0,
    size_bytes: int = 11_800_000,
    compressed_size_bytes: int = 10_000_000,
    macs: int = 1_800_000_000,
    peak_memory_bytes: int | None = 50_000_000,
    contention: float | None = 0.0,
    identity: dict[str, str] | None = None,
    status: str = "ok",
) -> CaseResult:
    """Return a measured case (500 eval images, all right unless `correct` says otherwise).

    fp32 gets a latency_vs_yardstick ratio, any other variant a speedup_vs_fp32 ratio (None: none).
    """
    correct = [True] * 500 if correct is None else correct
    if variant == "fp32":
        ratios = {"latency_vs_yardstick": ratio(latency_ratio, log_se)}
    else:
        ratios = {} if speedup is None else {"speedup_vs_fp32": ratio(speedup, log_se)}
    return CaseResult(
        variant=variant,
        device=device,
        batch_size=batch_size,
        top1=sum(correct) / len(correct),
        top5=1.0,
        latency_ms={"median": median, "p90": median * 1.05, "iqr": median * 0.01, "rounds": 30},
        throughput_ips=batch_size * 1000 / median,
        size_bytes=size_bytes,
        compressed_size_bytes=compressed_size_bytes,
        params=11_000_000,
        nonzero_params=11_000_000,
        macs=macs,
        peak_memory_bytes=peak_memory_bytes,
        speedup_vs_fp32=1.0 if variant == "fp32" else speedup,
        top1_change=0.0,
        eval_images=len(correct),
        correct=correct,
        status=status,
        reason=None if status == "ok" else "not here",
        ratios=ratios if status == "ok" else {},
        contention=contention,
        identity=dict(IDENTITY if identity is None else identity),
    )


def make_record(cases: list[CaseResult], **environment: object) -> RunRecord:
    """Return a run of `cases` in the test environment (overridden by `environment`)."""
    return RunRecord(
        environment={**ENVIRONMENT, **environment},
        env_key=ENV_KEY,
        cases=cases,
        created="2026-11-28T00:00:00+00:00",
        command="pytest bench",
        data="digits",
        model="resnet18 (trained by the harness on digits)",
    )


def stored(folder: Path, *runs: list[CaseResult], busy_limit: float = 0.1) -> Baseline:
    """Write a baseline from one run per list of cases (fresh processes) into `folder` and load it back."""
    write_baseline(folder, [make_record(cases) for cases in runs], command="test", busy_limit=busy_limit)
    baseline = load_baseline(folder, ENV_KEY)
    assert baseline is not None
    return baseline


def make_run(cases: list[CaseResult], env_key: str | None = None) -> RunRecord:
    """Return a run of `cases` in the test environment, under another env key when given."""
    record = make_record(cases)
    return dataclasses.replace(record, env_key=env_key) if env_key else record


TIGHT_RUNS = (3.50, 3.52, 3.47, 3.51, 3.49)
"""Five baseline runs of a speedup that moves little between processes."""


def gate_settings(tmp_path: Path, **changes: Any) -> GateSettings:
    """Return the settings of a small CPU gate run judged against baselines in `tmp_path`."""
    base: dict[str, Any] = {
        "devices": ("cpu",),
        "variants": ("fp32", "static_int8", "prune_unstructured"),
        "batch_sizes": {"cpu": (1,), "cuda": (1,)},
        "budget_s": 0.1,
        "threads": torch.get_num_threads(),
        "require_gpu": False,
        "cuda_available": False,
        "data": "digits",
        "weights": None,
        "baselines_dir": tmp_path,
        "thresholds_path": None,
        "update_baselines": False,
        "force_baselines": False,
        "results_json": None,
        "command": "pytest bench",
    }
    return GateSettings(**{**base, **changes})


class StubConfig:
    """The little of a pytest.Config that the gate's settings_of reads."""

    def __init__(self, **options: Any) -> None:
        defaults = {
            "require_gpu": False, "force_baselines": False, "update_baselines": False, "bench_batch_sizes": "1",
            "bench_variants": "fp32", "device": "cpu", "bench_budget": 0.1, "bench_threads": None, "data": "digits",
            "weights": None, "model": "resnet18", "results_json": None, "baselines_dir": Path("baselines"),
            "thresholds": None, "unjudged": "fail",
        }
        self.options = {**defaults, **options}
        self.stash = pytest.Stash()
        self.invocation_params = SimpleNamespace(args=("bench",))

    def getoption(self, name: str) -> Any:
        return self.options[name]
