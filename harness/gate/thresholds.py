"""The reviewed thresholds file: accuracy allowances, speedup floors, baseline tolerances, timing and history rules."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from harness.errors import HarnessError, ResultsError, TechniqueError
from harness.gate.metrics import METRIC_NAMES, get_metric
from harness.jsonio import Migration, finite_number, migrate, read_json_object
from harness.techniques import NAMES, canonical
from harness.techniques import get as get_technique

THRESHOLDS_FILE = Path(__file__).resolve().with_name("thresholds.json")
SCHEMA_VERSION = 5
DEVICES = ("cpu", "cuda")
REGIMES = ("bs1", "large")
SPREAD_REGIMES = ("small", "large")
TIMING_KEYS = (
    "family_alpha", "screen_alpha", "prior_spread", "prior_dof", "busy_limit", "busy_wait_s", "busy_retries",
    "about_one",
)
CPU_TIERS: dict[str, tuple[str, ...]] = {
    "int8": ("amx", "vnni512", "vnni256", "avx2", "none"),
    "bf16": ("amx", "avx512", "none"),
}
"""The CPU instruction tiers a speedup floor may be written per (harness/machine.py identity_of names them)."""
HISTORY_KEYS = (
    "window", "min_runs", "z", "min_change", "penalty", "penalty_runs", "confirm", "smooth", "drift_limit", "new_runs"
)
AB_KEYS = ("tolerance", "process_sd", "process_dof", "target_se")


def device_kind(device: str) -> str:
    """Return "cpu" or "cuda" for a device string such as "cuda:1"."""
    return str(device).split(":", 1)[0].strip().lower()


@dataclass(frozen=True)
class Timing:
    """How timing checks are judged (thresholds.json "timing"; its "_doc" says why each number).

    family_alpha: the family-wise false-alarm rate of one gate run's timing checks (Holm); screen_alpha: the level
    at which a first measurement worse than half the tolerance is flagged for a fresh-process re-measurement;
    prior_spread: device -> "small"/"large" batch -> the log-sd of one run's ratio around the baseline, assumed
    before the baseline's own runs say otherwise, worth prior_dof runs; busy_limit: the share of the time a case
    was timed that others may have held the process back (harness/contention.py); busy_wait_s, busy_retries: a case
    timed on a busy machine is timed again, up to busy_retries times, each after waiting up to busy_wait_s seconds
    for a quiet machine, before its timing is unjudged; about_one: variants whose baseline speedup is within this of
    1 are never reported as faster or slower than expected by chance.
    """

    family_alpha: float
    screen_alpha: float
    prior_spread: Mapping[str, Mapping[str, float]]
    prior_dof: float
    busy_limit: float
    busy_wait_s: float
    busy_retries: int
    about_one: float


@dataclass(frozen=True)
class History:
    """How `history check` judges each case's series of nightly runs (thresholds.json "history"; its "_doc" says why).

    window: the recent runs the newest run and the drift rule are judged against; min_runs: the runs a series needs
    before it is judged; z: how many standard deviations (of one run around the window's mean) the newest run may
    fall on the bad side; min_change: the relative change below which nothing fails; penalty: the change-point
    penalty (ruptures) per step, in units of the series' noise variance, on series of up to penalty_runs runs (longer
    ones get penalty * ln(runs) / ln(penalty_runs)); confirm: the runs after a step that confirm it (fewer: the
    newest-run rule alone judges the jump); smooth: the runs averaged into the level the drift rule compares;
    drift_limit: how far (relative) the level may fall below the best level of the window; new_runs: a step fails
    the check while its first run is among the newest this many.
    """

    window: int
    min_runs: int
    z: float
    min_change: float
    penalty: float
    penalty_runs: int
    confirm: int
    smooth: int
    drift_limit: float
    new_runs: int


@dataclass(frozen=True)
class AB:
    """How `ab` and `bisect` judge head's latency against base's (thresholds.json "ab"; its "_doc" says why).

    tolerance: how much slower (relative) head may be; process_sd: device -> the log-sd of one worker process's
    yardstick-normalized latency around its true value, which rounds inside the process cannot show; process_dof:
    the degrees of freedom of that spread (processes measured - 1); target_se: a case is timed in rounds until its
    change's log standard error is at most this (or its time is up).
    """

    tolerance: float
    process_sd: Mapping[str, float]
    process_dof: float
    target_se: float


@dataclass(frozen=True)
class Floor:
    """A case's speedup floor on this machine: `value` (None: no floor here) and `why` (where the value comes from,
    or why there is none: no floor configured, or the hardware lacks what the speedup rests on)."""

    value: float | None
    why: str


FloorValue = float | None | Mapping[str, float | None]
"""A floor as the file writes it: a number, null (no floor) or, on the CPU, {tier: number or null}."""


@dataclass(frozen=True)
class Thresholds:
    """The reviewed thresholds file, parsed and validated."""

    path: Path
    allowed_top1_drop: Mapping[str, float]
    speedup_floors: Mapping[str, Mapping[str, Mapping[str, FloorValue]]]
    tolerances: Mapping[str, Mapping[str, float]]
    min_abs_change: Mapping[str, float]
    accuracy_alpha: float
    large_batch_min: int
    timing: Timing
    history: History
    ab: AB

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

    def floor(self, variant: str, device: str, batch_size: int, machine: Mapping[str, object]) -> Floor:
        """Return the speedup floor of this case on `machine` (an environment fingerprint), or why it has none.

        The variant is looked up by its canonical `+` name (a preset is resolved first), then by its set of
        techniques, so `bf16+channels_last` finds a floor written as `channels_last+bf16`. A floor applies only where
        the hardware has what the variant's techniques declare their speedup rests on (Technique.hardware): a CPU
        floor written per tier takes this CPU's tier; a plain number holds on the tiers the technique names.
        """
        names = technique_names(variant, where=f"variant {variant!r}")
        regime = self.regime(batch_size)
        if regime is None:
            return Floor(None, f"no floor at batch {batch_size}: floors are set for batch 1 and from batch "
                         f"{self.large_batch_min}")
        key, floors = "+".join(names), self.speedup_floors.get("+".join(names))
        if floors is None:
            wanted = sorted(names)
            key, floors = next(((k, f) for k, f in self.speedup_floors.items() if sorted(k.split("+")) == wanted),
                               (key, None))
        kind = device_kind(device)
        value = None if floors is None else floors.get(kind, {}).get(regime)
        where = f"{self.path} speedup_floor.{key}.{kind}.{regime}"
        if floors is None:
            return Floor(None, f"no speedup floor for {canonical(variant)} in {self.path}")
        hardware = [t.hardware for t in (get_technique(n) for n in names) if t.hardware is not None]
        lacking = next((why for why in (h.lacking(kind, machine) for h in hardware) if why), None)
        if isinstance(value, Mapping):
            family = next(h.cpu for h in hardware if h.cpu)
            tier = str(machine.get(f"cpu_{family}") or "unknown")
            if tier not in value:
                return Floor(None, f"no floor for this CPU's {family} tier {tier}: {where} is set for "
                             f"{', '.join(value)}" + (f"; {lacking}" if lacking else ""))
            tiered = value[tier]
            if tiered is None:
                return Floor(None, lacking or f"{where}.{tier} is null (no floor)")
            return Floor(tiered, f"{where}.{tier}")
        if value is None:
            return Floor(None, f"{where} is null (no floor)")
        if lacking:
            return Floor(None, lacking)
        return Floor(value, where)

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
    if floor <= 0:
        raise ResultsError(f"{where} is {value!r}; write a positive speedup, or null for no floor")
    return floor


def _tier_family(names: list[str], where: str) -> str:
    """Return the CPU instruction family ("int8", "bf16") a per-tier floor of these techniques is keyed by."""
    families = {t.hardware.cpu for t in map(get_technique, names) if t.hardware is not None and t.hardware.cpu}
    if len(families) != 1:
        raise ResultsError(
            f"{where} is written per CPU tier, but its techniques' speedups rest on "
            f"{'no CPU instruction family' if not families else ' and '.join(sorted(families))}: a per-tier floor "
            "needs exactly one (int8 or bf16); write a number or null"
        )
    return families.pop()


def _floor_value(value: object, where: str, device: str, names: list[str]) -> FloorValue:
    """Return a floor as written: a number, null, or (on the CPU) {tier: number or null} of one instruction family."""
    if not isinstance(value, dict):
        return _floor(value, where)
    if device != "cpu":
        raise ResultsError(f"{where}: only CPU floors may be written per tier; write a number or null")
    family = _tier_family(names, where)
    tiers = _entries(value, where)
    unknown = sorted(set(tiers) - set(CPU_TIERS[family]))
    if unknown or not tiers:
        raise ResultsError(f"{where}: unknown {family} tiers {unknown}; the tiers are {', '.join(CPU_TIERS[family])}")
    return MappingProxyType({tier: _floor(v, f"{where}.{tier}") for tier, v in tiers.items()})


def _parse_floors(section: object, where: str) -> Mapping[str, Mapping[str, Mapping[str, FloorValue]]]:
    floors: dict[str, Mapping[str, Mapping[str, FloorValue]]] = {}
    seen: dict[tuple[str, ...], str] = {}
    for variant, per_device in _entries(section, where).items():
        names = technique_names(variant, where=f"{where} key {variant!r}", error=ResultsError)
        twin = seen.get(tuple(sorted(names)))
        if twin is not None:
            raise ResultsError(f"{where} has floors for {twin!r} and {variant!r}, the same techniques: keep one")
        seen[tuple(sorted(names))] = variant
        devices: dict[str, Mapping[str, FloorValue]] = {}
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
                {r: _floor_value(v, f"{where}.{variant}.{device}.{r}", device, names) for r, v in entries.items()}
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
        busy_wait_s=_seconds(entries["busy_wait_s"], f"{where}.busy_wait_s"),
        busy_retries=_count(entries["busy_retries"], f"{where}.busy_retries", 0),
        about_one=_fraction(entries["about_one"], f"{where}.about_one", open_low=False),
    )


def _seconds(value: object, where: str) -> float:
    seconds = finite_number(value, where)
    if not 0 <= seconds <= 3600:
        raise ResultsError(f"{where} must be seconds from 0 to 3600, got {value!r}")
    return seconds


def _count(value: object, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ResultsError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _parse_history(section: object, where: str) -> History:
    entries = _entries(section, where)
    _exact_keys(entries, HISTORY_KEYS, where)
    history = History(
        window=_count(entries["window"], f"{where}.window", 3),
        min_runs=_count(entries["min_runs"], f"{where}.min_runs", 3),
        z=finite_number(entries["z"], f"{where}.z"),
        min_change=_fraction(entries["min_change"], f"{where}.min_change", open_low=False),
        penalty=finite_number(entries["penalty"], f"{where}.penalty"),
        penalty_runs=_count(entries["penalty_runs"], f"{where}.penalty_runs", 3),
        confirm=_count(entries["confirm"], f"{where}.confirm", 1),
        smooth=_count(entries["smooth"], f"{where}.smooth", 1),
        drift_limit=_fraction(entries["drift_limit"], f"{where}.drift_limit"),
        new_runs=_count(entries["new_runs"], f"{where}.new_runs", 1),
    )
    if history.z <= 0 or history.penalty <= 0:
        raise ResultsError(f"{where}: z and penalty must be positive, got {history.z!r} and {history.penalty!r}")
    if history.smooth > history.window or history.min_runs > history.window:
        raise ResultsError(
            f"{where}: smooth ({history.smooth}) and min_runs ({history.min_runs}) must not exceed the window "
            f"({history.window}): both are taken from it"
        )
    return history


def _parse_ab(section: object, where: str) -> AB:
    entries = _entries(section, where)
    _exact_keys(entries, AB_KEYS, where)
    spread = _entries(entries["process_sd"], f"{where}.process_sd")
    _exact_keys(spread, DEVICES, f"{where}.process_sd")
    dof = finite_number(entries["process_dof"], f"{where}.process_dof")
    if dof < 1:
        raise ResultsError(f"{where}.process_dof must be at least 1 (processes measured - 1), got {dof!r}")
    return AB(
        tolerance=_fraction(entries["tolerance"], f"{where}.tolerance"),
        process_sd=MappingProxyType({d: _fraction(v, f"{where}.process_sd.{d}") for d, v in spread.items()}),
        process_dof=dof,
        target_se=_fraction(entries["target_se"], f"{where}.target_se"),
    )


HISTORY_DEFAULTS: dict[str, float | int] = {
    "window": 20, "min_runs": 5, "z": 4.0, "min_change": 0.03, "penalty": 12.0, "penalty_runs": 60, "confirm": 2,
    "smooth": 5, "drift_limit": 0.05, "new_runs": 7,
}
"""The "history" section version 3 added, as shipped in harness/gate/thresholds.json (tuned there, see its _doc)."""


def _migrate_2_to_3(obj: dict[str, Any]) -> dict[str, Any]:
    """Version 3 adds the "history" section (`history check`'s rules): a version-2 file gets the shipped one."""
    return {**obj, "history": dict(HISTORY_DEFAULTS)}


AB_DEFAULTS: dict[str, Any] = {"tolerance": 0.03, "process_sd": {"cpu": 0.01, "cuda": 0.01}, "process_dof": 9}
"""The "ab" section as version 4 added it (version 5 adds target_se: AB_TARGET_SE)."""
AB_TARGET_SE = 0.008
"""The "ab" section version 4 added, as shipped in harness/gate/thresholds.json (measured there, see its _doc)."""


def _migrate_3_to_4(obj: dict[str, Any]) -> dict[str, Any]:
    """Version 4 adds the "ab" section (`ab` and `bisect`'s latency rule): a version-3 file gets the shipped one."""
    return {**obj, "ab": copy.deepcopy(AB_DEFAULTS)}


BUSY_DEFAULTS: dict[str, float | int] = {"busy_wait_s": 60, "busy_retries": 2}
"""The waiting for a quiet machine version 5 added to "timing", as shipped in harness/gate/thresholds.json."""


def _migrate_4_to_5(obj: dict[str, Any]) -> dict[str, Any]:
    """Version 5 adds timing.busy_wait_s and timing.busy_retries (a busy case is timed again after waiting for a quiet
    machine) and ab.target_se (ab times a case to a precision), and lets a CPU floor be written per instruction tier;
    a version-4 file gets the shipped numbers."""
    timing = {**obj.get("timing", {}), **BUSY_DEFAULTS} if isinstance(obj.get("timing"), dict) else obj.get("timing")
    ab = {**obj.get("ab", {}), "target_se": AB_TARGET_SE} if isinstance(obj.get("ab"), dict) else obj.get("ab")
    return {**obj, "timing": timing, "ab": ab}


MIGRATIONS: dict[int, Migration] = {2: _migrate_2_to_3, 3: _migrate_3_to_4, 4: _migrate_4_to_5}
"""{from_version: function} turning a thresholds file of that version into one of the next version."""


def load_thresholds(path: Path | None = None) -> Thresholds:
    """Return the thresholds in `path` (default THRESHOLDS_FILE), validated; any fault raises ResultsError."""
    path = Path(path) if path is not None else THRESHOLDS_FILE
    where = str(path)
    obj = read_json_object(path, "thresholds file", f"restore it from git (default {THRESHOLDS_FILE})")
    obj = migrate(obj, where, "thresholds file", SCHEMA_VERSION, MIGRATIONS)
    top = _entries(obj, where)
    expected = (
        "schema_version",
        "accuracy_alpha",
        "large_batch_min",
        "allowed_top1_drop",
        "speedup_floor",
        "baseline",
        "timing",
        "history",
        "ab",
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
        history=_parse_history(obj["history"], f"{where} history"),
        ab=_parse_ab(obj["ab"], f"{where} ab"),
    )
