"""Tests of harness.measure: timing structure, memory, size and MAC counting on tiny models."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from harness import cpu_memory
from harness.errors import HarnessError
from harness.measure import (
    TIMING_SHAPE,
    Coverage,
    LatencyStats,
    SizeStats,
    Timer,
    activation_peak_bytes,
    count_macs,
    coverage_of,
    layer_macs,
    round_order,
    size_stats,
    time_interleaved,
    timing_input,
    unwrap_module,
)

SMALL = (1, 3, 8, 8)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Use one intra-op thread: on 2 cores shared by xdist workers, more threads only slow tiny models."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def time_one(fn: Callable[[], object], **kwargs: Any) -> LatencyStats:
    """Time one callable alone: time_interleaved with a single name."""
    return time_interleaved({"fn": fn}, **kwargs)["fn"]


def tiny_model(channels: int = 4, classes: int = 5) -> nn.Sequential:
    """Return a conv + linear model for 8x8 inputs."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, channels, 3), nn.ReLU(), nn.Flatten(), nn.Linear(channels * 6 * 6, classes)
    ).eval()


def tiny_macs(channels: int = 4, classes: int = 5) -> int:
    return channels * 6 * 6 * 3 * 3 * 3 + classes * channels * 6 * 6


def quiet_dynamic_quant(model: nn.Module) -> nn.Module:
    """Return torch.ao's dynamic-int8 version of `model` (skipping where torch.ao quantization is gone)."""
    quantization = pytest.importorskip("torch.ao.quantization")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


# ------------------------------------------------------------------------------------------- latency


@settings(deadline=None, max_examples=50)
@given(
    samples=st.lists(st.floats(0.001, 1e4, allow_nan=False), min_size=1, max_size=60),
    batch=st.integers(1, 256),
)
def test_latency_stats_from_samples_is_ordered(samples: list[float], batch: int) -> None:
    stats = LatencyStats.from_samples(samples, warmup_rounds=2, batch_size=batch)
    tol = 1e-9 * max(samples)
    assert stats.min_ms <= stats.median_ms + tol
    assert stats.median_ms <= stats.p90_ms + tol
    assert stats.p90_ms <= max(samples) + tol
    assert stats.iqr_ms >= -tol and stats.stdev_ms >= 0
    assert stats.rounds == len(samples) and stats.samples_ms == tuple(samples)
    assert stats.throughput_ips == pytest.approx(batch / (stats.median_ms / 1000))


def test_latency_stats_to_dict_has_the_summary_without_samples() -> None:
    stats = LatencyStats.from_samples([1.0, 2.0, 3.0], warmup_rounds=1, batch_size=4)
    assert set(stats.to_dict()) == {"median", "p90", "mean", "stdev", "iqr", "min", "rounds", "warmup_rounds"}
    assert stats.to_dict()["median"] == 2.0 and stats.to_dict()["rounds"] == 3
    assert stats.stdev_ms == pytest.approx(1.0)
    with pytest.raises(HarnessError, match="min_rounds"):
        LatencyStats.from_samples([], warmup_rounds=0, batch_size=1)


def test_timing_input_is_imagenet_shaped_and_seeded() -> None:
    x = timing_input(2, torch.device("cpu"))
    assert x.shape == (2, *TIMING_SHAPE) and x.dtype == torch.float32
    assert torch.equal(x, timing_input(2, "cpu"))
    assert not torch.equal(x, timing_input(2, "cpu", seed=1))
    with pytest.raises(HarnessError, match="batch_size"):
        timing_input(0, "cpu")


def test_timing_one_callable_warms_up_then_times_under_inference_mode() -> None:
    calls: list[bool] = []

    def fn() -> None:
        calls.append(torch.is_inference_mode_enabled())

    stats = time_one(fn, device=torch.device("cpu"), batch_size=8, warmup=3, min_rounds=4, budget_s=0.0)
    assert stats.rounds == 4 and stats.warmup_rounds == 3 and stats.batch_size == 8
    assert len(calls) == 3 + 4 and all(calls)
    assert len(stats.samples_ms) == 4 and all(s >= 0 for s in stats.samples_ms)


