"""The keys a project's [tool.resnet-gate] table takes: each one's checker and meaning, in one registry (KEYS).

A checker takes the raw TOML value and the pyproject's folder and returns the value as the commands use it (paths
made absolute), with the checks the command line's flags have; anything wrong raises HarnessError saying what and
how to fix it, which harness/project_config.py prefixes with the file and the key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import preflight, techniques
from harness.data_spec import parse_spec
from harness.errors import HarnessError
from harness.model_spec import parse_model

DEVICE_PATTERN = re.compile(r"cpu|auto|all|cuda(:\d+)?")
TOML_KINDS: tuple[tuple[type, str], ...] = (
    (bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"), (list, "array"), (dict, "table")
)


def toml_kind(value: object) -> str:
    """Return the TOML name of a parsed value's type: string, integer, array, table, ..."""
    return next((name for kind, name in TOML_KINDS if isinstance(value, kind)), type(value).__name__)


def _got(value: object) -> str:
    """Return "got VALUE (TOML type)", the value written as TOML writes it (true, "text", [1, 2])."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = str(value)
    return f"got {text} ({toml_kind(value)})"


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise HarnessError(f"must be a non-empty string, {_got(value)}")
    return value.strip()


def _integer(value: object, minimum: int, maximum: int, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise HarnessError(f"must be an integer from {minimum} to {maximum}, e.g. {example}, {_got(value)}")
    return value


def _path(value: object, folder: Path) -> Path:
    return (folder / Path(_text(value)).expanduser()).resolve()


def _model(value: object, folder: Path) -> str:
    text = _text(value)
    parse_model(text)
    return text


def _weights(value: object, folder: Path) -> str:
    text = _text(value)
    if text == "imagenet":
        return text
    return str(preflight.input_file(_path(text, folder), "the checkpoint", "give a checkpoint file or 'imagenet'"))


def _data(value: object, folder: Path) -> str:
    text = _text(value)
    kind, colon, raw = text.partition(":")
    if colon and raw.strip() and kind in ("imagenet", "folder"):
        text = f"{kind}:{_path(raw, folder)}"
    parse_spec(text)
    return text


def _variants(value: object, folder: Path) -> str:
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    if not isinstance(value, str):
        raise HarnessError(f'must be a "fp32,dynamic_int8" string or a list of variant names, {_got(value)}')
    techniques.select_variants(value)
    return value


def _batch_sizes(value: object, folder: Path) -> list[int]:
    wrong = f'must be a list of positive integers, e.g. [1, 32], or a "1,32" string, {_got(value)}'
    if isinstance(value, list):
        if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
            raise HarnessError(wrong)
        return list(dict.fromkeys(value))
    if not isinstance(value, str):
        raise HarnessError(wrong)
    try:
        return list(preflight.parse_batch_sizes(value))
    except HarnessError:
        raise HarnessError(wrong) from None


DEVICES = "cpu, cuda, cuda:N (run, ab, bisect), all (gate only) or auto"
"""The devices the table's `device` takes (each command then checks the one it is given)."""


def _device(value: object, folder: Path) -> str:
    text = _text(value)
    if not DEVICE_PATTERN.fullmatch(text):
        raise HarnessError(f"unknown device {text!r}: use {DEVICES}")
    return text


def _eval_count(value: object, folder: Path) -> int:
    return _integer(value, 1, 10**9, "500")


def _seed(value: object, folder: Path) -> int:
    return _integer(value, 0, preflight.SEED_MAX, "0")


def _budget(value: object, folder: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 3600:
        raise HarnessError(f"must be a number of seconds from 0 to 3600, e.g. 4, {_got(value)}")
    return float(value)


def _options(value: object, folder: Path) -> dict[str, int | float]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HarnessError(
            f'must be a list of "technique.name=value" strings, e.g. ["prune_structured.ratio=0.5"], {_got(value)}'
        )
    return techniques.parse_options(value)


def _thresholds(value: object, folder: Path) -> Path:
    return preflight.input_file(_path(value, folder), "the thresholds file", "give the path of a thresholds JSON file")


def _baselines(value: object, folder: Path) -> Path:
    path = _path(value, folder)
    if path.exists() and not path.is_dir():
        raise HarnessError(f"{path} is a file; give the folder that holds (or will hold) the <env-key>.json baselines")
    return path


UNJUDGED_POLICIES = ("fail", "warn")
"""What a planned check left unjudged does to a gate or `ab` run: fail it (listing the check), or warn and pass on
what was judged."""


def _unjudged(value: object, folder: Path) -> str:
    text = _text(value)
    if text not in UNJUDGED_POLICIES:
        raise HarnessError(f"must be one of {', '.join(UNJUDGED_POLICIES)}, {_got(value)}")
    return text


@dataclass(frozen=True)
class Key:
    """One key of the table: its name (the command line flag's, kebab-case), its checker, what it means."""

    name: str
    check: Callable[[object, Path], Any]
    """Return the checked value (paths made absolute against the pyproject's folder); raise HarnessError if wrong."""
    meaning: str


KEYS: dict[str, Key] = {key.name: key for key in (
    Key("model", _model, "the model: resnet18, resnet50, torchvision:NAME or package.module:factory"),
    Key("weights", _weights, "a checkpoint path or 'imagenet'"),
    Key("data", _data, "digits, imagenet:PATH or folder:PATH (a relative PATH is from the pyproject's folder)"),
    Key("variants", _variants, 'a "fp32,dynamic_int8" string or a list of variants, or "all"'),
    Key("batch-sizes", _batch_sizes, 'a list of positive integers, e.g. [1, 32], or a "1,32" string'),
    Key("device", _device, DEVICES),
    Key("eval-count", _eval_count, "the number of eval images"),
    Key("seed", _seed, "the seed of splits and training"),
    Key("budget", _budget, "seconds of timing per case"),
    Key("options", _options, 'technique options, a list of "technique.name=value" strings'),
    Key("thresholds", _thresholds, "the thresholds file the gate judges with"),
    Key("baselines", _baselines, "the folder of the gate's <env-key>.json baselines"),
    Key("unjudged", _unjudged, "fail or warn: what a planned check that could not be judged does to the run"),
)}
"""Every key the table takes: the one registry that the reader, its errors and its tests enumerate."""
