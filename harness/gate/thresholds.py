"""The reviewed thresholds file: accuracy allowances, speedup floors, baseline tolerances, the timing statistics."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from harness.errors import HarnessError, ResultsError, TechniqueError
from harness.gate.metrics import METRIC_NAMES, get_metric
from harness.jsonio import finite_number, migrate, read_json_object
from harness.techniques import NAMES, canonical

DEFAULT_BASELINES_DIR = Path(__file__).resolve().parent.parent.parent / "baselines"
THRESHOLDS_FILE = DEFAULT_BASELINES_DIR / "thresholds.json"
SCHEMA_VERSION = 2
DEVICES = ("cpu", "cuda")
REGIMES = ("bs1", "large")
SPREAD_REGIMES = ("small", "large")
TIMING_KEYS = ("family_alpha", "screen_alpha", "prior_spread", "prior_dof", "busy_limit", "about_one")


def device_kind(device: str) -> str:
    """Return "cpu" or "cuda" for a device string such as "cuda:1"."""
    return str(device).split(":", 1)[0].strip().lower()


@dataclass(frozen=True)
class Timing:
    """How timing checks are judged (thresholds.json "timing"; its "_doc" says why each number).

    family_alpha: the family-wise false-alarm rate of one gate run's timing checks (Holm); screen_alpha: the level
    at which a first measurement worse than half the tolerance is flagged for a fresh-process re-measurement;
    prior_spread: device -> "small"/"large" batch -> the log-sd of one run's ratio around the baseline, assumed
    before the baseline's own runs say otherwise, worth prior_dof runs; busy_limit: the share of the CPU others
    may take while a case is timed; about_one: variants whose baseline speedup is within this of 1 are never
    reported as faster or slower than expected by chance.
    """

    family_alpha: float
    screen_alpha: float
    prior_spread: Mapping[str, Mapping[str, float]]
    prior_dof: float
    busy_limit: float
    about_one: float


@dataclass(frozen=True)
class Thresholds:
    """The reviewed thresholds file, parsed and validated."""

    path: Path
    allowed_top1_drop: Mapping[str, float]
    speedup_floors: Mapping[str, Mapping[str, Mapping[str, float | None]]]
    tolerances: Mapping[str, Mapping[str, float]]
    min_abs_change: Mapping[str, float]
    accuracy_alpha: float
    large_batch_min: int
    timing: Timing

    def allowed_drop(self, variant: str) -> float:
        """Return the variant's allowed top-1 drop against fp32: the sum of its techniques' allowances."""
        total = []
        for name in technique_names(variant, where=f"variant {variant!r}"):
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

    def spread_regime(self, batch_size: int) -> str:
        """Return "small" below large_batch_min, else "large": the batch regime of the prior timing spread."""
        return "large" if batch_size >= self.large_batch_min else "small"

    def speedup_floor(self, variant: str, device: str, batch_size: int) -> float | None:
        """Return the minimum speedup over fp32 for this case, or None when it has no floor.

        The variant is looked up by its canonical `+` name (a preset is resolved first), then by its set of
        techniques, so `bf16+channels_last` finds a floor written as `channels_last+bf16`.
        """
        names = technique_names(variant, where=f"variant {variant!r}")
        regime = self.regime(batch_size)
        if regime is None:
            return None
        floors = self.speedup_floors.get("+".join(names))
        if floors is None:
            wanted = sorted(names)
            floors = next((f for key, f in self.speedup_floors.items() if sorted(key.split("+")) == wanted), None)
        if floors is None:
            return None
        return floors.get(device_kind(device), {}).get(regime)

    def tolerance(self, metric: str, device: str) -> float:
        """Return the tolerance of `metric` against the baseline on `device` (top1: in points; else relative)."""
        if metric not in self.tolerances:
            get_metric(metric)
            raise HarnessError(f"{self.path} has no baseline tolerance for {metric!r}: add one")
        return self.tolerances[metric][device_kind(device)]

    def min_change(self, metric: str) -> float:
        """Return the absolute change of `metric` too small ever to count (0.0 when none is configured)."""
        return self.min_abs_change.get(metric, 0.0)

    def prior_spread(self, device: str, batch_size: int) -> float:
        """Return the prior log-sd of one run's timing ratio on `device` at `batch_size`."""
        return self.timing.prior_spread[device_kind(device)][self.spread_regime(batch_size)]


