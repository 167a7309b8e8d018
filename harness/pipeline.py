"""One measuring run: load data and model once, build each variant, measure every case against fp32."""

from __future__ import annotations

import contextlib
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch
from torch import nn

from harness import techniques
from harness.data import DataBundle, load_data
from harness.env import env_key, fingerprint
from harness.errors import HarnessError, TechniqueError
from harness.evaluate import EvalResult, evaluate
from harness.measure import (
    TIMING_SHAPE,
    Coverage,
    LatencyStats,
    SizeStats,
    count_macs,
    coverage_of,
    peak_memory_bytes,
    size_stats,
    time_interleaved,
    timing_input,
)
from harness.models import LoadedModel, load_model
from harness.paths import cache_dir, inductor_cache_dir
from harness.results import CaseResult, RunRecord
from harness.stats import paired_accuracy, paired_speedup
from harness.techniques import ApplyContext, ModelState
from harness.techniques.tf32 import fp32_math

REFERENCE = "fp32"
DEFAULT_BATCH_SIZES = (1, 32)


def resolve_device(device: str) -> torch.device:
    """Return the torch device for `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when present)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" or device.startswith("cuda"):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise HarnessError(f"--device {device} asked for CUDA but torch sees no GPU: use --device cpu or auto")
        return torch.device(device)
    raise HarnessError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto")


@dataclass
class BuiltVariant:
    """A variant applied to the model and evaluated once; timed later per batch size."""

    name: str
    state: ModelState
    eval: EvalResult
    size: SizeStats
    macs: int
    coverage: dict[str, Coverage]
    build_seconds: float
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Session:
    """What one run shares between its variants: the data, the device, the loaded fp32 model."""

    data: DataBundle
    device: torch.device
    model: LoadedModel
    ctx: ApplyContext
    built: dict[str, BuiltVariant] = field(default_factory=dict)

    @property
    def device_kind(self) -> str:
        """Return "cpu" or "cuda"."""
        return self.device.type


def open_session(
    *,
    data: str = "digits",
    device: str = "auto",
    weights: str | None = None,
    arch: str = "resnet18",
    seed: int = 0,
    eval_count: int | None = None,
    options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Session:
    """Return a session with the data and the fp32 model loaded (training the built-in default if needed)."""
    torch_device = resolve_device(device)
    inductor_cache_dir()
    bundle = load_data(data, eval_count=eval_count, seed=seed)
    loaded = load_model(arch, bundle, weights=weights, device=torch_device, progress=progress)
    ctx = ApplyContext(
        device=torch_device,
        data=bundle,
        arch=arch,
        seed=seed,
        cache_dir=cache_dir(),
        progress=progress,
        options=dict(options or {}),
    )
    return Session(data=bundle, device=torch_device, model=loaded, ctx=ctx)


@contextlib.contextmanager
def ieee_fp32(device: torch.device) -> Iterator[None]:
    """Run with TF32 off on CUDA, so fp32 means fp32 for every variant unless `tf32` turns it on."""
    if device.type != "cuda":
        yield
        return
    with fp32_math(tf32=False):
        yield


def _to_device(module: nn.Module, device: torch.device) -> nn.Module:
    return module.to(device).eval()


def build_variant(session: Session, variant: str) -> BuiltVariant:
    """Return `variant` applied to the session's model and evaluated on the eval set (cached per session)."""
    if variant in session.built:
        return session.built[variant]
    reason = techniques.variant_skip_reason(variant, session.device_kind)
    if reason:
        raise TechniqueError(reason)
    start = time.perf_counter()
    state = ModelState.start(_to_device(session.model.module, session.device))
    with ieee_fp32(session.device):
        for technique in techniques.parse_variant(variant):
            noted = len(state.notes)
            state = technique.apply(state, session.ctx)
            prefix = f"{technique.name}: "
            state.notes[noted:] = [n if n.startswith(prefix) else prefix + n for n in state.notes[noted:]]
        built_seconds = time.perf_counter() - start
        result = evaluate(state, session.data.eval, device=session.device)
    float_cpu = state.float_module
    shape = (1, *TIMING_SHAPE)
    coverage = {name: coverage_of(layers, float_cpu, shape) for name, layers in state.coverage_layers.items()}
    built = BuiltVariant(
        name=variant,
        state=state,
        eval=result,
        size=size_stats(state.module),
        macs=count_macs(float_cpu, shape),
        coverage=coverage,
        build_seconds=built_seconds,
        notes=list(state.notes),
    )
    if "distill_teacher" in state.extra:
        _judge_distillation(session, built)
    session.built[variant] = built
    return built


def _judge_distillation(session: Session, built: BuiltVariant) -> None:
    """Evaluate distillation's teacher and no-teacher baseline on the eval set, and label the result.

    The gain counts only if the teacher is measurably better than the student trained with the same budget
    without it (one-sided McNemar at 5%); otherwise the result is labeled not meaningful.
    """
    teacher = evaluate(
        _to_device(built.state.extra.pop("distill_teacher"), session.device), session.data.eval, device=session.device
    )
    baseline = evaluate(
        _to_device(built.state.extra.pop("distill_baseline"), session.device), session.data.eval, device=session.device
    )
    teacher_vs_baseline = paired_accuracy(teacher.correct.tolist(), baseline.correct.tolist())
    meaningful = teacher_vs_baseline.drop > 0 and teacher_vs_baseline.p_value < 0.05
    gain = paired_accuracy(baseline.correct.tolist(), built.eval.correct.tolist())
    built.extra.update(
        distill_teacher_top1=teacher.top1,
        distill_baseline_top1=baseline.top1,
        distill_gain_vs_baseline=-gain.drop,
        distill_gain_p_value=gain.p_value,
        distill_meaningful=meaningful,
    )
    if meaningful:
        built.notes.append(
            f"distillation: student {built.eval.top1:.2%} vs {baseline.top1:.2%} trained without the teacher "
            f"(teacher {teacher.top1:.2%})"
        )
    else:
        built.notes.append(
            f"distillation NOT MEANINGFUL: the teacher ({teacher.top1:.2%}) is not measurably better than the "
            f"student trained without it ({baseline.top1:.2%}), so no gain or loss is claimed"
        )


