"""One measuring run: load data and model once, build each variant, measure every case against fp32."""

from __future__ import annotations

import hashlib
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import torch
from torch import nn

from harness import techniques
from harness.contention import BusyRule, Contention, Reading, wait_until_quiet
from harness.data import DataBundle, load_data
from harness.env import env_key, fingerprint
from harness.errors import HarnessError
from harness.evaluate import EvalResult, evaluate
from harness.gpu_state import GpuState
from harness.gpu_state import watch as watch_gpu
from harness.measure import (
    TIMING_SHAPE,
    Coverage,
    LatencyStats,
    SizeStats,
    activation_peak_bytes,
    count_macs,
    coverage_of,
    size_stats,
    time_interleaved,
    timing_input,
    yardstick,
)
from harness.model_spec import parse_model
from harness.models import LoadedModel, load_model, weights_fingerprint
from harness.paths import inductor_cache_dir
from harness.results import CaseResult, RunRecord
from harness.stats import paired_accuracy
from harness.techniques import ApplyContext, ModelState
from harness.techniques.base import ieee_fp32
from harness.timing_stats import RatioEstimate, paired_ratio

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
    _yardstick: nn.Module | None = None

    @property
    def device_kind(self) -> str:
        """Return "cpu" or "cuda"."""
        return self.device.type

    @property
    def yardstick(self) -> nn.Module:
        """Return the fixed yardstick network on this session's device (built on first use)."""
        if self._yardstick is None:
            self._yardstick = yardstick(self.device)
        return self._yardstick

    def identity(self) -> dict[str, str]:
        """Return what the run's accuracy depends on: data spec, eval images, architecture, the fp32 weights."""
        eval_ids = hashlib.sha256("\n".join(self.data.eval_ids).encode()).hexdigest()[:16]
        return {
            "data": self.data.spec,
            "eval_ids_sha256": eval_ids,
            "arch": self.model.arch,
            "weights_sha256": weights_fingerprint(self.model.module),
        }


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
    """Return a session with the data and the fp32 model loaded (training the built-in default if needed); `arch`
    is a model spec (harness/model_spec.py)."""
    arch = parse_model(arch).arch
    torch_device = resolve_device(device)
    inductor_cache_dir()
    bundle = load_data(data, eval_count=eval_count, seed=seed)
    loaded = load_model(arch, bundle, weights=weights, device=torch_device, progress=progress)
    ctx = ApplyContext(
        device=torch_device,
        data=bundle,
        arch=arch,
        seed=seed,
        progress=progress,
        options=dict(options or {}),
    )
    return Session(data=bundle, device=torch_device, model=loaded, ctx=ctx)


def _to_device(module: nn.Module, device: torch.device) -> nn.Module:
    return module.to(device).eval()


def build_variant(session: Session, variant: str) -> BuiltVariant:
    """Return `variant` applied to the session's model and evaluated on the eval set (cached per session).

    The caller has asked techniques.variant_skip_reason first (run and the gate do, once per variant).
    """
    if variant in session.built:
        return session.built[variant]
    start = time.perf_counter()
    state = ModelState.start(_to_device(session.model.module, session.device))
    with ieee_fp32(session.device):
        for technique in techniques.parse_variant(variant):
            state = technique.transform(state, session.ctx)
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
    def evaluator(module: nn.Module) -> EvalResult:
        return evaluate(ModelState.of(_to_device(module, session.device)), session.data.eval, device=session.device)

    for technique in techniques.parse_variant(variant):
        if technique.judge is not None:
            extra, notes = technique.judge(state, result, evaluator)
            built.extra.update(extra)
            built.notes.extend(notes)
    session.built[variant] = built
    return built


MIN_ROUNDS = 10
"""The fewest interleaved rounds a case is timed for (a ResNet18 call at batch 32 takes about a second on two cores,
so the budget alone would give it too few rounds for an interval)."""
MAX_ROUNDS = 200
"""The most rounds the budget gives a fast case (a plan may give more)."""
LARGE_BATCH = 8
"""From this batch size on, timing starts without a warm-up round (the untimed first calls warm it enough)."""
YARDSTICK = "yardstick"


