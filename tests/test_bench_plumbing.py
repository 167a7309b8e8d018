"""The bench gate's plumbing on CPU: GPU pinning, merging workers' records, case ids, --require-gpu."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.conftest import (
    DEFAULT_BATCH_SIZES,
    GateCase,
    GateSettings,
    _write_baselines,
    benchmark_rounds,
    case_marks,
    gate_cases,
    merge_parts,
    parse_batch_sizes,
    resolve_devices,
    select_variants,
    unjudged_on_shared_cpu,
    unrunnable,
    worker_cuda_index,
)
from harness import techniques
from harness.baselines import Check, load_baseline
from harness.env import env_key
from harness.pipeline import skipped_case
from harness.results import CaseResult, RunRecord, load_run, save_run

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"


# ------------------------------------------------------------------------------------------ worker -> GPU


@pytest.mark.parametrize(
    ("worker_id", "count", "index"),
    [
        ("master", 4, 0),
        (None, 1, 0),
        ("gw0", 1, 0),
        ("gw0", 8, 0),
        ("gw3", 8, 3),
        ("gw3", 2, 1),
        ("gw9", 4, 1),
    ],
)
def test_worker_cuda_index(worker_id: str | None, count: int, index: int) -> None:
    assert worker_cuda_index(worker_id, count) == index


@given(n=st.integers(0, 10_000), count=st.integers(1, 64))
def test_workers_spread_round_robin_over_gpus(n: int, count: int) -> None:
    assert worker_cuda_index(f"gw{n}", count) == n % count


def test_one_worker_per_gpu_uses_every_gpu_once() -> None:
    assert sorted(worker_cuda_index(f"gw{n}", 8) for n in range(8)) == list(range(8))


@pytest.mark.parametrize(("worker_id", "count"), [("gw1", 0), ("worker-1", 2), ("gwx", 2)])
def test_worker_cuda_index_refuses_nonsense(worker_id: str, count: int) -> None:
    with pytest.raises(ValueError, match="worker|CUDA device"):
        worker_cuda_index(worker_id, count)


# ------------------------------------------------------------------------------------- merging workers


def _case(variant: str, batch_size: int, device: str = "cpu", top1: float = 0.9) -> CaseResult:
    return CaseResult(
        variant=variant,
        device=device,
        batch_size=batch_size,
        top1=top1,
        top5=1.0,
        latency_ms={"median": 1.0},
        throughput_ips=1000.0 * batch_size,
        size_bytes=10,
        compressed_size_bytes=9,
        params=5,
        nonzero_params=5,
        macs=7,
        correct=[True, False, True],
    )


def _record(cases: list[CaseResult], created: str, worker: str) -> RunRecord:
    return RunRecord(
        environment={"torch": "2.14.1", "worker": worker},
        env_key="cpu-test-2t-torch2.14",
        cases=cases,
        created=created,
        command="pytest bench",
        data="digits",
        model="resnet18 (harness default)",
    )


def test_merge_parts_keeps_every_case_once(tmp_path: Path) -> None:
    gw0 = [_case("fp32", 1), _case("fp32", 32), skipped_case("tf32", "cpu", 1, "no TF32 on cpu")]
    gw1 = [_case("bf16", 1, top1=0.88), _case("bf16", 32, top1=0.88)]
    save_run(tmp_path / "gw0.json", _record(gw0, "2026-11-28T08:00:01+00:00", "gw0"))
    save_run(tmp_path / "gw1.json", _record(gw1, "2026-11-28T08:00:00+00:00", "gw1"))
    merged = merge_parts(tmp_path.glob("*.json"))
    assert merged is not None
    ids = [c.case_id for c in merged.cases]
    assert sorted(ids) == sorted(c.case_id for c in gw0 + gw1)
    assert len(ids) == len(set(ids))
    assert merged.created == "2026-11-28T08:00:00+00:00"
    assert [w["environment"]["worker"] for w in merged.environment["workers"]] == ["gw0", "gw1"]
    assert merged.case("bf16-cpu-bs32").top1 == 0.88


def test_merge_parts_of_no_worker_is_none(tmp_path: Path) -> None:
    assert merge_parts(tmp_path.glob("*.json")) is None


def test_merge_parts_refuses_a_case_two_workers_measured_differently(tmp_path: Path) -> None:
    save_run(tmp_path / "gw0.json", _record([_case("fp32", 1, top1=0.9)], "2026-11-28T08:00:00+00:00", "gw0"))
    save_run(tmp_path / "gw1.json", _record([_case("fp32", 1, top1=0.8)], "2026-11-28T08:00:00+00:00", "gw1"))
    with pytest.raises(Exception, match="fp32-cpu-bs1"):
        merge_parts(tmp_path.glob("*.json"))


# ---------------------------------------------------------------------------------- cases and their ids


def test_case_ids_are_the_registry_times_batch_sizes() -> None:
    variants = techniques.variants()
    cases = gate_cases(variants, ("cpu", "cuda"), DEFAULT_BATCH_SIZES)
    expected = [
        skipped_case(v, d, bs, "").case_id for d in ("cpu", "cuda") for v in variants for bs in DEFAULT_BATCH_SIZES[d]
    ]
    assert [c.case_id for c in cases] == expected
    assert "static_int8-cpu-bs1" in expected
    assert "prune_structured+static_int8-cpu-bs32" in expected


def test_select_variants_all_is_the_registry_and_presets_resolve() -> None:
    assert select_variants("all", techniques.variants()) == tuple(techniques.variants())
    assert select_variants("fp32, fastest_cpu,fp32", techniques.variants()) == (
        "fp32",
        "prune_structured+static_int8",
    )


def test_select_variants_names_the_valid_choices() -> None:
    with pytest.raises(pytest.UsageError, match="unknown technique 'nope'.*fp32"):
        select_variants("fp32,nope", techniques.variants())


@pytest.mark.parametrize("text", ["", "0", "1,x", "-1"])
def test_parse_batch_sizes_refuses_nonsense(text: str) -> None:
    with pytest.raises(pytest.UsageError, match="positive integers"):
        parse_batch_sizes(text)


def test_parse_batch_sizes() -> None:
    assert parse_batch_sizes("1, 32,1") == (1, 32)


@pytest.mark.parametrize(
    ("option", "cuda", "require", "devices"),
    [
        ("auto", False, False, ("cpu",)),
        ("auto", True, False, ("cuda",)),
        ("auto", False, True, ("cuda",)),
        ("all", False, False, ("cpu", "cuda")),
        ("cpu", True, True, ("cpu",)),
        ("cuda", False, False, ("cuda",)),
    ],
)
def test_resolve_devices(option: str, cuda: bool, require: bool, devices: tuple[str, ...]) -> None:
    assert resolve_devices(option, cuda_available=cuda, require_gpu=require) == devices


def test_case_marks() -> None:
    names = lambda case: sorted(m.name for m in case_marks(case))  # noqa: E731
    assert names(GateCase("fp32", "cpu", 1)) == ["bench"]
    assert names(GateCase("static_int8", "cpu", 1)) == ["bench", "slow"]
    assert names(GateCase("fp32", "cpu", 32)) == ["bench", "slow"]
    assert names(GateCase("fp32", "cuda", 1)) == ["bench", "gpu"]


def test_benchmark_rounds_fit_a_quarter_of_the_budget() -> None:
    assert benchmark_rounds(10.0, 2.0) == 50
    assert benchmark_rounds(1000.0, 2.0) == 3
    assert benchmark_rounds(0.01, 2.0) == 100


# ------------------------------------------------------------------------------------------ --require-gpu


def _no_reason() -> str | None:
    return None


@pytest.mark.parametrize(
    ("device", "cuda", "require", "outcome"),
    [
        ("cuda", False, False, "skip"),
        ("cuda", False, True, "fail"),
        ("cuda", True, True, None),
        ("cpu", False, True, None),
    ],
)
def test_missing_cuda_skips_unless_a_gpu_is_required(
    device: str, cuda: bool, require: bool, outcome: str | None
) -> None:
    verdict = unrunnable(
        GateCase("fp32", device, 1), cuda_available=cuda, require_gpu=require, technique_reason=_no_reason
    )
    assert (verdict[0] if verdict else None) == outcome


def test_a_technique_that_cannot_run_is_skipped_with_its_reason() -> None:
    verdict = unrunnable(
        GateCase("tf32", "cpu", 1),
        cuda_available=False,
        require_gpu=True,
        technique_reason=lambda: "tf32 does not run on cpu: TF32 is a tensor-core format",
    )
    assert verdict == ("skip", "tf32 does not run on cpu: TF32 is a tensor-core format")


@pytest.fixture
def no_gpu_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide any GPU and any outer xdist worker from the inner pytest runs, so they see a CPU-only machine."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("HARNESS_REQUIRE_GPU", raising=False)
    for name in (
        "PYTEST_XDIST_WORKER",
        "PYTEST_XDIST_WORKER_COUNT",
        "PYTEST_XDIST_TESTRUNUID",
        "PYTEST_ADDOPTS",
    ):
        monkeypatch.delenv(name, raising=False)


CUDA_CASES = [
    "--device",
    "cuda",
    "--bench-variants",
    "fp32,tf32",
    "--bench-batch-sizes",
    "1",
    "-p",
    "no:cacheprovider",
]


@pytest.mark.parametrize(
    ("flag", "env", "outcomes"),
    [
        ([], None, {"skipped": 2}),
        (["--require-gpu"], None, {"failed": 2}),
        ([], "1", {"failed": 2}),
    ],
    ids=["skip", "require-gpu-flag", "require-gpu-env"],
)
@pytest.mark.usefixtures("no_gpu_env")
def test_require_gpu_turns_the_missing_cuda_skip_into_a_failure(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    flag: list[str],
    env: str | None,
    outcomes: dict[str, int],
) -> None:
    if env is not None:
        monkeypatch.setenv("HARNESS_REQUIRE_GPU", env)
    result = pytester.runpytest_subprocess(str(BENCH), "-p", "no:xdist", *CUDA_CASES, *flag)
    result.assert_outcomes(**outcomes)
    if "failed" in outcomes:
        result.stdout.fnmatch_lines(["*fp32-cuda-bs1: CUDA is not available*demands one*"])


@pytest.mark.usefixtures("no_gpu_env")
def test_xdist_workers_records_merge_into_one_results_json(pytester: pytest.Pytester) -> None:
    out = pytester.path / "results" / "bench.json"
    result = pytester.runpytest_subprocess(
        str(BENCH), "-n", "2", *CUDA_CASES, "--bench-batch-sizes", "1,256", "--results-json", str(out)
    )
    result.assert_outcomes(skipped=4)
    record = load_run(out)
    assert sorted(c.case_id for c in record.cases) == [
        "fp32-cuda-bs1",
        "fp32-cuda-bs256",
        "tf32-cuda-bs1",
        "tf32-cuda-bs256",
    ]
    assert {c.status for c in record.cases} == {"skipped"}
    assert 1 <= len(record.environment["workers"]) <= 2  # type: ignore[arg-type]
    assert [p.name for p in out.parent.iterdir()] == ["bench.json"]  # the workers' parts are cleaned up
    assert json.loads(out.read_text())["schema_version"] == 1


def test_real_suite_ids_equal_case_ids(pytester: pytest.Pytester, no_gpu_env: None) -> None:
    result = pytester.runpytest_subprocess(
        str(BENCH), "-p", "no:xdist", "--collect-only", "-q", "--device", "all", "-p", "no:cacheprovider"
    )
    ids = [line.split("[", 1)[1].rstrip("]") for line in result.outlines if "test_gate[" in line]
    variants = techniques.variants()
    assert ids == [c.case_id for c in gate_cases(variants, ("cpu", "cuda"), DEFAULT_BATCH_SIZES)]


# ----------------------------------------------------------------------------- timing under shared CPUs


@pytest.mark.parametrize(
    ("metric", "outcome", "judged"),
    [
        ("latency_median_ms", "fail", "skip"),
        ("throughput_ips", "stale", "skip"),
        ("latency_median_ms", "pass", "pass"),
        ("speedup_vs_fp32", "fail", "fail"),
        ("top1", "fail", "fail"),
    ],
)
def test_only_absolute_cpu_timing_goes_unjudged_on_a_shared_cpu(metric: str, outcome: str, judged: str) -> None:
    check = Check("fp32-cpu-bs1", metric, outcome, 2.0, 1.1, 1.0, "baselines/x.json", "worse than baseline")
    result = unjudged_on_shared_cpu(check)
    assert result.outcome == judged
    if judged != outcome:
        assert "pytest-xdist" in result.message and "worse than baseline" in result.message


# ------------------------------------------------------------------------------------ planted regressions


def _plant_module(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "plant_regression_under_test", REPO / "scripts" / "plant_regression.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_plant_parsing_and_deterministic_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.delenv("PLANT", raising=False)
    plant = _plant_module(monkeypatch)
    assert plant.parse_plants("slow:fastest_cpu:0.15,acc:fp32:0.02") == [
        plant.Plant("slow", "prune_structured+static_int8", 0.15),
        plant.Plant("acc", "fp32", 0.02),
    ]
    with pytest.raises(ValueError, match="slow:VARIANT:FRACTION"):
        plant.parse_plants("fast:fp32:0.1")
    images = torch.randn(2000, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    picked = [plant.image_selected(img, 0.02) for img in images]
    assert picked == [plant.image_selected(img, 0.02) for img in images]
    assert 20 <= sum(picked) <= 60  # about 2% of 2000
    logits = torch.eye(10).repeat(200, 1)[:2000]
    out = plant.corrupted(lambda x: logits, 0.02)(images)
    changed = (out.argmax(1) != logits.argmax(1)).tolist()
    assert changed == picked


# --------------------------------------------------------------------------------------- writing baselines


def _settings(tmp_path: Path) -> GateSettings:
    return GateSettings(
        devices=("cpu",),
        variants=("fp32",),
        batch_sizes={"cpu": (1,), "cuda": (1,)},
        budget_s=0.1,
        require_gpu=False,
        cuda_available=False,
        data="digits",
        weights=None,
        baselines_dir=tmp_path,
        update_baselines=True,
        results_json=None,
        thresholds=None,
        command="pytest bench --update-baselines",
    )


def test_update_baselines_writes_the_ok_cases_of_each_device(tmp_path: Path) -> None:
    environment = {"torch": "2.14.1", "cpu_model": "AMD EPYC 9654", "torch_threads": 2, "git_commit": "abc"}
    cases = [_case("fp32", 1), _case("bf16", 1), skipped_case("tf32", "cpu", 1, "no TF32 on cpu")]
    record = RunRecord(
        environment=environment,
        env_key="ignored",
        cases=cases,
        created="2026-11-28T08:00:00+00:00",
        command="pytest bench",
        data="digits",
        model="resnet18 (harness default)",
    )
    lines = _write_baselines(record, _settings(tmp_path), interrupted=False)
    key = env_key(environment, "cpu")
    baseline = load_baseline(tmp_path, key)
    assert baseline is not None and sorted(baseline.cases) == ["bf16-cpu-bs1", "fp32-cpu-bs1"]
    assert baseline.provenance["command"] == "pytest bench --update-baselines"
    path = tmp_path / f"{key}.json"
    assert lines == [f"baselines: wrote {path} (2 ok of 3 cpu cases; entries of other cases kept)"]


def test_an_interrupted_run_writes_no_baseline(tmp_path: Path) -> None:
    record = _record([_case("fp32", 1)], "2026-11-28T08:00:00+00:00", "gw0")
    lines = _write_baselines(record, _settings(tmp_path), interrupted=True)
    assert "NOT written" in lines[0]
    assert list(tmp_path.iterdir()) == []
