"""Tests of the pruning, 2:4 sparsity and distillation techniques on small models and sentinel data."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import tiny_classifier
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn
from torch.utils.data import Dataset

from harness import models, train
from harness.data import DataBundle, TensorImageDataset
from harness.errors import DataError, TechniqueError
from harness.evaluate import EvalResult
from harness.measure import count_macs, size_stats
from harness.techniques import (
    ApplyContext,
    ModelState,
    distill,
    prune_structured,
    prune_unstructured,
    sparse_2to4,
)

CPU = torch.device("cpu")


class EvalSentinel(Dataset):
    """An eval split that fails the test the moment anything reads an image from it."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        raise AssertionError(f"eval image {index} was read while applying a technique")


def sentinel_bundle(n_train: int = 16, size: int = 32) -> DataBundle:
    """Return a 10-class bundle with random train images and an eval split that must never be read."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(n_train, 3, size, size, generator=gen)
    train_set = TensorImageDataset(images, torch.arange(n_train) % 10)
    ids = tuple(f"train:{i}" for i in range(n_train))
    return DataBundle(
        spec="sentinel", kind="digits", train=train_set, calibration=train_set, eval=EvalSentinel(),
        num_classes=10, class_names=tuple(str(i) for i in range(10)), image_size=(size, size),
        train_ids=ids, calibration_ids=ids, eval_ids=tuple(f"eval:{i}" for i in range(8)),
    )


def context(data: DataBundle, **options: Any) -> ApplyContext:
    return ApplyContext(device=CPU, data=data, progress=False, options=options)


class FitRecorder:
    """Stands in for train.fit: records what each call was given and trains nothing."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, model: nn.Module, dataset: Any, config: train.TrainConfig, **kw: Any) -> list[float]:
        self.calls.append({"dataset": dataset, "config": config, **kw})
        model.eval()
        return []


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Cache trained and pruned models in a temporary folder, so no test reads or fills the user's cache."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fit_recorder(monkeypatch: pytest.MonkeyPatch) -> FitRecorder:
    recorder = FitRecorder()
    monkeypatch.setattr(train, "fit", recorder)
    monkeypatch.setattr(models, "fit", recorder)  # models.py imported fit by name (teacher training)
    return recorder


def tiny_convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10),
    ).eval()


def small_convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
        nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def conv_weights(module: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in module.modules() if isinstance(m, nn.Conv2d)]


# --------------------------------------------------------------------------------- prune_unstructured


@settings(max_examples=20, deadline=None)
@given(amount=st.floats(0.0, 0.95))
def test_unstructured_zeroes_exactly_the_amount_globally(amount: float) -> None:
    model = tiny_convnet()
    total = sum(w.numel() for w in conv_weights(model))
    pruned = prune_unstructured.prune_convs(copy.deepcopy(model), amount)
    zeros = sum(int((w == 0).sum()) for w in conv_weights(pruned))
    assert zeros == round(amount * total)
    assert torch.equal(pruned[-1].weight, model[-1].weight)  # the Linear is not pruned


def test_unstructured_keeps_dense_size_and_shrinks_compressed() -> None:
    model = tiny_convnet()
    state = ModelState.start(model)
    out = prune_unstructured.apply(state, context(sentinel_bundle()))
    keys = out.module.state_dict().keys()
    assert keys == model.state_dict().keys()
    assert not any(k.endswith(("weight_orig", "weight_mask")) for k in keys)
    before, after = size_stats(model), size_stats(out.module)
    assert after.size_bytes == before.size_bytes
    assert after.compressed_size_bytes < before.compressed_size_bytes
    assert after.nonzero_params < before.nonzero_params
    assert out.float_module is out.module
    assert out.coverage_layers["prune_unstructured"] == {"0", "2", "4"}
    assert any("dense" in note for note in out.notes)
    assert all(int((w == 0).sum()) == 0 for w in conv_weights(state.module))  # the input is left alone


def test_unstructured_must_come_before_a_runner() -> None:
    state = ModelState.start(tiny_convnet())
    with pytest.raises(TechniqueError, match="first"):
        prune_unstructured.TECHNIQUE.transform(state.evolve(runner=state.module), context(sentinel_bundle()))


@pytest.mark.slow
def test_unstructured_resnet18_article_amount() -> None:
    model = resnet18()
    out = prune_unstructured.apply(ModelState.start(model), context(sentinel_bundle()))
    total = sum(w.numel() for w in conv_weights(model))
    assert sum(int((w == 0).sum()) for w in conv_weights(out.module)) == round(0.3 * total)
    before, after = size_stats(model), size_stats(out.module)
    assert after.size_bytes == before.size_bytes
    assert after.compressed_size_bytes < 0.9 * before.compressed_size_bytes


# ----------------------------------------------------------------------------------- prune_structured


