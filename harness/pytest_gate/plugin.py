"""The regression gate's pytest plugin: options, one fixture, the parametrization, and the reporter.

The gate itself (cases, checks, baselines, statistics) is the library harness.gate; this file only maps pytest
onto it. One test per case (test_gate.py beside it): its id is the case id, it measures the case once and fails with
every failed check. An option the command line leaves unset takes the project's [tool.resnet-gate] value
(harness/project_config.py, from the pyproject.toml of pytest's rootdir), else its built-in default.
Multi-GPU: `-n <GPUs> --device cuda` pins worker gwN to cuda:(N mod count); each worker writes its part of the run
record after every case, and the controller merges them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

from harness import preflight, project_config, techniques
from harness.data_spec import parse_spec
from harness.env import env_key, fingerprint
from harness.errors import HarnessError
from harness.gate.cases import (
    DEFAULT_BATCH_SIZES,
    DEVICE_CHOICES,
    QUICK_VARIANTS,
    GateCase,
    parse_batch_sizes,
    resolve_devices,
    select_variants,
    worker_cuda_index,
)
from harness.gate.runner import Gate, GateSettings
from harness.gate.store import baseline_key, load_baseline
from harness.gate.summary import summary_lines
from harness.gate.thresholds import load_thresholds
from harness.machine import available_cpus
from harness.model_spec import DEFAULT_MODEL, MODEL_FORMS
from harness.models import check_model, check_weights
from harness.project_keys import UNJUDGED_POLICIES
from harness.pytest_gate.command import typed_command
from harness.results import load_run, merge_runs, save_run

DEFAULT_BUDGET_S = 1.5
"""Seconds of interleaved timing per case (batch-1 cases get 30-100 rounds; large batches their minimum rounds)."""
REQUIRE_GPU_ENV = "HARNESS_REQUIRE_GPU"
PARTS_DIR_KEY = "gate_parts_dir"
_SETTINGS = pytest.StashKey[GateSettings]()
_GATE = pytest.StashKey[Gate]()
_PARTS = pytest.StashKey[Path]()
_ROWS = pytest.StashKey[list[dict[str, Any]]]()
_SUMMARY = pytest.StashKey[list[str]]()
_PLANNED = pytest.StashKey[list[GateCase]]()
_TAKEN = pytest.StashKey[str]()
GATE_MARKERS = (
    "gpu: needs a CUDA device (skipped without one unless --require-gpu)",
    "bench: a case of the regression gate",
    "quick: a case of the reduced gate (fp32, dynamic_int8, prune_unstructured at batch 1): -m quick",
)
BUILT_IN: dict[str, object] = {
    "device": "auto", "data": "digits", "model": DEFAULT_MODEL, "bench_variants": "all", "unjudged": "fail"
}
"""The defaults of the options [tool.resnet-gate] may set (baselines_dir's is the project's baselines/ folder)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gate", "regression gate (resnet-gate; [tool.resnet-gate] in pyproject.toml sets the "
                            "defaults of --device, --data, --model, --weights, --bench-variants, --bench-batch-sizes, "
                            "--baselines-dir, --thresholds and --unjudged)")
    add = group.addoption
    add("--device", choices=DEVICE_CHOICES, default=None,
        help="devices to gate: cpu, cuda, all, or auto = cuda if present else cpu (default: auto)")
    add("--require-gpu", action="store_true", default=False,
        help=f"fail (not skip) cuda cases when CUDA is missing; also {REQUIRE_GPU_ENV}=1 (default: off)")
    add("--data", default=None, help="data spec: digits, imagenet:PATH or folder:PATH (default: digits)")
    add("--model", default=None,
        help=f"the model to gate: {MODEL_FORMS} (default: {DEFAULT_MODEL})")
    add("--weights", default=None, help="checkpoint PATH or 'imagenet' (default: the model the harness trains)")
    add("--bench-variants", default=None, help="comma list of variants or presets, or all (default: all)")
    add("--bench-batch-sizes", default=None, help="comma list of batch sizes (default: 1,32 on cpu, 1,256 on cuda)")
    add("--bench-budget", type=float, default=DEFAULT_BUDGET_S,
        help=f"seconds of interleaved timing per case (default: {DEFAULT_BUDGET_S})")
    add("--bench-threads", type=int, default=None,
        help="torch threads for every case, fixed and recorded (default: the CPUs this process may use)")
    add("--baselines-dir", type=Path, default=None,
        help="folder of <env-key>.json (default: baselines/ in pytest's rootdir, the project's folder)")
    add("--update-baselines", action="store_true", default=False,
        help="write this run as this environment's baseline at the end; refuses a dirty tree or a busy machine "
        "(default: off)")
    add("--force-baselines", action="store_true", default=False,
        help="with --update-baselines: write even from a dirty tree or a busy machine, and say so (default: off)")
    add("--results-json", type=Path, default=None, help="write the run record of all cases here (default: none)")
    add("--thresholds", type=Path, default=None, help="thresholds file (default: harness/gate/thresholds.json)")
    add("--unjudged", choices=UNJUDGED_POLICIES, default=None,
        help="what a planned check that could not be judged (no baseline, a busy machine, a re-measurement that did "
        "not complete, ...) does: fail the case, listing it, or warn and pass on what was judged (default: fail)")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def take_project_defaults(config: pytest.Config) -> None:
    """Give each gate option the command line left unset the project's [tool.resnet-gate] value, else its built-in
    default; remember what the table gave, for the report header. A broken table is one usage-error line."""
    try:
        project = project_config.load(config.rootpath)
    except HarnessError as err:
        raise pytest.UsageError(str(err)) from err
    table = project.defaults_for("gate")
    if isinstance(table.get("bench_batch_sizes"), list):  # the option is the flag's text, parsed in settings_of
        table["bench_batch_sizes"] = ",".join(str(size) for size in table["bench_batch_sizes"])
    built_in = {**BUILT_IN, "baselines_dir": config.rootpath / "baselines"}
    unset = [dest for dest in dict.fromkeys([*table, *built_in]) if getattr(config.option, dest, None) is None]
    for dest in unset:
        setattr(config.option, dest, table[dest] if dest in table else built_in[dest])
    taken = [key for key, dest in project_config.COMMANDS["gate"].items() if dest in table and dest in unset]
    config.stash[_TAKEN] = f"{project.source}: {', '.join(taken)}" if taken else ""


