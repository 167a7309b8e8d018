"""Bad input to every command: one line that says what was wrong and the fix, exit 2, and nothing written.

Every argument is checked before data is loaded or a model built (harness.preflight), so none of these cases
loads data or trains: the whole table runs in seconds. `CASES` is also the table of the issue's closing note.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from harness.__main__ import main

Setup = Callable[[Path], list[str]]


def _random_bytes(folder: Path) -> str:
    path = folder / "random.pth"
    path.write_bytes(os.urandom(3000))
    return str(path)


def _pickled_list(folder: Path) -> str:
    path = folder / "list.pth"
    buffer = io.BytesIO()
    torch.save([1, 2, 3], buffer)
    path.write_bytes(buffer.getvalue())
    return str(path)


def _file(folder: Path, name: str = "a-file", text: str = "x") -> str:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def _benchmark_json(folder: Path) -> str:
    return _file(folder, "bench.json", json.dumps({"machine_info": {}, "benchmarks": [], "version": "5.1.0"}))


def _results(folder: Path) -> str:
    return _file(folder, "results.json", json.dumps({"schema_version": 2, "cases": "none"}))


RUN = ["run", "--device", "cpu"]
CASES: list[tuple[str, Setup, str]] = [
    # (what is wrong, argv made in the test's folder, a fragment of the message)
    ("unknown model", lambda d: [*RUN, "--model", "foo"], "unknown model 'foo': not one of torchvision"),
    ("unknown device", lambda d: ["run", "--device", "tpu"], "unknown device 'tpu'"),
    ("device cuda:x", lambda d: ["run", "--device", "cuda:x"], "unknown device 'cuda:x'"),
    ("unknown data spec", lambda d: [*RUN, "--data", "mnist"], "valid specs: digits, imagenet:PATH, folder:PATH"),
    ("data folder missing", lambda d: [*RUN, "--data", f"folder:{d}/none"], "does not exist"),
    ("data spec without path", lambda d: [*RUN, "--data", "imagenet:"], "needs a folder"),
    ("digits with a path", lambda d: [*RUN, "--data", "digits:/x"], "takes no path"),
    ("data path is a file", lambda d: [*RUN, "--data", f"folder:{_file(d)}"], "is a file, not a folder"),
    ("eval count 0", lambda d: [*RUN, "--eval-count", "0"], "--eval-count must be a positive number"),
    ("eval count negative", lambda d: [*RUN, "--eval-count", "-5"], "--eval-count must be a positive number"),
    ("budget NaN", lambda d: [*RUN, "--budget", "nan"], "--budget must be a finite number >= 0"),
    ("budget infinite", lambda d: [*RUN, "--budget", "inf"], "--budget must be a finite number"),
    ("budget negative", lambda d: [*RUN, "--budget", "-1"], "--budget must be a finite number >= 0"),
    ("seed negative", lambda d: [*RUN, "--seed", "-1"], "--seed must be between 0 and 4294967295"),
    ("seed too large", lambda d: [*RUN, "--seed", str(2**40)], "--seed must be between 0 and 4294967295"),
    ("threads 0", lambda d: [*RUN, "--threads", "0"], "--threads must be between 1 and the"),
    ("threads above the CPUs", lambda d: [*RUN, "--threads", "999"], "--threads must be between 1 and the"),
    ("unknown variant", lambda d: [*RUN, "--variants", "int3"], "unknown technique 'int3'"),
    ("empty variant list", lambda d: [*RUN, "--variants", " , "], "the variant list is empty"),
    ("empty technique in a variant", lambda d: [*RUN, "--variants", "fp32+"], "empty technique name"),
    ("option without technique", lambda d: [*RUN, "--option", "ratio=3"], "technique.name=value"),
    ("option of unknown technique", lambda d: [*RUN, "--option", "foo.bar=1"], "unknown technique 'foo'"),
    ("unknown option", lambda d: [*RUN, "--variants", "all", "--option", "prune_structured.rate=0.5"],
     "prune_structured has no option 'rate' (its options: ratio, round_to, epochs)"),
    ("option out of range", lambda d: [*RUN, "--variants", "all", "--option", "prune_structured.ratio=2"],
     "--option prune_structured.ratio must be a number in (0, 1), got '2'"),
    ("option of the wrong kind", lambda d: [*RUN, "--variants", "all", "--option", "distill.epochs=1.5"],
     "--option distill.epochs must be a whole number >= 1"),
    ("option NaN", lambda d: [*RUN, "--variants", "all", "--option", "prune_unstructured.amount=nan"],
     "--option prune_unstructured.amount must be a number in [0, 1)"),
    ("option for a technique not run", lambda d: [*RUN, "--option", "distill.epochs=2"],
     "no variant in this run uses distill"),
    ("option given twice", lambda d: [*RUN, "--variants", "all", "--option", "distill.epochs=2", "--option",
                                      "distill.epochs=3"], "--option distill.epochs is given twice"),
    ("weights missing", lambda d: [*RUN, "--weights", f"{d}/none.pth"], "does not exist"),
    ("weights a folder", lambda d: [*RUN, "--weights", str(d)], "is a folder"),
    ("weights random bytes", lambda d: [*RUN, "--weights", _random_bytes(d)], "cannot be read"),
    ("weights not a state_dict", lambda d: [*RUN, "--weights", _pickled_list(d)], "holds no state_dict"),
    ("out is a folder", lambda d: [*RUN, "--out", str(d)], "--out " + "{d} is a folder"),
    ("out under a file", lambda d: [*RUN, "--out", f"{_file(d)}/run.json"], "is a file, so no folder can be made"),
    ("compare: file missing", lambda d: ["compare", f"{d}/a.json", f"{d}/b.json"], "does not exist"),
    ("compare: a folder", lambda d: ["compare", str(d), str(d)], "is a folder, not a file"),
    ("compare: not JSON", lambda d: ["compare", _file(d), _file(d)], "truncated or not JSON"),
    ("compare: a pytest-benchmark file", lambda d: ["compare", _benchmark_json(d), _benchmark_json(d)],
     "is a pytest-benchmark file"),
    ("compare: JSON of the wrong shape", lambda d: ["compare", _results(d), _results(d)], "results.json"),
    ("compare: markdown is a folder", lambda d: ["compare", _results(d), _results(d), "--markdown", str(d)],
     "is a folder"),
    ("compare: thresholds missing", lambda d: ["compare", _results(d), _results(d), "--thresholds", f"{d}/t.json"],
     "--thresholds"),
    ("baseline show: folder missing", lambda d: ["baseline", "show", "--baselines-dir", f"{d}/none"],
     "does not exist"),
    ("baseline show: env key with a path", lambda d: ["baseline", "show", "--env-key", "../../etc/passwd"],
     "is not an environment key"),
    ("baseline write: results missing", lambda d: ["baseline", "write", f"{d}/r.json", "--baselines-dir",
                                                   f"{d}/b"], "does not exist"),
    ("baseline write: folder is a file", lambda d: ["baseline", "write", _results(d), "--baselines-dir", _file(d)],
     "is a file, not a folder"),
    ("report: results missing", lambda d: ["report", f"{d}/r.json"], "does not exist"),
    ("report: batch size 0", lambda d: ["report", _results(d), "--batch-size", "0"], "--batch-size must be a positive"),
    ("report: out-dir is a file", lambda d: ["report", _results(d), "--out-dir", _file(d)], "is a file, not a folder"),
]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("what", "setup", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    what: str, setup: Setup, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # the default --out, results/latest.json, would land here
    folder = tmp_path / "work"
    folder.mkdir()
    argv = setup(folder)
    before = _files(tmp_path)
    assert main(argv) == 2, what
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, f"not one line: {err!r}"
    assert message.replace("{d}", str(folder)) in err, err
    assert "Traceback" not in err
    assert _files(tmp_path) == before, "a refused command wrote files"


def test_hub_weights_missing_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert main([*RUN, "--weights", "imagenet", "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "not in the torch hub cache" in err and "resnet18-f37072fd.pth" in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("sizes", ["0", "1,x", "", "-3", "1.5"])
def test_bad_batch_sizes_are_refused_by_the_parser(sizes: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--batch-sizes", sizes])
    assert exit_info.value.code == 2
    assert "comma list of positive integers" in capsys.readouterr().err