def test_structured_resnet18_shapes_macs_and_train_only(fit_recorder: FitRecorder) -> None:
    model = resnet18()
    data = sentinel_bundle()
    out = prune_structured.apply(ModelState.start(model), context(data))
    pruned = out.module
    assert out.float_module is pruned
    assert count_macs(pruned, (1, 3, 224, 224)) <= 0.55 * count_macs(model, (1, 3, 224, 224))
    convs = {n: m for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d)}
    changed = out.coverage_layers["prune_structured"]
    assert changed and changed <= convs.keys()
    assert all(convs[n].out_channels % 8 == 0 for n in changed)
    assert pruned.fc.out_features == 10 and pruned.fc.in_features % 8 == 0
    for size in (32, 224):
        assert pruned(torch.randn(2, 3, size, size)).shape == (2, 10)
    assert [call["dataset"] for call in fit_recorder.calls] == [data.train]
    assert fit_recorder.calls[0].get("teacher") is None


def test_structured_cache_hit_prunes_again_and_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    def nudge(model: nn.Module, *args: Any, **kwargs: Any) -> list[float]:
        with torch.no_grad():
            model[-1].bias.add_(1.0)  # a visible "fine-tune", so a hit must load it rather than recompute
        return []

    monkeypatch.setattr(train, "fit", nudge)
    data = sentinel_bundle()
    first = prune_structured.apply(ModelState.start(small_convnet()), context(data))
    assert first.module[0].out_channels < 32 and first.module[0].out_channels % 8 == 0
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("a cache hit must not fine-tune again"))
    second = prune_structured.apply(ModelState.start(small_convnet()), context(data))
    assert models.weights_fingerprint(first.module) == models.weights_fingerprint(second.module)
    assert torch.equal(second.module[-1].bias, first.module[-1].bias)


def test_structured_zero_epochs_prunes_without_fine_tune(fit_recorder: FitRecorder) -> None:
    out = prune_structured.apply(ModelState.start(small_convnet()), context(sentinel_bundle(), **{
        "prune_structured.epochs": 0}))
    assert out.module[0].out_channels < 32 and not fit_recorder.calls


def test_structured_must_come_first() -> None:
    state = ModelState.start(tiny_convnet())
    bf16 = state.evolve(module=copy.deepcopy(state.module).bfloat16(), input_dtype=torch.bfloat16)
    with pytest.raises(TechniqueError, match="must come first"):
        prune_structured.TECHNIQUE.transform(bf16, context(sentinel_bundle()))


def test_structured_needs_training_images() -> None:
    data = sentinel_bundle()
    no_train = DataBundle(**{**data.__dict__, "train": None, "train_ids": ()})
    with pytest.raises(DataError, match="prune_structured's fine-tune needs training images"):
        prune_structured.apply(ModelState.start(tiny_convnet()), context(no_train))


@pytest.mark.slow
def test_structured_real_fine_tune_on_train_split_only() -> None:
    data = sentinel_bundle(n_train=64)
    ctx = context(data, **{"prune_structured.epochs": 1})
    out = prune_structured.apply(ModelState.start(resnet18()), ctx)
    logits = out.module(torch.randn(4, 3, 32, 32))
    assert torch.isfinite(logits).all()


# ---------------------------------------------------------------------------------------- sparse_2to4


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 6).map(lambda k: 4 * k)),
              elements=st.floats(-100, 100, width=32)))
def test_mask_2to4_keeps_the_two_largest_of_every_four(weights: np.ndarray) -> None:
    w = torch.from_numpy(weights)
    mask = sparse_2to4.mask_2to4(w)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    groups, kept = w.abs().reshape(-1, 4), mask.reshape(-1, 4)
    assert (kept.sum(dim=1) == 2).all()
    assert ((w * mask).reshape(-1, 4) != 0).sum(dim=1).le(2).all()
    smallest_kept = torch.where(kept, groups, torch.inf).min(dim=1).values
    largest_dropped = torch.where(kept, -torch.inf, groups).max(dim=1).values
    assert (smallest_kept >= largest_dropped).all()


def test_mask_2to4_rejects_rows_not_multiple_of_four() -> None:
    with pytest.raises(TechniqueError, match="multiple of 4"):
        sparse_2to4.mask_2to4(torch.randn(8, 6))


def test_sparse_2to4_on_cpu_says_why() -> None:
    reason = sparse_2to4.TECHNIQUE.skip_reason("cpu")
    assert reason is not None and "CUDA" in reason and "Ampere" in reason
    with pytest.raises(TechniqueError, match="CUDA"):
        sparse_2to4.apply(ModelState.start(tiny_convnet()), context(sentinel_bundle()))


