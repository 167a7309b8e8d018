"""Options, fixtures and hooks of the regression gate: one case per registered variant x device x batch size.

Design: ONE test per case (bench/test_gate.py). It measures the case once (accuracy on the eval set, fp32
and the variant timed interleaved in this process, size, memory), then runs all three checks (accuracy
against fp32 on the same images, speedup against the variant's floor, the stored baseline of this
environment) and fails with every failed check's message. So the pytest id is exactly `CaseResult.case_id`,
nothing is measured twice, and pytest-xdist cannot split one case's checks over two workers (or two GPUs).

Multi-GPU: `pytest bench -n <GPUs> --device cuda` pins worker gwN to cuda:(N mod count); every worker writes
its partial RunRecord after each case into a folder the controller made, and the controller merges them
(harness.results.merge_runs) into the one `--results-json` and, with `--update-baselines`, the baselines.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import torch

from harness import techniques
from harness.baselines import (
    DEFAULT_BASELINES_DIR,
    UPDATE_HINT,
    Baseline,
    Check,
    Thresholds,
    check_accuracy,
    check_baseline,
    check_speedup,
    failure_message,
    load_baseline,
    load_thresholds,
    make_provenance,
    write_baseline,
)
from harness.env import env_key, fingerprint
from harness.errors import HarnessError
from harness.measure import timing_input
from harness.pipeline import (
    REFERENCE,
    BuiltVariant,
    Session,
    build_variant,
    ieee_fp32,
    measure_case,
    open_session,
)
from harness.pipeline import skipped_case as _skipped_case
from harness.results import CaseResult, RunRecord, load_run, merge_runs, save_run

DEVICE_CHOICES = ("auto", "cpu", "cuda", "all")
DEFAULT_BATCH_SIZES: dict[str, tuple[int, ...]] = {"cpu": (1, 32), "cuda": (1, 256)}
DEFAULT_BUDGET_S = 1.5
"""Seconds of interleaved fp32/variant timing per case. Batch-1 cases get 25-50 rounds from it; batch-32 cases are
bound by the harness's 5 minimum rounds (about 1 s per fp32 call) instead, so they cost about 10 s whatever this is.
Chosen so the full CPU gate (30 runnable cases) stays within 5 minutes warm on an idle 2-core machine."""
QUICK_VARIANTS = ("fp32", "dynamic_int8", "prune_unstructured")
QUICK_BATCH_SIZES = (1,)
"""The reduced gate that `-m "not slow"` keeps (cheap builds, real checks); the rest is marked slow."""
REQUIRE_GPU_ENV = "HARNESS_REQUIRE_GPU"
PARTS_DIR_KEY = "gate_parts_dir"
MODEL_ARCH = "resnet18"

_SETTINGS = pytest.StashKey["GateSettings"]()
_GATE = pytest.StashKey["Gate"]()
_PARTS = pytest.StashKey[Path]()
_CHECKS = pytest.StashKey[list[dict[str, Any]]]()
_SUMMARY = pytest.StashKey[list[str]]()


# ----------------------------------------------------------------------------------------- pure functions


@dataclass(frozen=True)
class GateCase:
    """One case of the gate: a variant on a device kind ("cpu" | "cuda") at a batch size."""

    variant: str
    device: str
    batch_size: int

    @property
    def case_id(self) -> str:
        """Return the id the harness gives this case (CaseResult.case_id): pytest id and baseline key."""
        return _skipped_case(self.variant, self.device, self.batch_size, "").case_id

    @property
    def quick(self) -> bool:
        """Return True when the case belongs to the reduced gate that `-m "not slow"` runs."""
        return self.variant in QUICK_VARIANTS and self.batch_size in QUICK_BATCH_SIZES


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """Return the batch sizes of a comma list such as "1,32"; anything else raises pytest.UsageError."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(s < 1 for s in sizes):
        raise pytest.UsageError(
            f"--bench-batch-sizes takes a comma list of positive integers, e.g. 1,32 (got {text!r})"
        )
    return tuple(dict.fromkeys(sizes))