@dataclass(frozen=True)
class CaseTiming:
    """What timing one case found: the variant's and fp32's latency and the ratios the gate judges.

    ratios: "speedup_vs_fp32" (fp32 / variant) for a variant; "latency_vs_yardstick" (fp32 / yardstick) for
    fp32 itself. contention: how much others held the process back meanwhile (harness/contention.py); waits: what
    a busy machine cost before this timing (time_case_quietly), empty when the first timing was quiet.
    """

    latency: LatencyStats
    reference: LatencyStats
    ratios: dict[str, RatioEstimate]
    contention: Reading
    waits: tuple[str, ...] = ()
    gpu: GpuState | None = None
    """On CUDA: the device's clocks, clock-event reasons, heat, power and other users over the window (NVML)."""


def time_case(
    session: Session, built: BuiltVariant, batch_size: int, *, budget_s: float, rounds: int | None = None
) -> CaseTiming:
    """Return the case timed interleaved in this process, from its own warm-up: fp32 against the variant, or,
    for fp32 itself, fp32 against the yardstick network; for `budget_s` seconds (MIN_ROUNDS at least), or for exactly
    `rounds` rounds when a plan gives them (harness/gate/budget.py).
    """
    reference = build_variant(session, REFERENCE)
    x = timing_input(batch_size, session.device)
    other = ModelState.of(session.yardstick) if built.name == REFERENCE else built.state
    other_name = YARDSTICK if built.name == REFERENCE else built.name
    fns = {REFERENCE: lambda: reference.state(x), other_name: lambda: other(x)}
    large = batch_size >= LARGE_BATCH
    with torch.inference_mode():  # a first call at a new shape may compile: keep it out of the watched window
        for fn in fns.values():
            fn()
    gpu = watch_gpu(session.device)
    with Contention() as contention, gpu or nullcontext():
        stats = time_interleaved(
            fns,
            device=session.device,
            batch_size=batch_size,
            budget_s=0.0 if rounds else budget_s,
            warmup=0 if large else 1,
            min_rounds=rounds or MIN_ROUNDS,
            max_rounds=max(MAX_ROUNDS, rounds or 0),
        )
    assert contention.reading is not None
    fp32 = stats[REFERENCE]
    if built.name == REFERENCE:
        ratios = {"latency_vs_yardstick": paired_ratio(fp32.samples_ms, stats[YARDSTICK].samples_ms)}
        return CaseTiming(fp32, fp32, ratios, contention.reading, gpu=gpu.state if gpu else None)
    ratios = {"speedup_vs_fp32": paired_ratio(fp32.samples_ms, stats[built.name].samples_ms)}
    return CaseTiming(stats[built.name], fp32, ratios, contention.reading, gpu=gpu.state if gpu else None)


def time_case_quietly(
    session: Session, built: BuiltVariant, batch_size: int, *, budget_s: float, busy: BusyRule | None,
    rounds: int | None = None,
) -> CaseTiming:
    """Return the case timed as time_case does; when others held the process back beyond `busy.limit` meanwhile,
    wait (up to busy.wait_s) for a quiet machine and time it again, up to busy.retries times. The last timing is
    returned, with what each wait found (`waits`); whether it is quiet enough to judge is the judge's call."""
    timing = time_case(session, built, batch_size, budget_s=budget_s, rounds=rounds)
    waits: list[str] = []
    for _ in range(busy.retries if busy else 0):
        assert busy is not None
        if timing.contention.share is None or timing.contention.share <= busy.limit:
            break
        wait = wait_until_quiet(busy.limit, max_wait_s=busy.wait_s)
        waits.append(
            f"others held it back {timing.contention.describe()} of the time; waited {wait.waited_s:.0f} s "
            f"({'quiet' if wait.quiet else 'still busy: ' + wait.last.describe()}) and timed it again"
        )
        timing = time_case(session, built, batch_size, budget_s=budget_s, rounds=rounds)
    return replace(timing, waits=tuple(waits))