def settings_of(config: pytest.Config) -> GateSettings:
    """Return this run's settings, parsed once; a bad option is a pytest.UsageError that names the fix."""
    if _SETTINGS in config.stash:
        return config.stash[_SETTINGS]
    opt = config.getoption
    require_gpu = bool(opt("require_gpu")) or _env_flag(REQUIRE_GPU_ENV)
    cuda = torch.cuda.is_available()
    if opt("force_baselines") and not opt("update_baselines"):
        raise pytest.UsageError("--force-baselines only makes sense with --update-baselines")
    try:  # every option checked before any case is collected: a wrong one is one line, not an error per case
        sizes = parse_batch_sizes(opt("bench_batch_sizes")) if opt("bench_batch_sizes") else None
        variants = select_variants(opt("bench_variants"))
        devices = resolve_devices(opt("device"), cuda_available=cuda, require_gpu=require_gpu)
        budget = preflight.number_in_range(
            float(opt("bench_budget")), "--bench-budget", minimum=0.0, maximum=3600.0, example="1.5"
        )
        cpus = available_cpus()
        threads = cpus if opt("bench_threads") is None else preflight.thread_count(
            opt("bench_threads"), "--bench-threads", cpus=cpus
        )
        kind, _folder = parse_spec(opt("data"))
        arch = check_model(opt("model")).arch  # torchvision:resnet18 is resnet18: the default's baselines still apply
        check_weights(opt("weights"), arch, kind)
        if opt("results_json") is not None:
            preflight.output_file(opt("results_json"), "--results-json")
        if opt("update_baselines"):
            preflight.output_folder(opt("baselines_dir"), "--baselines-dir")
        elif Path(opt("baselines_dir")).exists():
            preflight.input_folder(opt("baselines_dir"), "--baselines-dir", "give the folder of <env-key>.json")
        if opt("thresholds") is not None:
            preflight.input_file(
                opt("thresholds"), "--thresholds", "give a thresholds file, e.g. a copy of harness/gate/thresholds.json"
            )
        load_thresholds(opt("thresholds"))
        check_baselines(Path(opt("baselines_dir")), devices, threads=threads, cuda_available=cuda, arch=arch)
    except HarnessError as err:
        raise pytest.UsageError(str(err)) from err
    config.stash[_SETTINGS] = GateSettings(
        devices=devices, variants=variants,
        batch_sizes={d: sizes or DEFAULT_BATCH_SIZES[d] for d in DEFAULT_BATCH_SIZES},
        budget_s=budget, threads=threads, require_gpu=require_gpu, cuda_available=cuda, data=opt("data"),
        weights=opt("weights"), model=arch, baselines_dir=Path(opt("baselines_dir")), thresholds_path=opt("thresholds"),
        update_baselines=bool(opt("update_baselines")), force_baselines=bool(opt("force_baselines")),
        results_json=opt("results_json"), command=typed_command(config.invocation_params.args),
        xdist_workers=int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0), unjudged=opt("unjudged"),
    )
    return config.stash[_SETTINGS]


def check_baselines(
    folder: Path, devices: tuple[str, ...], *, threads: int, cuda_available: bool, arch: str = "resnet18"
) -> None:
    """Read this environment's baseline of `arch` on every gated device now: a broken one fails the run in one
    line."""
    fp = {**fingerprint(), "torch_threads": threads}  # the thread count the Gate will fix
    for device in devices:
        if device == "cpu" or cuda_available:
            load_baseline(folder, baseline_key(env_key(fp, device), arch))


