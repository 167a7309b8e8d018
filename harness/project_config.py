"""A project's own defaults: the [tool.resnet-gate] table of its pyproject.toml, found, read and checked.

A project configures the gate once, in the table, with the command line's names (kebab-case):

    [tool.resnet-gate]
    model = "tiny_project.models:small_cnn"
    data = "digits"
    variants = "fp32,dynamic_int8,prune_unstructured"
    batch-sizes = [1, 32]
    baselines = "baselines"

Every command that takes defaults from it (COMMANDS says which keys each reads) gets them from
`ProjectConfig.defaults_for`: a flag on the command line beats the table, and the table beats the built-in default.
Reading it imports no torch, so a broken table is one line (naming the file and the key) before any work.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from harness import techniques
from harness.errors import HarnessError, ProjectConfigError
from harness.model_spec import close_matches
from harness.project_keys import KEYS, toml_kind

PYPROJECT = "pyproject.toml"
TABLE = "resnet-gate"

COMMANDS: dict[str, dict[str, str]] = {
    "run": {
        "model": "model", "weights": "weights", "data": "data", "variants": "variants", "batch-sizes": "batch_sizes",
        "device": "device", "eval-count": "eval_count", "seed": "seed", "budget": "budget",
        "options": "project_options",
    },
    "ab": {  # not budget: run's is seconds per case for one process, ab's for both sides together
        "model": "model", "weights": "weights", "data": "data", "variants": "variants", "batch-sizes": "batch_sizes",
        "device": "device", "eval-count": "eval_count", "seed": "seed", "thresholds": "thresholds",
        "options": "project_options", "unjudged": "unjudged",
    },
    "bisect": {
        "model": "model", "weights": "weights", "data": "data", "device": "device", "eval-count": "eval_count",
        "seed": "seed", "thresholds": "thresholds", "options": "project_options",
    },
    "gate": {
        "model": "model", "weights": "weights", "data": "data", "variants": "bench_variants",
        "batch-sizes": "bench_batch_sizes", "device": "device", "thresholds": "thresholds",
        "baselines": "baselines_dir", "unjudged": "unjudged",
    },
    "baseline write": {"thresholds": "thresholds", "baselines": "baselines_dir"},  # the model: the results' own
    "baseline show": {"model": "model", "thresholds": "thresholds", "baselines": "baselines_dir"},
}
"""Which keys each command (a command and its verb: "baseline show") reads, and the argparse dest (for the gate: the
pytest option) each one sets. A command that joins adds its line here and calls `defaults_for`; a key it does not
list stays out of its arguments."""


@dataclass(frozen=True)
class ProjectConfig:
    """The project's pyproject.toml (None: none found) and its [tool.resnet-gate] values, checked (empty: no table)."""

    pyproject: Path | None = None
    values: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def folder(self) -> Path | None:
        """Return the project's folder (the pyproject's), or None when there is no pyproject.toml."""
        return None if self.pyproject is None else self.pyproject.parent

    @property
    def source(self) -> str:
        """Return where the values come from, for messages: `pyproject.toml [tool.resnet-gate]`."""
        return f"{shown(self.pyproject) if self.pyproject else PYPROJECT} [tool.{TABLE}]"

    def defaults_for(self, command: str) -> dict[str, Any]:
        """Return {dest: value} of the keys `command` reads (COMMANDS) that the table sets: checked, typed as the
        command's parser gives them (batch sizes a list of ints, paths absolute Paths, options a dict), ready for
        `subparser.set_defaults(**defaults)`, so that a flag given on the command line still wins. {} without a table.
        """
        if command not in COMMANDS:
            raise ValueError(f"no [tool.{TABLE}] keys are declared for {command!r}; add its line to COMMANDS")
        return {dest: self.values[key] for key, dest in COMMANDS[command].items() if key in self.values}

    def describe(self, command: str) -> str:
        """Return "SOURCE: key=value, ..." for the keys `command` takes from the table, or "" when it takes none."""
        taken = [f"{key}={_shown_value(self.values[key])}" for key in COMMANDS[command] if key in self.values]
        return f"{self.source}: {', '.join(taken)}" if taken else ""


def _shown_value(value: object) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def shown(path: Path) -> str:
    """Return `path` relative to the current folder when it lies under it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def find_pyproject(start: Path | None = None) -> Path | None:
    """Return the pyproject.toml of the project `start` (default: the current folder) lies in: `start`'s own, else
    the nearest parent's, looking no higher than a folder that holds `.git` (the repository's top). None if none."""
    folder = Path(start if start is not None else Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / PYPROJECT).is_file():
            return candidate / PYPROJECT
        if (candidate / ".git").exists():
            return None
    return None


def load(start: Path | None = None) -> ProjectConfig:
    """Return the project's configuration (find_pyproject from `start`): its [tool.resnet-gate] values checked, or
    empty values when there is no pyproject.toml or no table. Anything wrong raises ProjectConfigError in one line."""
    path = find_pyproject(start)
    if path is None:
        return ProjectConfig()
    where = ProjectConfig(pyproject=path).source
    table = read_table(path)
    if table is None:
        return ProjectConfig(pyproject=path)
    unknown = [key for key in table if key not in KEYS]
    if unknown:
        key = unknown[0]
        raise ProjectConfigError(
            f"{where}: unknown key {key!r}{close_matches(key, KEYS)}; known keys: {', '.join(KEYS)}"
        )
    values: dict[str, Any] = {}
    for key, raw in table.items():
        try:
            values[key] = KEYS[key].check(raw, path.parent)
        except HarnessError as err:
            raise ProjectConfigError(f"{where} {key}: {err}") from None
    if "options" in values and "variants" in values:
        used = options_for(techniques.select_variants(values["variants"]), values["options"])
        unused = sorted(set(values["options"]) - set(used))
        if unused:
            technique = unused[0].partition(".")[0]
            raise ProjectConfigError(
                f"{where} options: {unused[0]} is an option of {technique}, which no variant in `variants` uses; "
                f"drop the option or add a variant with {technique}"
            )
    return ProjectConfig(pyproject=path, values=MappingProxyType(values))


def read_table(path: Path) -> dict[str, Any] | None:
    """Return the [tool.resnet-gate] table of the pyproject.toml at `path`, or None when it has none; a file that
    cannot be read or is not TOML raises ProjectConfigError naming it and what is wrong."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        why = err.strerror or err
        raise ProjectConfigError(f"{shown(path)}: cannot read it ({why}); check its permissions") from None
    except UnicodeDecodeError:
        raise ProjectConfigError(f"{shown(path)}: is not UTF-8 text, so not TOML; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as err:
        raise ProjectConfigError(f"{shown(path)}: is not valid TOML: {err}; fix that line") from None
    tool = document.get("tool", {})
    if not isinstance(tool, dict):
        raise ProjectConfigError(f"{shown(path)}: `tool` must be a table, got {toml_kind(tool)}")
    table = tool.get(TABLE)
    if table is not None and not isinstance(table, dict):
        raise ProjectConfigError(
            f"{shown(path)}: tool.{TABLE} must be a table ([tool.{TABLE}] with one key per line), "
            f"got {toml_kind(table)}"
        )
    return table


def options_for(variants: Iterable[str], configured: Mapping[str, int | float]) -> dict[str, int | float]:
    """Return the configured technique options (`technique.name` -> value) of the techniques `variants` use: the
    table's options are defaults for a technique when a run has it, not a demand that it run."""
    used = {t.name for variant in variants for t in techniques.parse_variant(variant)}
    return {key: value for key, value in configured.items() if key.partition(".")[0] in used}