def test_sparsify_pads_rows_masks_and_skips_convs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU-checkable part of the CUDA path: a stand-in backend that keeps the (masked, padded) dense weight."""

    class DenseBackend:
        _DTYPE_SHAPE_CONSTRAINTS = {torch.bfloat16: SimpleNamespace(sparse_min_rows=16)}

        @staticmethod
        def from_dense(weight: torch.Tensor) -> torch.Tensor:
            return weight

    monkeypatch.setattr(torch.backends.cusparselt, "is_available", lambda: True)
    monkeypatch.setattr(torch.sparse, "SparseSemiStructuredTensorCUSPARSELT", DenseBackend)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    dense = copy.deepcopy(model)
    dense[3].weight.data.mul_(sparse_2to4.mask_2to4(dense[3].weight))
    applied, skipped = sparse_2to4.sparsify(model, torch.bfloat16)
    assert applied == ["3"] and skipped == {"0": sparse_2to4.CONV_REASON}
    assert model[3].weight.shape == (16, 8) and (model[3].weight[10:] == 0).all()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model(x), dense(x), rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="2:4 sparse kernels need a CUDA GPU")
def test_sparse_2to4_fc_matches_dense_masked_on_cuda() -> None:
    cuda = torch.device("cuda")
    model = torchvision.models.resnet18(num_classes=1000).eval().to(cuda)
    ctx = ApplyContext(device=cuda, data=sentinel_bundle(), progress=False)
    out = sparse_2to4.apply(ModelState.start(model), ctx)
    assert out.extra["sparse_layers"]["applied"] == ["fc"]
    assert len(out.extra["sparse_layers"]["skipped"]) == 20  # every conv of ResNet18
    x = torch.randn(4, 3, 224, 224, device=cuda)
    with torch.inference_mode():
        expected, got = out.float_module(x), out(x)
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)


# -------------------------------------------------------------------------------------------- distill


def article_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, t: float, a: float
) -> torch.Tensor:
    """The article's formula written out: KL(softmax(t/T) || softmax(s/T)) * T^2 * alpha + CE * (1-alpha)."""
    p = F.softmax(teacher / t, dim=1)
    kl = (p * (p.log() - F.log_softmax(student / t, dim=1))).sum(dim=1).mean()
    return kl * t * t * a + F.cross_entropy(student, labels) * (1 - a)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 8), classes=st.integers(2, 12), seed=st.integers(0, 2**16),
    temperature=st.sampled_from([1.0, 2.0, 5.0]), alpha=st.floats(0.0, 1.0),
)
def test_distillation_loss_is_the_article_formula(
    batch: int, classes: int, seed: int, temperature: float, alpha: float
) -> None:
    gen = torch.Generator().manual_seed(seed)
    student, teacher = torch.randn(2, batch, classes, generator=gen, dtype=torch.float64) * 4
    labels = torch.randint(0, classes, (batch,), generator=gen)
    config = train.DistillConfig(temperature=temperature, alpha=alpha)
    got = train.distillation_loss(student, teacher, labels, config)
    torch.testing.assert_close(got, article_loss(student, teacher, labels, temperature, alpha))


def test_distill_defaults_are_the_articles() -> None:
    assert (train.DistillConfig().temperature, train.DistillConfig().alpha) == (5.0, 0.7)
    assert distill.TECHNIQUE.trains


def test_distill_trains_on_train_split_only_with_and_without_teacher(fit_recorder: FitRecorder) -> None:
    data = sentinel_bundle()
    model = resnet18()
    out = distill.apply(ModelState.start(model), context(data))
    assert [call["dataset"] for call in fit_recorder.calls] == [data.train] * 3  # teacher, student, baseline
    teacher_fit, student_fit, baseline_fit = fit_recorder.calls
    assert isinstance(student_fit["teacher"], torchvision.models.ResNet)
    assert student_fit["teacher"].fc.in_features == 2048  # a ResNet50
    assert student_fit["distill"] == train.DistillConfig()
    assert baseline_fit.get("teacher") is None
    assert student_fit["config"] == baseline_fit["config"]
    assert out.module is out.float_module
    assert out.extra["distill_baseline"] is not out.module
    assert out.extra["distill_teacher"] is student_fit["teacher"]
    names = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    assert out.coverage_layers["distill"] == names


def test_distill_must_come_first(fit_recorder: FitRecorder) -> None:
    state = ModelState.start(tiny_convnet())
    with pytest.raises(TechniqueError, match="must come first"):
        distill.TECHNIQUE.transform(state.evolve(runner=state.module), context(sentinel_bundle()))
    assert not fit_recorder.calls