def pytest_configure(config: pytest.Config) -> None:
    # The gate's markers, declared here so a run in any project is strict-clean (-m quick: the reduced gate).
    for line in GATE_MARKERS:
        config.addinivalue_line("markers", line)
    take_project_defaults(config)
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    config.stash[_ROWS], config.stash[_SUMMARY] = [], []
    config.pluginmanager.register(GateReporter(config), "gate-reporter")
    if not hasattr(config, "workerinput") and config.pluginmanager.hasplugin("xdist") and \
            config.getoption("dist", "no") != "no":
        results = config.getoption("results_json")
        parent = Path(results).resolve().parent if results else None
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        config.stash[_PARTS] = Path(tempfile.mkdtemp(prefix=".gate-parts-", dir=parent))


def pytest_report_header(config: pytest.Config) -> str | None:
    """Say which project file set the gate's defaults (as `run` says it on stderr)."""
    taken = config.stash.get(_TAKEN, "")
    return f"gate defaults from {taken}" if taken else None


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Tell each xdist worker where to write its part of the run record."""
    parts = node.config.stash.get(_PARTS, None)
    if parts is not None:
        node.workerinput[PARTS_DIR_KEY] = str(parts)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames:
        return
    params = []
    for case in settings_of(metafunc.config).cases:
        marks = [pytest.mark.bench] + [pytest.mark.gpu] * (case.device == "cuda") + [pytest.mark.quick] * case.quick
        params.append(pytest.param(case, id=case.case_id, marks=marks))
    metafunc.parametrize("case", params)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = sorted(set(QUICK_VARIANTS) - set(techniques.variants()))
    if missing:
        raise pytest.UsageError(f"harness.gate.cases.QUICK_VARIANTS names unregistered variants: {missing}")
    for item in items:
        if "cuda_device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.gpu)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Remember the selected cases: they, not every parametrized one, make the run's family of timing checks."""
    params = (getattr(item, "callspec", None) for item in session.items)
    session.config.stash[_PLANNED] = [p.params["case"] for p in params if p is not None and "case" in p.params]


def _worker_id() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "master")


@pytest.fixture(scope="session")
def gate(pytestconfig: pytest.Config) -> Gate:
    """This process's one Gate (sessions, baselines, the Holm family of its timing checks)."""
    settings = settings_of(pytestconfig)
    if "cuda" in settings.devices and settings.cuda_available:  # before the fingerprint names this worker's GPU
        torch.cuda.set_device(worker_cuda_index(_worker_id(), torch.cuda.device_count()))
    pytestconfig.stash[_GATE] = Gate(settings, planned=pytestconfig.stash.get(_PLANNED, None))
    return pytestconfig.stash[_GATE]


@pytest.fixture
def case_device(case: GateCase, gate: Gate) -> torch.device:
    """The torch device of the case: cpu, or this worker's pinned GPU."""
    if case.device == "cuda" and gate.settings.cuda_available:
        return torch.device("cuda", worker_cuda_index(_worker_id(), torch.cuda.device_count()))
    return torch.device("cpu")


def pytest_runtest_teardown(item: pytest.Item) -> None:
    """Under xdist, rewrite this worker's part of the run record after every test (a crash loses one case)."""
    parts = getattr(item.config, "workerinput", {}).get(PARTS_DIR_KEY)
    gate = item.config.stash.get(_GATE, None)
    if parts and gate is not None and gate.cases:
        save_run(Path(parts) / f"{_worker_id()}.json", gate.run_record())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if hasattr(config, "workerinput"):
        return
    parts, summary = config.stash.get(_PARTS, None), config.stash[_SUMMARY]
    try:
        local = config.stash.get(_GATE, None)
        if parts is not None:
            records = [load_run(p) for p in sorted(parts.glob("*.json"))]
            record = merge_runs(records) if records else None
        else:
            record = local.run_record() if local is not None and local.cases else None
        settings = settings_of(config)
        if record is None:
            return
        if settings.results_json is not None:
            save_run(settings.results_json, record)
            summary.append(f"results: wrote {settings.results_json} ({len(record.cases)} cases)")
        if settings.update_baselines and exitstatus == pytest.ExitCode.INTERRUPTED:
            summary.append("baselines: NOT written (the run was interrupted); run --update-baselines again")
        elif settings.update_baselines:
            gate = local or Gate(settings)
            summary += [f"baselines: wrote {path}" for path in gate.write_baselines(record)]
    except HarnessError as err:  # a clear line and a red run, not an INTERNALERROR traceback
        summary.append(f"ERROR writing the gate's results or baselines: {err}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    finally:
        if parts is not None:
            shutil.rmtree(parts, ignore_errors=True)


class GateReporter:
    """Collects every case's checks (from xdist workers' reports too) and prints the gate's summary."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            for name, value in report.user_properties:
                if name == "gate_checks" and isinstance(value, list):
                    self.config.stash[_ROWS].extend(value)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        settings = settings_of(self.config)
        rows: list[dict[str, Any]] = self.config.stash.get(_ROWS, [])
        lines = summary_lines(rows, baselines_dir=str(settings.baselines_dir), policy=settings.unjudged)
        extra = self.config.stash.get(_SUMMARY, [])
        if lines or extra:
            terminalreporter.section("regression gate")
            for text, warn in [*lines, *((line, False) for line in extra)]:
                terminalreporter.write_line(text, yellow=warn)