def test_timing_one_callable_stops_at_max_rounds_and_honours_the_budget_loosely() -> None:
    capped = time_one(lambda: None, device="cpu", batch_size=1, min_rounds=2, max_rounds=7, budget_s=60)
    assert capped.rounds == 7
    # A sleeping function with a tiny budget stops long before an enormous max_rounds.
    sleepy = time_one(
        lambda: time.sleep(0.002),
        device="cpu",
        batch_size=1,
        warmup=0,
        min_rounds=2,
        max_rounds=100_000,
        budget_s=0.02,
    )
    assert 2 <= sleepy.rounds < 100_000


def test_timing_one_callable_runs_a_real_model() -> None:
    model = tiny_model()
    x = torch.randn(2, 3, 8, 8)
    stats = time_one(lambda: model(x), device="cpu", batch_size=2, warmup=1, min_rounds=3, budget_s=0)
    assert stats.rounds == 3 and stats.median_ms <= stats.p90_ms and stats.throughput_ips > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_rounds": 0}, "min_rounds"),
        ({"min_rounds": 5, "max_rounds": 4}, "max_rounds"),
        ({"warmup": -1}, "warmup"),
        ({"budget_s": -1.0}, "budget_s"),
        ({"batch_size": 0}, "batch_size"),
        ({"device": "meta"}, "unsupported device"),
    ],
)
def test_timing_one_callable_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"device": "cpu", "batch_size": 1, **kwargs}
    with pytest.raises(HarnessError, match=message):
        time_one(lambda: None, **args)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is missing")
def test_cuda_device_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(HarnessError, match="CUDA is not available"):
        Timer("cuda")


def test_timer_times_one_call_on_cpu() -> None:
    assert Timer("cpu").time_ms(lambda: sum(range(100))) >= 0


@settings(deadline=None, max_examples=30)
@given(k=st.integers(1, 6), start=st.integers(0, 50))
def test_round_order_rotates_so_every_name_takes_every_position(k: int, start: int) -> None:
    names = [f"f{i}" for i in range(k)]
    orders = [round_order(names, start + r) for r in range(k)]
    assert all(sorted(order) == names for order in orders)
    for position in range(k):
        assert sorted(order[position] for order in orders) == names


def test_time_interleaved_alternates_and_keeps_rounds_aligned() -> None:
    log: list[str] = []
    fns = {name: (lambda name=name: log.append(name)) for name in ("a", "b")}
    result = time_interleaved(fns, device="cpu", batch_size=4, warmup=2, min_rounds=6, budget_s=0)
    assert set(result) == {"a", "b"}
    assert all(s.rounds == 6 and s.warmup_rounds == 2 and s.batch_size == 4 for s in result.values())
    assert len(result["a"].samples_ms) == len(result["b"].samples_ms) == 6
    timed = log[2 * 2 :]
    assert timed == ["a", "b", "b", "a"] * 3
    with pytest.raises(HarnessError, match="at least one function"):
        time_interleaved({}, device="cpu", batch_size=1)


def test_time_interleaved_with_three_models_and_a_cap() -> None:
    model = tiny_model()
    x = torch.randn(1, 3, 8, 8)
    fns = {"x": lambda: model(x), "y": lambda: model(x), "z": lambda: model(x)}
    result = time_interleaved(
        fns, device="cpu", batch_size=1, warmup=1, min_rounds=2, max_rounds=3, budget_s=60
    )
    assert {s.rounds for s in result.values()} == {3}


class _FakeEvent:
    """Notes when it is recorded, synchronized and read, like a CUDA event on the current stream."""

    log: list[str] = []

    def __init__(self, enable_timing: bool = False) -> None:
        self.enable_timing = enable_timing
        self.stamp = 0.0

    def record(self) -> None:
        self.stamp = time.perf_counter()
        self.log.append("record")

    def synchronize(self) -> None:
        self.log.append("event-sync")

    def elapsed_time(self, end: _FakeEvent) -> float:
        self.log.append("read")
        return (end.stamp - self.stamp) * 1000.0