@pytest.mark.slow
def test_distill_real_training_smoke(monkeypatch: pytest.MonkeyPatch) -> None:
    quick = train.TrainConfig(epochs=1, lr=0.05, batch_size=16)
    monkeypatch.setitem(models.DEFAULT_RECIPES, "resnet50", quick)
    data = sentinel_bundle(n_train=32)
    out = distill.apply(ModelState.start(resnet18()), context(data, **{"distill.epochs": 1}))
    for module in (out.module, out.extra["distill_baseline"], out.extra["distill_teacher"]):
        assert torch.isfinite(module(torch.randn(2, 3, 32, 32))).all()
    fingerprints: Callable[[nn.Module], str] = models.weights_fingerprint
    assert fingerprints(out.module) != fingerprints(out.extra["distill_baseline"])


def test_training_progress_off_a_terminal_is_one_line_per_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    """A CI log gets one line per epoch, not a bar redrawn with '\\r' on every step."""
    images, labels = torch.randn(24, 3, 8, 8), torch.arange(24) % 10
    dataset = torch.utils.data.TensorDataset(images, labels)
    net = tiny_classifier()
    losses = train.fit(net, dataset, train.TrainConfig(epochs=3, lr=0.01, batch_size=8), device=torch.device("cpu"),
                       desc="training tiny", progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines() == [f"training tiny: epoch {i + 1}/3, loss {loss:.3f}" for i, loss in enumerate(losses)]


def _eval_result(wrong: range, n: int = 200) -> EvalResult:
    correct = np.array([i not in wrong for i in range(n)])
    return EvalResult(top1=float(correct.mean()), top5=1.0, correct=correct)


@pytest.mark.parametrize(
    ("teacher_wrong", "meaningful"), [(range(0, 11), False), (range(0, 0), True)]
)
def test_distill_judge_counts_a_gain_only_when_the_teacher_is_measurably_better(
    teacher_wrong: range, meaningful: bool
) -> None:
    """distill.judge: the student against the same fine-tune without the teacher, the teacher against that one."""
    teacher, baseline = nn.Linear(2, 2), nn.Linear(3, 3)
    results = {id(teacher): _eval_result(teacher_wrong), id(baseline): _eval_result(range(0, 12))}
    state = ModelState.start(nn.Linear(1, 1)).evolve(extra={"distill_teacher": teacher, "distill_baseline": baseline})
    extra, notes = distill.judge(state, _eval_result(range(0, 5)), lambda module: results[id(module)])
    assert extra["distill_meaningful"] is meaningful
    assert extra["distill_gain_vs_baseline"] == pytest.approx(7 / 200)
    assert extra["distill_baseline_top1"] == pytest.approx(188 / 200)
    assert ("NOT MEANINGFUL" in notes[0]) is not meaningful
    assert "distill_teacher" not in state.extra  # the teacher is let go once judged


def test_build_variant_runs_each_techniques_judge(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline knows no technique by name: a judge's extra fields and notes reach the built variant."""
    from harness import pipeline, techniques
    from harness.data import load_data
    from harness.models import LoadedModel
    from harness.techniques import ApplyContext

    seen: list[float] = []

    def judge(state: ModelState, result: EvalResult, evaluate: Any) -> tuple[dict[str, Any], list[str]]:
        seen.append(evaluate(state.module).top1)
        return {"judged": result.top1}, ["judged by the test"]

    fp32 = techniques.get("fp32")
    monkeypatch.setattr(techniques, "parse_variant", lambda v: (replace(fp32, judge=judge),))
    data, cpu = load_data("digits", eval_count=50), torch.device("cpu")
    session = pipeline.Session(data=data, device=cpu, model=LoadedModel(tiny_classifier(), "tiny", "the test's"),
                               ctx=ApplyContext(device=cpu, data=data, arch="tiny", progress=False))
    built = pipeline.build_variant(session, "fp32")
    assert built.extra["judged"] == built.eval.top1 == seen[0]
    assert "judged by the test" in built.notes


@pytest.mark.parametrize(("round_to", "multiple"), [(8, 8), (1, 1), (16, 16)])
def test_structured_round_to_keeps_a_multiple_of_that_many_channels(
    fit_recorder: FitRecorder, round_to: int, multiple: int
) -> None:
    options = {"prune_structured.epochs": 0, "prune_structured.round_to": round_to}
    out = prune_structured.apply(ModelState.start(small_convnet()), context(sentinel_bundle(), **options))
    kept = out.module[0].out_channels
    assert kept < 32 and kept % multiple == 0
    if round_to == 1:
        assert kept == round(32 * (1 - prune_structured.DEFAULT_RATIO))  # exactly the ratio, not rounded up to 24


def test_structured_round_to_is_declared_and_range_checked() -> None:
    from harness.techniques import parse_options

    assert parse_options(["prune_structured.round_to=4"]) == {"prune_structured.round_to": 4}
    with pytest.raises(TechniqueError, match="round_to must be a whole number in \\[1, 64\\]"):
        parse_options(["prune_structured.round_to=0"])
