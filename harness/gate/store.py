"""The baseline store: one JSON file per environment key, built from one or more fresh-process gate runs.

A baseline entry keeps, per case, the deterministic values (sizes, MACs, accuracy and its per-image bits), the
identity they belong to (data, eval images, architecture, fp32 weights), and one value per run of every timing
ratio, so the gate can judge a new run against the spread the baseline's own runs showed.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.env import env_key as key_of
from harness.errors import ResultsError
from harness.gate.metrics import METRICS, TIMING_METRICS
from harness.jsonio import Migration, finite_number, migrate, read_json_object, write_json_atomic
from harness.results import CaseResult, RunRecord
from harness.timing_stats import RunSpread, run_spread

SCHEMA_VERSION = 3
UPDATE_HINT = "`nox -s update_baselines` (or `python -m harness gate -p no:xdist --update-baselines`)"
"""How to record a baseline, in every project: the gate command works wherever the harness is installed."""
VALUE_METRICS = tuple(m.name for m in METRICS if m.judged != "timing")
IDENTITY_KEYS = ("data", "eval_ids_sha256", "arch", "weights_sha256")


@dataclass(frozen=True)
class TimingRuns:
    """One timing ratio of one case, one value per fresh-process baseline run, with each run's own log-SE and the
    rounds it was timed for (None in a baseline written before schema 3)."""

    values: tuple[float, ...]
    log_se: tuple[float, ...]
    rounds: tuple[int, ...] | None = None

    @property
    def within_var_per_round(self) -> float | None:
        """Return the within-process variance of one round's log ratio (a run's log-SE^2 times its rounds, averaged
        over the runs), or None without the rounds."""
        if not self.rounds:
            return None
        return sum(se**2 * r for se, r in zip(self.log_se, self.rounds, strict=True)) / len(self.rounds)

    def spread(self, *, prior_sd: float, prior_dof: float) -> RunSpread:
        """Return where a run's log value lands (timing_stats.run_spread over these runs and the prior)."""
        return run_spread([math.log(v) for v in self.values], prior_sd=prior_sd, prior_dof=prior_dof)

    @property
    def center(self) -> float:
        """Return the geometric mean of the runs' values."""
        return math.exp(sum(math.log(v) for v in self.values) / len(self.values))


MIGRATIONS: dict[int, Migration] = {2: lambda obj: obj}
"""{from_version: step}: version 3 lets a timing ratio keep each run's rounds (optional), so a version-2 file reads
as it is."""


@dataclass(frozen=True)
class BaselineEntry:
    """What the baseline keeps of one case (see the module docstring)."""

    identity: Mapping[str, str]
    eval_images: int | None
    correct: str | None
    values: Mapping[str, float | None]
    timing: Mapping[str, TimingRuns]
    latency_median_ms: tuple[float, ...] = ()
    runs: tuple[Mapping[str, Any], ...] = ()

    def correct_bits(self) -> list[bool] | None:
        """Return the per-image correctness as booleans, or None when the entry has none."""
        return None if not self.correct else [c == "1" for c in self.correct]

    def to_dict(self) -> dict[str, Any]:
        """Return the entry as stored in the baseline file."""
        return {
            "identity": dict(self.identity),
            "eval_images": self.eval_images,
            "correct": self.correct,
            **{name: self.values.get(name) for name in VALUE_METRICS},
            "timing": {name: {"values": list(t.values), "log_se": list(t.log_se),
                              **({"rounds": list(t.rounds)} if t.rounds else {})} for name, t in self.timing.items()},
            "latency_median_ms": list(self.latency_median_ms),
            "runs": [dict(r) for r in self.runs],
        }


@dataclass
class Baseline:
    """The stored reference of one environment: case_id -> entry, with the provenance of its last write."""

    env_key: str
    path: Path
    provenance: dict[str, Any]
    entries: dict[str, BaselineEntry] = field(default_factory=dict)


DEFAULT_ARCH = "resnet18"


def baseline_key(env_key: str, arch: str) -> str:
    """Return the key of the baseline file of `arch` in an environment: the env key for the default model (as
    before), `<env key>+<arch>` for any other, so models never judge against, or overwrite, each other's entries."""
    return env_key if arch == DEFAULT_ARCH else f"{env_key}+{re.sub(r'[^A-Za-z0-9._-]', '_', arch)}"