def technique_names(variant: str, *, where: str, error: type[HarnessError] = TechniqueError) -> list[str]:
    """Return the technique names of a variant or preset; an unknown one raises `error`, listing the names."""
    names = [part.strip() for part in canonical(variant).split("+")]
    for name in names:
        if name not in NAMES:
            raise error(f"unknown technique {name!r} in {where}: choose from {', '.join(NAMES)} (joined by '+')")
    return names


# --------------------------------------------------------------------------------------------- parsing


def _entries(obj: object, where: str) -> dict[str, Any]:
    """Return the entries of a JSON object section without its '_' comment keys."""
    if not isinstance(obj, dict):
        raise ResultsError(f"{where} must be a JSON object, got {type(obj).__name__}")
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def _exact_keys(section: dict[str, Any], expected: tuple[str, ...] | set[str], where: str) -> None:
    if set(section) != set(expected):
        missing, unknown = sorted(set(expected) - set(section)), sorted(set(section) - set(expected))
        raise ResultsError(f"{where}: missing keys {missing}, unknown keys {unknown}; the keys are {sorted(expected)}")


def _fraction(value: object, where: str, *, open_low: bool = True) -> float:
    number = finite_number(value, where)
    if number >= 1.0 or (open_low and number <= 0.0):
        interval = "strictly between 0 and 1" if open_low else "in [0, 1)"
        raise ResultsError(f"{where} must be a fraction {interval}, got {value!r}")
    return number


def _per_device(value: object, where: str) -> Mapping[str, float]:
    """Return {device: number >= 0} from a number (every device) or a {device: number} object."""
    if isinstance(value, dict):
        entries = _entries(value, where)
        _exact_keys(entries, DEVICES, where)
        return MappingProxyType({d: finite_number(v, f"{where}.{d}") for d, v in entries.items()})
    return MappingProxyType(dict.fromkeys(DEVICES, finite_number(value, where)))


def _floor(value: object, where: str) -> float | None:
    """Return a speedup floor: null (no floor) or a positive number."""
    if value is None:
        return None
    floor = finite_number(value, f"{where} (null for no floor)")
    if floor == 0:
        raise ResultsError(f"{where} is 0; write null for no floor")
    return floor


def _parse_floors(section: object, where: str) -> Mapping[str, Mapping[str, Mapping[str, float | None]]]:
    floors: dict[str, Mapping[str, Mapping[str, float | None]]] = {}
    seen: dict[tuple[str, ...], str] = {}
    for variant, per_device in _entries(section, where).items():
        names = technique_names(variant, where=f"{where} key {variant!r}", error=ResultsError)
        twin = seen.get(tuple(sorted(names)))
        if twin is not None:
            raise ResultsError(f"{where} has floors for {twin!r} and {variant!r}, the same techniques: keep one")
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
        floors["+".join(names)] = MappingProxyType(devices)
    return MappingProxyType(floors)


def _parse_baseline(section: object, where: str) -> tuple[Mapping[str, Mapping[str, float]], Mapping[str, float]]:
    """Return (tolerances, min_abs_change) of the "baseline" section: metric -> {"tolerance", "min_abs_change"?}."""
    entries = _entries(section, where)
    _exact_keys(entries, set(METRIC_NAMES), where)
    tolerances: dict[str, Mapping[str, float]] = {}
    min_abs: dict[str, float] = {}
    for name, spec in entries.items():
        spec = _entries(spec, f"{where}.{name}")
        unknown = sorted(set(spec) - {"tolerance", "min_abs_change"})
        if unknown or "tolerance" not in spec:
            raise ResultsError(
                f"{where}.{name} takes a 'tolerance' (a number, or one per device) and optionally "
                f"'min_abs_change'; got keys {sorted(spec)}"
            )
        tolerances[name] = _per_device(spec["tolerance"], f"{where}.{name}.tolerance")
        if "min_abs_change" in spec:
            min_abs[name] = finite_number(spec["min_abs_change"], f"{where}.{name}.min_abs_change")
    return MappingProxyType(tolerances), MappingProxyType(min_abs)


