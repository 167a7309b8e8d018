"""The gate's options, checked in-process before any case is collected: a bad one is one usage-error line that says
what to fix (test_bench_plugin.py runs one through a real pytest process)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _gate import StubConfig

from harness.env import env_key, fingerprint
from harness.machine import available_cpus
from harness.pytest_gate.plugin import settings_of


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bench_batch_sizes": "0"}, "positive integers"),
        ({"bench_variants": "int3"}, "unknown technique 'int3'"),
        ({"bench_threads": 0}, "--bench-threads must be between 1 and the"),
        ({"bench_threads": 999}, "--bench-threads must be between 1 and the"),
        ({"bench_budget": float("nan")}, "--bench-budget must be a finite number >= 0"),
        ({"bench_budget": -1.0}, "--bench-budget must be a finite number >= 0"),
        ({"force_baselines": True}, "only makes sense with --update-baselines"),
        ({"data": "mnist"}, "valid specs: digits, imagenet:PATH, folder:PATH"),
        ({"data": "folder:/no/such/folder"}, "data folder /no/such/folder does not exist"),
        ({"weights": "/no/ckpt.pth"}, "--weights /no/ckpt.pth does not exist"),
        ({"results_json": Path(".")}, "--results-json . is a folder"),
        ({"thresholds": Path("/no/thresholds.json")}, "--thresholds /no/thresholds.json does not exist"),
        ({"baselines_dir": Path("/etc/hostname"), "update_baselines": True}, "is a file, not a folder"),
    ],
)
def test_bad_options_are_one_clear_usage_error(options: dict[str, object], message: str) -> None:
    with pytest.raises(pytest.UsageError) as raised:
        settings_of(StubConfig(**options))  # type: ignore[arg-type]
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_a_broken_thresholds_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "thresholds.json"
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(pytest.UsageError, match=f"thresholds file {bad} is truncated or not JSON"):
        settings_of(StubConfig(thresholds=bad))  # type: ignore[arg-type]


def test_a_broken_baseline_file_is_one_line_before_any_case(tmp_path: Path) -> None:
    """This machine's baseline is read when the run starts: a broken one stops it in one line, not in every case."""
    key = env_key({**fingerprint(), "torch_threads": available_cpus()}, "cpu")
    (tmp_path / f"{key}.json").write_text('{"schema_version": 2, "cases": [', encoding="utf-8")
    with pytest.raises(pytest.UsageError, match=f"baseline file {tmp_path / key}.json is truncated or not JSON"):
        settings_of(StubConfig(baselines_dir=tmp_path, bench_threads=None))  # type: ignore[arg-type]
