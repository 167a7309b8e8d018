"""What a technique is: the model state it transforms, the context it gets, and its declaration.

Nothing here, in the registry or in a technique's module imports torch when the module is imported (each
technique imports what it runs with inside its functions), so `python -m harness list` starts in a fraction of a
second instead of torch's several.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from harness.errors import TechniqueError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from harness.data import DataBundle
    from harness.evaluate import EvalResult

Evaluator = Callable[["nn.Module"], "EvalResult"]
"""Evaluates a module on the run's eval images (on the run's device)."""
Judgement = tuple[dict[str, Any], list[str]]
"""What a technique's judge returns: extra fields for the case, and notes."""

DEVICES = ("cpu", "cuda")


def _torch() -> Any:
    import torch

    return torch


@contextlib.contextmanager
def fp32_math(tf32: bool) -> Iterator[None]:
    """Run the block with TF32 on or off for CUDA matmuls and cuDNN convolutions, then restore the flags.

    PyTorch lets cuDNN convolutions use TF32 by default, so an "fp32" CUDA model is silently TF32 unless
    this is turned off: the fp32 reference runs with it off, the tf32 variant with it on.
    """
    import torch

    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "conv"):
        saved = (matmul.fp32_precision, conv.conv.fp32_precision)
        matmul.fp32_precision = conv.conv.fp32_precision = "tf32" if tf32 else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, conv.conv.fp32_precision = saved
        return
    saved_old = (matmul.allow_tf32, conv.allow_tf32)
    matmul.allow_tf32 = conv.allow_tf32 = tf32
    try:
        yield
    finally:
        matmul.allow_tf32, conv.allow_tf32 = saved_old