def _parse_timing(section: object, where: str) -> Timing:
    entries = _entries(section, where)
    _exact_keys(entries, TIMING_KEYS, where)
    spread: dict[str, Mapping[str, float]] = {}
    for device, regimes in _entries(entries["prior_spread"], f"{where}.prior_spread").items():
        if device not in DEVICES:
            raise ResultsError(f"{where}.prior_spread: unknown device {device!r}; use {', '.join(DEVICES)}")
        values = _entries(regimes, f"{where}.prior_spread.{device}")
        _exact_keys(values, SPREAD_REGIMES, f"{where}.prior_spread.{device}")
        spread[device] = MappingProxyType(
            {r: _fraction(v, f"{where}.prior_spread.{device}.{r}") for r, v in values.items()}
        )
    _exact_keys(spread, DEVICES, f"{where}.prior_spread")
    prior_dof = finite_number(entries["prior_dof"], f"{where}.prior_dof")
    if prior_dof <= 0:
        raise ResultsError(f"{where}.prior_dof must be positive (how many runs the prior spread is worth)")
    return Timing(
        family_alpha=_fraction(entries["family_alpha"], f"{where}.family_alpha"),
        screen_alpha=_fraction(entries["screen_alpha"], f"{where}.screen_alpha"),
        prior_spread=MappingProxyType(spread),
        prior_dof=prior_dof,
        busy_limit=_fraction(entries["busy_limit"], f"{where}.busy_limit"),
        about_one=_fraction(entries["about_one"], f"{where}.about_one", open_low=False),
    )


def load_thresholds(path: Path | None = None) -> Thresholds:
    """Return the thresholds in `path` (default THRESHOLDS_FILE), validated; any fault raises ResultsError."""
    path = Path(path) if path is not None else THRESHOLDS_FILE
    where = str(path)
    obj = read_json_object(path, "thresholds file", f"restore it from git (default {THRESHOLDS_FILE})")
    obj = migrate(obj, where, "thresholds file", SCHEMA_VERSION)
    top = _entries(obj, where)
    expected = (
        "schema_version",
        "accuracy_alpha",
        "large_batch_min",
        "allowed_top1_drop",
        "speedup_floor",
        "baseline",
        "timing",
    )
    _exact_keys(top, expected, where)
    drops: dict[str, float] = {}
    for name, value in _entries(obj["allowed_top1_drop"], f"{where} allowed_top1_drop").items():
        if name not in NAMES:
            raise ResultsError(f"{where} allowed_top1_drop: unknown technique {name!r}; use {', '.join(NAMES)}")
        drops[name] = _fraction(value, f"{where} allowed_top1_drop.{name} (0.01 = one point)", open_low=False)
    missing = sorted(set(NAMES) - set(drops))
    if missing:
        raise ResultsError(f"{where} allowed_top1_drop has no entry for {missing}: every technique needs one")
    large = obj["large_batch_min"]
    if isinstance(large, bool) or not isinstance(large, int) or large < 2:
        raise ResultsError(f"{where} large_batch_min must be an integer >= 2 (e.g. 8); got {large!r}")
    tolerances, min_abs = _parse_baseline(obj["baseline"], f"{where} baseline")
    return Thresholds(
        path=path,
        allowed_top1_drop=MappingProxyType(drops),
        speedup_floors=_parse_floors(obj["speedup_floor"], f"{where} speedup_floor"),
        tolerances=tolerances,
        min_abs_change=min_abs,
        accuracy_alpha=_fraction(obj["accuracy_alpha"], f"{where} accuracy_alpha"),
        large_batch_min=large,
        timing=_parse_timing(obj["timing"], f"{where} timing"),
    )
