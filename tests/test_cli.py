"""The command line: list, argument errors, and one end-to-end run on the built-in default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import techniques
from harness.__main__ import main
from harness.data_spec import DATASETS
from harness.results import load_run


def test_list_shows_every_technique_preset_and_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in (*techniques.NAMES, *techniques.PRESETS, *DATASETS):
        assert f"  {name} " in out
    assert "dynamic_int8         cpu " in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--data", "mnist"], "digits, imagenet:PATH, folder:PATH"),
        (["run", "--data", "imagenet:/no/such/folder"], "/no/such/folder"),
        (["run", "--data", "digits", "--weights", "/no/ckpt.pth"], "/no/ckpt.pth"),
        (["run", "--device", "tpu"], "unknown device 'tpu'"),
        (["run", "--option", "ratio=3"], "technique.name=value"),
        (["compare", "/no/a.json", "/no/b.json"], "/no/a.json"),
    ],
)
def test_user_errors_exit_2_with_one_clear_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


@pytest.mark.slow
def test_run_fp32_on_the_builtin_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results" / "run.json"
    argv = [
        "run",
        "--variants",
        "fp32,dynamic_int8",
        "--device",
        "cpu",
        "--batch-sizes",
        "1",
        "--budget",
        "0.5",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "fp32" in table and "dynamic_int8" in table and "44.8" in table
    record = load_run(out)
    fp32 = record.case("fp32-cpu-bs1")
    # The default model learned (chance is 10%); its exact top-1 depends on the CPU's kernels: 96.6-99.4% so far.
    assert fp32.status == "ok" and fp32.top1 is not None and fp32.top1 >= 0.95
    assert fp32.eval_images == 500 and fp32.correct is not None and len(fp32.correct) == 500
    assert fp32.params == 11_181_642 and fp32.macs is not None and 1.8e9 < fp32.macs < 1.9e9
    dyn = record.case("dynamic_int8-cpu-bs1")
    assert dyn.coverage["dynamic_int8"]["macs_fraction"] < 0.01
    assert json.loads(out.read_text())["schema_version"] == record.schema_version
