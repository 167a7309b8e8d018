"""Latency, throughput, peak memory, model size and MAC counts, measured the same way on CPU and CUDA."""

from __future__ import annotations

import copy
import io
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from harness import cpu_memory
from harness.errors import HarnessError

TIMING_SHAPE: tuple[int, int, int] = (3, 224, 224)
"""Latency is always measured on the ImageNet input shape, whatever the size of the eval images."""

_COMPRESSION_LEVEL = 6


# --------------------------------------------------------------------------------------------- latency


@dataclass(frozen=True)
class LatencyStats:
    """Summary of timed rounds of one callable; every time is in milliseconds per call (one batch)."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    stdev_ms: float
    iqr_ms: float
    min_ms: float
    rounds: int
    warmup_rounds: int
    batch_size: int
    samples_ms: tuple[float, ...]

    @classmethod
    def from_samples(
        cls, samples_ms: Sequence[float], *, warmup_rounds: int, batch_size: int
    ) -> LatencyStats:
        """Return the stats of `samples_ms` (kept in their order, so interleaved rounds stay aligned)."""
        if len(samples_ms) == 0:
            raise HarnessError("no timing samples to summarize; time at least one round (min_rounds >= 1)")
        arr = np.asarray(samples_ms, dtype=np.float64)
        q25, q50, q75, q90 = np.percentile(arr, [25, 50, 75, 90])
        return cls(
            median_ms=float(q50),
            p90_ms=float(q90),
            mean_ms=float(arr.mean()),
            stdev_ms=float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            iqr_ms=float(q75 - q25),
            min_ms=float(arr.min()),
            rounds=int(arr.size),
            warmup_rounds=warmup_rounds,
            batch_size=batch_size,
            samples_ms=tuple(float(s) for s in arr),
        )

    @property
    def throughput_ips(self) -> float:
        """Return images per second at the median latency (inf if the median is 0 ms)."""
        if self.median_ms <= 0:
            return float("inf")
        return self.batch_size / (self.median_ms / 1000.0)

    def to_dict(self) -> dict[str, float]:
        """Return the summary for a results file (the raw samples are left out)."""
        return {
            "median": self.median_ms,
            "p90": self.p90_ms,
            "mean": self.mean_ms,
            "stdev": self.stdev_ms,
            "iqr": self.iqr_ms,
            "min": self.min_ms,
            "rounds": self.rounds,
            "warmup_rounds": self.warmup_rounds,
        }


def _as_device(device: torch.device | str) -> torch.device:
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise HarnessError(f"unsupported device {str(dev)!r} for measuring; use 'cpu' or 'cuda[:N]'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HarnessError(f"device {str(dev)!r} asked for but CUDA is not available here; use 'cpu'")
    return dev


def timing_input(
    batch_size: int, device: torch.device | str, *, seed: int = 0, size: int | None = None
) -> torch.Tensor:
    """Return a float32 standard-normal batch of shape (batch_size, 3, 224, 224) on `device` (`size` x `size` images
    instead when given: `ab`'s yardstick at a cost matched to the model)."""
    if batch_size < 1:
        raise HarnessError(f"batch_size must be >= 1, got {batch_size}")
    shape = TIMING_SHAPE if size is None else (TIMING_SHAPE[0], size, size)
    gen = torch.Generator().manual_seed(seed)
    # Drawn on the CPU so the values do not depend on the device's RNG.
    return torch.randn((batch_size, *shape), generator=gen, dtype=torch.float32).to(device)


class Timer:
    """Times one call at a time: CUDA events around the call on CUDA, time.perf_counter on CPU."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = _as_device(device)
        self._events: tuple[Any, Any] | None = None
        if self.device.type == "cuda":
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))

    def time_ms(self, fn: Callable[[], object]) -> float:
        """Return the milliseconds one call of `fn` took, including all device work it queued."""
        if self._events is None:
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1000.0
        begin, end = self._events
        with torch.cuda.device(self.device):
            # Earlier queued work must not leak into this round.
            torch.cuda.synchronize()
            begin.record()
            fn()
            end.record()
            end.synchronize()
            return float(begin.elapsed_time(end))

    def synchronize(self) -> None:
        """Wait for all queued device work (a no-op on CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _check_rounds(warmup: int, min_rounds: int, max_rounds: int, budget_s: float, batch_size: int) -> None:
    if batch_size < 1:
        raise HarnessError(f"batch_size must be >= 1, got {batch_size}")
    if warmup < 0:
        raise HarnessError(f"warmup must be >= 0, got {warmup}")
    if min_rounds < 1 or max_rounds < min_rounds:
        raise HarnessError(
            f"need 1 <= min_rounds <= max_rounds, got min_rounds={min_rounds}, max_rounds={max_rounds}"
        )
    if not budget_s >= 0:
        raise HarnessError(f"budget_s must be >= 0 seconds, got {budget_s}")


def round_order(names: Sequence[str], round_index: int) -> list[str]:
    """Return the call order for one interleaved round: `names` rotated by the round index."""
    if not names:
        return []
    shift = round_index % len(names)
    return [*names[shift:], *names[:shift]]


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    device: torch.device | str,
    batch_size: int,
    warmup: int = 2,
    min_rounds: int = 5,
    max_rounds: int = 200,
    budget_s: float = 10.0,
) -> dict[str, LatencyStats]:
    """Return latency stats per name, timing the callables round-robin (A B, B A, A B, ...) in one process.

    Each round calls every function once; the order rotates every round so no function always runs first
    (right after another's caches or clocks). Machine drift therefore hits all alike, and sample i of every
    function comes from round i, so paired ratios (timing_stats.paired_ratio) can be taken round by round.
    """
    if not fns:
        raise HarnessError("time_interleaved needs at least one function to time; got an empty mapping")
    _check_rounds(warmup, min_rounds, max_rounds, budget_s, batch_size)
    names = list(fns)
    timer = Timer(device)
    samples: dict[str, list[float]] = {name: [] for name in names}
    rounds = 0
    with torch.inference_mode():
        for w in range(warmup):
            for name in round_order(names, w):
                fns[name]()
        timer.synchronize()
        start = time.perf_counter()
        while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - start < budget_s):
            for name in round_order(names, rounds):
                samples[name].append(timer.time_ms(fns[name]))
            rounds += 1
    return {
        name: LatencyStats.from_samples(samples[name], warmup_rounds=warmup, batch_size=batch_size)
        for name in names
    }


