"""The reviewed thresholds, the per-environment baseline store, and the accuracy, speedup and baseline checks.

Outcomes of a check: "pass"; "fail" (a regression, or a floor missed); "skip" (nothing to compare, the message
says how to get something); "stale" (the metric is better than the stored baseline by more than its tolerance:
the baseline must be refreshed on purpose). Whether "stale" fails the gate is `Thresholds.stale_fails`
(thresholds.json `stale_fails`, default true); `Check.failed(stale_fails)` applies it, and `failure_message`
marks a stale check apart from a regression.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any

from harness.errors import HarnessError, ResultsError, TechniqueError
from harness.results import CaseResult, write_json_atomic
from harness.stats import PairedAccuracy, accuracy_drop_exceeds, noise_tolerance, paired_accuracy
from harness.techniques import NAMES, canonical

DEFAULT_BASELINES_DIR = Path(__file__).resolve().parent.parent / "baselines"
THRESHOLDS_FILE = DEFAULT_BASELINES_DIR / "thresholds.json"
THRESHOLDS_SCHEMA_VERSION = 1
BASELINE_SCHEMA_VERSION = 1
UPDATE_HINT = "`nox -s update_baselines` (or `pytest bench --update-baselines`)"
DEVICES = ("cpu", "cuda")
REGIMES = ("bs1", "large")
OUTCOMES = ("pass", "fail", "stale", "skip")


def device_kind(device: str) -> str:
    """Return "cpu" or "cuda" for a device string such as "cuda:1"."""
    return str(device).split(":", 1)[0].strip().lower()


# ------------------------------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Metric:
    """A metric the baseline stores and checks; `spread` names how its tolerance widens with noise.

    spread: "none" (the configured tolerance), "latency" (noise_multiplier x the larger IQR/median of run and
    baseline) or "interval" (root-sum-square of the two speedup intervals' relative half-widths).
    """

    name: str
    higher_is_better: bool
    spread: str
    read: Callable[[CaseResult], float | None]


def _latency_median(case: CaseResult) -> float | None:
    return case.latency_ms.get("median")


METRICS: tuple[Metric, ...] = (
    Metric("top1", True, "none", lambda c: c.top1),
    Metric("latency_median_ms", False, "latency", _latency_median),
    Metric("throughput_ips", True, "latency", lambda c: c.throughput_ips),
    Metric("speedup_vs_fp32", True, "interval", lambda c: c.speedup_vs_fp32),
    Metric("size_bytes", False, "none", lambda c: c.size_bytes),
    Metric("compressed_size_bytes", False, "none", lambda c: c.compressed_size_bytes),
    Metric("peak_memory_bytes", False, "none", lambda c: c.peak_memory_bytes),
)
METRIC_NAMES = tuple(m.name for m in METRICS)


def get_metric(name: str) -> Metric:
    """Return the metric called `name`; an unknown name lists the valid ones."""
    for m in METRICS:
        if m.name == name:
            return m
    raise HarnessError(f"unknown metric {name!r}: choose from {', '.join(METRIC_NAMES)}")


def latency_noise(case: CaseResult) -> float:
    """Return the relative spread (IQR / median) of the case's timed rounds, 0.0 when unknown."""
    median, iqr = case.latency_ms.get("median"), case.latency_ms.get("iqr")
    if median and iqr is not None and median > 0:
        return float(iqr) / float(median)
    samples = case.extra.get("latency_samples_ms")
    if isinstance(samples, list) and samples:
        return noise_tolerance([float(s) for s in samples])
    return 0.0


def interval_halfwidth(ratio: float | None, low: object, high: object) -> float:
    """Return the relative half-width (high - low) / (2 ratio) of a ratio's interval, 0.0 when unknown."""
    if not ratio or not isinstance(low, int | float) or not isinstance(high, int | float):
        return 0.0
    return max(0.0, (float(high) - float(low)) / (2.0 * float(ratio)))


def speedup_halfwidth(case: CaseResult) -> float:
    """Return the relative half-width of the case's speedup interval (extra speedup_low/high), else 0.0."""
    return interval_halfwidth(
        case.speedup_vs_fp32, case.extra.get("speedup_low"), case.extra.get("speedup_high")
    )


# ---------------------------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class Thresholds:
    """The reviewed thresholds file, parsed and validated (baselines/thresholds.json says why, per number).

    allowed_top1_drop: technique -> allowed drop; speedup_floors: canonical variant -> device -> regime ->
    floor; tolerances / min_abs_change: metric -> device -> value.
    """

    path: Path
    allowed_top1_drop: Mapping[str, float]
    speedup_floors: Mapping[str, Mapping[str, Mapping[str, float | None]]]
    tolerances: Mapping[str, Mapping[str, float]]
    min_abs_change: Mapping[str, Mapping[str, float]]
    noise_multiplier: float
    accuracy_alpha: float
    large_batch_min: int
    stale_fails: bool

    def allowed_drop(self, variant: str) -> float:
        """Return the variant's allowed top-1 drop against fp32: the sum of its techniques' allowances."""
        total = []
        for name in _technique_names(variant, where=f"variant {variant!r}"):
            if name not in self.allowed_top1_drop:
                raise HarnessError(
                    f"{self.path} has no allowed_top1_drop for technique {name!r}: add one (a reviewed "
                    "number, with the reason in the commit)"
                )
            total.append(self.allowed_top1_drop[name])
        return math.fsum(total)

    def regime(self, batch_size: int) -> str | None:
        """Return "bs1" for batch 1, "large" for batch >= large_batch_min, None in between (no floors)."""
        if batch_size == 1:
            return "bs1"
        return "large" if batch_size >= self.large_batch_min else None

    def speedup_floor(self, variant: str, device: str, batch_size: int) -> float | None:
        """Return the minimum speedup over fp32 for this case, or None when it has no floor.

        The variant is looked up by its canonical `+` name (a preset is resolved first), then by its set of
        techniques, so `bf16+channels_last` finds a floor written as `channels_last+bf16`.
        """
        names = _technique_names(variant, where=f"variant {variant!r}")
        regime = self.regime(batch_size)
        if regime is None:
            return None
        floors = self.speedup_floors.get("+".join(names))
        if floors is None:
            wanted = sorted(names)
            floors = next(
                (f for key, f in self.speedup_floors.items() if sorted(key.split("+")) == wanted), None
            )
        if floors is None:
            return None
        return floors.get(device_kind(device), {}).get(regime)

    def tolerance(self, metric: str, device: str | None = None) -> float:
        """Return the relative tolerance of `metric` from the baseline (top1: in points) on `device`.

        Without a device, the widest over the devices.
        """
        return self._per_device(self.tolerances, metric, device, "baseline_tolerance")

    def min_change(self, metric: str, device: str | None = None) -> float:
        """Return the absolute change of `metric` too small ever to count (0.0 when none is configured)."""
        if metric not in self.min_abs_change:
            get_metric(metric)
            return 0.0
        return self._per_device(self.min_abs_change, metric, device, "baseline_tolerance.min_abs_change")

    def _per_device(
        self, table: Mapping[str, Mapping[str, float]], name: str, device: str | None, section: str
    ) -> float:
        if name not in table:
            get_metric(name)
            raise HarnessError(f"{self.path} has no {section} for {name!r}: add one")
        values = table[name]
        if device is None:
            return max(values.values())
        kind = device_kind(device)
        if kind not in values:
            raise HarnessError(f"{self.path}: {section}.{name} has no value for device {kind!r}; add one")
        return values[kind]


def _technique_names(variant: str, *, where: str, error: type[HarnessError] = TechniqueError) -> list[str]:
    """Return the technique names of a variant or preset; an unknown one raises `error`, listing the names."""
    names = [part.strip() for part in canonical(variant).split("+")]
    for name in names:
        if name not in NAMES:
            raise error(
                f"unknown technique {name!r} in {where}: choose from {', '.join(NAMES)} (joined by '+')"
            )
    return names


def _read_json_object(path: Path, what: str, fix: str) -> dict[str, Any]:
    """Return the JSON object at `path`; a missing, unreadable or non-object file raises ResultsError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ResultsError(f"{what} {path} does not exist; {fix}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"cannot read {what} {path}: {exc}") from exc
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(
            f"{what} {path} is truncated or not JSON ({exc.msg} at line {exc.lineno}); {fix}"
        ) from exc
    if not isinstance(obj, dict):
        raise ResultsError(f"{what} {path} holds a JSON {type(obj).__name__}, not an object; {fix}")
    return obj


def _check_version(obj: Mapping[str, Any], path: Path, what: str, current: int) -> None:
    """Refuse a missing, newer or (no migrations exist yet) older schema_version."""
    version = obj.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ResultsError(f"{what} {path} has no integer 'schema_version' ({version!r}); it is not a {what}")
    if version > current:
        raise ResultsError(
            f"{what} {path} has schema_version {version}, written by a newer harness (this one reads up to "
            f"{current}); upgrade the harness"
        )
    if version < current:
        raise ResultsError(
            f"{what} {path} has schema_version {version} and there is no migration from it to {current}; "
            "regenerate it"
        )


def _number(value: object, where: str) -> float:
    """Return `value` as a float; anything but a finite non-negative JSON number raises ResultsError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ResultsError(f"{where} must be a non-negative number, got {value!r}")
    return float(value)


def _floor(value: object, where: str) -> float | None:
    """Return a speedup floor: null (no floor) or a positive number."""
    if value is None:
        return None
    floor = _number(value, f"{where} (null for no floor)")
    if floor == 0:
        raise ResultsError(f"{where} is 0; write null for no floor")
    return floor


def _entries(obj: object, where: str) -> dict[str, Any]:
    """Return the entries of a JSON object section without its '_' comment keys."""
    if not isinstance(obj, dict):
        raise ResultsError(f"{where} must be a JSON object, got {type(obj).__name__}")
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def _per_device_values(value: object, where: str) -> Mapping[str, float]:
    """Return {device: number} from a number (every device) or a {device: number} object."""
    if isinstance(value, dict):
        entries = _entries(value, where)
        unknown = sorted(set(entries) - set(DEVICES))
        if unknown or not entries:
            raise ResultsError(
                f"{where} must map devices ({', '.join(DEVICES)}) to numbers; got keys {sorted(entries)}"
            )
        return MappingProxyType({d: _number(v, f"{where}.{d}") for d, v in entries.items()})
    number = _number(value, where)
    return MappingProxyType(dict.fromkeys(DEVICES, number))


def _parse_floors(section: object, where: str) -> Mapping[str, Mapping[str, Mapping[str, float | None]]]:
    floors: dict[str, Mapping[str, Mapping[str, float | None]]] = {}
    seen: dict[tuple[str, ...], str] = {}
    for variant, per_device in _entries(section, where).items():
        names = _technique_names(variant, where=f"{where} key {variant!r}", error=ResultsError)
        key = "+".join(names)
        twin = seen.get(tuple(sorted(names)))
        if twin is not None:
            raise ResultsError(
                f"{where} has floors for {twin!r} and {variant!r}, the same techniques: keep one"
            )
        seen[tuple(sorted(names))] = variant
        devices: dict[str, Mapping[str, float | None]] = {}
        for device, regimes in _entries(per_device, f"{where}.{variant}").items():
            if device not in DEVICES:
                raise ResultsError(f"{where}.{variant}: unknown device {device!r}; use {', '.join(DEVICES)}")
            entries = _entries(regimes, f"{where}.{variant}.{device}")
            if set(entries) != set(REGIMES):
                raise ResultsError(
                    f"{where}.{variant}.{device} must have exactly the regimes {', '.join(REGIMES)} "
                    f"(null for no floor); got {sorted(entries)}"
                )
            devices[device] = MappingProxyType(
                {r: _floor(v, f"{where}.{variant}.{device}.{r}") for r, v in entries.items()}
            )
        floors[key] = MappingProxyType(devices)
    return MappingProxyType(floors)


def load_thresholds(path: Path | None = None) -> Thresholds:
    """Return the thresholds in `path` (default THRESHOLDS_FILE), validated; any fault raises ResultsError."""
    path = Path(path) if path is not None else THRESHOLDS_FILE
    obj = _read_json_object(path, "thresholds file", f"restore it from git (default {THRESHOLDS_FILE})")
    _check_version(obj, path, "thresholds file", THRESHOLDS_SCHEMA_VERSION)
    where = str(path)
    expected = {
        "schema_version",
        "accuracy_alpha",
        "stale_fails",
        "large_batch_min",
        "allowed_top1_drop",
        "speedup_floor",
        "baseline_tolerance",
    }
    top = _entries(obj, where)
    if set(top) != expected:
        missing, unknown = sorted(expected - set(top)), sorted(set(top) - expected)
        raise ResultsError(
            f"{where}: missing keys {missing}, unknown keys {unknown}; the keys are {sorted(expected)}"
        )
    drops: dict[str, float] = {}
    for name, value in _entries(obj["allowed_top1_drop"], f"{where} allowed_top1_drop").items():
        if name not in NAMES:
            raise ResultsError(
                f"{where} allowed_top1_drop: unknown technique {name!r}; use {', '.join(NAMES)}"
            )
        drop = _number(value, f"{where} allowed_top1_drop.{name}")
        if drop >= 1.0:
            raise ResultsError(
                f"{where} allowed_top1_drop.{name} is a fraction below 1 (0.01 = one point); got {drop}"
            )
        drops[name] = drop
    tolerance_section = _entries(obj["baseline_tolerance"], f"{where} baseline_tolerance")
    extras = {"noise_multiplier", "min_abs_change"}
    unknown = sorted(set(tolerance_section) - set(METRIC_NAMES) - extras)
    missing = sorted((set(METRIC_NAMES) | {"noise_multiplier"}) - set(tolerance_section))
    if unknown or missing:
        raise ResultsError(
            f"{where} baseline_tolerance: missing {missing}, unknown {unknown}; give one per metric "
            f"({', '.join(METRIC_NAMES)}) and noise_multiplier"
        )
    tolerances = {
        m: _per_device_values(tolerance_section[m], f"{where} baseline_tolerance.{m}") for m in METRIC_NAMES
    }
    min_abs: dict[str, Mapping[str, float]] = {}
    for name, value in _entries(
        tolerance_section.get("min_abs_change", {}), f"{where} min_abs_change"
    ).items():
        if name not in METRIC_NAMES:
            raise ResultsError(
                f"{where} min_abs_change: unknown metric {name!r}; choose from {', '.join(METRIC_NAMES)}"
            )
        min_abs[name] = _per_device_values(value, f"{where} min_abs_change.{name}")
    alpha = _number(obj["accuracy_alpha"], f"{where} accuracy_alpha")
    if not 0.0 < alpha < 1.0:
        raise ResultsError(
            f"{where} accuracy_alpha must be strictly between 0 and 1 (e.g. 0.05); got {alpha}"
        )
    large = obj["large_batch_min"]
    if isinstance(large, bool) or not isinstance(large, int) or large < 2:
        raise ResultsError(f"{where} large_batch_min must be an integer >= 2 (e.g. 8); got {large!r}")
    if not isinstance(obj["stale_fails"], bool):
        raise ResultsError(f"{where} stale_fails must be true or false; got {obj['stale_fails']!r}")
    return Thresholds(
        path=path,
        allowed_top1_drop=MappingProxyType(drops),
        speedup_floors=_parse_floors(obj["speedup_floor"], f"{where} speedup_floor"),
        tolerances=MappingProxyType(tolerances),
        min_abs_change=MappingProxyType(min_abs),
        noise_multiplier=_number(tolerance_section["noise_multiplier"], f"{where} noise_multiplier"),
        accuracy_alpha=alpha,
        large_batch_min=large,
        stale_fails=obj["stale_fails"],
    )


# --------------------------------------------------------------------------------------- judging a change


@dataclass(frozen=True)
class Judgement:
    """How a metric moved between an old and a new value.

    verdict: "regression" | "improvement" | "same"; worse_limit / better_limit: the values beyond which the
    new one would be a regression / an improvement; detail: a sentence on how it was judged.
    """

    verdict: str
    relative: float | None
    worse_limit: float | None
    better_limit: float | None
    detail: str
    paired: PairedAccuracy | None = None


def judge_change(
    old: float, new: float, *, higher_is_better: bool, tolerance: float, min_abs: float = 0.0
) -> Judgement:
    """Return whether `new` is worse/better than `old` by more than `tolerance` (relative) and `min_abs`."""
    slack = max(abs(old) * tolerance, min_abs)
    sign = 1.0 if higher_is_better else -1.0
    worse_limit, better_limit = old - sign * slack, old + sign * slack
    gain = sign * (new - old)
    verdict = "regression" if gain < -slack else "improvement" if gain > slack else "same"
    relative = (new - old) / abs(old) if old else None
    return Judgement(verdict, relative, worse_limit, better_limit, f"slack {slack:g}")


def judge_accuracy(
    old_top1: float,
    new_top1: float,
    old_correct: Sequence[bool] | None,
    new_correct: Sequence[bool] | None,
    *,
    allowed: float,
    alpha: float,
) -> Judgement:
    """Return how top-1 moved from old to new, by the paired test when both correctness vectors match.

    Paired: "regression" only when the drop is shown (at `alpha`) to exceed `allowed` points, "improvement"
    only when the gain is shown to exceed it. Without usable vectors: the point estimate against `allowed`.
    """
    worse_limit, better_limit = old_top1 - allowed, old_top1 + allowed
    if old_correct and new_correct and len(old_correct) == len(new_correct):
        drop = paired_accuracy(old_correct, new_correct)
        gain = paired_accuracy(new_correct, old_correct)
        verdict = (
            "regression"
            if accuracy_drop_exceeds(drop, allowed, alpha=alpha)
            else "improvement"
            if accuracy_drop_exceeds(gain, allowed, alpha=alpha)
            else "same"
        )
        detail = (
            f"paired test on {drop.n} images: {drop.base_only} right only before, "
            f"{drop.new_only} right only now, "
            f"change {-drop.drop * 100:+.2f} points (one-sided McNemar p={drop.p_value:.3g}), allowed "
            f"{allowed * 100:.2f} points at alpha {alpha:g}"
        )
        return Judgement(verdict, -drop.drop, worse_limit, better_limit, detail, drop)
    why = (
        "no per-image results"
        if not (old_correct and new_correct)
        else f"different eval sets ({len(old_correct)} and {len(new_correct)} images)"
    )
    point = judge_change(old_top1, new_top1, higher_is_better=True, tolerance=0.0, min_abs=allowed)
    change = (new_top1 - old_top1) * 100
    detail = f"point estimate ({why}): change {change:+.2f} points, allowed {allowed * 100:.2f}"
    return Judgement(point.verdict, new_top1 - old_top1, worse_limit, better_limit, detail)


def widened_tolerance(
    m: Metric, thresholds: Thresholds, device: str, run_spread: float, base_spread: float
) -> tuple[float, str]:
    """Return (tolerance, how it was set) for metric `m`: the configured one, widened by measured spreads."""
    configured = thresholds.tolerance(m.name, device)
    if m.spread == "latency":
        spread = max(run_spread, base_spread)
        noise = thresholds.noise_multiplier * spread
        how = f"max(configured {configured:.1%}, {thresholds.noise_multiplier:g} x spread {spread:.1%})"
    elif m.spread == "interval":
        noise = math.hypot(run_spread, base_spread)
        how = f"max(configured {configured:.1%}, interval half-widths {run_spread:.1%} (+) {base_spread:.1%})"
    else:
        return configured, f"configured {configured:.1%}"
    return max(configured, noise), how


def case_spread(m: Metric, case: CaseResult) -> float:
    """Return the relative spread of `case`'s measurement of `m` that widens its tolerance (0.0: exact)."""
    if m.spread == "latency":
        return latency_noise(case)
    return speedup_halfwidth(case) if m.spread == "interval" else 0.0


def judge_metric(
    m: Metric,
    old: float,
    new: float,
    thresholds: Thresholds,
    device: str,
    *,
    old_spread: float = 0.0,
    new_spread: float = 0.0,
    old_correct: Sequence[bool] | None = None,
    new_correct: Sequence[bool] | None = None,
) -> Judgement:
    """Return how metric `m` moved from `old` to `new` under the thresholds; detail says how it was judged.

    top1: judge_accuracy with the top1 tolerance as allowance; others: judge_change with the tolerance
    widened by the spreads (see widened_tolerance) and the metric's min_abs_change.
    """
    if m.name == "top1":
        allowed = thresholds.tolerance("top1", device)
        alpha = thresholds.accuracy_alpha
        return judge_accuracy(old, new, old_correct, new_correct, allowed=allowed, alpha=alpha)
    tolerance, how = widened_tolerance(m, thresholds, device, new_spread, old_spread)
    min_abs = thresholds.min_change(m.name, device)
    judged = judge_change(old, new, higher_is_better=m.higher_is_better, tolerance=tolerance, min_abs=min_abs)
    change = f"{judged.relative:+.1%}" if judged.relative is not None else f"{new - old:+.6g}"
    ignored = f", changes up to {min_abs:g} ignored" if min_abs else ""
    return replace(judged, detail=f"change {change}, tolerance {how}{ignored}")


# --------------------------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Check:
    """One check of one case and metric; `source` is the file its limit or baseline came from."""

    case_id: str
    metric: str
    outcome: str
    value: float | None
    limit: float | None
    baseline: float | None
    source: str
    message: str

    def failed(self, stale_fails: bool = True) -> bool:
        """Return True when this check fails the gate: always on "fail", on "stale" when `stale_fails`."""
        return self.outcome == "fail" or (self.outcome == "stale" and stale_fails)


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.6g}"


