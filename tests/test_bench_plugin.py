"""The gate's pytest plugin (harness/pytest_gate/, loaded by bench/), run as a user runs it (inner pytest
processes): ids, GPU demands, xdist merging, and the end of a run that writes results and baselines. Only cases
that skip run here, so no model is built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import techniques
from harness.gate.cases import DEFAULT_BATCH_SIZES, gate_cases
from harness.results import SCHEMA_VERSION, load_run

pytestmark = pytest.mark.e2e

pytest_plugins = ["pytester"]

BENCH = Path(__file__).resolve().parent.parent / "bench"
CUDA_CASES = ["--device", "cuda", "--bench-variants", "fp32,tf32", "--bench-batch-sizes", "1", "-p", "no:cacheprovider"]


@pytest.fixture
def no_gpu_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide any GPU and any outer xdist worker from the inner pytest runs, so they see a CPU-only machine."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("HARNESS_REQUIRE_GPU", raising=False)
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_gpu_env")
def test_real_suite_ids_equal_case_ids(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(str(BENCH), "-p", "no:xdist", "--collect-only", "-q", "--device", "all")
    ids = [line.split("[", 1)[1].rstrip("]") for line in result.outlines if "test_gate[" in line]
    assert ids == [c.case_id for c in gate_cases(techniques.variants(), ("cpu", "cuda"), DEFAULT_BATCH_SIZES)]


@pytest.mark.parametrize(
    ("flag", "env", "outcomes"),
    [([], None, {"skipped": 2}), (["--require-gpu"], None, {"failed": 2}), ([], "1", {"failed": 2})],
    ids=["skip", "require-gpu-flag", "require-gpu-env"],
)
@pytest.mark.usefixtures("no_gpu_env")
def test_require_gpu_turns_the_missing_cuda_skip_into_a_failure(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, flag: list[str], env: str | None,
    outcomes: dict[str, int],
) -> None:
    if env is not None:
        monkeypatch.setenv("HARNESS_REQUIRE_GPU", env)
    result = pytester.runpytest_subprocess(str(BENCH), "-p", "no:xdist", *CUDA_CASES, *flag)
    result.assert_outcomes(**outcomes)
    if "failed" in outcomes:
        result.stdout.fnmatch_lines(["*fp32-cuda-bs1: CUDA is not available*demands a GPU*"])


@pytest.mark.usefixtures("no_gpu_env")
def test_xdist_workers_records_merge_into_one_results_json(pytester: pytest.Pytester) -> None:
    out = pytester.path / "results" / "bench.json"
    result = pytester.runpytest_subprocess(
        str(BENCH), "-n", "2", *CUDA_CASES, "--bench-batch-sizes", "1,256", "--results-json", str(out)
    )
    result.assert_outcomes(skipped=4)
    record = load_run(out)
    assert sorted(c.case_id for c in record.cases) == [
        "fp32-cuda-bs1", "fp32-cuda-bs256", "tf32-cuda-bs1", "tf32-cuda-bs256"
    ]
    assert {c.status for c in record.cases} == {"skipped"}
    assert 1 <= len(record.environment["workers"]) <= 2  # type: ignore[arg-type]
    assert [p.name for p in out.parent.iterdir()] == ["bench.json"]  # the workers' parts are cleaned up
    assert json.loads(out.read_text())["schema_version"] == SCHEMA_VERSION


@pytest.mark.usefixtures("no_gpu_env")
def test_a_bad_option_is_one_usage_error_line_from_pytest(pytester: pytest.Pytester) -> None:
    """The in-process checks of every option are in test_gate_options.py; this is what a user sees from pytest."""
    result = pytester.runpytest_subprocess(str(BENCH), "-p", "no:xdist", "--collect-only", "--bench-variants", "int3")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown technique 'int3'*"])
    assert "Traceback" not in result.stderr.str()


@pytest.mark.usefixtures("no_gpu_env")
def test_a_run_with_nothing_measured_writes_no_baseline(pytester: pytest.Pytester) -> None:
    folder = pytester.path / "baselines"
    result = pytester.runpytest_subprocess(str(BENCH), "-p", "no:xdist", *CUDA_CASES, "--update-baselines",
                                           "--force-baselines", "--baselines-dir", str(folder))
    result.assert_outcomes(skipped=2)
    assert not folder.exists() or not any(folder.glob("*.json"))


@pytest.mark.usefixtures("no_gpu_env")
def test_a_broken_thresholds_file_is_one_line_not_an_internal_error(pytester: pytest.Pytester) -> None:
    bad = pytester.path / "thresholds.json"
    bad.write_text("{", encoding="utf-8")
    result = pytester.runpytest_subprocess(str(BENCH), "-p", "no:xdist", *CUDA_CASES, "--thresholds", str(bad))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines([f"*thresholds file {bad} is truncated or not JSON*"])


@pytest.mark.slow
@pytest.mark.usefixtures("no_gpu_env")
def test_unjudged_checks_fail_the_run_under_fail_and_are_listed_under_warn(pytester: pytest.Pytester) -> None:
    """A real gate run of fp32 at batch 1 with no baseline for this machine: its baseline checks cannot be judged."""
    empty = pytester.path / "no-baselines"
    args = [str(BENCH), "-p", "no:xdist", "--device", "cpu", "--bench-variants", "fp32", "--bench-batch-sizes", "1",
            "--bench-budget", "0.3", "--baselines-dir", str(empty)]
    failing = pytester.runpytest_subprocess(*args, "--unjudged", "fail")
    failing.assert_outcomes(failed=1)
    failing.stdout.fnmatch_lines([
        "*UNJUDGED fp32-cpu-bs1 top1: *no baseline for *",
        "*planned checks of this case were not judged, and --unjudged fail makes that a failure*",
        "*1 cases, * planned checks: * passed, 0 failed, * UNJUDGED*",
        "*the run FAILS on them (--unjudged fail)*",
    ])
    warned = pytester.runpytest_subprocess(*args, "--unjudged", "warn")
    warned.assert_outcomes(passed=1)
    warned.stdout.fnmatch_lines(["*the run passes on what was judged (--unjudged warn)*"])