def select_variants(spec: str, registry: Sequence[str]) -> tuple[str, ...]:
    """Return the variants `--bench-variants` names: "all" is the registry's; presets become `+` names."""
    if spec.strip() == "all":
        return tuple(registry)
    chosen: list[str] = []
    for name in (part.strip() for part in spec.split(",")):
        if not name:
            continue
        try:
            techniques.parse_variant(name)
        except Exception as err:  # an unknown name, or a technique module that fails to import
            raise pytest.UsageError(f"--bench-variants: {err}") from err
        chosen.append(techniques.canonical(name))
    if not chosen:
        raise pytest.UsageError(f"--bench-variants is empty ({spec!r}): give 'all' or e.g. fp32,dynamic_int8")
    return tuple(dict.fromkeys(chosen))


def resolve_devices(option: str, *, cuda_available: bool, require_gpu: bool) -> tuple[str, ...]:
    """Return the device kinds to parametrize: auto is cuda when present (or demanded), else cpu."""
    if option == "auto":
        return ("cuda",) if cuda_available or require_gpu else ("cpu",)
    if option == "all":
        return ("cpu", "cuda")
    if option in ("cpu", "cuda"):
        return (option,)
    raise pytest.UsageError(f"--device {option!r}: choose from {', '.join(DEVICE_CHOICES)}")


def gate_cases(
    variants: Iterable[str], devices: Iterable[str], batch_sizes: dict[str, tuple[int, ...]]
) -> list[GateCase]:
    """Return every case, device-major then variant then batch size (so one device's cases run together)."""
    return [GateCase(variant, device, bs) for device in devices for variant in variants for bs in batch_sizes[device]]


def case_marks(case: GateCase) -> list[pytest.MarkDecorator]:
    """Return a case's markers: always bench; gpu on cuda; slow outside the reduced (quick) gate."""
    marks = [pytest.mark.bench]
    if case.device == "cuda":
        marks.append(pytest.mark.gpu)
    if not case.quick:
        marks.append(pytest.mark.slow)
    return marks


def unrunnable(
    case: GateCase, *, cuda_available: bool, require_gpu: bool, technique_reason: Callable[[], str | None]
) -> tuple[str, str] | None:
    """Return ("skip" | "fail", why) when the case cannot run here, or None when it can.

    A cuda case without CUDA is skipped, but fails when the run demands a GPU (--require-gpu or
    HARNESS_REQUIRE_GPU=1): a GPU job on a machine whose GPU vanished must go red, not green. A variant that
    cannot run on the device (the technique's own reason) is skipped.
    """
    if case.device == "cuda" and not cuda_available:
        if require_gpu:
            return "fail", (
                f"{case.case_id}: CUDA is not available (torch {torch.__version__} sees no GPU) but this run "
                f"demands one (--require-gpu or {REQUIRE_GPU_ENV}=1): fix the runner's driver/GPU, or drop "
                "--require-gpu to skip GPU cases"
            )
        return (
            "skip",
            "CUDA is not available here; run on a GPU machine (pass --require-gpu to fail instead)",
        )
    reason = technique_reason()
    return ("skip", reason) if reason else None


def worker_cuda_index(worker_id: str | None, device_count: int) -> int:
    """Return the GPU index of a pytest-xdist worker: gwN -> N mod device_count; no xdist ("master") -> 0."""
    if device_count < 1:
        raise ValueError(f"need at least one CUDA device to pin a worker to, got device_count={device_count}")
    if not worker_id or worker_id == "master":
        return 0
    match = re.fullmatch(r"gw(\d+)", worker_id)
    if match is None:
        raise ValueError(f"unexpected pytest-xdist worker id {worker_id!r}: expected gwN or master")
    return int(match.group(1)) % device_count


def merge_parts(paths: Iterable[Path]) -> RunRecord | None:
    """Return the one RunRecord of the workers' part files (merge_runs), or None when there are none."""
    records = [load_run(path) for path in sorted(paths)]
    return merge_runs(records) if records else None


BUSY_LOAD_PER_CPU = 1.5
"""Above this 1-minute load per CPU, others compete with the gate (it alone keeps about one per CPU busy)."""