# ---------------------------------------------------------------------------------------------- memory


def activation_peak_bytes(fn: Callable[[], object], device: torch.device | str) -> int | None:
    """Return the memory, in bytes, that one call of `fn` (under inference_mode) held at its peak beyond what was
    allocated before it: activations, workspaces and the output. None where it cannot be measured.

    CUDA: torch's allocator peak (max_memory_allocated after reset_peak_memory_stats) minus the memory allocated
    before the call; exact for tensors, blind to cuDNN/cuBLAS workspaces outside the allocator.
    CPU: the same, from the byte-counting CPU allocator of harness.cpu_memory (every CPU tensor, inductor buffer
    and oneDNN scratch, to the byte, whatever the process did before). None where that allocator could not be
    built: the gate then reports peak memory as not measured and never judges it.
    """
    dev = _as_device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        baseline = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        with torch.inference_mode():
            fn()
        torch.cuda.synchronize(dev)
        return int(torch.cuda.max_memory_allocated(dev)) - int(baseline)
    counter = cpu_memory.tracker()
    if counter is None:
        return None
    before = counter.reset_peak()
    with torch.inference_mode():
        out = fn()
    peak = counter.peak()
    del out
    return peak - before


def yardstick(device: torch.device | str) -> nn.Module:
    """Return the yardstick: torchvision's ResNet18 (1000 classes) with weights from a fixed seed, eager float32.

    It never changes with the model under test, so the model's latency divided by the yardstick's, timed in the
    same rounds, moves only when the model does, not when the machine has a slow minute.
    """
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = torchvision.models.resnet18(weights=None)
    return module.eval().to(_as_device(device))


# ------------------------------------------------------------------------------------------------ size


@dataclass(frozen=True)
class SizeStats:
    """Serialized size and weight counts of a model."""

    size_bytes: int
    compressed_size_bytes: int
    params: int
    nonzero_params: int
    tensor_bytes: int = 0
    """Bytes of the distinct tensors the model holds (what it keeps resident to run), without pickling."""

    @property
    def sparsity(self) -> float:
        """Return the fraction of weight elements that are zero (0.0 for a model without weights)."""
        return 1.0 - self.nonzero_params / self.params if self.params else 0.0