def measure_case(
    session: Session, variant: str, batch_size: int, *, budget_s: float = 4.0, busy: BusyRule | None = None,
    rounds: int | None = None,
) -> CaseResult:
    """Return the full measurement of one case: accuracy, latency, throughput, memory, size, speedup; timed again
    after waiting for a quiet machine when `busy` says the first timing was disturbed (time_case_quietly), for
    `rounds` rounds when a plan gives them, else for `budget_s`."""
    built = build_variant(session, variant)
    reference = build_variant(session, REFERENCE)
    timing = time_case_quietly(session, built, batch_size, budget_s=budget_s, busy=busy, rounds=rounds)
    x = timing_input(batch_size, session.device)
    activations = activation_peak_bytes(lambda: built.state(x), session.device)
    accuracy = paired_accuracy(reference.eval.correct.tolist(), built.eval.correct.tolist())
    speedup = timing.ratios.get("speedup_vs_fp32")
    return CaseResult(
        variant=variant,
        device=session.device_kind,
        batch_size=batch_size,
        top1=built.eval.top1,
        top5=built.eval.top5,
        latency_ms=timing.latency.to_dict(),
        throughput_ips=timing.latency.throughput_ips,
        size_bytes=built.size.size_bytes,
        compressed_size_bytes=built.size.compressed_size_bytes,
        params=built.size.params,
        nonzero_params=built.size.nonzero_params,
        macs=built.macs,
        peak_memory_bytes=None if activations is None else built.size.tensor_bytes + activations,
        speedup_vs_fp32=1.0 if variant == REFERENCE else speedup.value if speedup else None,
        top1_change=built.eval.top1 - reference.eval.top1,
        coverage={k: v.to_dict() for k, v in built.coverage.items()},
        build_seconds=built.build_seconds,
        compile_seconds=built.state.compile_seconds or None,
        eval_images=built.eval.n,
        correct=[bool(c) for c in built.eval.correct],
        notes=list(built.notes),
        ratios={name: r.to_dict() for name, r in timing.ratios.items()},
        contention=timing.contention.share,
        identity=session.identity(),
        extra={
            **built.extra,
            "contention": timing.contention.to_dict(),
            "busy_waits": list(timing.waits),
            "timing_seconds": timing.contention.seconds,
            "fp32_latency_ms": timing.reference.to_dict(),
            "top1_drop_p_value": accuracy.p_value,
            "latency_samples_ms": list(timing.latency.samples_ms),
            "weights_bytes": built.size.tensor_bytes,
            "activation_peak_bytes": activations,
            **({"gpu_state": timing.gpu.to_dict()} if timing.gpu else {}),
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
    return run_record(cases, command=shlex.join([_program_name(sys.argv[0]), *sys.argv[1:]]), session=session)


def run_record(
    cases: Sequence[CaseResult],
    *,
    command: str,
    session: Session | None = None,
    data: str | None = None,
    model: str | None = None,
    environment: dict[str, object] | None = None,
) -> RunRecord:
    """Return the record of a run: its cases, this process's fingerprint and env key, the data and the model.

    The data and model labels come from `session` unless given (a gate run whose sessions never opened).
    """
    env = environment if environment is not None else fingerprint()
    on_cuda = any(c.device == "cuda" for c in cases) and bool(env.get("cuda_available"))
    return RunRecord(
        environment=env,
        env_key=env_key(env, "cuda" if on_cuda else "cpu"),
        cases=list(cases),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        command=command,
        data=data if data is not None else session.data.spec if session else "unknown",
        model=model if model is not None else session.model.label if session else "unknown",
    )


def _program_name(argv0: str) -> str:
    return "python -m harness" if argv0.endswith("__main__.py") else argv0