def load_average() -> float:
    """Return the 1-minute load average, 0.0 where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


ABSOLUTE_TIMING_METRICS = ("latency_median_ms", "throughput_ips")


def shared_cpu() -> bool:
    """Return True under pytest-xdist with more than one worker: other tests then share this CPU."""
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1) > 1


def unjudged_on_shared_cpu(check: Check) -> Check:
    """Return `check` turned into a skip when it judges absolute CPU timing that parallel workers distort.

    The interleaved speedup (fp32 and the variant timed alternately in this process) stays judged: contention
    slows both alike. A GPU worker owns its GPU, so this applies to cpu cases only.
    """
    if check.metric not in ABSOLUTE_TIMING_METRICS or check.outcome not in ("fail", "stale"):
        return check
    return replace(
        check,
        outcome="skip",
        message=f"not judged: pytest-xdist workers share this CPU, so absolute timing is not comparable with "
        f"the baseline (would have been {check.outcome}: {check.message}); run with -p no:xdist to judge it",
    )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# ------------------------------------------------------------------------------------------------- options


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gate", "regression gate (bench/)")
    group.addoption(
        "--device",
        choices=DEVICE_CHOICES,
        default="auto",
        help="devices to gate: cpu, cuda, all, or auto = cuda if present else cpu (default: auto)",
    )
    group.addoption(
        "--require-gpu",
        action="store_true",
        default=False,
        help=f"fail (not skip) cuda cases when CUDA is missing; also {REQUIRE_GPU_ENV}=1 (default: off)",
    )
    group.addoption(
        "--data", default="digits", help="data spec: digits, imagenet:PATH or folder:PATH (default: digits)"
    )
    group.addoption(
        "--weights",
        default=None,
        help="checkpoint PATH or 'imagenet' (default: the model the harness trains and caches)",
    )
    group.addoption(
        "--bench-variants",
        default="all",
        help="comma list of variants or presets, or all = harness.techniques.variants() (default: all)",
    )
    group.addoption(
        "--bench-batch-sizes",
        default=None,
        help="comma list of batch sizes for every device (default: 1,32 on cpu, 1,256 on cuda)",
    )
    group.addoption(
        "--bench-budget",
        type=float,
        default=DEFAULT_BUDGET_S,
        help=f"seconds of interleaved fp32/variant timing per case (default: {DEFAULT_BUDGET_S})",
    )
    group.addoption(
        "--baselines-dir",
        type=Path,
        default=DEFAULT_BASELINES_DIR,
        help="folder of <env-key>.json baselines (default: baselines/)",
    )
    group.addoption(
        "--update-baselines",
        action="store_true",
        default=False,
        help="rewrite this environment's baselines from the measured cases at session end (default: off)",
    )
    group.addoption(
        "--results-json",
        type=Path,
        default=None,
        help="write the merged RunRecord of all cases (all xdist workers) here (default: none)",
    )
    group.addoption(
        "--thresholds", type=Path, default=None, help="thresholds file (default: baselines/thresholds.json)"
    )


@dataclass(frozen=True)
class GateSettings:
    """The gate's options, parsed and validated once per process."""

    devices: tuple[str, ...]
    variants: tuple[str, ...]
    batch_sizes: dict[str, tuple[int, ...]]
    budget_s: float
    require_gpu: bool
    cuda_available: bool
    data: str
    weights: str | None
    baselines_dir: Path
    update_baselines: bool
    results_json: Path | None
    thresholds: Path | None
    command: str

    @classmethod
    def from_config(cls, config: pytest.Config) -> GateSettings:
        """Return the settings of this run; bad values raise pytest.UsageError naming the fix."""
        require_gpu = bool(config.getoption("require_gpu")) or _env_flag(REQUIRE_GPU_ENV)
        cuda_available = torch.cuda.is_available()
        sizes_text = config.getoption("bench_batch_sizes")
        sizes = parse_batch_sizes(sizes_text) if sizes_text else None
        budget = float(config.getoption("bench_budget"))
        if not budget >= 0:
            raise pytest.UsageError(f"--bench-budget must be >= 0 seconds, got {budget}")
        return cls(
            devices=resolve_devices(config.getoption("device"), cuda_available=cuda_available, require_gpu=require_gpu),
            variants=select_variants(config.getoption("bench_variants"), techniques.variants()),
            batch_sizes={d: sizes or DEFAULT_BATCH_SIZES[d] for d in DEFAULT_BATCH_SIZES},
            budget_s=budget,
            require_gpu=require_gpu,
            cuda_available=cuda_available,
            data=config.getoption("data"),
            weights=config.getoption("weights"),
            baselines_dir=Path(config.getoption("baselines_dir")),
            update_baselines=bool(config.getoption("update_baselines")),
            results_json=config.getoption("results_json"),
            thresholds=config.getoption("thresholds"),
            command=shlex.join(["pytest", *config.invocation_params.args]),
        )

    @property
    def model(self) -> str:
        """Return the model label of the run record (the same in every worker, so their records merge)."""
        return f"{MODEL_ARCH} ({self.weights or 'harness default'})"