# Leaf names of state-dict entries that are bookkeeping rather than weights.
_BOOKKEEPING_LEAVES = frozenset(
    {
        "running_mean",
        "running_var",
        "num_batches_tracked",
        "scale",
        "zero_point",
        "min_val",
        "max_val",
        "eps",
        "histogram",
        "fake_quant_enabled",
        "observer_enabled",
        "dtype",
    }
)
_BOOKKEEPING_PATTERN = re.compile(r"(^|_)(scale|scales|zero_point|zero_points)(_\d+)?$")


def _is_bookkeeping(key: str) -> bool:
    parts = key.split(".")
    leaf = parts[-1]
    if leaf in _BOOKKEEPING_LEAVES or leaf.endswith("_mask") or _BOOKKEEPING_PATTERN.search(leaf):
        return True
    return any(part.startswith("activation_post_process") for part in parts)


def unwrap_module(module: nn.Module) -> nn.Module:
    """Return the plain module behind a torch.compile'd OptimizedModule (or `module` itself)."""
    seen = 0
    while hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module) and seen < 8:
        module = module._orig_mod
        seen += 1
    return module


def _flatten_entry(key: str, value: object) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield the tensors inside a state-dict value (packed params are tuples or script objects)."""
    if isinstance(value, torch.Tensor):
        yield key, value
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            yield from _flatten_entry(f"{key}.{i}", item)
    elif isinstance(value, dict):
        for k, item in value.items():
            yield from _flatten_entry(f"{key}.{k}", item)
    elif isinstance(value, torch.ScriptObject):
        try:
            state = value.__getstate__()
        except Exception:  # an opaque packed object: nothing we can count
            return
        yield from _flatten_entry(key, state)


def _resolve_attr(root: nn.Module, target: str) -> object:
    obj: object = root
    for part in target.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _model_entries(module: nn.Module) -> dict[str, object]:
    """Return the state dict plus tensors the module uses that the state dict leaves out.

    Those are non-persistent buffers and, in fx/exported graph modules, tensors fetched by get_attr nodes
    that are plain attributes (constant-folded `_frozen_param*` weights).
    """
    entries: dict[str, object] = dict(module.state_dict())
    for name, buf in module.named_buffers():
        entries.setdefault(name, buf.detach())
    if isinstance(module, torch.fx.GraphModule):
        for node in module.graph.nodes:
            if node.op == "get_attr" and str(node.target) not in entries:
                attr = _resolve_attr(module, str(node.target))
                if isinstance(attr, (torch.Tensor, torch.ScriptObject)):
                    entries[str(node.target)] = attr.detach() if isinstance(attr, torch.Tensor) else attr
    return entries


def _storage_key(t: torch.Tensor) -> tuple[object, ...]:
    try:
        return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
    except Exception:  # tensor subclasses and quantized tensors may not expose their storage
        return ("id", id(t))


def _count_nonzero(t: torch.Tensor) -> int:
    try:
        dense = t
        if dense.is_quantized:
            # Dequantize: a quantized zero is stored as zero_point, not as 0.
            dense = dense.dequantize()
        if dense.layout != torch.strided:
            dense = dense.to_dense()
        return int(torch.count_nonzero(dense.detach()))
    except Exception:  # unusual tensor types: count every element rather than crash
        return int(t.numel())


def _weight_counts(entries: Mapping[str, object]) -> tuple[int, int]:
    """Return (elements, nonzero elements) over the weight tensors among `entries`."""
    tensors: dict[str, torch.Tensor] = {}
    for key, value in entries.items():
        for name, tensor in _flatten_entry(key, value):
            tensors[name] = tensor
    params = nonzero = 0
    seen: set[tuple[object, ...]] = set()
    for name, tensor in tensors.items():
        if _is_bookkeeping(name) or tensor.dtype == torch.bool:
            continue
        storage = _storage_key(tensor)
        if storage in seen:  # tied weights count once, as in sum(p.numel() for p in parameters())
            continue
        seen.add(storage)
        params += int(tensor.numel())
        if name.endswith("_orig") and isinstance(tensors.get(name[: -len("_orig")] + "_mask"), torch.Tensor):
            # torch.nn.utils.prune keeps the dense weight and a mask; the model uses their product.
            nonzero += _count_nonzero(tensor * tensors[name[: -len("_orig")] + "_mask"])
        else:
            nonzero += _count_nonzero(tensor)
    return params, nonzero


def _raw_size(entries: Mapping[str, object]) -> int:
    """Return the bytes of the distinct tensors among `entries` (shared storages count once)."""
    total = 0
    seen: set[tuple[object, ...]] = set()
    for key, value in entries.items():
        for _, tensor in _flatten_entry(key, value):
            storage = _storage_key(tensor)
            if storage in seen:
                continue
            seen.add(storage)
            try:
                total += int(tensor.numel()) * int(tensor.element_size())
            except Exception:
                total += int(tensor.numel()) * 4
    return total


def size_stats(module: nn.Module) -> SizeStats:
    """Return the saved size and weight counts of `module` (a torch.compile'd module is unwrapped).

    size_bytes is torch.save of the state dict (plus any non-persistent buffers and graph-module constants)
    into memory; compressed_size_bytes is that blob through zlib level 6, so zeroed weights show up.
    params counts the elements of every tensor in the state dict (packed-params tuples unpacked, graph
    constants included) except bookkeeping: BatchNorm running stats and counters, quantization scales and
    zero points, observer/fake-quant state and boolean masks. For a plain float model this equals
    sum(p.numel() for p in model.parameters()) (11,689,512 for a 1000-class ResNet18); for a quantized model
    it counts the int8 weight elements. nonzero_params counts non-zero values (quantized tensors dequantized
    first, sparse ones densified, pruning's weight_orig * weight_mask); a tensor type that cannot be
    inspected is counted as all non-zero instead of failing.
    """
    inner = unwrap_module(module)
    entries = _model_entries(inner)
    params, nonzero = _weight_counts(entries)
    raw = _raw_size(entries)
    try:
        buffer = io.BytesIO()
        torch.save(entries, buffer)
        blob = buffer.getvalue()
        size = len(blob)
        compressed = len(zlib.compress(blob, _COMPRESSION_LEVEL))
    except Exception:  # an unpicklable tensor type: report raw tensor bytes rather than fail
        size = compressed = raw
    return SizeStats(
        size_bytes=size, compressed_size_bytes=compressed, params=params, nonzero_params=nonzero, tensor_bytes=raw
    )


# ------------------------------------------------------------------------------------------------ MACs


_MATMUL_LIKE = re.compile(r"conv|linear|mm|matmul|gemm|einsum|bmm")


def _cpu_float_copy(module: nn.Module) -> nn.Module:
    inner = unwrap_module(module)
    try:
        clone = copy.deepcopy(inner)
        return clone.to(device="cpu").float().eval()
    except Exception as exc:
        raise HarnessError(
            f"cannot copy {type(inner).__name__} to float32 on the CPU to count its MACs ({exc}); "
            "count MACs on the float model before applying the technique"
        ) from exc


def _example_input(input_shape: tuple[int, ...]) -> torch.Tensor:
    if len(input_shape) < 2 or any(int(d) < 1 for d in input_shape):
        raise HarnessError(f"input_shape must be positive sizes like (1, 3, 224, 224), got {input_shape}")
    gen = torch.Generator().manual_seed(0)
    return torch.randn(tuple(int(d) for d in input_shape), generator=gen)


def _uncounted_ops(ops: Iterable[Any], registry: Mapping[Any, Any]) -> list[str]:
    """Return the conv/matmul-like ops that FlopCounterMode has no formula for and that do not decompose."""
    bad = set()
    for op in ops:
        name = str(op.name()) if hasattr(op, "name") else str(op)
        if getattr(op, "overloadpacket", None) in registry or not _MATMUL_LIKE.search(name.split("::")[-1]):
            continue
        try:
            decomposes = torch._C._dispatch_has_kernel_for_dispatch_key(name, "CompositeImplicitAutograd")
        except Exception:
            decomposes = False
        if not decomposes:
            bad.add(name)
    return sorted(bad)


def count_macs(module: nn.Module, input_shape: tuple[int, ...] = (1, *TIMING_SHAPE)) -> int:
    """Return the multiply-accumulates of one forward pass at `input_shape` (FlopCounterMode flops // 2).

    The count runs on a float32 CPU deep copy under inference_mode, so it describes the architecture, not
    the technique's arithmetic: it only counts what FlopCounterMode knows (convolutions, matmuls,
    attention). A module whose convs or matmuls run as ops without a flop formula (quantized::linear,
    onednn::qconv2d, aten._int_mm, ...) raises a HarnessError instead of returning an undercount.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    class _OpRecorder(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: set[Any] = set()

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            self.ops.add(func)
            return func(*args, **(kwargs or {}))

    clone = _cpu_float_copy(module)
    x = _example_input(input_shape)
    counter = FlopCounterMode(display=False)
    recorder = _OpRecorder()
    try:
        with torch.inference_mode(), counter, recorder:
            clone(x)
    except Exception as exc:
        raise HarnessError(
            f"cannot run {type(clone).__name__} on a float32 CPU input of shape {tuple(input_shape)} to "
            f"count its MACs ({type(exc).__name__}: {exc}); count MACs on the float model, "
            "or pass the input_shape it takes"
        ) from exc
    uncounted = _uncounted_ops(recorder.ops, counter.flop_registry)
    if uncounted:
        raise HarnessError(
            f"cannot count the MACs of {type(clone).__name__}: it runs {', '.join(uncounted)}, which the "
            "flop counter does not know (a quantized or packed graph); count MACs on the float model "
            "before the technique is applied"
        )
    return int(counter.get_total_flops()) // 2


_MAC_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def layer_macs(
    module: nn.Module, input_shape: tuple[int, ...] = (1, *TIMING_SHAPE)
) -> dict[str, tuple[int, int]]:
    """Return {layer name: (MACs, params)} for every Conv1d/2d/3d and Linear layer at `input_shape`.

    MACs come from the shapes seen by forward hooks on a float32 CPU copy (conv: output elements x
    in_channels/groups x kernel elements; linear: output elements x in_features), summed over calls; a layer
    the forward never calls has 0 MACs. Params are the layer's own weight and bias elements. Names are as in
    named_modules() of the (unwrapped) module.
    """
    clone = _cpu_float_copy(module)
    macs: dict[str, int] = {}
    params: dict[str, int] = {}
    handles = []

    def hook_for(name: str, layer: nn.Module) -> Callable[[nn.Module, Any, Any], None]:
        def hook(mod: nn.Module, inputs: Any, output: Any) -> None:
            out_numel = int(output.numel())
            if isinstance(mod, nn.Linear):
                macs[name] += out_numel * int(mod.in_features)
            else:
                conv: Any = mod
                kernel = int(np.prod(conv.kernel_size))
                macs[name] += out_numel * (int(conv.in_channels) // int(conv.groups)) * kernel

        return hook

    for name, layer in clone.named_modules():
        if isinstance(layer, _MAC_LAYERS):
            macs[name] = 0
            params[name] = sum(int(p.numel()) for p in layer.parameters(recurse=False))
            handles.append(layer.register_forward_hook(hook_for(name, layer)))
    x = _example_input(input_shape)
    try:
        with torch.inference_mode():
            clone(x)
    except Exception as exc:
        raise HarnessError(
            f"cannot run {type(clone).__name__} on an input of shape {tuple(input_shape)} to count layer "
            f"MACs ({type(exc).__name__}: {exc}); pass the input_shape the model takes"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
    return {name: (macs[name], params[name]) for name in macs}


@dataclass(frozen=True)
class Coverage:
    """The share of a model's Conv/Linear MACs and params that a technique touched."""

    macs_fraction: float
    params_fraction: float

    def to_dict(self) -> dict[str, float]:
        """Return {"macs_fraction": ..., "params_fraction": ...}."""
        return {"macs_fraction": self.macs_fraction, "params_fraction": self.params_fraction}


def coverage_of(
    layer_names: Iterable[str], module: nn.Module, input_shape: tuple[int, ...] = (1, *TIMING_SHAPE)
) -> Coverage:
    """Return the fraction of `module`'s Conv/Linear MACs and params that belong to `layer_names`.

    Each name counts once however often it is listed; a name that is not a Conv/Linear layer raises.
    """
    table = layer_macs(module, input_shape)
    wanted = set(layer_names)
    unknown = sorted(wanted - table.keys())
    if unknown:
        model = type(unwrap_module(module)).__name__
        if not table:
            raise HarnessError(f"unknown layer name(s) {unknown[:5]}: {model} has no Conv/Linear layers")
        more = f" (and {len(table) - 5} more)" if len(table) > 5 else ""
        raise HarnessError(
            f"unknown layer name(s) {unknown[:5]}: not Conv/Linear layers of {model}; "
            f"valid names look like {list(table)[:5]}{more}"
        )
    total_macs = sum(m for m, _ in table.values())
    total_params = sum(p for _, p in table.values())
    chosen_macs = sum(table[name][0] for name in wanted)
    chosen_params = sum(table[name][1] for name in wanted)
    return Coverage(
        macs_fraction=chosen_macs / total_macs if total_macs else 0.0,
        params_fraction=chosen_params / total_params if total_params else 0.0,
    )
