"""Tests of the int8 techniques: what they quantize, the shapes they keep, calibration that skips eval."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import fx, nn
from torch.utils.data import Dataset

from harness.data import DataBundle, TensorImageDataset
from harness.errors import TechniqueError
from harness.techniques import _calibrate, get, parse_options
from harness.techniques import static_int8 as static_int8_module
from harness.techniques import static_int8_fx as static_int8_fx_module
from harness.techniques.base import ApplyContext, ModelState, conv_and_linear_names

QUANT = ("dynamic_int8", "static_int8", "static_int8_fx")
STATIC = ("static_int8", "static_int8_fx")
STATIC = ("static_int8", "static_int8_fx")
SHAPES = [(batch, size) for batch in (1, 3) for size in (32, 224)]
TINY_SIZE = 16
CLASSES = 10
EVAL_SENTINEL = 1.0e4
CPU = torch.device("cpu")


def images(count: int, size: int, seed: int) -> torch.Tensor:
    """Return noise images whose per-channel offsets differ, so a tiny net's predictions differ too."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, size, size, generator=gen) + torch.randn(count, 3, 1, 1, generator=gen)


class TinyNet(nn.Module):
    """conv-bn-relu, strided conv-relu, global pool, linear: every op kind the quantizers handle."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return torch.flatten(self.pool(torch.relu(self.conv2(x))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def tiny_net(width: int = 8) -> TinyNet:
    """Return a TinyNet, its head centred on `images`' features (a random head picks one class for all)."""
    torch.manual_seed(0)
    net = TinyNet(width).eval()
    with torch.no_grad():
        feats = net.features(images(512, TINY_SIZE, seed=99))
        net.fc.weight.normal_().div_((feats - feats.mean(0)).std())
        net.fc.bias.copy_(-(net.fc.weight @ feats.mean(0)))
    return net


class CountingDataset(Dataset):
    """Eval images that are all EVAL_SENTINEL, counting every read: a technique must never read one."""

    def __init__(self, count: int) -> None:
        self.reads = 0
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        return torch.full((3, TINY_SIZE, TINY_SIZE), EVAL_SENTINEL), 0


def bundle(calibration: torch.Tensor, eval_set: Dataset | None = None) -> DataBundle:
    """Return a DataBundle with `calibration` images and sentinel eval images."""
    ids = tuple(f"cal{i}" for i in range(len(calibration)))
    return DataBundle(
        spec="test",
        kind="test",
        train=None,
        calibration=TensorImageDataset(calibration, torch.zeros(len(calibration), dtype=torch.long)),
        eval=eval_set if eval_set is not None else CountingDataset(8),
        num_classes=CLASSES,
        class_names=tuple(str(c) for c in range(CLASSES)),
        image_size=tuple(calibration.shape[-2:]),
        train_ids=(),
        calibration_ids=ids,
        eval_ids=tuple(f"eval{i}" for i in range(8)),
    )


def context(data: DataBundle, **options: Any) -> ApplyContext:
    return ApplyContext(device=CPU, data=data, progress=False, options=options)


@dataclass
class Applied:
    """One technique applied to the tiny net, with what its calibration fed the model."""

    name: str
    float_net: TinyNet
    state: ModelState
    calibration: torch.Tensor
    fed: list[torch.Tensor] = field(default_factory=list)
    eval_reads: int = 0


def recording_calibrate(fed: list[torch.Tensor]) -> Callable[[Callable[..., Any], ApplyContext, str], int]:
    """Return a calibrate() that records every batch it passes to the model."""
    real = _calibrate.calibrate

    def calibrate(model: Callable[..., Any], ctx: ApplyContext, technique: str) -> int:
        def spy(x: torch.Tensor) -> object:
            fed.append(x.clone())
            return model(x)

        return real(spy, ctx, technique)

    return calibrate


def apply_tiny(name: str, net: TinyNet | None = None) -> Applied:
    """Apply `name` to the tiny net; static_int8's inductor compile is skipped here (the slow tests do it)."""
    net = net if net is not None else tiny_net()
    calibration = images(48, TINY_SIZE, seed=1)
    eval_set = CountingDataset(8)
    applied = Applied(name, net, ModelState.start(net), calibration)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(static_int8_module, "compiled_runner", lambda module, device, mode: module)
        mp.setattr(static_int8_module, "first_call_seconds", lambda runner, device: 0.0)
        for module in (static_int8_module, static_int8_fx_module):
            mp.setattr(module, "calibrate", recording_calibrate(applied.fed))
        applied.state = get(name).apply(applied.state, context(bundle(calibration, eval_set)))
    applied.eval_reads = eval_set.reads
    return applied


@cache
def applied_once(name: str) -> Applied:
    """Return `name` applied to the tiny net, once per process: applying is slow, the checks are cheap."""
    return apply_tiny(name)


@pytest.fixture(params=QUANT)
def applied(request: pytest.FixtureRequest) -> Applied:
    """Each technique applied to the tiny net."""
    return applied_once(request.param)


@pytest.fixture
def static_pt2e() -> Applied:
    """static_int8 applied to the tiny net."""
    return applied_once("static_int8")