def settings_of(config: pytest.Config) -> GateSettings:
    """Return this run's GateSettings, parsing the options on first use."""
    if _SETTINGS not in config.stash:
        config.stash[_SETTINGS] = GateSettings.from_config(config)
    return config.stash[_SETTINGS]


# --------------------------------------------------------------------------------------- collection hooks


def pytest_configure(config: pytest.Config) -> None:
    # Declared here as well as in pyproject.toml so an inner pytester run of this plugin is strict-clean.
    for line in (
        "gpu: needs a CUDA device (skipped without one unless --require-gpu)",
        "slow: builds or trains a ResNet; deselect with -m 'not slow'",
        "bench: a case of the regression gate in bench/",
    ):
        config.addinivalue_line("markers", line)
    # The same default as `python -m harness`: compiled variants reuse the inductor cache between runs.
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    config.stash[_CHECKS] = []
    config.stash[_SUMMARY] = []
    config.pluginmanager.register(GateReporter(config), "gate-reporter")
    if _is_xdist_controller(config):
        results = config.getoption("results_json")
        parent = Path(results).resolve().parent if results else None
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        config.stash[_PARTS] = Path(tempfile.mkdtemp(prefix=".gate-parts-", dir=parent))


def _is_xdist_controller(config: pytest.Config) -> bool:
    if hasattr(config, "workerinput") or not config.pluginmanager.hasplugin("xdist"):
        return False
    return config.getoption("dist", "no") != "no"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Tell each xdist worker where to write its partial RunRecord."""
    parts = node.config.stash.get(_PARTS, None)
    if parts is not None:
        node.workerinput[PARTS_DIR_KEY] = str(parts)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames:
        return
    settings = settings_of(metafunc.config)
    cases = gate_cases(settings.variants, settings.devices, settings.batch_sizes)
    params = [pytest.param(c, id=c.case_id, marks=case_marks(c)) for c in cases]
    metafunc.parametrize("case", params)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = sorted(set(QUICK_VARIANTS) - set(techniques.variants()))
    if missing:
        raise pytest.UsageError(f"bench/conftest.py QUICK_VARIANTS names unregistered variants: {missing}")
    for item in items:
        if "cuda_device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.gpu)


# ------------------------------------------------------------------------------------------------ the gate


@dataclass
class Measured:
    """A measured case with what its pytest-benchmark record needs."""

    result: CaseResult
    built: BuiltVariant
    device: torch.device


@dataclass
class Gate:
    """What one worker process shares between cases: sessions per device, builds, thresholds, baselines."""

    settings: GateSettings
    worker_id: str
    parts_dir: Path | None
    sessions: dict[str, Session] = field(default_factory=dict)
    cases: dict[str, CaseResult] = field(default_factory=dict)
    broken: dict[tuple[str, str], str] = field(default_factory=dict)
    baselines: dict[str, Baseline | None] = field(default_factory=dict)
    _fingerprint: dict[str, object] | None = None
    _thresholds: Thresholds | None = None

    @property
    def thresholds(self) -> Thresholds:
        """Return the reviewed thresholds (--thresholds, default baselines/thresholds.json)."""
        if self._thresholds is None:
            self._thresholds = load_thresholds(self.settings.thresholds)
        return self._thresholds

    @property
    def environment(self) -> dict[str, object]:
        """Return this process's fingerprint (taken after CUDA pinning, so it describes this worker's GPU)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint()
        return self._fingerprint

    def env_key(self, device: str) -> str:
        """Return the baseline key of this environment on `device`."""
        return env_key(self.environment, device)

    def baseline(self, device: str) -> Baseline | None:
        """Return the stored baseline of this environment on `device`, or None when there is none."""
        key = self.env_key(device)
        if key not in self.baselines:
            self.baselines[key] = load_baseline(self.settings.baselines_dir, key)
        return self.baselines[key]

    def session(self, device: torch.device) -> Session:
        """Return the one Session of this process on `device` (data and fp32 model loaded once)."""
        kind = device.type
        if kind not in self.sessions:
            self.sessions[kind] = open_session(
                data=self.settings.data, device=str(device), weights=self.settings.weights, progress=False
            )
        return self.sessions[kind]

    def check_runnable(self, case: GateCase) -> None:
        """Skip a case that cannot run here with the technique's reason; fail it under --require-gpu."""
        verdict = unrunnable(
            case,
            cuda_available=self.settings.cuda_available,
            require_gpu=self.settings.require_gpu,
            technique_reason=lambda: techniques.variant_skip_reason(case.variant, case.device),
        )
        if verdict is None:
            return
        outcome, why = verdict
        self.record(
            _skipped_case(
                case.variant,
                case.device,
                case.batch_size,
                why,
                status="error" if outcome == "fail" else "skipped",
            )
        )
        if outcome == "fail":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)

    def measure(self, case: GateCase, device: torch.device) -> Measured:
        """Return the case measured once; a variant whose build failed fails its other cases, unrebuilt."""
        key, session_key = (case.variant, case.device), ("", case.device)
        for known in (session_key, key):
            if known in self.broken:
                self.record_error(case, self.broken[known])
                pytest.fail(f"{case.case_id}: {self.broken[known]}", pytrace=False)
        try:
            session = self.session(device)
        except Exception as err:
            self.broken[session_key] = f"no {case.device} session (data, model): {type(err).__name__}: {err}"
            self.record_error(case, self.broken[session_key])
            raise
        try:
            built = build_variant(session, case.variant)
        except Exception as err:
            self.broken[key] = f"building {case.variant} on {case.device} failed: {type(err).__name__}: {err}"
            self.record_error(case, self.broken[key])
            raise
        try:
            result = measure_case(session, case.variant, case.batch_size, budget_s=self.settings.budget_s)
        except Exception as err:
            self.record_error(case, f"measuring {case.case_id} failed: {type(err).__name__}: {err}")
            raise
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        result.extra["env_key"] = self.env_key(case.device)
        result.extra["load_average_1m"] = load_average()
        self.record(result)
        return Measured(result, built, device)

    def record_error(self, case: GateCase, why: str) -> None:
        """Record that `case` could not be measured, and why."""
        self.record(_skipped_case(case.variant, case.device, case.batch_size, why, status="error"))

    def reference(self, case: CaseResult, device: torch.device) -> CaseResult:
        """Return fp32's case on the same device and batch size: per-image correctness, no timing needed."""
        ref = build_variant(self.session(device), REFERENCE)
        return replace(
            _skipped_case(REFERENCE, case.device, case.batch_size, ""),
            status="ok",
            reason=None,
            top1=ref.eval.top1,
            top5=ref.eval.top5,
            eval_images=ref.eval.n,
            correct=[bool(c) for c in ref.eval.correct],
        )

    def checks(self, measured: Measured) -> list[Check]:
        """Return the accuracy, speedup and baseline checks of a measured case."""
        case, th = measured.result, self.thresholds
        found = [check_accuracy(case, self.reference(case, measured.device), th), check_speedup(case, th)]
        if self.settings.update_baselines:
            found.append(
                Check(
                    case.case_id,
                    "baseline",
                    "skip",
                    None,
                    None,
                    None,
                    str(self.settings.baselines_dir),
                    "not checked: --update-baselines rewrites the baseline at the end of this run",
                )
            )
        else:
            found.extend(check_baseline(case, self.baseline(case.device), th))
        if case.device == "cpu" and shared_cpu():
            found = [unjudged_on_shared_cpu(c) for c in found]
        return found

    def record(self, case: CaseResult) -> None:
        """Keep a case for the results; under xdist also rewrite this worker's part file (crash-safe)."""
        self.cases[case.case_id] = case
        if self.parts_dir is not None:
            save_run(self.parts_dir / f"{self.worker_id}.json", self.run_record())

    def run_record(self) -> RunRecord:
        """Return this process's RunRecord of every case it ran or skipped."""
        cases = list(self.cases.values())
        on_cuda = any(c.device == "cuda" for c in cases) and self.settings.cuda_available
        return RunRecord(
            environment=self.environment,
            env_key=self.env_key("cuda" if on_cuda else "cpu"),
            cases=cases,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            command=self.settings.command,
            data=self.settings.data,
            model=self.settings.model,
        )