def failure_message(check: Check) -> str:
    """Return one line naming the case, metric, measured value, limit, baseline value and source file."""
    label = {"fail": "REGRESSION", "stale": "STALE BASELINE", "skip": "SKIPPED", "pass": "PASS"}[
        check.outcome
    ]
    return (
        f"{label} {check.case_id} {check.metric}: measured {_fmt(check.value)}, limit {_fmt(check.limit)}, "
        f"baseline {_fmt(check.baseline)} (from {check.source}): {check.message}"
    )


def _not_ok(case: CaseResult, metric_name: str, source: str, culprit: CaseResult | None = None) -> Check:
    """Return the "skip" check of `case` because `culprit` (the case itself unless given) did not run."""
    culprit = culprit or case
    reason = f"{culprit.case_id} did not run ({culprit.status}: {culprit.reason or 'no reason given'})"
    return Check(case.case_id, metric_name, "skip", None, None, None, source, reason)


def check_accuracy(case: CaseResult, reference: CaseResult, thresholds: Thresholds) -> Check:
    """Return the accuracy check of `case` against fp32 of the same run (`reference`, same images).

    Fails only when the paired test shows, at thresholds.accuracy_alpha, a drop larger than the variant's
    allowance (the sum over its techniques); a gain never fails. value: the case's top-1; baseline: fp32's;
    limit: fp32's top-1 minus the allowance (the point at which the test starts to be able to fire).
    """
    source = str(thresholds.path)
    for c in (case, reference):
        if c.status != "ok":
            return _not_ok(case, "top1_vs_fp32", source, culprit=c)
    check = partial(Check, case.case_id, "top1_vs_fp32")
    if case.top1 is None or reference.top1 is None:
        return check("fail", case.top1, None, reference.top1, source,
                     "top-1 was not measured; the harness must evaluate every ok case")
    allowed = thresholds.allowed_drop(case.variant)
    judged = judge_accuracy(reference.top1, case.top1, reference.correct, case.correct,
                            allowed=allowed, alpha=thresholds.accuracy_alpha)
    outcome = "fail" if judged.verdict == "regression" else "pass"
    message = f"against {reference.case_id}, allowed drop {allowed * 100:.2f} points (sum over techniques): "
    return check(outcome, case.top1, judged.worse_limit, reference.top1, source, message + judged.detail)


