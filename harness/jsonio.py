"""Reading versioned JSON documents and writing any file atomically: the one place the harness does either."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from harness.errors import ResultsError

Migration = Callable[[dict[str, Any]], dict[str, Any]]


def read_json_object(path: Path, what: str, fix: str) -> dict[str, Any]:
    """Return the JSON object at `path`; a missing, unreadable, non-JSON or non-object file raises ResultsError.

    `what` names the document in the message ("baseline file"), `fix` says what to do about it.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ResultsError(f"{what} {path} does not exist; {fix}") from exc
    except IsADirectoryError as exc:
        raise ResultsError(f"{what} {path} is a folder, not a file; {fix}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"cannot read {what} {path}: {exc}; {fix}") from exc
    try:
        obj = json.loads(text, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        detail = f"{exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise ResultsError(f"{what} {path} is truncated or not JSON ({detail}); {fix}") from exc
    if not isinstance(obj, dict):
        raise ResultsError(f"{what} {path} holds a JSON {type(obj).__name__}, not an object; {fix}")
    return obj


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows (the file was written with NaN or Infinity)")


def migrate(
    obj: dict[str, Any], where: str, what: str, current: int, migrations: Mapping[int, Migration] | None = None
) -> dict[str, Any]:
    """Return `obj` brought up to schema `current` through `migrations` ({from_version: step}).

    A missing or non-integer schema_version, a newer one, or an older one without a migration path raises
    ResultsError naming `where` and the fix.
    """
    version = obj.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ResultsError(f"{where} has no integer 'schema_version' ({version!r}); it is not a {what}")
    if version > current:
        raise ResultsError(
            f"{where} has schema_version {version}, written by a newer harness (this one reads up to "
            f"{current}); upgrade the harness"
        )
    missing = f"{where} has schema_version {{}} and there is no migration from it to {current}; regenerate the {what}"
    for step in migration_path(version, current, migrations or {}, lambda v: ResultsError(missing.format(v))):
        obj = step(dict(obj))
        version += 1
        obj["schema_version"] = version
    return obj


def migration_path(
    version: int, current: int, migrations: Mapping[int, Callable[..., Any]], missing: Callable[[int], Exception]
) -> list[Callable[..., Any]]:
    """Return the steps of `migrations` ({from_version: step}) that bring `version` up to `current`, in order;
    raise `missing(v)` for the first version v that has no step."""
    steps = []
    for step_version in range(version, current):
        step = migrations.get(step_version)
        if step is None:
            raise missing(step_version)
        steps.append(step)
    return steps


def json_text(obj: object, where: Path | str) -> str:
    """Return `obj` as canonical JSON text (indent 2, sorted keys, trailing newline); NaN and Infinity refused."""
    try:
        return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ResultsError(
            f"cannot write {where}: the data is not valid JSON ({exc}); a measurement produced a value JSON "
            "cannot hold (NaN, infinity, or an object)"
        ) from exc


def write_json_atomic(path: Path, obj: object) -> None:
    """Write `obj` as canonical JSON so that `path` is never half-written (see write_atomic)."""
    text = json_text(obj, path)
    write_atomic(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write `path` through a temporary file in the same folder, fsync it, rename it over `path`, fsync the folder.

    `write` receives the open binary handle. On any failure, Ctrl-C included, the temporary file is removed and
    an existing `path` is left as it was; an OSError becomes a ResultsError that names the path.
    """
    path = Path(path)
    if path.is_dir():
        raise ResultsError(f"cannot write {path}: it is a folder; give a file path")
    tmp_name: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            # mkstemp makes the file private (0600); keep the old file's mode, else rw-r--r--.
            os.fchmod(handle.fileno(), path.stat().st_mode & 0o777 if path.exists() else 0o644)
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        _fsync_folder(path.parent)
    except OSError as exc:
        raise ResultsError(f"cannot write {path}: {exc}; check the folder exists and is writable") from exc
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (a crash right after it must not bring the old name back)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def finite_number(value: object, where: str, *, minimum: float | None = 0.0) -> float:
    """Return `value` as a float; a bool, a non-number, NaN, infinity or one below `minimum` raises ResultsError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ResultsError(f"{where} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ResultsError(f"{where} must be at least {minimum:g}, got {value!r}")
    return float(value)