def pin_cuda_device(worker_id: str | None) -> torch.device:
    """Make this worker's own GPU current (gwN -> cuda:N mod count) and return it."""
    index = worker_cuda_index(worker_id, torch.cuda.device_count())
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _worker_id() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "master")


@pytest.fixture(scope="session")
def gate(pytestconfig: pytest.Config) -> Gate:
    """The worker's one Gate: one Session per device, each variant built once, the record of every case."""
    settings = settings_of(pytestconfig)
    workerinput = getattr(pytestconfig, "workerinput", None)
    parts = workerinput.get(PARTS_DIR_KEY) if workerinput is not None else None
    if workerinput is not None and parts is None and (settings.results_json or settings.update_baselines):
        raise pytest.UsageError(
            "the xdist controller did not load bench/conftest.py, so no worker results can be merged: "
            "name bench/ on the command line (pytest bench ...)"
        )
    if "cuda" in settings.devices and settings.cuda_available:
        pin_cuda_device(_worker_id())  # before the fingerprint, so it names this worker's GPU
    instance = Gate(settings=settings, worker_id=_worker_id(), parts_dir=Path(parts) if parts else None)
    pytestconfig.stash[_GATE] = instance
    return instance


@pytest.fixture(scope="session")
def cuda_device() -> torch.device:
    """This worker's own GPU (gwN -> cuda:N mod count), made current so the worker touches no other GPU."""
    return pin_cuda_device(_worker_id())