def check_speedup(case: CaseResult, thresholds: Thresholds) -> Check:
    """Return the speedup-floor check: fail only when the speedup interval's upper bound is below the floor.

    Using the upper bound (extra "speedup_high"; the point estimate when absent) means a variant fails only
    when the timing shows it is slower than the floor, not when noise puts one estimate under it.
    No floor: "skip".
    """
    source = str(thresholds.path)
    if case.status != "ok":
        return _not_ok(case, "speedup_vs_fp32", source)
    check = partial(Check, case.case_id, "speedup_vs_fp32")
    ratio = case.speedup_vs_fp32
    floor = thresholds.speedup_floor(case.variant, case.device, case.batch_size)
    if floor is None:
        return check("skip", ratio, None, None, source,
                     f"no speedup floor for {case.variant} on {case.device} at batch {case.batch_size}")
    if ratio is None:
        return check("fail", None, floor, None, source,
                     "no speedup was measured but the case has a floor; the harness must time it vs fp32")
    low, high = case.extra.get("speedup_low"), case.extra.get("speedup_high")
    upper = float(high) if isinstance(high, int | float) else ratio
    interval = f"95% interval [{low:.3g}, {upper:.3g}]" if isinstance(low, int | float) else "no interval"
    if upper < floor:
        return check("fail", ratio, floor, None, source,
                     f"speedup {ratio:.3g}x ({interval}) is under the floor {floor:g}x even at its upper end")
    return check("pass", ratio, floor, None, source,
                 f"speedup {ratio:.3g}x ({interval}) reaches the floor {floor:g}x")


