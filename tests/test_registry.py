"""The technique registry and the precision/layout/compiler techniques, on a tiny model."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from harness import techniques
from harness.data import load_data
from harness.errors import TechniqueError
from harness.techniques import ApplyContext, ModelState

PACKAGE = Path(techniques.__file__).parent


def context(device: str = "cpu") -> ApplyContext:
    return ApplyContext(device=torch.device(device), data=load_data("digits"))


def test_every_registered_name_is_one_file_exposing_its_technique() -> None:
    files = {p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("_") and p.stem not in {"base"}}
    assert files == set(techniques.NAMES), "a technique file is missing from NAMES, or NAMES names no file"
    for name in techniques.NAMES:
        technique = importlib.import_module(f"harness.techniques.{name}").TECHNIQUE
        assert technique.name == name
        assert technique.summary
        assert set(technique.devices) | set(technique.unsupported) == set(techniques.DEVICES)


@pytest.mark.parametrize("name", techniques.NAMES)
def test_unsupported_devices_say_what_would_make_it_run(name: str) -> None:
    technique = techniques.get(name)
    for device, reason in technique.unsupported.items():
        message = technique.skip_reason(device)
        assert message is not None and reason in message and device in message


def test_every_variant_and_preset_parses() -> None:
    for variant in techniques.variants():
        assert techniques.parse_variant(variant)
    for preset, variant in techniques.PRESETS.items():
        assert [t.name for t in techniques.parse_variant(preset)] == variant.split("+")


@pytest.mark.parametrize("bad", ["int4", "fp32+nope", "", "fp32++bf16"])
def test_unknown_or_empty_names_list_the_choices(bad: str) -> None:
    with pytest.raises(TechniqueError, match="fp32|joined by"):
        techniques.parse_variant(bad)


def test_variant_skip_reason_names_first_blocker() -> None:
    assert techniques.variant_skip_reason("bf16+compile", "cpu") is None
    reason = techniques.variant_skip_reason("prune_structured+fp16", "cpu")
    assert reason is not None and reason.startswith("fp16 does not run on cpu")


def test_fp32_is_the_untouched_model(tiny_model: nn.Module) -> None:
    state = techniques.get("fp32").apply(ModelState.start(tiny_model), context())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(state(x), tiny_model(x))
    assert state.coverage_layers == {}


def test_start_copies_the_model(tiny_model: nn.Module) -> None:
    state = ModelState.start(tiny_model)
    with torch.no_grad():
        state.module[0].weight.zero_()
    assert tiny_model[0].weight.abs().sum() > 0


def test_bf16_casts_weights_and_inputs_and_returns_float32(tiny_model: nn.Module) -> None:
    start = ModelState.start(tiny_model)
    state = techniques.get("bf16").apply(start, context())
    assert all(p.dtype == torch.bfloat16 for p in state.module.parameters())
    assert all(p.dtype == torch.float32 for p in start.module.parameters()), "the input state was mutated"
    x = torch.randn(3, 3, 32, 32)
    out = state(x)
    assert out.dtype == torch.float32 and out.shape == (3, 10)
    assert (out.argmax(1) == tiny_model(x).argmax(1)).float().mean() >= 0.66
    assert state.coverage_layers["bf16"] == {"0", "3", "7"}


def test_channels_last_changes_layout_not_values(tiny_model: nn.Module) -> None:
    state = techniques.get("channels_last").apply(ModelState.start(tiny_model), context())
    assert state.module[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(state(x), tiny_model(x), rtol=1e-4, atol=1e-5)


def test_combination_applies_in_order(tiny_model: nn.Module) -> None:
    state = ModelState.start(tiny_model)
    for technique in techniques.parse_variant("bf16+channels_last"):
        state = technique.apply(state, context())
    assert state.input_dtype == torch.bfloat16 and state.memory_format == torch.channels_last
    assert set(state.coverage_layers) == {"bf16", "channels_last"}


@pytest.mark.slow
def test_compile_matches_eager_and_records_compile_time(tiny_model: nn.Module) -> None:
    state = techniques.get("compile").apply(ModelState.start(tiny_model), context())
    assert state.runner is not None and state.compile_seconds > 0
    with torch.inference_mode():
        for shape in [(1, 3, 32, 32), (4, 3, 224, 224)]:
            x = torch.randn(shape)
            torch.testing.assert_close(state(x), tiny_model(x), rtol=1e-3, atol=1e-4)


def test_every_declared_option_parses_at_its_default_and_refuses_out_of_range() -> None:
    """Each option a technique declares round-trips through --option parsing, and its bounds are enforced."""
    declared = [(t, o) for t in techniques.all_techniques() for o in t.options]
    assert {f"{t.name}.{o.name}" for t, o in declared} >= {
        "prune_unstructured.amount", "prune_structured.ratio", "prune_structured.epochs", "distill.epochs",
        "static_int8.calibration_images", "static_int8_fx.calibration_images",
    }
    for technique, option in declared:
        key = f"{technique.name}.{option.name}"
        inside = option.default if option.default is not None else (option.minimum or 1)
        assert techniques.parse_options([f"{key}={inside}"]) == {key: inside}
        assert isinstance(techniques.parse_options([f"{key}={inside}"])[key], option.kind)
        for edge in (option.above, option.below):
            if edge is not None:
                with pytest.raises(TechniqueError, match=f"--option {key} must be"):
                    techniques.parse_options([f"{key}={edge}"])
        if option.minimum is not None:
            with pytest.raises(TechniqueError, match=f"--option {key} must be"):
                techniques.parse_options([f"{key}={option.minimum - 1}"])


@pytest.mark.parametrize(
    ("pairs", "variants", "message"),
    [
        (["ratio=3"], None, "technique.name=value"),
        (["prune_structured.ratio"], None, "technique.name=value"),
        (["nope.ratio=0.5"], None, "unknown technique 'nope'"),
        (["fp32.ratio=0.5"], None, "fp32 has no option 'ratio' \\(it takes no options\\)"),
        (["distill.epochs=2", "distill.epochs=3"], None, "given twice"),
        (["distill.epochs=2"], ["fp32", "dynamic_int8"], "no variant in this run uses distill"),
    ],
)
def test_bad_options_say_the_fix(pairs: list[str], variants: list[str] | None, message: str) -> None:
    with pytest.raises(TechniqueError, match=message):
        techniques.parse_options(pairs, variants)


def test_options_reach_the_technique_of_a_preset() -> None:
    parsed = techniques.parse_options(["static_int8.calibration_images=64"], ["fastest_cpu"])
    assert parsed == {"static_int8.calibration_images": 64}


@pytest.mark.parametrize("name", [t.name for t in techniques.all_techniques() if t.needs])
def test_a_technique_out_of_its_declared_order_is_refused_before_it_runs(name: str) -> None:
    technique = techniques.get(name)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    state = ModelState.start(model)
    compiled = state.evolve(runner=state.module)  # what compile/cuda_graphs leave: no technique that needs an
    calls: list[str] = []  # eager model, a float input or the float model itself may follow it
    spy = dataclasses.replace(technique, apply=lambda s, c: calls.append("ran") or s)
    with pytest.raises(TechniqueError, match=f"^{name} .*must come"):
        spy.transform(compiled, context())
    assert not calls


def test_the_registry_and_list_import_no_torch() -> None:
    code = "import sys, harness.__main__ as m; m.main(['list']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False"), "`python -m harness list` imported torch (it takes seconds to start)"