@pytest.mark.parametrize(("batch", "size"), SHAPES)
def test_output_shape_kept_for_eval_and_timing_inputs(applied: Applied, batch: int, size: int) -> None:
    with torch.inference_mode():
        out = applied.state(images(batch, size, seed=3))
    assert out.shape == (batch, CLASSES)
    assert out.dtype == torch.float32


def test_top1_agrees_with_float_after_calibration(applied: Applied) -> None:
    x = images(256, TINY_SIZE, seed=2)
    with torch.inference_mode():
        want, got = applied.float_net(x).argmax(1), applied.state(x).argmax(1)
    assert len(want.unique()) >= 5, "the float net predicts too few classes for agreement to mean anything"
    assert (want == got).float().mean() > 0.9


def test_float_model_is_left_alone(applied: Applied) -> None:
    float_module = applied.state.float_module
    assert applied.state.module is not float_module
    assert conv_and_linear_names(float_module) == {"conv1", "conv2", "fc"}
    assert {type(float_module.get_submodule(n)) for n in ("conv1", "conv2", "fc")} == {nn.Conv2d, nn.Linear}
    assert type(applied.float_net.fc) is nn.Linear


def test_coverage_names_the_layers_it_quantized(applied: Applied) -> None:
    everything = conv_and_linear_names(applied.float_net)
    expected = frozenset({"fc"}) if applied.name == "dynamic_int8" else everything
    assert applied.state.coverage_layers == {applied.name: expected}


def test_dynamic_int8_replaces_only_linear() -> None:
    done = applied_once("dynamic_int8")
    module = done.state.module
    assert type(module.conv1) is nn.Conv2d and type(module.conv2) is nn.Conv2d
    assert isinstance(module.fc, torch.ao.nn.quantized.dynamic.Linear)
    assert done.state.coverage_layers == {"dynamic_int8": frozenset({"fc"})}
    assert any("deprecated" in note for note in done.state.notes)


def test_dynamic_int8_covers_under_one_percent_of_resnet18_macs() -> None:
    from torchvision.models import resnet18

    from harness.measure import coverage_of

    start = ModelState.start(resnet18(num_classes=CLASSES))
    state = get("dynamic_int8").apply(start, context(bundle(images(2, 32, 0))))
    assert state.coverage_layers["dynamic_int8"] == frozenset({"fc"})
    assert coverage_of(state.coverage_layers["dynamic_int8"], state.float_module).macs_fraction < 0.01


def quantized_matmuls(graph_module: fx.GraphModule) -> list[fx.Node]:
    ops = {"aten.conv2d.default", "aten.linear.default"}
    return [n for n in graph_module.graph.nodes if n.op == "call_function" and str(n.target) in ops]


def test_static_int8_runs_every_conv_and_linear_on_int8_weights(static_pt2e: Applied) -> None:
    module = static_pt2e.state.module
    assert isinstance(module, fx.GraphModule)
    nodes = quantized_matmuls(module)
    assert len(nodes) == 3
    for node in nodes:
        activation, weight = node.args[0], node.args[1]
        assert str(activation.target).startswith("quantized_decomposed.dequantize_per_tensor")
        assert str(weight.target).startswith("quantized_decomposed.dequantize_per_channel")
        stored = weight.args[0]
        assert stored.op == "get_attr" and getattr(module, stored.target).dtype in (torch.int8, torch.uint8)


def test_static_int8_keeps_no_float_weights(static_pt2e: Applied) -> None:
    state_dict = static_pt2e.state.module.state_dict()
    float_weights = [k for k, v in state_dict.items() if v.is_floating_point() and v.dim() >= 2]
    assert float_weights == []


def test_static_int8_fx_holds_qint8_weights() -> None:
    module = applied_once("static_int8_fx").state.module
    for name in ("conv1", "conv2", "fc"):
        assert module.get_submodule(name).weight().dtype == torch.qint8


def test_calibration_never_sees_an_eval_image(applied: Applied) -> None:
    assert applied.eval_reads == 0
    if applied.name not in STATIC:
        assert applied.fed == []
        return
    fed = torch.cat(applied.fed)
    assert len(fed) == len(applied.calibration)
    assert not (fed == EVAL_SENTINEL).any()
    assert torch.equal(fed, applied.calibration)


def test_export_is_exact_at_eval_and_timing_sizes() -> None:
    net = tiny_net()
    exported = static_int8_module.export(net, images(2, TINY_SIZE, seed=0))
    for batch, size in SHAPES:
        x = images(batch, size, seed=4)
        torch.testing.assert_close(exported(x), net(x))


@given(available=st.integers(1, 80), wanted=st.integers(1, 200))
@settings(max_examples=25, deadline=None)
def test_calibration_batches_take_the_first_images_up_to_the_option(available: int, wanted: int) -> None:
    calibration = images(available, 4, seed=0)
    for name in STATIC:
        ctx = context(bundle(calibration), **{f"{name}.calibration_images": wanted})
        batches = list(_calibrate.calibration_batches(ctx, name))
        assert all(len(b) <= _calibrate.BATCH_SIZE for b in batches)
        assert torch.equal(torch.cat(batches), calibration[: min(available, wanted)])


