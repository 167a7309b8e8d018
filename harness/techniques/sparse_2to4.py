"""sparse_2to4: 2:4 magnitude sparsity of the Linear layers, run by torch's semi-structured kernels (CUDA)."""

from __future__ import annotations

import copy
import math
from functools import cache
from typing import TYPE_CHECKING

from harness.errors import TechniqueError
from harness.techniques.base import ApplyContext, Hardware, ModelState, Technique

if TYPE_CHECKING:
    import torch
    from torch import nn

UNSUPPORTED_CPU = (
    "torch.sparse.to_sparse_semi_structured needs CUDA tensors on an Ampere-or-newer GPU "
    '("Only CUDA tensors are currently supported"); run with --device cuda'
)
CONV_REASON = "a Conv2d weight is 4-D; torch's 2:4 kernels run only 2-D matmuls (a conv needs im2col first)"


def mask_2to4(weight: torch.Tensor) -> torch.Tensor:
    """Return a bool mask keeping the 2 largest |w| of every 4 consecutive weights along the last dim."""
    import torch

    if weight.dim() == 0 or weight.shape[-1] % 4:
        shape = tuple(weight.shape)
        raise TechniqueError(f"2:4 sparsity needs a last dimension that is a multiple of 4, not {shape}")
    groups = weight.detach().abs().float().reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(2, dim=1).indices, True)
    return keep.reshape(weight.shape)


@cache
def semi_sparse_linear() -> type[nn.Module]:
    """Return the SemiSparseLinear module class (made on first use: it subclasses torch's nn.Module)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class SemiSparseLinear(nn.Module):
        """A Linear with a 2:4 semi-structured sparse weight; rows are zero-padded to the kernel's multiple."""

        def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
            super().__init__()
            from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

            cusparselt = torch.backends.cusparselt.is_available()
            backend = SparseSemiStructuredTensorCUSPARSELT if cusparselt else SparseSemiStructuredTensorCUTLASS
            multiple = backend._DTYPE_SHAPE_CONSTRAINTS[dtype].sparse_min_rows
            out_features, in_features = linear.weight.shape
            rows = math.ceil(out_features / multiple) * multiple
            weight = linear.weight.new_zeros(rows, in_features, dtype=dtype)
            weight[:out_features] = linear.weight.detach() * mask_2to4(linear.weight)
            bias = linear.weight.new_zeros(rows, dtype=dtype)
            if linear.bias is not None:
                bias[:out_features] = linear.bias.detach()
            self.weight = nn.Parameter(backend.from_dense(weight.contiguous()), requires_grad=False)
            self.bias = nn.Parameter(bias, requires_grad=False)
            self.out_features = out_features

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.linear(x.to(self.weight.dtype), self.weight, self.bias)
            return y[..., : self.out_features].to(x.dtype)

    return SemiSparseLinear


def sparsify(module: nn.Module, dtype: torch.dtype) -> tuple[list[str], dict[str, str]]:
    """Swap each Linear the kernels accept for a SemiSparseLinear in place; return (applied, skipped: why)."""
    import torch
    from torch import nn

    applied: list[str] = []
    skipped = {n: CONV_REASON for n, m in module.named_modules() if isinstance(m, nn.Conv2d)}
    for name, layer in list(module.named_modules()):
        if not isinstance(layer, nn.Linear):
            continue
        try:
            sparse = semi_sparse_linear()(layer, dtype)
            with torch.inference_mode():  # the kernels reject some shapes only when they run
                sparse(torch.zeros(8, layer.in_features, device=layer.weight.device, dtype=dtype))
        except (RuntimeError, AssertionError, TechniqueError, KeyError) as err:
            skipped[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            continue
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent), child, sparse)
        applied.append(name)
    return applied, skipped


def apply(state: ModelState, ctx: ApplyContext) -> ModelState:
    """Return the state whose qualifying Linear layers run 2:4 sparse (fp16, or bf16 for a bf16 model)."""
    import torch
    from torch import nn

    if ctx.device.type != "cuda":
        raise TechniqueError(f"sparse_2to4 does not run on {ctx.device.type}: {UNSUPPORTED_CPU}")
    dtype = torch.bfloat16 if state.input_dtype == torch.bfloat16 else torch.float16
    module = copy.deepcopy(state.module)
    applied, skipped = sparsify(module, dtype)
    float_module = copy.deepcopy(state.float_module)
    for name in applied:  # a dense twin with the same zeros, on which MACs and coverage are counted
        layer = float_module.get_submodule(name)
        if isinstance(layer, nn.Linear):
            layer.weight.data.mul_(mask_2to4(layer.weight))
    note = (
        f"sparse_2to4: 2:4 sparse {dtype} in {len(applied)} layer(s) ({', '.join(applied) or 'none'}); "
        f"{len(skipped)} left dense (torch has no 2:4 conv kernel): on a ResNet coverage and gain are tiny"
    )
    return state.evolve(
        module=module, float_module=float_module, note=note,
        covered={"sparse_2to4": frozenset(applied)},
        extra={**state.extra, "sparse_layers": {"applied": applied, "skipped": skipped}},
    )


def old_gpu(device: str) -> str | None:
    """Return why this machine's GPU cannot run the 2:4 sparse kernels (older than Ampere), or None."""
    import torch

    if device == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 0):
        return "2:4 semi-structured sparse kernels need an Ampere-or-newer GPU (compute capability 8.0+)"
    return None


TECHNIQUE = Technique(
    name="sparse_2to4",
    summary="2:4 semi-structured sparsity of the Linear layers (fp16/bf16, CUDA Ampere+; convs stay dense)",
    apply=apply,
    needs="eager",
    unsupported={"cpu": UNSUPPORTED_CPU},
    device_check=old_gpu,
    hardware=Hardware(what={"cuda": "2:4 sparse tensor cores"}, cuda_capability=(8, 0)),
)
