"""cuda_graphs: capture the model's kernels once per input shape and replay them (CUDA)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from harness.techniques.base import ApplyContext, ModelState, Technique, conv_and_linear_names

if TYPE_CHECKING:
    import torch


class GraphReplay:
    """Replays one captured CUDA graph per input shape; the input is copied into the graph's static buffer.

    Capture follows PyTorch's recipe: warm-up iterations on a side stream (so lazy cuDNN/cuBLAS setup does
    not land in the graph), then capture on that stream. The output is cloned so that a caller holding it
    is not overwritten by the next replay.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], warmup: int = 3) -> None:
        self.fn = fn
        self.warmup = warmup
        self.graphs: dict[
            tuple[tuple[int, ...], torch.dtype], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]
        ] = {}

    def capture(self, x: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        """Return (graph, static input, static output) captured for x's shape and dtype."""
        import torch

        static_in = x.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.fn(static_in)
        return graph, static_in, static_out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype)
        if key not in self.graphs:
            self.graphs[key] = self.capture(x)
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()


def apply(state: ModelState, ctx: ApplyContext) -> ModelState:
    """Return the state with its runner replayed from CUDA graphs."""
    inner = state.runner or state.module
    layers = {"cuda_graphs": conv_and_linear_names(state.float_module)}
    return state.evolve(runner=GraphReplay(inner), covered=layers)


TECHNIQUE = Technique(
    name="cuda_graphs",
    summary="CUDA graph capture and replay of the eager kernels",
    apply=apply,
    unsupported={"cpu": "CUDA graphs replay GPU kernel launches; there is nothing to capture on CPU (--device cuda)"},
)
