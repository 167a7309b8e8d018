"""The versioned JSON record of a run: cases, atomic writes, loading with migration, merging workers' runs."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ResultsError
from harness.jsonio import Migration, read_json_object, write_json_atomic
from harness.jsonio import migrate as migrate_document
from harness.metrics import MEASURED, REFERENCE, Metric, declared, find, measured, ratio_value

SCHEMA_VERSION = 3


def case_id(variant: str, device: str, batch_size: int) -> str:
    """Return the id "<variant>-<device>-bs<batch size>": the pytest id of a gate case and its baseline key."""
    return f"{variant}-{device}-bs{batch_size}"


def parse_case_id(text: str) -> tuple[str, str, int]:
    """Return (variant, device, batch size) of a case id such as fp32-cpu-bs1 (variant names hold no '-'); anything
    else raises ResultsError saying what a case id looks like."""
    variant, _, rest = text.rpartition("-")
    variant, _, device = variant.rpartition("-")
    if not variant or device not in ("cpu", "cuda") or not rest.startswith("bs") or not rest[2:].isdigit():
        raise ResultsError(f"{text!r} is not a case id: write VARIANT-DEVICE-bsN, e.g. fp32-cpu-bs1")
    return variant, device, int(rest[2:])


def _median_ms(case: CaseResult) -> float | None:
    value = case.latency_ms.get("median")
    return float(value) if isinstance(value, int | float) else None


def _latency_cell(case: CaseResult) -> str:
    latency = case.latency_ms
    return f"{latency['median']:.2f} (p90 {latency['p90']:.2f})" if "median" in latency and "p90" in latency else "-"


def _nonzero_fraction(case: CaseResult) -> float | None:
    return case.nonzero_params / case.params if case.params and case.nonzero_params is not None else None


def _least_coverage(case: CaseResult) -> float | None:
    """Return the least-covering technique's MAC fraction: what the variant really transformed."""
    fractions = [v["macs_fraction"] for k, v in case.coverage.items() if k != REFERENCE]
    return min(fractions) if fractions else None


def _coverage_cell(case: CaseResult) -> str:
    low = _least_coverage(case)
    return "-" if low is None else f"{low:.2%}" if low >= 0.01 else f"{low:.3%}"


def _is_variant(case: CaseResult) -> bool:
    return case.variant != REFERENCE


def _is_reference(case: CaseResult) -> bool:
    return case.variant == REFERENCE


