"""static_int8_fx: post-training static int8 through the FX graph-mode path (torch.ao, deprecated)."""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import TechniqueError
from harness.techniques._calibrate import CALIBRATION_OPTION, calibrate, example_batch
from harness.techniques.base import (
    STATIC_INT8_HARDWARE,
    ApplyContext,
    ModelState,
    conv_and_linear_names,
    int8_on_cpu,
    torch_release,
)

if TYPE_CHECKING:
    from torch import nn


def requirement() -> str | None:
    """Return why the FX graph-mode quantization path cannot run here, or None: torch still ships
    torch/ao/quantization/quantize_fx.py (looked for without importing torch)."""
    spec = importlib.util.find_spec("torch")
    folder = Path(next(iter(spec.submodule_search_locations or ()), "")) if spec else None
    if folder is None or not (folder / "ao" / "quantization" / "quantize_fx.py").is_file():
        return (
            f"torch {importlib.metadata.version('torch')} has no FX graph-mode quantization "
            "(torch.ao.quantization.quantize_fx): use static_int8 (PT2E), or a torch that still ships it"
        )
    return None


def quantized_layers(module: nn.Module, float_names: frozenset[str]) -> frozenset[str]:
    """Return the float Conv2d/Linear names that are now modules holding a quantized weight.

    convert_fx keeps the layer names (a Conv2d+BatchNorm+ReLU becomes one quantized ConvReLU2d at the conv's
    name), and a quantized layer's `weight` is a method returning a qint8 tensor.
    """
    names = set()
    for name, layer in module.named_modules():
        weight = getattr(layer, "weight", None)
        if name in float_names and callable(weight) and weight().is_quantized:
            names.add(name)
    return frozenset(names)


def apply(state: ModelState, ctx: ApplyContext) -> ModelState:
    """Return the state with an FX int8 model (x86 qconfig) calibrated on calibration images."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and observer warnings, once per layer
        mapping = get_default_qconfig_mapping("x86")
        try:
            prepared = prepare_fx(copy.deepcopy(state.module).eval(), mapping, (example_batch(ctx),))
        except Exception as err:  # symbolic tracing raises many kinds; each means "this model cannot be traced"
            raise TechniqueError(
                f"static_int8_fx could not trace {type(state.module).__name__} with torch.fx "
                f"({type(err).__name__}: {str(err)[:200]}); it runs on a model without data-dependent control flow: "
                "try static_int8 (torch.export)"
            ) from err
        images = calibrate(prepared, ctx, "static_int8_fx")
        converted = convert_fx(prepared)
    layers = quantized_layers(converted, conv_and_linear_names(state.float_module))
    note = (
        f"FX int8 calibrated on {images} calibration images; torch.ao.quantization's FX graph mode "
        f"is deprecated in torch {torch_release()}"
    )
    return state.evolve(module=converted, covered={"static_int8_fx": layers}, note=note)


TECHNIQUE = int8_on_cpu(
    "static_int8_fx", "static int8 of every conv and linear (FX graph mode, x86 qconfig; deprecated torch.ao path)",
    apply, why_cpu_only="the x86/fbgemm quantized kernels run on CPU only", requirement=requirement,
    options=(CALIBRATION_OPTION,), hardware=STATIC_INT8_HARDWARE,
)
