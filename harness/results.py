"""The versioned JSON record of a run: cases, atomic writes, loading with migration, merging workers' runs."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ResultsError

SCHEMA_VERSION = 1

Migration = Callable[[dict[str, Any]], dict[str, Any]]
MIGRATIONS: dict[int, Migration] = {}
"""{from_version: function} turning a record of that version into one of the next version."""


@dataclass
class CaseResult:
    """What one case (a variant on a device at a batch size) measured; fractions are in [0, 1]."""

    variant: str
    device: str
    batch_size: int
    top1: float | None
    top5: float | None
    latency_ms: dict[str, float]
    throughput_ips: float | None
    size_bytes: int | None
    compressed_size_bytes: int | None
    params: int | None
    nonzero_params: int | None
    macs: int | None
    peak_memory_bytes: int | None = None
    speedup_vs_fp32: float | None = None
    top1_change: float | None = None
    coverage: dict[str, dict[str, float]] = field(default_factory=dict)
    compile_seconds: float | None = None
    eval_images: int | None = None
    correct: list[bool] | None = None
    notes: list[str] = field(default_factory=list)
    status: str = "ok"
    reason: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def case_id(self) -> str:
        """Return the id "<variant>-<device>-bs<batch size>" used as pytest id and baseline key."""
        return f"{self.variant}-{self.device}-bs{self.batch_size}"


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


# The JSON types each field accepts (None only where the annotation allows it).
_NUM = (int, float)
_CASE_TYPES: dict[str, tuple[type, ...]] = {
    "variant": (str,),
    "device": (str,),
    "batch_size": (int,),
    "latency_ms": (dict,),
    "coverage": (dict,),
    "notes": (list,),
    "status": (str,),
    "extra": (dict,),
    "top1": _NUM,
    "top5": _NUM,
    "throughput_ips": _NUM,
    "speedup_vs_fp32": _NUM,
    "top1_change": _NUM,
    "compile_seconds": _NUM,
    "size_bytes": (int,),
    "compressed_size_bytes": (int,),
    "params": (int,),
    "nonzero_params": (int,),
    "macs": (int,),
    "peak_memory_bytes": (int,),
    "eval_images": (int,),
    "reason": (str,),
}
_CASE_NULLABLE = {name for name, f in _CASE_FIELDS.items() if "None" in str(f.type)}


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
    for name, allowed in _CASE_TYPES.items():
        if name not in values:
            continue
        value = values[name]
        if value is None and name in _CASE_NULLABLE:
            continue
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise ResultsError(
                f"{where}: field {name!r} must be {' or '.join(t.__name__ for t in allowed)}, "
                f"got {type(value).__name__} {str(value)[:40]!r}"
            )
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


def write_json_atomic(path: Path, obj: object) -> None:
    """Write `obj` as JSON (indent 2, sorted keys, trailing newline) so that `path` is never half-written.

    The text goes to a temporary file in the same folder, is flushed and fsynced, then renamed over `path`;
    on any failure the temporary file is removed and an existing `path` is left as it was.
    """
    path = Path(path)
    try:
        text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    except (TypeError, ValueError) as exc:
        raise ResultsError(f"cannot write {path}: the data is not JSON-serializable ({exc})") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_name: str | None = None
    try:
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        ) as tmp:
            tmp_name = tmp.name
            # NamedTemporaryFile makes the file private (0600); keep the old file's mode, else rw-r--r--.
            os.fchmod(tmp.fileno(), path.stat().st_mode & 0o777 if path.exists() else 0o644)
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as exc:
        raise ResultsError(f"cannot write {path}: {exc}; check the folder exists and is writable") from exc
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def save_run(path: Path, record: RunRecord) -> None:
    """Write `record` to `path` atomically (see write_json_atomic)."""
    write_json_atomic(Path(path), record_to_dict(record))


def migrate(obj: dict[str, Any], where: str) -> dict[str, Any]:
    """Return `obj` brought up to SCHEMA_VERSION through MIGRATIONS; a newer or unknown version raises."""
    version = obj.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ResultsError(
            f"{where} has no integer 'schema_version' ({version!r}); it is not a harness run record"
        )
    if version > SCHEMA_VERSION:
        raise ResultsError(
            f"{where} has schema_version {version}, written by a newer harness (this one reads up to "
            f"{SCHEMA_VERSION}); upgrade the harness"
        )
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise ResultsError(
                f"{where} has schema_version {version}, and there is no migration from it; "
                "re-run the benchmark to make a fresh record"
            )
        obj = step(dict(obj))
        version += 1
        obj["schema_version"] = version
    return obj


def load_run(path: Path) -> RunRecord:
    """Return the RunRecord stored at `path`, migrated from an older schema if need be.

    Raises ResultsError, naming the path and the fix, for a missing file, truncated or non-JSON text, a
    document that is not an object or lacks schema_version or required fields, and a newer schema.
    """
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ResultsError(
            f"results file {where} does not exist; run the benchmark first or fix the path"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"cannot read results file {where}: {exc}") from exc
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(
            f"results file {where} is truncated or not JSON ({exc.msg} at line {exc.lineno}); "
            "delete it and re-run the benchmark"
        ) from exc
    if not isinstance(obj, dict):
        raise ResultsError(
            f"results file {where} holds a JSON {type(obj).__name__}, not an object; it is not a run"
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
