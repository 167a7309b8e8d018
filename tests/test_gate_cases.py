"""The gate's cases: what the options select, who runs them where, and how many timing checks a run makes."""

from __future__ import annotations

import pytest
from _gate import ENVIRONMENT
from hypothesis import given
from hypothesis import strategies as st

from harness import techniques
from harness.errors import HarnessError, TechniqueError
from harness.gate.cases import (
    DEFAULT_BATCH_SIZES,
    GateCase,
    gate_cases,
    parse_batch_sizes,
    planned_timing_checks,
    resolve_devices,
    select_variants,
    unrunnable,
    worker_cuda_index,
)
from harness.gate.thresholds import load_thresholds
from harness.results import case_id


def test_case_ids_are_the_registry_times_batch_sizes() -> None:
    cases = gate_cases(techniques.variants(), ("cpu",), DEFAULT_BATCH_SIZES)
    assert len(cases) == 2 * len(techniques.variants())
    assert cases[0].case_id == "fp32-cpu-bs1" == case_id("fp32", "cpu", 1)
    assert GateCase("prune_structured+static_int8", "cpu", 32).case_id == "prune_structured+static_int8-cpu-bs32"
    quick = {c.case_id for c in cases if c.quick}
    assert quick == {"fp32-cpu-bs1", "dynamic_int8-cpu-bs1", "prune_unstructured-cpu-bs1"}


def test_select_variants() -> None:
    assert select_variants("all") == tuple(techniques.variants())
    assert select_variants("fastest_cpu, fp32,fp32") == ("prune_structured+static_int8", "fp32")
    with pytest.raises(TechniqueError, match="unknown technique 'int3'"):
        select_variants("fp32,int3")
    with pytest.raises(HarnessError, match="empty"):
        select_variants(" , ")


@pytest.mark.parametrize("text", ["", "0", "1,-2", "a,b", "1.5"])
def test_parse_batch_sizes_refuses_nonsense(text: str) -> None:
    with pytest.raises(HarnessError, match="positive integers"):
        parse_batch_sizes(text)


def test_parse_batch_sizes_keeps_order_and_drops_repeats() -> None:
    assert parse_batch_sizes("32, 1,32") == (32, 1)


@pytest.mark.parametrize(
    ("option", "cuda", "require", "devices"),
    [("auto", False, False, ("cpu",)), ("auto", True, False, ("cuda",)), ("auto", False, True, ("cuda",)),
     ("all", False, False, ("cpu", "cuda")), ("cpu", True, True, ("cpu",))],
)
def test_resolve_devices(option: str, cuda: bool, require: bool, devices: tuple[str, ...]) -> None:
    assert resolve_devices(option, cuda_available=cuda, require_gpu=require) == devices
    with pytest.raises(HarnessError, match="choose from"):
        resolve_devices("tpu", cuda_available=cuda, require_gpu=require)


@pytest.mark.parametrize(
    ("device", "cuda", "require", "outcome"),
    [("cuda", False, False, "skip"), ("cuda", False, True, "fail"), ("cuda", True, True, None),
     ("cpu", False, True, None)],
)
def test_missing_cuda_skips_unless_a_gpu_is_required(
    device: str, cuda: bool, require: bool, outcome: str | None
) -> None:
    case = GateCase("fp32", device, 1)
    verdict = unrunnable(case, cuda_available=cuda, require_gpu=require, technique_reason=lambda: None)
    assert (verdict[0] if verdict else None) == outcome


def test_a_technique_that_cannot_run_is_skipped_with_its_reason() -> None:
    verdict = unrunnable(GateCase("tf32", "cpu", 1), cuda_available=False, require_gpu=True,
                         technique_reason=lambda: "tf32 does not run on cpu")
    assert verdict == ("skip", "tf32 does not run on cpu")


def test_planned_timing_checks_count_fp32_once_and_floors_where_set() -> None:
    t = load_thresholds()
    cases = [GateCase("fp32", "cpu", 1), GateCase("static_int8", "cpu", 1), GateCase("bf16", "cpu", 1)]
    # fp32: yardstick; static_int8: baseline + floor 3.0; bf16 at bs1: baseline only (no floor)
    assert planned_timing_checks(cases, t, ENVIRONMENT) == 1 + 2 + 1
    assert planned_timing_checks([], t, ENVIRONMENT) == 1


@pytest.mark.parametrize(("worker", "count", "index"), [("master", 4, 0), (None, 1, 0), ("gw3", 8, 3), ("gw9", 4, 1)])
def test_worker_cuda_index(worker: str | None, count: int, index: int) -> None:
    assert worker_cuda_index(worker, count) == index


@given(n=st.integers(0, 10_000), count=st.integers(1, 64))
def test_workers_spread_round_robin_over_gpus(n: int, count: int) -> None:
    assert worker_cuda_index(f"gw{n}", count) == n % count


@pytest.mark.parametrize(("worker", "count"), [("gw1", 0), ("worker-1", 2), ("gwx", 2)])
def test_worker_cuda_index_refuses_nonsense(worker: str, count: int) -> None:
    with pytest.raises(HarnessError, match="worker|CUDA device"):
        worker_cuda_index(worker, count)