@pytest.fixture
def case_device(case: GateCase, gate: Gate, request: pytest.FixtureRequest) -> torch.device:
    """The torch device of the case: cpu, or this worker's pinned GPU (checked runnable first)."""
    if case.device == "cuda" and not gate.settings.cuda_available:
        return torch.device("cpu")  # never used: check_runnable skips or fails the case first
    return request.getfixturevalue("cuda_device") if case.device == "cuda" else torch.device("cpu")


# ------------------------------------------------------------------------------------- benchmark + verdict


def benchmark_rounds(median_ms: float, budget_s: float) -> int:
    """Return pytest-benchmark's rounds: about a quarter of the timing budget, between 3 and 100."""
    if median_ms <= 0:
        return 100
    return max(3, min(100, int(budget_s * 250.0 / median_ms)))


def record_benchmark(benchmark: Any, gate: Gate, measured: Measured) -> None:
    """Time the variant once more through pytest-benchmark (for --benchmark-json/-autosave/compare).

    Under pytest-xdist pytest-benchmark disables itself and pedantic calls the target just once; the gate
    does not need it (its checks use the harness's interleaved timing).
    """
    case, device = measured.result, measured.device
    benchmark.extra_info.update(extra_info(case, gate))
    x = timing_input(case.batch_size, device)
    state = measured.built.state

    def target() -> None:
        with torch.inference_mode(), ieee_fp32(device):
            state(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

    rounds = benchmark_rounds(case.latency_ms.get("median", 0.0), gate.settings.budget_s)
    benchmark.pedantic(target, rounds=rounds, warmup_rounds=1, iterations=1)


def extra_info(case: CaseResult, gate: Gate) -> dict[str, Any]:
    """Return what the pytest-benchmark JSON carries besides timing: accuracy, size, speedup, environment."""
    return {
        "case_id": case.case_id,
        "variant": case.variant,
        "device": case.device,
        "batch_size": case.batch_size,
        "top1": case.top1,
        "top5": case.top5,
        "top1_change": case.top1_change,
        "top1_drop_p_value": case.extra.get("top1_drop_p_value"),
        "size_bytes": case.size_bytes,
        "compressed_size_bytes": case.compressed_size_bytes,
        "params": case.params,
        "nonzero_params": case.nonzero_params,
        "macs": case.macs,
        "peak_memory_bytes": case.peak_memory_bytes,
        "latency_ms": case.latency_ms,
        "speedup_vs_fp32": case.speedup_vs_fp32,
        "speedup_low": case.extra.get("speedup_low"),
        "speedup_high": case.extra.get("speedup_high"),
        "coverage": case.coverage,
        "env_key": gate.env_key(case.device),
        "environment": gate.environment,
    }


def judge(gate: Gate, measured: Measured, item: pytest.Item, benchmark: Any) -> None:
    """Run the three checks; fail with the message of every failed one (stale fails if thresholds say so)."""
    found = gate.checks(measured)
    stale_fails = gate.thresholds.stale_fails
    rows = [
        {
            "case_id": c.case_id,
            "metric": c.metric,
            "outcome": c.outcome,
            "source": c.source,
            "failed": c.failed(stale_fails),
            "line": failure_message(c),
        }
        for c in found
    ]
    item.user_properties.append(("gate_checks", rows))
    benchmark.extra_info["checks"] = {f"{c.metric}": c.outcome for c in found}
    failed = [c for c in found if c.failed(stale_fails)]
    if failed:
        pytest.fail("\n".join(failure_message(c) for c in failed), pytrace=False)


# ------------------------------------------------------------------------------ end of session: merge, write


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if hasattr(config, "workerinput"):
        return  # a worker: its part file is already written after every case
    parts = config.stash.get(_PARTS, None)
    summary = config.stash[_SUMMARY]
    try:
        if parts is not None:
            record = merge_parts(parts.glob("*.json"))
        else:
            local = config.stash.get(_GATE, None)
            record = local.run_record() if local is not None and local.cases else None
        if record is None:
            return
        settings = settings_of(config)
        if settings.results_json is not None:
            save_run(settings.results_json, record)
            summary.append(f"results: wrote {settings.results_json} ({len(record.cases)} cases)")
        if settings.update_baselines:
            summary.extend(_write_baselines(record, settings, interrupted=exitstatus == pytest.ExitCode.INTERRUPTED))
    except HarnessError as err:  # a clear message and a red run, not an INTERNALERROR traceback
        summary.append(f"ERROR writing the gate's results or baselines: {err}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    finally:
        if parts is not None:
            shutil.rmtree(parts, ignore_errors=True)


def _write_baselines(record: RunRecord, settings: GateSettings, *, interrupted: bool) -> list[str]:
    """Write one baseline per device kind measured; return the summary lines."""
    if interrupted:
        return ["baselines: NOT written (the run was interrupted); run --update-baselines again"]
    lines = []
    for device in sorted({c.device for c in record.cases}):
        cases = [c for c in record.cases if c.device == device]
        ok = [c for c in cases if c.status == "ok"]
        if not ok:
            lines.append(f"baselines: nothing to write for {device} (no case ran ok)")
            continue
        key = env_key(record.environment, device)
        provenance = make_provenance(record.environment, settings.command, device)
        path = write_baseline(settings.baselines_dir, key, ok, provenance)
        lines.append(
            f"baselines: wrote {path} ({len(ok)} ok of {len(cases)} {device} cases; entries of other cases kept)"
        )
    return lines


class GateReporter:
    """Collects every case's checks (from xdist workers' reports too) and prints the gate's summary."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.peak_load = load_average()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        self.peak_load = max(self.peak_load, load_average())
        for name, value in report.user_properties:
            if name == "gate_checks" and isinstance(value, list):
                self.config.stash[_CHECKS].extend(value)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        rows = self.config.stash.get(_CHECKS, [])
        summary = self.config.stash.get(_SUMMARY, [])
        if not rows and not summary:
            return
        tr = terminalreporter
        tr.section("regression gate")
        outcomes = Counter(r["outcome"] for r in rows)
        cases = len({r["case_id"] for r in rows})
        tr.write_line(f"{cases} cases judged; checks: " + ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())))
        no_baseline = sorted({r["case_id"] for r in rows if r["metric"] == "baseline" and r["source"] == "none"})
        if no_baseline:
            tr.write_line(
                f"baseline check SKIPPED for {len(no_baseline)} cases (accuracy and speedup still ran): no "
                f"baseline for this environment in {settings_of(self.config).baselines_dir}; create it with "
                f"{UPDATE_HINT}",
                yellow=True,
            )
        for r in rows:
            if r["outcome"] == "stale" and not r["failed"]:
                tr.write_line(r["line"], yellow=True)
        cpus = os.cpu_count() or 1
        if self.peak_load > BUSY_LOAD_PER_CPU * cpus:
            tr.write_line(
                f"the machine was busy: 1-minute load average up to {self.peak_load:.1f} on {cpus} CPUs during "
                "this run. Other processes competed for the CPU, so CPU latency, throughput and even speedup "
                "numbers are not comparable with a baseline taken on a quiet machine; rerun when it is idle.",
                yellow=True,
            )
        for line in summary:
            tr.write_line(line)