def time_against_reference(
    session: Session, built: BuiltVariant, batch_size: int, *, budget_s: float, min_rounds: int = 5
) -> tuple[LatencyStats, LatencyStats]:
    """Return (variant, fp32) latency at `batch_size`, timed interleaved (A B A B ...) in this process."""
    reference = build_variant(session, REFERENCE)
    x = timing_input(batch_size, session.device)
    if built.name == REFERENCE:
        fns = {REFERENCE: lambda: reference.state(x)}
    else:
        fns = {REFERENCE: lambda: reference.state(x), built.name: lambda: built.state(x)}
    with ieee_fp32(session.device):
        stats = time_interleaved(
            fns, device=session.device, batch_size=batch_size, budget_s=budget_s, min_rounds=min_rounds
        )
    return stats[built.name], stats[REFERENCE]


def measure_case(session: Session, variant: str, batch_size: int, *, budget_s: float = 4.0) -> CaseResult:
    """Return the full measurement of one case: accuracy, latency, throughput, memory, size, speedup."""
    built = build_variant(session, variant)
    reference = build_variant(session, REFERENCE)
    latency, ref_latency = time_against_reference(session, built, batch_size, budget_s=budget_s)
    speedup = paired_speedup(ref_latency.samples_ms, latency.samples_ms)
    x = timing_input(batch_size, session.device)
    with ieee_fp32(session.device):
        peak = peak_memory_bytes(lambda: built.state(x), session.device)
    accuracy = paired_accuracy(reference.eval.correct.tolist(), built.eval.correct.tolist())
    return CaseResult(
        variant=variant,
        device=session.device_kind,
        batch_size=batch_size,
        top1=built.eval.top1,
        top5=built.eval.top5,
        latency_ms=latency.to_dict(),
        throughput_ips=latency.throughput_ips,
        size_bytes=built.size.size_bytes,
        compressed_size_bytes=built.size.compressed_size_bytes,
        params=built.size.params,
        nonzero_params=built.size.nonzero_params,
        macs=built.macs,
        peak_memory_bytes=peak,
        speedup_vs_fp32=speedup.ratio,
        top1_change=built.eval.top1 - reference.eval.top1,
        coverage={k: v.to_dict() for k, v in built.coverage.items()},
        compile_seconds=built.state.compile_seconds or None,
        eval_images=built.eval.n,
        correct=[bool(c) for c in built.eval.correct],
        notes=list(built.notes),
        extra={
            **built.extra,
            "build_seconds": built.build_seconds,
            "speedup_low": speedup.low,
            "speedup_high": speedup.high,
            "fp32_latency_ms": ref_latency.to_dict(),
            "top1_drop_p_value": accuracy.p_value,
            "latency_samples_ms": list(latency.samples_ms),
        },
    )


def skipped_case(variant: str, device: str, batch_size: int, reason: str, status: str = "skipped") -> CaseResult:
    """Return the record of a case that did not run, with the reason."""
    return CaseResult(
        variant=variant,
        device=device,
        batch_size=batch_size,
        top1=None,
        top5=None,
        latency_ms={},
        throughput_ips=None,
        size_bytes=None,
        compressed_size_bytes=None,
        params=None,
        nonzero_params=None,
        macs=None,
        status=status,
        reason=reason,
    )


def run(
    session: Session,
    variants: Sequence[str],
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    *,
    budget_s: float = 4.0,
    on_case: Callable[[CaseResult], None] | None = None,
) -> RunRecord:
    """Measure every (variant, batch size); a variant that cannot run or fails is recorded, never fatal."""
    cases: list[CaseResult] = []
    for variant in variants:
        reason = techniques.variant_skip_reason(variant, session.device_kind)
        status = "skipped"
        for batch_size in batch_sizes:
            if reason:
                case = skipped_case(variant, session.device_kind, batch_size, reason, status=status)
            else:
                try:
                    case = measure_case(session, variant, batch_size, budget_s=budget_s)
                except HarnessError as err:
                    case = skipped_case(variant, session.device_kind, batch_size, str(err), status="error")
                except Exception as err:  # one broken variant must not lose the others' measurements
                    detail = "".join(traceback.format_exception_only(err)).strip()
                    case = skipped_case(variant, session.device_kind, batch_size, detail, status="error")
                    reason, status = detail, "error"
            cases.append(case)
            if on_case:
                on_case(case)
    env = fingerprint()
    return RunRecord(
        environment=env,
        env_key=env_key(env, session.device_kind),
        cases=cases,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        command=shlex.join([_program_name(sys.argv[0]), *sys.argv[1:]]),
        data=session.data.spec,
        model=f"{session.model.arch} ({session.model.source})",
    )


def _program_name(argv0: str) -> str:
    return "python -m harness" if argv0.endswith("__main__.py") else argv0


def expand_variants(spec: str, device: str) -> list[str]:
    """Return the variants a `--variants` value names: `all`, or a comma list of variants/presets."""
    if spec.strip() == "all":
        return techniques.variants()
    names = [v.strip() for v in spec.split(",") if v.strip()]
    for name in names:
        techniques.parse_variant(name)
    return [techniques.canonical(n) for n in names]