@dataclass
class FakeCuda:
    log: list[str]
    allocated: dict[str, int]


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    """Stand in for CUDA so the event and allocator code paths run on a machine without a GPU."""
    fake = FakeCuda(log=[], allocated={"now": 1000, "peak": 1000})
    monkeypatch.setattr(_FakeEvent, "log", fake.log)

    def reset_peak(device: object = None) -> None:
        fake.allocated["peak"] = fake.allocated["now"]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: fake.log.append("sync"))
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: fake.allocated["now"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: fake.allocated["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset_peak)
    return fake


def test_cuda_timer_records_events_around_the_call_and_syncs_before_reading(fake_cuda: FakeCuda) -> None:
    stats = time_one(
        lambda: fake_cuda.log.append("call"), device="cuda", batch_size=2, warmup=1, min_rounds=2, budget_s=0
    )
    assert stats.rounds == 2
    one_round = ["sync", "record", "call", "record", "event-sync", "read"]
    assert fake_cuda.log == ["call", "sync", *one_round, *one_round]


def test_cuda_peak_memory_is_the_allocator_peak_over_the_baseline(fake_cuda: FakeCuda) -> None:
    def fn() -> None:
        fake_cuda.allocated["peak"] = fake_cuda.allocated["now"] + 4096

    assert activation_peak_bytes(fn, "cuda") == 4096
    assert activation_peak_bytes(lambda: None, "cuda:0") == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_timing_and_memory_on_a_real_gpu() -> None:
    model = tiny_model().cuda()
    x = torch.randn(8, 3, 8, 8, device="cuda")
    stats = time_one(lambda: model(x), device="cuda", batch_size=8, warmup=2, min_rounds=5, budget_s=0)
    assert stats.rounds == 5 and 0 < stats.median_ms <= stats.p90_ms
    both = time_interleaved(
        {"a": lambda: model(x), "b": lambda: model(x)}, device="cuda", batch_size=8, budget_s=0
    )
    assert both["a"].rounds == both["b"].rounds == 5
    grown = activation_peak_bytes(lambda: torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda"), "cuda")
    assert grown >= 64 * 2**20
    assert size_stats(model).params == sum(p.numel() for p in model.parameters())
    assert count_macs(model, SMALL) == tiny_macs()


# -------------------------------------------------------------------------------------------- memory


def test_cpu_peak_is_the_bytes_a_call_holds_at_once_to_the_byte() -> None:
    if cpu_memory.tracker() is None:
        pytest.skip(f"no counting allocator here: {cpu_memory.unavailable_reason()}")

    def two_steps() -> torch.Tensor:
        a = torch.empty(30_000_000, dtype=torch.uint8)
        b = torch.empty(20_000_000, dtype=torch.uint8)  # both alive: 50 MB at the peak
        del a
        return b  # the output is part of the footprint

    assert activation_peak_bytes(two_steps, "cpu") == 50_000_000
    assert activation_peak_bytes(lambda: None, "cpu") == 0
    kept = torch.empty(10_000_000, dtype=torch.uint8)  # already allocated before the call: not the call's
    assert activation_peak_bytes(kept.zero_, "cpu") == 0


def test_cpu_peak_is_not_measured_without_the_counting_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_memory, "tracker", lambda: None)
    assert activation_peak_bytes(lambda: torch.ones(1000), "cpu") is None


@pytest.mark.slow
def test_resnet18_peak_memory_holds_its_weights_and_activations_and_bf16_needs_less() -> None:
    """Validation against arithmetic: at batch 4 ResNet18's first conv output alone is 4x64x112x112 floats, and
    eager BatchNorm makes a second one before it is freed; bf16 halves the activations (batch 4, not the gate's 32:
    bf16 is emulated, and slow, on a CPU without bf16 instructions)."""
    if cpu_memory.tracker() is None:
        pytest.skip(f"no counting allocator here: {cpu_memory.unavailable_reason()}")
    torch.manual_seed(0)
    fp32 = torchvision.models.resnet18(num_classes=10).eval()
    bf16 = torchvision.models.resnet18(num_classes=10).eval().to(torch.bfloat16)
    x = torch.randn(4, 3, 224, 224)
    conv1_output = 4 * 64 * 112 * 112 * 4
    with torch.inference_mode():
        fp32(x), bf16(x.bfloat16())  # warm: oneDNN's one-time buffers are not the call's
    peaks = [activation_peak_bytes(lambda: fp32(x), "cpu") for _ in range(3)]
    assert peaks[0] is not None and peaks == [peaks[0]] * 3  # repeatable to the byte
    weights = size_stats(fp32).tensor_bytes
    assert weights >= 11_000_000 * 4  # 11.2 M float32 parameters (and BatchNorm statistics)
    total = weights + peaks[0]
    assert total >= weights + 2 * conv1_output  # the peak memory the gate reports: weights plus activations
    half = activation_peak_bytes(lambda: bf16(x.bfloat16()), "cpu")
    assert half is not None and size_stats(bf16).tensor_bytes + half < total


# ---------------------------------------------------------------------------------------------- size


def test_size_stats_of_a_float_model_counts_its_parameters() -> None:
    model = tiny_model()
    size = size_stats(model)
    assert size.params == sum(p.numel() for p in model.parameters())
    assert size.nonzero_params == size.params
    assert 0 < size.compressed_size_bytes <= size.size_bytes + 64


def test_size_stats_leaves_out_batchnorm_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 36, 2))
    assert size_stats(model).params == sum(p.numel() for p in model.parameters())


