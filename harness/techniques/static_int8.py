"""static_int8: post-training static int8 (PT2E, torchao's X86InductorQuantizer), compiled with inductor."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import TechniqueError
from harness.techniques._calibrate import CALIBRATION_OPTION, calibrate, example_batch
from harness.techniques.base import STATIC_INT8_HARDWARE, ApplyContext, ModelState, conv_and_linear_names, int8_on_cpu
from harness.techniques.compile import compiled_runner, first_call_seconds

if TYPE_CHECKING:
    import torch
    from torch import fx, nn


_QUANTIZED_OPS = {"aten.conv2d.default", "aten.linear.default"}
_DEQUANTIZE = "quantized_decomposed.dequantize_per_channel"


PT2E_MODULES = ("quantization/pt2e/quantize_pt2e.py", "quantization/pt2e/quantizer/x86_inductor_quantizer.py")
"""torchao's PT2E x86 files, looked for without importing torchao (that takes seconds: `list` must not)."""


def requirement() -> str | None:
    """Return why PT2E x86 quantization cannot run here, or None: torchao installed with its PT2E x86 quantizer.

    An installed torchao that fails to import is found when the technique runs (apply says so)."""
    spec = importlib.util.find_spec("torchao")
    if spec is None or not spec.submodule_search_locations:
        return "torchao is not installed: pip install torchao"
    folder = Path(next(iter(spec.submodule_search_locations)))
    missing = [name for name in PT2E_MODULES if not (folder / name).is_file()]
    if missing:
        return f"this torchao has no PT2E x86 quantizer ({', '.join(missing)} missing): pip install -U torchao"
    return None


def export(module: nn.Module, example: torch.Tensor) -> nn.Module:
    """Return `module` exported (strict) with a dynamic batch and image size, as a GraphModule.

    Eval images (32x32 digits) shrink to 1x1 before the pooling while timing inputs (224x224) do not; export
    would specialize on that size 1, so size-oblivious reasoning (export's experimental option) is on.
    """
    import torch
    import torch.fx.experimental._config as fx_config
    from torch.export import Dim

    from harness.measure import TIMING_SHAPE

    height, width = example.shape[-2:]
    spatial = {"min": min(16, height, width), "max": max(1024, height, width)}
    shapes = ({0: Dim("batch", min=1, max=4096), 2: Dim("height", **spatial), 3: Dim("width", **spatial)},)
    try:
        with fx_config.patch(backed_size_oblivious=True):  # type: ignore[attr-defined]
            program = torch.export.export(module, (example,), dynamic_shapes=shapes, strict=True)
    except Exception as exc:  # export raises many types; each means "this model cannot be traced"
        raise TechniqueError(
            f"static_int8 could not export {type(module).__name__} with a dynamic batch and image size "
            f"({type(exc).__name__}: {str(exc)[:300]}); try static_int8_fx, or a model torch.export can trace"
        ) from exc
    exported = program.module()
    with torch.inference_mode():  # size-oblivious export is experimental: check it at both sizes in use
        for x in (example[:1], torch.randn(1, example.shape[1], *TIMING_SHAPE[1:], device=example.device)):
            if not torch.allclose(exported(x), module(x), rtol=1e-4, atol=1e-4):
                raise TechniqueError(
                    f"static_int8: the exported {type(module).__name__} differs from the eager one at input "
                    f"{tuple(x.shape)}; use static_int8_fx for this model"
                )
    return exported


def drop_unused_attributes(graph_module: fx.GraphModule) -> None:
    """Delete the parameters and buffers no node reads: convert_pt2e leaves the float weights behind."""
    used = {str(node.target) for node in graph_module.graph.nodes if node.op == "get_attr"}
    for name, _ in [*graph_module.named_parameters(), *graph_module.named_buffers()]:
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            delattr(graph_module.get_submodule(owner), leaf)
    graph_module.delete_all_unused_submodules()


def quantized_layers(graph_module: fx.GraphModule) -> frozenset[str]:
    """Return the names of the Conv2d/Linear layers whose op reads an int8 (dequantized) weight."""
    from torch import fx

    names = set()
    for node in graph_module.graph.nodes:
        weight = node.args[1] if node.op == "call_function" and len(node.args) > 1 else None
        if str(node.target) in _QUANTIZED_OPS and isinstance(weight, fx.Node):
            stack = list(node.meta.get("nn_module_stack", {}).values())
            if str(weight.target).startswith(_DEQUANTIZE) and stack:
                names.add(stack[-1][0])
    return frozenset(names)


def apply(state: ModelState, ctx: ApplyContext) -> ModelState:
    """Return the state with an int8 PT2E model calibrated on calibration images, and its compiled runner."""
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError as exc:
        raise TechniqueError(f"torchao's PT2E x86 quantizer does not import ({exc}): pip install -U torchao") from exc

    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(export(copy.deepcopy(state.module).eval(), example_batch(ctx)), quantizer)
    images = calibrate(prepared, ctx, "static_int8")
    converted = convert_pt2e(prepared)
    drop_unused_attributes(converted)
    layers = quantized_layers(converted) & conv_and_linear_names(state.float_module)
    quantized = state.evolve(module=converted, runner=compiled_runner(converted, ctx.device, None))
    seconds = first_call_seconds(quantized, ctx.device)
    return quantized.evolve(
        compile_seconds=state.compile_seconds + seconds,
        covered={"static_int8": layers},
        note=f"PT2E int8 calibrated on {images} calibration images",
    )


TECHNIQUE = int8_on_cpu(
    "static_int8", "static int8 of every conv and linear (PT2E, X86InductorQuantizer), compiled with inductor", apply,
    why_cpu_only="X86InductorQuantizer targets x86 CPUs; int8 on GPU would need a different backend",
    requirement=requirement, options=(CALIBRATION_OPTION,), hardware=STATIC_INT8_HARDWARE,
)