def test_each_static_int8_technique_reads_its_own_calibration_option() -> None:
    ctx = context(bundle(images(8, 4, 0)), **{"static_int8_fx.calibration_images": 3})
    assert _calibrate.calibration_images(ctx, "static_int8_fx") == 3
    assert _calibrate.calibration_images(ctx, "static_int8") == _calibrate.DEFAULT_IMAGES


@pytest.mark.parametrize("bad", ["0", "-3", "2.5", "many", "nan"])
def test_bad_calibration_option_says_what_is_wanted(bad: str) -> None:
    for name in STATIC:
        with pytest.raises(TechniqueError, match=f"{name}.calibration_images must be a whole number >= 1"):
            parse_options([f"{name}.calibration_images={bad}"])


def test_empty_calibration_split_is_refused() -> None:
    with pytest.raises(TechniqueError, match="calibration split is empty"):
        _calibrate.example_batch(context(bundle(images(0, 4, 0))))


@pytest.mark.parametrize("name", QUANT)
def test_after_compile_is_refused(name: str) -> None:
    state = ModelState.start(tiny_net()).evolve(runner=lambda x: x)
    with pytest.raises(TechniqueError, match="before"):
        get(name).transform(state, context(bundle(images(4, TINY_SIZE, 0))))


@pytest.mark.parametrize("name", QUANT)
def test_cuda_is_unsupported_with_a_reason(name: str) -> None:
    technique = get(name)
    assert technique.devices == ("cpu",)
    reason = technique.skip_reason("cuda")
    assert reason is not None and "CPU" in reason


@pytest.mark.parametrize(
    ("name", "package", "fix"),
    [
        ("static_int8", "torchao", "pip install -U torchao"),  # installed, without the PT2E x86 files
        ("static_int8_fx", "torch", "use static_int8"),  # a torch without torch/ao/quantization/quantize_fx.py
    ],
)
def test_skip_reason_when_the_requirement_fails(
    name: str, package: str, fix: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert get(name).skip_reason("cpu") is None
    real = importlib.util.find_spec

    def find_spec(module: str, *args: object) -> object:
        if module != package:
            return real(module, *args)  # type: ignore[arg-type]
        return _package_at(tmp_path)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    reason = get(name).skip_reason("cpu")
    assert reason is not None and fix in reason


def test_static_int8_says_to_install_torchao_when_it_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "torchao" else real(m, *a))
    reason = get("static_int8").skip_reason("cpu")
    assert reason is not None and "torchao is not installed: pip install torchao" in reason


def _package_at(folder: Path) -> importlib.machinery.ModuleSpec:
    spec = importlib.machinery.ModuleSpec("fake", None, is_package=True)
    spec.submodule_search_locations = [str(folder)]
    return spec


def test_static_int8_after_channel_pruning() -> None:
    tp = pytest.importorskip("torch_pruning")
    net = tiny_net(width=16)
    pruner = tp.pruner.MetaPruner(
        net,
        images(2, TINY_SIZE, 0),
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.5,
        ignored_layers=[net.fc],
    )
    pruner.step()
    assert net.conv1.out_channels < 16
    done = apply_tiny("static_int8", net)
    assert done.state.coverage_layers["static_int8"] == conv_and_linear_names(net)
    assert done.state(images(3, 224, seed=5)).shape == (3, CLASSES)


@pytest.fixture(scope="module")
def resnet18_data() -> DataBundle:
    return bundle(images(64, 32, seed=1))


@pytest.mark.slow
def test_static_int8_resnet18_compiled(resnet18_data: DataBundle) -> None:
    from torchvision.models import resnet18

    from harness.measure import size_stats

    net = resnet18(num_classes=CLASSES).eval()
    exported = static_int8_module.export(net, images(2, 32, seed=0))
    state = get("static_int8").apply(ModelState.start(net), context(resnet18_data))
    assert state.runner is not None and state.compile_seconds > 0
    assert state.coverage_layers["static_int8"] == conv_and_linear_names(net)
    assert size_stats(state.module).size_bytes < 12_500_000  # int8 weights: about a quarter of 44.8 MB
    with torch.inference_mode():
        for batch, size in SHAPES:
            x = images(batch, size, seed=6)
            torch.testing.assert_close(exported(x), net(x))  # size-oblivious export is exact at 1x1 maps
            assert state(x).shape == (batch, CLASSES)


@pytest.mark.slow
def test_static_int8_fx_resnet18(resnet18_data: DataBundle) -> None:
    from torchvision.models import resnet18

    net = resnet18(num_classes=CLASSES).eval()
    state = get("static_int8_fx").apply(ModelState.start(net), context(resnet18_data))
    assert state.coverage_layers["static_int8_fx"] == conv_and_linear_names(net)
    with torch.inference_mode():
        for batch, size in SHAPES:
            assert state(images(batch, size, seed=6)).shape == (batch, CLASSES)
