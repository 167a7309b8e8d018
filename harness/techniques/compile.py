"""compile: torch.compile with inductor (max-autotune on CUDA; freezing on CPU), compile time kept apart."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from harness.paths import inductor_cache_dir
from harness.techniques.base import ApplyContext, ModelState, Technique, conv_and_linear_names

if TYPE_CHECKING:
    import torch



def compiled_runner(
    module: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor], device: torch.device, mode: str | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return `module` compiled by inductor, one static graph per input shape, with freezing on CPU.

    Freezing (constant-folding the weights into the graph) is what makes inductor pay off on CPU; it is
    a global inductor setting, so it is patched in around each call rather than left on for everyone.
    """
    import torch

    inductor_cache_dir()
    compiled = torch.compile(module, mode=mode, dynamic=False)
    if device.type == "cuda":
        return compiled
    import torch._inductor.config as inductor_config

    def run(x: torch.Tensor) -> torch.Tensor:
        with inductor_config.patch(freezing=True):
            return compiled(x)

    return run


def first_call_seconds(runner: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> float:
    """Return the seconds the first call at batch 1 takes: the compile time, recorded apart from latency."""
    import torch

    from harness.measure import timing_input

    x = timing_input(1, device)
    start = time.perf_counter()
    with torch.inference_mode():
        runner(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def apply(state: ModelState, ctx: ApplyContext) -> ModelState:
    """Return the state with a compiled runner; its first (compiling) call is timed as compile_seconds."""
    mode = "max-autotune" if ctx.device.type == "cuda" else None
    runner = compiled_runner(state.runner or state.module, ctx.device, mode)
    compiled = state.evolve(runner=runner)
    seconds = first_call_seconds(compiled, ctx.device)
    layers = {"compile": conv_and_linear_names(state.float_module)}
    return compiled.evolve(compile_seconds=state.compile_seconds + seconds, covered=layers)


TECHNIQUE = Technique(
    name="compile",
    summary="torch.compile (inductor; max-autotune on CUDA, freezing on CPU)",
    apply=apply,
)