def ieee_fp32(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Return the context in which a technique is applied on `device`: TF32 off on CUDA, so fp32 means fp32
    unless the `tf32` technique turns it on (for the calls of its own model, see ModelState)."""
    return fp32_math(tf32=False) if device.type == "cuda" else contextlib.nullcontext()


@dataclass
class ModelState:
    """A model on its way through a variant's techniques.

    `module` is what would be shipped: size is measured on its state_dict. `float_module` is the last
    eager floating-point model, on which MACs and parameter coverage are counted. `runner`, when set, is
    what actually runs (a compiled module, a graph replay); inputs are cast to `input_dtype` and
    `memory_format` before it and outputs come back as float32 logits. Every call on CUDA runs with TF32 math
    on when `tf32` is set and off otherwise: the one place the fp32/TF32 rule lives for evaluating and timing.
    """

    module: nn.Module
    float_module: nn.Module
    runner: Callable[[torch.Tensor], torch.Tensor] | None = None
    input_dtype: torch.dtype = field(default_factory=lambda: _torch().float32)
    memory_format: torch.memory_format = field(default_factory=lambda: _torch().contiguous_format)
    coverage_layers: dict[str, frozenset[str]] = field(default_factory=dict)
    compile_seconds: float = 0.0
    tf32: bool = False
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, module: nn.Module) -> ModelState:
        """Return the state for an untouched eager float32 model (a private copy of it)."""
        own = copy.deepcopy(module).eval()
        return cls(module=own, float_module=own)

    @classmethod
    def of(cls, module: nn.Module) -> ModelState:
        """Return a state that runs `module` as it is (no copy): to evaluate or time a plain model by the rule."""
        return cls(module=module, float_module=module)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(dtype=self.input_dtype, memory_format=self.memory_format)
        with fp32_math(self.tf32) if x.is_cuda else contextlib.nullcontext():
            out = (self.runner or self.module)(x)
        return out.float()

    @property
    def is_eager_float(self) -> bool:
        """Return True while this is still the eager float32 model: no runner, no cast, nothing quantized.

        Techniques that edit or retrain the float model (pruning, distillation) must come before the others.
        """
        return self.is_float_input and self.module is self.float_module

    @property
    def is_float_input(self) -> bool:
        """Return True while nothing compiles or replays the model and it still takes float32 inputs."""
        return self.runner is None and self.input_dtype == _torch().float32

    def evolve(
        self, *, covered: Mapping[str, frozenset[str]] | None = None, note: str | None = None, **changes: Any
    ) -> ModelState:
        """Return a copy with `changes` applied (the lists and dicts are copied, not shared); `covered` adds
        {technique: the layers it transformed} to the coverage, `note` adds a note."""
        base = replace(
            self,
            coverage_layers={**self.coverage_layers, **(covered or {})},
            notes=[*self.notes, *([note] if note else [])],
            extra=dict(self.extra),
        )
        return replace(base, **changes)


@dataclass(frozen=True)
class ApplyContext:
    """What a technique may use besides the model: never the eval images."""

    device: torch.device
    data: DataBundle
    arch: str = "resnet18"
    seed: int = 0
    progress: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)

    def option(self, technique: str, name: str, default: Any) -> Any:
        """Return the user's `technique.name` option (parsed and range-checked by options.parse_options), else
        `default` (the technique's declared default, or its recipe's value where the declaration says None)."""
        return self.options.get(f"{technique}.{name}", default)


def int8_on_cpu(
    name: str, summary: str, apply: Callable[[ModelState, ApplyContext], ModelState], *, why_cpu_only: str,
    **declared: Any,
) -> Technique:
    """Return the declaration of an int8 quantization technique: it quantizes the float32 model before anything
    compiles or casts it, and its kernels run on the CPU only (`why_cpu_only` says why, for CUDA runs)."""
    return Technique(name=name, summary=summary, apply=apply, needs="float_input", unsupported={"cuda": why_cpu_only},
                     **declared)


def torch_release() -> str:
    """Return the installed torch's release, e.g. "2.14.1" (without a local "+cu130" part)."""
    import torch

    return str(torch.__version__).split("+")[0]


def conv_and_linear_names(module: nn.Module) -> frozenset[str]:
    """Return the names of every Conv2d and Linear layer: what a whole-model technique covers."""
    from torch import nn

    return frozenset(n for n, m in module.named_modules() if isinstance(m, nn.Conv2d | nn.Linear))


@dataclass(frozen=True)
class Option:
    """One option a technique declares: `--option technique.name=value` is parsed and checked against it.

    `kind` is int or float; `default` None means "the technique's recipe decides" (said in `meaning`). The value
    must be >= `minimum` / > `above` and <= `maximum` / < `below`, where set.
    """

    name: str
    kind: type
    default: int | float | None
    meaning: str
    minimum: float | None = None
    above: float | None = None
    maximum: float | None = None
    below: float | None = None

    @property
    def range_text(self) -> str:
        """Return the accepted range in words, e.g. "a number in (0, 1)" or "a whole number >= 1"."""
        noun = "a whole number" if self.kind is int else "a number"
        low = high = ""
        if self.minimum is not None or self.above is not None:
            low = f"[{self.minimum:g}" if self.minimum is not None else f"({self.above:g}"
        if self.maximum is not None or self.below is not None:
            high = f"{self.maximum:g}]" if self.maximum is not None else f"{self.below:g})"
        if low and high:
            return f"{noun} in {low}, {high}"
        if low:
            return f"{noun} {'>=' if low[0] == '[' else '>'} {low[1:]}"
        if high:
            return f"{noun} {'<=' if high[-1] == ']' else '<'} {high[:-1]}"
        return noun

    def accepts(self, value: float) -> bool:
        """Return True when `value` lies in the declared range."""
        return not (
            (self.minimum is not None and value < self.minimum)
            or (self.above is not None and value <= self.above)
            or (self.maximum is not None and value > self.maximum)
            or (self.below is not None and value >= self.below)
        )


ORDER_RULES: dict[str, tuple[Callable[[ModelState], bool], str]] = {
    "eager_float": (
        lambda state: state.is_eager_float,
        "edits or retrains the eager float32 model, so it must come first in the variant (after other techniques "
        "that edit the float model only), before anything that compiles, casts or quantizes it: e.g. "
        "prune_structured+static_int8",
    ),
    "float_input": (
        lambda state: state.is_float_input,
        "quantizes the eager float32 model, so it must come before compile/cuda_graphs and before bf16/fp16 in "
        "the variant: e.g. prune_unstructured+dynamic_int8",
    ),
    "eager": (
        lambda state: state.runner is None,
        "changes the eager model's layers, so it must come before compile/cuda_graphs in the variant: e.g. "
        "bf16+channels_last+compile",
    ),
}
"""What a technique may need of the state it is applied to (`Technique.needs`), and the order that gives it."""


@dataclass(frozen=True)
class Hardware:
    """What a technique's speedup rests on: a speedup floor applies only on hardware that has it (thresholds.json
    `speedup_floor`); elsewhere the case is measured and shown with the reason, never failed for the hardware's sake.

    `cpu`: the instruction family whose tier decides on the CPU ("bf16" or "int8": the environment's `cpu_bf16` /
    `cpu_int8`, harness/machine.py `identity_of`), and `cpu_tiers` the tiers that deliver it; `cuda_capability`: the
    least CUDA compute capability that does; `what` says, per device, what the hardware must have.
    """

    what: Mapping[str, str]
    cpu: str | None = None
    cpu_tiers: tuple[str, ...] = ()
    cuda_capability: tuple[int, int] | None = None

    def lacking(self, device: str, machine: Mapping[str, object]) -> str | None:
        """Return why `machine` (an environment fingerprint) lacks what the speedup needs on `device`, or None."""
        kind = str(device).split(":", 1)[0]
        if kind == "cpu" and self.cpu is not None:
            tier = str(machine.get(f"cpu_{self.cpu}") or "unknown")
            if tier == "unknown":
                return f"this CPU's instruction sets are unknown (no flags in /proc/cpuinfo), so no {self.what['cpu']}"
            if tier not in self.cpu_tiers:
                return f"this CPU has no {self.what['cpu']} (its {self.cpu} tier is {tier}; the floor holds on " \
                       f"{', '.join(self.cpu_tiers)})"
        if kind == "cuda" and self.cuda_capability is not None:
            found = _capability(machine.get("gpu_capability"))
            need = ".".join(map(str, self.cuda_capability))
            if found is None:
                return f"this GPU's compute capability is unknown, so no {self.what['cuda']} (needs {need})"
            if found < self.cuda_capability:
                return f"this GPU (compute capability {machine.get('gpu_capability')}) has no {self.what['cuda']} " \
                       f"(needs {need})"
        return None


def _capability(value: object) -> tuple[int, int] | None:
    try:
        major, minor = str(value).split(".", 1)
        return int(major), int(minor)
    except ValueError:
        return None


BF16_HARDWARE = Hardware(
    what={"cpu": "bf16 instructions, so bf16 is emulated", "cuda": "bf16 tensor cores"},
    cpu="bf16", cpu_tiers=("amx", "avx512"), cuda_capability=(8, 0),
)
STATIC_INT8_HARDWARE = Hardware(
    what={"cpu": "VNNI or AMX int8 instructions", "cuda": "int8 kernels"}, cpu="int8",
    cpu_tiers=("amx", "vnni512", "vnni256"),
)
"""What static int8's floors were calibrated on; a floor for the `avx2` tier is written as a tier of its own."""


@dataclass(frozen=True)
class Technique:
    """One optimization technique, as the registry, the CLI, the bench suite and the docs see it.

    `unsupported` maps a device to the reason the technique cannot run there; `requirement`, when set,
    returns a reason it cannot run in this environment (a package missing or too old) or None, without importing
    torch (`list` asks it); `device_check`, when set, returns a reason it cannot run on a device kind of this
    machine (a GPU too old) or None, and is asked only when a variant is about to run there. `options`
    declares what `--option <name>.<option>=value` may set. `judge`, when set, runs after the variant is evaluated
    with the final state, its eval result and an evaluator of any module on the same eval images, and returns
    what the technique's result means (extra fields for the case, notes): distillation compares its student with
    the same fine-tune without the teacher there. `needs` names the ORDER_RULES entry the state must meet when
    the technique comes to it (`transform` checks it), so its place in a variant is declared, not re-checked.
    `hardware`, when set, is what its speedup rests on (Hardware): its speedup floors apply only where that is.
    """

    name: str
    summary: str
    apply: Callable[[ModelState, ApplyContext], ModelState]
    unsupported: Mapping[str, str] = field(default_factory=dict)
    requirement: Callable[[], str | None] | None = None
    device_check: Callable[[str], str | None] | None = None
    trains: bool = False
    options: tuple[Option, ...] = ()
    judge: Callable[[ModelState, EvalResult, Evaluator], Judgement] | None = None
    needs: str | None = None
    hardware: Hardware | None = None

    def __post_init__(self) -> None:
        if self.needs is not None and self.needs not in ORDER_RULES:
            raise TechniqueError(f"technique {self.name}: needs={self.needs!r} is not one of {', '.join(ORDER_RULES)}")

    def transform(self, state: ModelState, ctx: ApplyContext) -> ModelState:
        """Return `state` transformed by this technique, after checking that the state is what it `needs`; the
        notes it adds are prefixed with its name."""
        if self.needs is not None:
            holds, order = ORDER_RULES[self.needs]
            if not holds(state):
                raise TechniqueError(f"{self.name} {order}")
        noted = len(state.notes)
        state = self.apply(state, ctx)
        prefix = f"{self.name}: "
        state.notes[noted:] = [n if n.startswith(prefix) else prefix + n for n in state.notes[noted:]]
        return state

    @property
    def devices(self) -> tuple[str, ...]:
        """Return the devices this technique runs on."""
        return tuple(d for d in DEVICES if d not in self.unsupported)

    def skip_reason(self, device: str) -> str | None:
        """Return why this technique cannot run on `device` here (with what would make it run), or None."""
        if device in self.unsupported:
            return f"{self.name} does not run on {device}: {self.unsupported[device]}"
        for check in (self.requirement, partial(self.device_check, device) if self.device_check else None):
            missing = check() if check is not None else None
            if missing:
                return f"{self.name} cannot run here: {missing}"
        return None