# ------------------------------------------------------------------------------------------- baseline store


@dataclass
class Baseline:
    """The stored reference of one environment: case_id -> metrics (see baseline_entry), with provenance."""

    env_key: str
    cases: dict[str, dict[str, Any]]
    provenance: dict[str, Any]
    path: Path


_EXTRA_FIELDS = (
    "correct",
    "eval_images",
    "latency_p90_ms",
    "speedup_low",
    "speedup_high",
    "noise",
    "provenance",
)
_CASE_FIELDS = frozenset(METRIC_NAMES + _EXTRA_FIELDS)


def baseline_path(directory: Path, env_key: str) -> Path:
    """Return `<directory>/<env_key>.json`."""
    return Path(directory) / f"{env_key}.json"


def make_provenance(environment: Mapping[str, object], command: str, device: str) -> dict[str, Any]:
    """Return a baseline write's provenance: git commit, dirty flag, date, command, torch, device name."""
    name = environment.get("gpu_name") if device_kind(device) == "cuda" else environment.get("cpu_model")
    return {
        "git_commit": environment.get("git_commit"),
        "git_dirty": environment.get("git_dirty"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "torch": environment.get("torch"),
        "device_name": name,
    }


def baseline_entry(case: CaseResult, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """Return what the baseline stores for an ok case: metrics, correctness bits, spreads and provenance."""
    entry: dict[str, Any] = {m.name: m.read(case) for m in METRICS}
    entry.update(
        correct=None if case.correct is None else "".join("1" if c else "0" for c in case.correct),
        eval_images=case.eval_images,
        latency_p90_ms=case.latency_ms.get("p90"),
        speedup_low=case.extra.get("speedup_low"),
        speedup_high=case.extra.get("speedup_high"),
        noise=latency_noise(case),
        provenance=dict(provenance),
    )
    return entry


def _validate_entry(entry: object, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ResultsError(f"{where} must be a JSON object, got {type(entry).__name__}")
    unknown = sorted(set(entry) - _CASE_FIELDS)
    if unknown:
        raise ResultsError(
            f"{where} has unknown field(s) {', '.join(unknown)}; regenerate it with {UPDATE_HINT}"
        )
    for name in (*METRIC_NAMES, "eval_images", "latency_p90_ms", "speedup_low", "speedup_high", "noise"):
        value = entry.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ResultsError(f"{where}: {name} must be a number or null, got {value!r}")
    bits = entry.get("correct")
    if bits is not None and not (isinstance(bits, str) and set(bits) <= {"0", "1"}):
        raise ResultsError(f"{where}: correct must be a string of 0s and 1s, got {str(bits)[:40]!r}")
    if not isinstance(entry.get("provenance", {}), dict):
        raise ResultsError(f"{where}: provenance must be an object")
    return entry


def load_baseline(directory: Path, env_key: str) -> Baseline | None:
    """Return the baseline of `env_key` in `directory`, or None when there is none.

    A corrupt file, one of a newer schema, or one whose env_key differs from its name raises ResultsError.
    """
    path = baseline_path(directory, env_key)
    if not path.exists():
        return None
    fix = f"delete it and recreate it with {UPDATE_HINT}"
    obj = _read_json_object(path, "baseline file", fix)
    _check_version(obj, path, "baseline file", BASELINE_SCHEMA_VERSION)
    if obj.get("env_key") != env_key:
        raise ResultsError(
            f"baseline file {path} is for env_key {obj.get('env_key')!r}, not {env_key!r}; {fix}"
        )
    cases, provenance = obj.get("cases"), obj.get("provenance", {})
    if not isinstance(cases, dict) or not isinstance(provenance, dict):
        raise ResultsError(f"baseline file {path} needs 'cases' and 'provenance' objects; {fix}")
    checked = {
        cid: _validate_entry(entry, f"baseline file {path} case {cid!r}") for cid, entry in cases.items()
    }
    return Baseline(env_key=env_key, cases=checked, provenance=provenance, path=path)


def write_baseline(
    directory: Path, env_key: str, cases: Sequence[CaseResult], provenance: Mapping[str, Any]
) -> Path:
    """Write the ok cases of `cases` as the baseline of `env_key`, atomically, and return its path.

    Skipped and errored cases are not written. Cases already in the file that this run did not measure (or
    did not measure ok) are kept with their own provenance, so updating a subset does not lose the rest; an
    unreadable existing file is refused (delete it to start afresh). The file's top-level provenance is this
    write's.
    """
    existing = load_baseline(directory, env_key)
    stored = dict(existing.cases) if existing else {}
    for case in cases:
        if case.status == "ok":
            stored[case.case_id] = baseline_entry(case, provenance)
    path = baseline_path(directory, env_key)
    write_json_atomic(
        path,
        {
            "schema_version": BASELINE_SCHEMA_VERSION,
            "env_key": env_key,
            "provenance": dict(provenance),
            "cases": stored,
        },
    )
    return path


def _stored_bits(entry: Mapping[str, Any]) -> list[bool] | None:
    bits = entry.get("correct")
    return [c == "1" for c in bits] if isinstance(bits, str) and bits else None


def _stored_number(entry: Mapping[str, Any], name: str) -> float | None:
    value = entry.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def check_baseline(case: CaseResult, baseline: Baseline | None, thresholds: Thresholds) -> list[Check]:
    """Return one check per metric of `case` against its stored baseline entry.

    Worse beyond tolerance: "fail"; better beyond it: "stale" (refresh the baseline on purpose); a metric
    missing on either side: "skip". No baseline, or no entry for the case: one "skip" check saying how to
    create it.
    """
    check = partial(Check, case.case_id, "baseline", "skip", None, None, None)
    if baseline is None:
        return [check("none", f"no baseline for this environment; create one with {UPDATE_HINT}")]
    source = str(baseline.path)
    if case.status != "ok":
        return [_not_ok(case, "baseline", source)]
    entry = baseline.cases.get(case.case_id)
    if entry is None:
        return [check(source, f"{source} has no entry for {case.case_id}; add it with {UPDATE_HINT}")]
    return [_check_metric(case, entry, m, thresholds, source) for m in METRICS]


def _check_metric(
    case: CaseResult, entry: Mapping[str, Any], m: Metric, thresholds: Thresholds, source: str
) -> Check:
    check = partial(Check, case.case_id, m.name)
    value, stored = m.read(case), _stored_number(entry, m.name)
    if value is None or stored is None:
        side = "this run" if value is None else "the baseline"
        return check("skip", value, None, stored, source, f"{m.name} is not in {side}")
    if m.spread == "latency":
        base_spread = _stored_number(entry, "noise") or 0.0
    elif m.spread == "interval":
        base_spread = interval_halfwidth(stored, entry.get("speedup_low"), entry.get("speedup_high"))
    else:
        base_spread = 0.0
    judged = judge_metric(m, stored, value, thresholds, case.device, old_spread=base_spread,
                          new_spread=case_spread(m, case), old_correct=_stored_bits(entry),
                          new_correct=case.correct)
    how = judged.detail
    how += f" (tolerances from {thresholds.path})"
    if judged.verdict == "regression":
        return check("fail", value, judged.worse_limit, stored, source, f"worse than the baseline: {how}")
    if judged.verdict == "improvement":
        return check("stale", value, judged.better_limit, stored, source,
                     f"better than the baseline beyond tolerance: {how}. If the improvement is intended, "
                     f"refresh the baseline on purpose with {UPDATE_HINT}; if not, find out why (a technique "
                     "that stopped applying can look like a gain)")
    return check("pass", value, judged.worse_limit, stored, source, how)