@dataclass
class CaseResult:
    """What one case (a variant on a device at a batch size) measured; fractions are in [0, 1].

    A field declared with `measured(Metric(...))` is a metric: the table, `compare`, the report, the gate and
    pytest-benchmark's extra_info read it through METRICS (harness/metrics.py says how to add one).
    """

    variant: str
    device: str
    batch_size: int
    params: int | None
    top1: float | None = measured(Metric(
        "top1", "top-1", "fraction", "share of eval images whose top class is right", True, "accuracy"),
        required=True)
    top5: float | None = measured(Metric(
        "top5", "top-5", "fraction", "share of eval images with the right class in the top five", True,
        in_table=False), required=True)
    latency_ms: dict[str, float] = measured(Metric(
        "latency_ms", "latency ms", "ms", "median milliseconds of one call at the batch size (and its p90)", False,
        reader=_median_ms, cell=_latency_cell, in_compare=True), required=True)
    throughput_ips: float | None = measured(Metric(
        "throughput_ips", "img/s", "images/s", "images per second at the batch size", True, digits=1),
        required=True)
    size_bytes: int | None = measured(Metric(
        "size_bytes", "size MB", "bytes", "bytes of the saved state dict: what a deployment ships", False,
        "exact"), required=True)
    compressed_size_bytes: int | None = measured(Metric(
        "compressed_size_bytes", "gzip MB", "bytes", "the saved state dict through zlib level 6", False,
        "exact"), required=True)
    nonzero_params: int | None = measured(Metric(
        "nonzero_fraction", "non-zero", "fraction", "share of weight elements that are not zero", None,
        reader=_nonzero_fraction, digits=0), required=True)
    macs: int | None = measured(Metric(
        "macs", "GMACs", "count", "multiply-accumulates of one image through the float model", False, "exact",
        digits=3), required=True)
    peak_memory_bytes: int | None = measured(Metric(
        "peak_memory_bytes", "peak MB", "bytes", "weights plus the peak of one call's allocations", False,
        "memory"))
    speedup_vs_fp32: float | None = measured(Metric(
        "speedup_vs_fp32", "speedup", "ratio", "fp32's latency over the variant's, timed interleaved", True,
        "timing", reader=ratio_value("speedup_vs_fp32"), only=_is_variant, reference=True))
    top1_change: float | None = measured(Metric(
        "top1_change", "Δ top-1", "fraction", "top-1 minus fp32's on the same images", True, reference=True,
        signed=True))
    coverage: dict[str, dict[str, float]] = measured(Metric(
        "coverage", "coverage", "fraction", "MAC share of the layers the least-covering technique transformed",
        None, reader=_least_coverage, cell=_coverage_cell), default_factory=dict)
    build_seconds: float | None = measured(Metric(
        "build_seconds", "build s", "seconds", "seconds to build the variant from the fp32 model: its techniques "
        "applied (calibration, pruning and fine-tune, distillation, compilation), a cached fine-tune reused",
        None, digits=1, in_compare=True))
    compile_seconds: float | None = measured(Metric(
        "compile_seconds", "compile s", "seconds", "seconds of the compiler's first calls", None, digits=1,
        in_table=False))
    eval_images: int | None = None
    correct: list[bool] | None = None
    notes: list[str] = field(default_factory=list)
    status: str = "ok"
    reason: str | None = None
    extra: dict[str, object] = field(default_factory=dict)
    ratios: dict[str, dict[str, float]] = field(default_factory=dict)
    """The timing ratios the gate judges, each {"value", "low", "high", "log_se", "rounds"} (timing_stats)."""
    contention: float | None = None
    """The share of the machine's CPU time other processes took while the case was timed (machine.Contention)."""
    identity: dict[str, str] = field(default_factory=dict)
    """What the case's accuracy depends on: data spec, eval images, architecture, fp32 weights (hashes)."""
    checks: list[dict[str, object]] = field(default_factory=list)
    """The gate's checks of the case ({"metric", "outcome", "message", ...}); empty outside the gate."""
    confirmation: dict[str, object] | None = None
    """A failed timing check's fresh re-measurement: its ratios and contention."""

    @property
    def case_id(self) -> str:
        """Return the id "<variant>-<device>-bs<batch size>" used as pytest id and baseline key."""
        return case_id(self.variant, self.device, self.batch_size)


METRICS: tuple[Metric, ...] = declared(CaseResult, extra=(
    Metric("latency_vs_yardstick", "vs yardstick", "ratio",
           "fp32's latency over a fixed yardstick network's, timed interleaved: the model's speed without the host's "
           "speed", False, "timing", digits=3, reader=ratio_value("latency_vs_yardstick"), only=_is_reference,
           in_table=False),
))
"""Every metric a case records, in table order: the fields declared with `measured`, then the timing ratio
kept only in `ratios`."""


def get_metric(name: str) -> Metric:
    """Return the metric called `name` (any of METRICS); an unknown name lists the valid ones."""
    return find(METRICS, name)


@dataclass
class RunRecord:
    """One run: the environment it measured on and every case's result."""

    environment: dict[str, object]
    env_key: str
    cases: list[CaseResult]
    created: str
    command: str
    data: str
    model: str
    schema_version: int = SCHEMA_VERSION

    def case(self, case_id: str) -> CaseResult:
        """Return the case with `case_id`; a missing id raises ResultsError listing the ids present."""
        for case in self.cases:
            if case.case_id == case_id:
                return case
        ids = ", ".join(c.case_id for c in self.cases) or "none"
        raise ResultsError(f"no case {case_id!r} in this run; the cases are: {ids}")


CASE_STATUSES = ("ok", "skipped", "error")
_CASE_FIELDS = {f.name: f for f in dataclasses.fields(CaseResult)}
_RECORD_FIELDS = {f.name: f for f in dataclasses.fields(RunRecord)}


