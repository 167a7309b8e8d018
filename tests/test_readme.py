"""README is the front door: it documents every registered technique and preset, and CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

from harness import techniques

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_technique_and_preset_is_documented() -> None:
    rows = set(re.findall(r"^\| `([a-z0-9_+]+)` \|", README, flags=re.MULTILINE))
    missing = [name for name in (*techniques.NAMES, *techniques.PRESETS) if name not in rows]
    assert not missing, f"README's technique/preset tables miss {missing}"


def test_documented_devices_match_the_registry() -> None:
    for technique in techniques.all_techniques():
        row = re.search(rf"^\| `{technique.name}` \| ([a-z, ]+) \|", README, flags=re.MULTILINE)
        assert row, technique.name
        assert row.group(1).split(", ") == list(technique.devices), technique.name


def test_ci_runs_the_readme_test_command() -> None:
    command = re.search(r"^(python -m pytest[^#\n]*?)\s+# the tests", README, flags=re.MULTILINE)
    assert command, "README's quick start must give the test command"
    ci = (ROOT / ".ci" / "run").read_text()
    assert command.group(1).replace("python ", "python3 ") in ci