def test_size_stats_counts_zeros_and_compression_shows_them() -> None:
    dense = nn.Linear(256, 256)
    sparse = nn.Linear(256, 256)
    with torch.no_grad():
        sparse.weight[:, :192] = 0
    d, s = size_stats(dense), size_stats(sparse)
    assert d.params == s.params == 256 * 256 + 256
    assert s.nonzero_params == d.nonzero_params - 256 * 192
    assert s.compressed_size_bytes < d.compressed_size_bytes
    assert s.sparsity == pytest.approx(256 * 192 / s.params)


def test_size_stats_counts_tied_weights_once() -> None:
    a, b = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    b.weight = a.weight
    model = nn.Sequential(a, b)
    assert size_stats(model).params == sum(p.numel() for p in model.parameters()) == 16


def test_size_stats_of_dynamic_quantized_model_unpacks_packed_params() -> None:
    model = tiny_model()
    quantized = quiet_dynamic_quant(tiny_model())
    q, f = size_stats(quantized), size_stats(model)
    assert q.params == f.params
    assert 0 < q.nonzero_params <= q.params
    assert q.size_bytes < f.size_bytes


def test_size_stats_of_static_quantized_model_counts_quantized_tensors() -> None:
    quantization = pytest.importorskip("torch.ao.quantization")
    model = nn.Sequential(quantization.QuantStub(), *tiny_model(), quantization.DeQuantStub()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.qconfig = quantization.get_default_qconfig("x86")
        quantization.prepare(model, inplace=True)
        model(torch.randn(4, 3, 8, 8))
        quantization.convert(model, inplace=True)
    size = size_stats(model)
    assert size.params == sum(p.numel() for p in tiny_model().parameters())
    assert 0 < size.nonzero_params <= size.params


class _CompiledLike(nn.Module):
    """Stands in for torch.compile's OptimizedModule (same `_orig_mod` layout) without importing dynamo."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._orig_mod = inner


def test_size_stats_of_compiled_and_traced_modules_match_the_float_model() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 36, 5)).eval()
    expected = size_stats(model)
    compiled = _CompiledLike(model)
    assert list(compiled.state_dict())[0].startswith("_orig_mod.")
    assert unwrap_module(compiled) is model
    assert size_stats(compiled) == expected
    traced = torch.fx.symbolic_trace(model)
    assert size_stats(traced).params == expected.params
    assert count_macs(compiled, SMALL) == count_macs(traced, SMALL) == 4 * 36 * 27 + 4 * 36 * 5


def test_size_stats_includes_graph_constants_that_are_plain_attributes() -> None:
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    weight = graph.get_attr("_frozen_param0")
    graph.output(graph.call_function(torch.matmul, (x, weight)))
    root = nn.Module()
    root.register_buffer("_frozen_param0", torch.ones(3, 2))
    module = torch.fx.GraphModule(root, graph)
    module._buffers.pop("_frozen_param0", None)
    module._frozen_param0 = torch.ones(3, 2)  # a plain attribute, as constant folding leaves it
    assert "_frozen_param0" not in module.state_dict()
    size = size_stats(module)
    assert size.params == 6 and size.nonzero_params == 6


def test_size_stats_of_pruned_and_sparse_weights() -> None:
    prune = pytest.importorskip("torch.nn.utils.prune")
    pruned = nn.Linear(10, 10)
    prune.l1_unstructured(pruned, "weight", amount=0.3)
    size = size_stats(pruned)
    assert size.params == 110 and size.nonzero_params == 110 - 30

    sparse = nn.Linear(4, 4)
    with torch.no_grad():
        sparse.weight[:2] = 0
    sparse.weight = nn.Parameter(sparse.weight.detach().to_sparse())
    size = size_stats(sparse)
    assert isinstance(size, SizeStats) and (size.params, size.nonzero_params) == (20, 12)


# ---------------------------------------------------------------------------------------------- MACs


@settings(deadline=None, max_examples=8)
@given(channels=st.integers(1, 8), classes=st.integers(1, 10))
def test_count_macs_matches_the_shape_formula_and_layer_macs(channels: int, classes: int) -> None:
    model = tiny_model(channels, classes)
    assert count_macs(model, SMALL) == tiny_macs(channels, classes)
    table = layer_macs(model, SMALL)
    assert sum(m for m, _ in table.values()) == tiny_macs(channels, classes)
    assert {name: p for name, (_, p) in table.items()} == {
        "0": channels * 27 + channels,
        "3": channels * 36 * classes + classes,
    }


def test_count_macs_leaves_the_model_alone_and_handles_half_precision() -> None:
    model = tiny_model().half()
    assert count_macs(model, SMALL) == tiny_macs()
    assert next(model.parameters()).dtype == torch.float16


def test_count_macs_refuses_a_quantized_model() -> None:
    with pytest.raises(HarnessError, match="quantized::linear_dynamic.*float model"):
        count_macs(quiet_dynamic_quant(tiny_model()), SMALL)


def test_count_macs_explains_a_wrong_input_shape() -> None:
    with pytest.raises(HarnessError, match="input_shape"):
        count_macs(tiny_model(), (1, 3, 16, 16))
    with pytest.raises(HarnessError, match="input_shape"):
        count_macs(tiny_model(), (0, 3, 8, 8))


def test_layer_macs_handles_groups_and_unused_layers() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dw = nn.Conv2d(4, 8, 3, groups=4, bias=False)
            self.unused = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.dw(x)

    table = layer_macs(Net(), (2, 4, 5, 5))
    assert table["dw"] == (2 * 8 * 3 * 3 * 1 * 9, 8 * 1 * 9)
    assert table["unused"] == (0, 12)


def test_coverage_of_counts_named_layers_once() -> None:
    model = tiny_model()
    conv_macs = 4 * 36 * 27
    cov = coverage_of(["0", "0"], model, SMALL)
    assert cov.macs_fraction == pytest.approx(conv_macs / tiny_macs())
    assert cov.params_fraction == pytest.approx(112 / (112 + 725))
    assert coverage_of(["0", "3"], model, SMALL) == Coverage(1.0, 1.0)
    assert coverage_of([], model, SMALL).to_dict() == {"macs_fraction": 0.0, "params_fraction": 0.0}


def test_coverage_of_unknown_layer_lists_valid_names() -> None:
    with pytest.raises(HarnessError, match=r"unknown layer name.*'fc'.*valid names look like \['0', '3'\]"):
        coverage_of(["fc"], tiny_model(), SMALL)


@pytest.mark.slow
def test_resnet18_has_about_1_82_gmacs_and_11_7m_params() -> None:
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None)
    assert 1.80e9 <= count_macs(model) <= 1.83e9
    assert size_stats(model).params == 11_689_512