def records_arch(records: Sequence[RunRecord]) -> str:
    """Return the one model (identity `arch`) of the runs' cases; runs of several models raise ResultsError."""
    archs = {c.identity["arch"] for r in records for c in r.cases if c.identity.get("arch")}
    if len(archs) > 1:
        raise ResultsError(f"the runs are of different models ({', '.join(sorted(archs))}): one baseline each")
    return archs.pop() if archs else DEFAULT_ARCH


def baseline_path(directory: Path, env_key: str) -> Path:
    """Return `<directory>/<env_key>.json`."""
    return Path(directory) / f"{env_key}.json"


# ------------------------------------------------------------------------------------------- reading

_ENTRY_FIELDS = frozenset({"identity", "eval_images", "correct", "timing", "latency_median_ms", "runs", *VALUE_METRICS})


def _entry_from_dict(obj: object, where: str) -> BaselineEntry:
    """Return the entry in `obj`; a missing, unknown, non-finite, negative or inconsistent field raises."""
    if not isinstance(obj, dict):
        raise ResultsError(f"{where} must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - _ENTRY_FIELDS)
    missing = sorted({"identity", "timing", "runs"} - set(obj))
    if unknown or missing:
        raise ResultsError(f"{where}: unknown fields {unknown}, missing fields {missing}")
    identity = obj["identity"]
    if not isinstance(identity, dict) or not all(isinstance(v, str) for v in identity.values()):
        raise ResultsError(f"{where}: identity must be an object of strings, got {str(identity)[:80]!r}")
    values: dict[str, float | None] = {}
    for name in VALUE_METRICS:
        value = obj.get(name)
        values[name] = None if value is None else finite_number(value, f"{where}: {name}")
    if values["top1"] is not None and values["top1"] > 1.0:
        raise ResultsError(f"{where}: top1 must be a fraction in [0, 1], got {values['top1']!r}")
    eval_images, bits = obj.get("eval_images"), obj.get("correct")
    bad_count = isinstance(eval_images, bool) or not isinstance(eval_images, int) or eval_images < 1
    if eval_images is not None and bad_count:
        raise ResultsError(f"{where}: eval_images must be a positive integer, got {eval_images!r}")
    if bits is not None:
        if not isinstance(bits, str) or not set(bits) <= {"0", "1"}:
            raise ResultsError(f"{where}: correct must be a string of 0s and 1s, got {str(bits)[:40]!r}")
        if len(bits) != eval_images:
            raise ResultsError(f"{where}: correct holds {len(bits)} images but eval_images is {eval_images!r}")
    runs = obj["runs"]
    if not isinstance(runs, list) or not runs or not all(isinstance(r, dict) for r in runs):
        raise ResultsError(f"{where}: runs must be a non-empty list of objects (one per baseline run)")
    timing: dict[str, TimingRuns] = {}
    section = obj["timing"]
    if not isinstance(section, dict) or not set(section) <= {m.name for m in TIMING_METRICS}:
        raise ResultsError(f"{where}: timing must map {[m.name for m in TIMING_METRICS]} to runs")
    for name, spec in section.items():
        at = f"{where}: timing.{name}"
        if not isinstance(spec, dict) or not {"values", "log_se"} <= set(spec) <= {"values", "log_se", "rounds"}:
            raise ResultsError(f"{at} must be {{'values': [...], 'log_se': [...], 'rounds': [...] (optional)}}")
        ratios, errors, rounds = spec["values"], spec["log_se"], spec.get("rounds")
        if not isinstance(ratios, list) or not isinstance(errors, list) or len(ratios) != len(errors) or not ratios:
            raise ResultsError(f"{at}: values and log_se must be lists of the same length")
        if len(ratios) != len(runs):
            raise ResultsError(f"{at} has {len(ratios)} values for {len(runs)} runs")
        if rounds is not None and (not isinstance(rounds, list) or len(rounds) != len(ratios) or not all(
                isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rounds)):
            raise ResultsError(f"{at}.rounds must be positive integers, one per run, got {str(rounds)[:60]!r}")
        checked = tuple(finite_number(v, f"{at}.values") for v in ratios)
        if any(v <= 0 for v in checked):
            raise ResultsError(f"{at}.values must be positive ratios, got {ratios!r}")
        timing[name] = TimingRuns(checked, tuple(finite_number(v, f"{at}.log_se") for v in errors),
                                  None if rounds is None else tuple(rounds))
    latency = obj.get("latency_median_ms", [])
    if not isinstance(latency, list):
        raise ResultsError(f"{where}: latency_median_ms must be a list (one per run)")
    return BaselineEntry(
        identity=dict(identity),
        eval_images=eval_images,
        correct=bits,
        values=values,
        timing=timing,
        latency_median_ms=tuple(finite_number(v, f"{where}: latency_median_ms") for v in latency),
        runs=tuple(runs),
    )


def load_baseline(directory: Path, env_key: str) -> Baseline | None:
    """Return the baseline of `env_key` in `directory`, or None when there is none.

    A corrupt file, one of another schema, one whose env_key differs from its name, or an entry with a bad value
    raises ResultsError naming the file and the fix.
    """
    path = baseline_path(directory, env_key)
    if not path.exists():
        return None
    fix = f"restore it from git, or delete it and record it again with {UPDATE_HINT}"
    obj = migrate(read_json_object(path, "baseline file", fix), str(path), "baseline file", SCHEMA_VERSION, MIGRATIONS)
    if obj.get("env_key") != env_key:
        raise ResultsError(f"baseline file {path} is for env_key {obj.get('env_key')!r}, not {env_key!r}; {fix}")
    entries, provenance = obj.get("cases"), obj.get("provenance")
    if not isinstance(entries, dict) or not isinstance(provenance, dict):
        raise ResultsError(f"baseline file {path} needs 'cases' and 'provenance' objects; {fix}")
    checked = {cid: _entry_from_dict(entry, f"baseline file {path} case {cid!r}") for cid, entry in entries.items()}
    return Baseline(env_key=env_key, path=path, provenance=provenance, entries=checked)


# ------------------------------------------------------------------------------------------- building


def hygiene_problems(records: Sequence[RunRecord], busy_limit: float) -> list[str]:
    """Return why these runs should not become a baseline (empty when they may): a dirty tree, runs of different
    commits, a busy machine, timing taken under pytest-xdist."""
    problems = []
    commits = {r.environment.get("git_commit") for r in records}
    if any(r.environment.get("git_dirty") is not False for r in records):
        problems.append("a run was made from a dirty (or unknown) git tree: commit, so the baseline names its code")
    if len(commits) > 1:
        problems.append(f"the runs are of different commits ({', '.join(sorted(map(str, commits)))})")
    for record in records:
        workers = record.environment.get("xdist_workers")
        if isinstance(workers, int) and workers > 1:
            problems.append(f"a run was timed under pytest-xdist ({workers} workers share the CPU): use -p no:xdist")
        busy = [
            f"{c.case_id} ({c.contention:.0%})"
            for c in record.cases
            if c.status == "ok" and c.contention is not None and c.contention > busy_limit
        ]
        if busy:
            problems.append(
                f"the machine was busy while cases were timed (others took more than {busy_limit:.0%} of the CPU): "
                + ", ".join(busy[:6])
            )
    return problems


def entry_of(cases: Sequence[CaseResult], records: Sequence[RunRecord]) -> BaselineEntry:
    """Return the entry of one case measured ok in each of `records` (one CaseResult per run, same order).

    The runs must agree on the identity and on the deterministic sizes; accuracy comes from the first run.
    """
    first = cases[0]
    for case in cases[1:]:
        if case.identity != first.identity:
            raise ResultsError(
                f"{first.case_id}: the runs measured different models or data ({first.identity} and "
                f"{case.identity}); record a baseline from runs of one model"
            )
        for metric in (m for m in METRICS if m.judged == "exact"):
            if metric.read(case) != metric.read(first):
                raise ResultsError(
                    f"{first.case_id}: {metric.name} differs between runs ({metric.read(first)} and "
                    f"{metric.read(case)}): the technique is not deterministic; fix it before recording a baseline"
                )
    timing = {}
    for metric in TIMING_METRICS:
        ratios = [c.ratios.get(metric.name) for c in cases]
        if all(isinstance(r, dict) and r.get("value") for r in ratios):
            rounds = [r.get("rounds") for r in ratios if r]
            timing[metric.name] = TimingRuns(
                tuple(float(r["value"]) for r in ratios if r),
                tuple(float(r.get("log_se", 0.0)) for r in ratios if r),
                tuple(int(n) for n in rounds if isinstance(n, int | float)) if all(
                    isinstance(n, int | float) and n >= 1 for n in rounds) else None,
            )
    values = {m.name: m.read(first) for m in METRICS if m.judged in ("accuracy", "exact")}
    for metric in (m for m in METRICS if m.judged == "memory"):  # nearly deterministic: the runs' median
        measured = sorted(v for v in (metric.read(c) for c in cases) if v is not None)
        values[metric.name] = measured[len(measured) // 2] if measured else None
    return BaselineEntry(
        identity=dict(first.identity),
        eval_images=first.eval_images,
        correct=None if first.correct is None else "".join("1" if c else "0" for c in first.correct),
        values=values,
        timing=timing,
        latency_median_ms=tuple(float(c.latency_ms["median"]) for c in cases if "median" in c.latency_ms),
        runs=tuple(
            {"created": r.created, "git_commit": r.environment.get("git_commit"), "contention": c.contention}
            for c, r in zip(cases, records, strict=True)
        ),
    )


def entries_of(records: Sequence[RunRecord], device: str) -> dict[str, BaselineEntry]:
    """Return an entry for every case of `device` that ran ok in every one of `records` that holds it."""
    ids = list(dict.fromkeys(c.case_id for r in records for c in r.cases if c.device == device))
    entries = {}
    for cid in ids:
        found = [(c, r) for r in records for c in r.cases if c.case_id == cid]
        ok = [(c, r) for c, r in found if c.status == "ok"]
        if ok and len(ok) == len(found):
            entries[cid] = entry_of([c for c, _ in ok], [r for _, r in ok])
    return entries


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<path>.lock` for a read-modify-write of `path` (two writers wait in turn)."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "w")  # noqa: SIM115 - held for the block
    except OSError as exc:
        raise ResultsError(f"cannot lock {path} ({exc}); check the folder is writable") from exc
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def write_baseline(
    directory: Path, records: Sequence[RunRecord], *, command: str, busy_limit: float, force: bool = False
) -> list[Path]:
    """Write the baseline of every device the runs measured, from their ok cases, and return the files written.

    Each case's entry holds one value per run. Entries of cases these runs did not measure are kept. A dirty tree,
    runs of different commits, a busy machine or xdist timing refuse the write (hygiene_problems) unless `force`,
    which the provenance then records. The existing file is read, changed and replaced under a lock, atomically.
    """
    if not records:
        raise ResultsError("no run to make a baseline from")
    problems = hygiene_problems(records, busy_limit)
    if problems and not force:
        raise ResultsError(
            "refusing to record a baseline: " + "; ".join(problems) + ". Fix that and run again, or force it "
            "(pytest bench --force-baselines, or python -m harness baseline write --force); the baseline then says so"
        )
    written = []
    arch = records_arch(records)
    for device in sorted({c.device for r in records for c in r.cases}):
        keys = {key_of(r.environment, device) for r in records}
        if len(keys) != 1:
            raise ResultsError(f"the runs are of different environments ({', '.join(sorted(keys))}): one baseline each")
        entries = entries_of(records, device)
        if not entries:
            continue
        key = baseline_key(keys.pop(), arch)
        path = baseline_path(directory, key)
        env = records[0].environment
        provenance = {
            "git_commit": env.get("git_commit"),
            "git_dirty": env.get("git_dirty"),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": command,
            "runs": len(records),
            "forced": bool(force and problems),
            "problems": problems if force else [],
            "torch": env.get("torch"),
            "device_name": env.get("gpu_name") if device == "cuda" else env.get("cpu_model"),
            "threads": env.get("torch_threads"),
        }
        with locked(path):
            existing = load_baseline(directory, key)
            stored = {cid: e.to_dict() for cid, e in (existing.entries if existing else {}).items()}
            stored.update({cid: e.to_dict() for cid, e in entries.items()})
            document = {"schema_version": SCHEMA_VERSION, "env_key": key, "provenance": provenance, "cases": stored}
            write_json_atomic(path, document)
        written.append(path)
    return written