def _required(fields: dict[str, dataclasses.Field[Any]]) -> list[str]:
    return [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


def _encode_correct(correct: list[bool] | None) -> str | None:
    return None if correct is None else "".join("1" if c else "0" for c in correct)


def _decode_correct(value: object, where: str) -> list[bool] | None:
    if value is None:
        return None
    if isinstance(value, str) and set(value) <= {"0", "1"}:
        return [c == "1" for c in value]
    if isinstance(value, list) and all(isinstance(c, bool) for c in value):
        return list(value)
    raise ResultsError(f"{where}: 'correct' must be a string of 0s and 1s, got {str(value)[:40]!r}")


def case_to_dict(case: CaseResult) -> dict[str, Any]:
    """Return `case` as a JSON-ready dict, with `correct` packed into a '0'/'1' string."""
    out = {name: getattr(case, name) for name in _CASE_FIELDS}
    out["correct"] = _encode_correct(case.correct)
    return out


def _json_types(annotation: object) -> tuple[tuple[type, ...], bool]:
    """Return (the JSON types a field of this annotation accepts, whether it may be null)."""
    members = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    allowed: list[type] = []
    for member in members:
        if member is type(None):
            continue
        base = typing.get_origin(member) or member
        allowed.extend((int, float) if base is float else (base,))
    return tuple(dict.fromkeys(allowed)), type(None) in members


_CASE_TYPES = {name: _json_types(hint) for name, hint in typing.get_type_hints(CaseResult).items()}
"""Per field, the JSON types it accepts and whether it may be null, read from CaseResult's annotations."""
_SIGNED = {f.name for f in dataclasses.fields(CaseResult) if MEASURED in f.metadata and f.metadata[MEASURED].signed}


def case_from_dict(obj: object, where: str = "case") -> CaseResult:
    """Return the CaseResult stored in `obj`; a missing, unknown or mistyped field raises ResultsError."""
    if not isinstance(obj, dict):
        raise ResultsError(f"{where} must be a JSON object, got {type(obj).__name__}")
    missing = [name for name in _required(_CASE_FIELDS) if name not in obj]
    if missing:
        raise ResultsError(f"{where} is missing required field(s): {', '.join(missing)}")
    unknown = sorted(set(obj) - _CASE_FIELDS.keys())
    if unknown:
        raise ResultsError(
            f"{where} has unknown field(s) {', '.join(unknown)}; it was written by a different harness "
            "version (a new field needs a schema_version bump and a migration)"
        )
    values = dict(obj)
    for name, (allowed, nullable) in _CASE_TYPES.items():
        if name not in values or name == "correct":
            continue
        value = values[name]
        if value is None and nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise ResultsError(
                f"{where}: field {name!r} must be {' or '.join(t.__name__ for t in allowed)}, "
                f"got {type(value).__name__} {str(value)[:40]!r}"
            )
        number = value if isinstance(value, int | float) else None
        if number is not None and (not math.isfinite(number) or number < 0) and name not in _SIGNED:
            raise ResultsError(f"{where}: field {name!r} must be a finite number >= 0, got {value!r}")
    values["correct"] = _decode_correct(values.get("correct"), where)
    if values.get("status", "ok") not in CASE_STATUSES:
        raise ResultsError(
            f"{where}: status must be one of {', '.join(CASE_STATUSES)}, got {values['status']!r}"
        )
    return CaseResult(**values)


def record_to_dict(record: RunRecord) -> dict[str, Any]:
    """Return `record` as a JSON-ready dict."""
    out = {name: getattr(record, name) for name in _RECORD_FIELDS}
    out["cases"] = [case_to_dict(c) for c in record.cases]
    return out


def record_from_dict(obj: dict[str, Any], where: str) -> RunRecord:
    """Return the RunRecord in a current-version dict; missing or mistyped fields raise ResultsError."""
    missing = [name for name in _required(_RECORD_FIELDS) if name not in obj]
    if missing:
        raise ResultsError(
            f"{where} is missing required field(s): {', '.join(missing)}; it is not a run record"
        )
    unknown = sorted(set(obj) - _RECORD_FIELDS.keys())
    if unknown:
        raise ResultsError(
            f"{where} has unknown field(s) {', '.join(unknown)}; "
            "it was written by a different harness version"
        )
    for name in ("env_key", "created", "command", "data", "model"):
        if not isinstance(obj[name], str):
            raise ResultsError(f"{where}: field {name!r} must be a string, got {type(obj[name]).__name__}")
    if not isinstance(obj["environment"], dict):
        raise ResultsError(
            f"{where}: 'environment' must be an object, got {type(obj['environment']).__name__}"
        )
    if not isinstance(obj["cases"], list):
        raise ResultsError(f"{where}: 'cases' must be a list, got {type(obj['cases']).__name__}")
    cases = [case_from_dict(c, f"{where} case #{i}") for i, c in enumerate(obj["cases"])]
    return RunRecord(**{**obj, "cases": cases})


def _migrate_1_to_2(obj: dict[str, Any]) -> dict[str, Any]:
    """Version 2 keeps the judged timing ratios in `ratios` (they were speedup_low/high in `extra`)."""
    cases = []
    for case in obj.get("cases") or []:
        if not isinstance(case, dict):
            cases.append(case)
            continue
        case = dict(case)
        extra = dict(case.get("extra") or {}) if isinstance(case.get("extra"), dict) else case.get("extra")
        low = extra.pop("speedup_low", None) if isinstance(extra, dict) else None
        high = extra.pop("speedup_high", None) if isinstance(extra, dict) else None
        value = case.get("speedup_vs_fp32")
        numbers = [v for v in (value, low, high) if isinstance(v, int | float) and not isinstance(v, bool) and v > 0]
        if len(numbers) == 3:
            value, low, high = numbers
            rounds = (case.get("latency_ms") or {}).get("rounds", 0) if isinstance(case.get("latency_ms"), dict) else 0
            case["ratios"] = {
                "speedup_vs_fp32": {
                    "value": value,
                    "low": low,
                    "high": high,
                    "log_se": (math.log(high) - math.log(low)) / (2 * 1.959964),
                    "rounds": rounds,
                }
            }
        case["extra"] = extra
        cases.append(case)
    return {**obj, "cases": cases}


def _migrate_2_to_3(obj: dict[str, Any]) -> dict[str, Any]:
    """Version 3 records the build time as the metric `build_seconds` (it was an untyped `extra` entry)."""
    cases = []
    for case in obj.get("cases") or []:
        if isinstance(case, dict) and isinstance(case.get("extra"), dict) and "build_seconds" in case["extra"]:
            extra = dict(case["extra"])
            case = {**case, "build_seconds": extra.pop("build_seconds"), "extra": extra}
        cases.append(case)
    return {**obj, "cases": cases}


MIGRATIONS: dict[int, Migration] = {1: _migrate_1_to_2, 2: _migrate_2_to_3}
"""{from_version: function} turning a record of that version into one of the next version."""


def save_run(path: Path, record: RunRecord) -> None:
    """Write `record` to `path` atomically (jsonio.write_json_atomic)."""
    write_json_atomic(Path(path), record_to_dict(record))


def migrate(obj: dict[str, Any], where: str) -> dict[str, Any]:
    """Return `obj` brought up to SCHEMA_VERSION through MIGRATIONS; a newer or unknown version raises."""
    return migrate_document(obj, where, "harness run record", SCHEMA_VERSION, MIGRATIONS)


def load_run(path: Path) -> RunRecord:
    """Return the RunRecord stored at `path`, migrated from an older schema if need be.

    Raises ResultsError, naming the path and the fix, for a missing file, truncated or non-JSON text, a
    document that is not an object or lacks schema_version or required fields, and a newer schema.
    """
    where = str(path)
    obj = read_json_object(Path(path), "results file", "run the benchmark (again) to write it")
    if "benchmarks" in obj and "machine_info" in obj and "schema_version" not in obj:
        raise ResultsError(
            f"{where} is a pytest-benchmark file (--benchmark-json), which keeps timing but not the gate's per-image "
            "results; compare the results JSON the same run wrote with --results-json (nox writes both, e.g. "
            "results/gpu-bench.json beside results/gpu-bench-benchmark.json)"
        )
    return record_from_dict(migrate(obj, where), where)


def merge_runs(records: Sequence[RunRecord]) -> RunRecord:
    """Return one record holding every case of `records` (e.g. one per pytest-xdist worker) exactly once.

    A case id found in two records must be identical in both, else ResultsError. The environment is the
    first record's, plus a "workers" list with each record's env_key, devices and environment; created is the
    earliest. Records of different data or models are refused.
    """
    if not records:
        raise ResultsError("merge_runs needs at least one run record; got none")
    first = records[0]
    for rec in records[1:]:
        if (rec.data, rec.model) != (first.data, first.model):
            raise ResultsError(
                f"cannot merge runs of different data/model: {first.data!r}/{first.model!r} and "
                f"{rec.data!r}/{rec.model!r}; merge only the workers of one run"
            )
    cases: dict[str, CaseResult] = {}
    for rec in records:
        for case in rec.cases:
            seen = cases.get(case.case_id)
            if seen is None:
                cases[case.case_id] = case
            elif seen != case:
                raise ResultsError(
                    f"case {case.case_id!r} appears in two runs with different results; "
                    "each worker must run a distinct set of cases"
                )
    workers = [
        {
            "env_key": rec.env_key,
            "devices": sorted({c.device for c in rec.cases}),
            "environment": rec.environment,
        }
        for rec in records
    ]
    return RunRecord(
        environment={**first.environment, "workers": workers},
        env_key=first.env_key,
        cases=list(cases.values()),
        created=min(rec.created for rec in records),
        command=first.command,
        data=first.data,
        model=first.model,
    )
