"""The baseline store: built from fresh-process runs, validated on load, written atomically under a lock."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _gate import ENV_KEY, IDENTITY, make_case, make_record, stored, with_wrong

from harness.errors import ResultsError
from harness.gate import store
from harness.gate.baseline_cli import write_command
from harness.gate.store import baseline_path, entry_of, hygiene_problems, load_baseline, write_baseline
from harness.jsonio import write_json_atomic
from harness.results import save_run


def test_entries_keep_one_timing_value_per_run(tmp_path: Path) -> None:
    pairs = ((1.0, 3.4), (1.02, 3.6), (0.99, 3.5))
    runs = [[make_case("fp32", latency_ratio=r), make_case(speedup=s)] for r, s in pairs]
    baseline = stored(tmp_path, *runs)
    text = baseline.path.read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    entry = baseline.entries["static_int8-cpu-bs1"]
    assert entry.timing["speedup_vs_fp32"].values == (3.4, 3.6, 3.5)
    assert baseline.entries["fp32-cpu-bs1"].timing["latency_vs_yardstick"].values == (1.0, 1.02, 0.99)
    assert entry.identity == IDENTITY and entry.correct == "1" * 500 and entry.eval_images == 500
    assert len(entry.runs) == 3 and entry.latency_median_ms == (10.0, 10.0, 10.0)
    assert baseline.provenance["runs"] == 3 and baseline.provenance["git_commit"] == "abc123"
    assert baseline.provenance["forced"] is False


def test_absent_baseline_is_none(tmp_path: Path) -> None:
    assert load_baseline(tmp_path, ENV_KEY) is None


def test_a_case_that_failed_in_one_run_is_not_stored(tmp_path: Path) -> None:
    baseline = stored(tmp_path, [make_case("fp32"), make_case()], [make_case("fp32"), make_case(status="error")])
    assert sorted(baseline.entries) == ["fp32-cpu-bs1"]


@pytest.mark.parametrize(
    ("environment", "cases", "problem"),
    [
        ({"git_dirty": True}, None, "dirty"),
        ({"git_dirty": None}, None, "dirty"),
        ({"xdist_workers": 2}, None, "pytest-xdist"),
        ({}, [make_case(contention=0.4)], "busy"),
    ],
)
def test_hygiene_refuses_a_baseline_that_would_mislead(
    tmp_path: Path, environment: dict[str, Any], cases: list[Any] | None, problem: str
) -> None:
    record = make_record(cases or [make_case()], **environment)
    with pytest.raises(ResultsError, match=problem):
        write_baseline(tmp_path, [record], command="t", busy_limit=0.1)
    assert list(tmp_path.iterdir()) == []
    (path,) = write_baseline(tmp_path, [record], command="t", busy_limit=0.1, force=True)
    provenance = json.loads(path.read_text())["provenance"]
    assert provenance["forced"] is True and any(problem in p for p in provenance["problems"])


def test_hygiene_passes_clean_runs_of_one_commit() -> None:
    runs = [make_record([make_case()]), make_record([make_case()])]
    assert hygiene_problems(runs, 0.1) == []
    assert "different commits" in hygiene_problems([*runs, make_record([make_case()], git_commit="other")], 0.1)[0]


def test_runs_of_different_models_or_sizes_are_refused() -> None:
    runs = [make_record([make_case()]), make_record([make_case(identity={**IDENTITY, "weights_sha256": "x"})])]
    with pytest.raises(ResultsError, match="different models"):
        entry_of([r.cases[0] for r in runs], runs)
    runs = [make_record([make_case()]), make_record([make_case(size_bytes=1)])]
    with pytest.raises(ResultsError, match="size_bytes differs between runs.*not deterministic"):
        entry_of([r.cases[0] for r in runs], runs)


def test_partial_update_keeps_the_other_cases(tmp_path: Path) -> None:
    stored(tmp_path, [make_case("fp32"), make_case(speedup=3.0)])
    baseline = stored(tmp_path, [make_case(speedup=4.0), make_case("fp32", status="error")])
    assert baseline.entries["static_int8-cpu-bs1"].timing["speedup_vs_fp32"].values == (4.0,)
    assert "fp32-cpu-bs1" in baseline.entries  # errored this time: its old entry is kept


def test_failed_write_leaves_the_old_baseline_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = stored(tmp_path, [make_case()]).path
    before = path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ResultsError, match="disk full"):
        stored(tmp_path, [make_case(speedup=9.0)])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, path.name + ".lock"])


def test_two_writers_wait_for_each_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the lock the second writer would read the file before the first one's case is in it."""
    first_is_writing, real_write = threading.Event(), store.write_json_atomic

    def slow_write(path: Path, obj: object) -> None:
        if threading.current_thread().name == "first":
            first_is_writing.set()
            time.sleep(0.3)
        real_write(path, obj)

    monkeypatch.setattr(store, "write_json_atomic", slow_write)
    first = threading.Thread(name="first", target=stored, args=(tmp_path, [make_case("fp32")]))
    first.start()
    assert first_is_writing.wait(10)
    baseline = stored(tmp_path, [make_case("bf16")])
    first.join()
    reloaded = load_baseline(tmp_path, ENV_KEY)
    assert reloaded is not None and sorted(reloaded.entries) == ["bf16-cpu-bs1", "fp32-cpu-bs1"]
    assert baseline.entries.keys() == reloaded.entries.keys()


def _document(tmp_path: Path) -> dict[str, Any]:
    stored(tmp_path, [make_case()], [make_case(speedup=3.6)])
    return json.loads(baseline_path(tmp_path, ENV_KEY).read_text())


def _edit(doc: dict[str, Any], *keys: str, value: Any) -> None:
    target = doc
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value


CASE = ("cases", "static_int8-cpu-bs1")


@pytest.mark.parametrize(
    ("keys", "value", "match"),
    [
        (("schema_version",), 99, "newer harness"),
        (("schema_version",), 1, "no migration"),
        (("env_key",), "other", "is for env_key"),
        ((*CASE, "size_bytes"), -1, "at least 0"),
        ((*CASE, "top1"), 1.5, "fraction"),
        ((*CASE, "top1"), "x", "finite number"),
        ((*CASE, "correct"), "1" * 499, "499 images but eval_images is 500"),
        ((*CASE, "correct"), "2" * 500, "0s and 1s"),
        ((*CASE, "timing", "speedup_vs_fp32", "values"), [3.5], "the same length"),
        ((*CASE, "runs"), [{}, {}, {}], "2 values for 3 runs"),
        ((*CASE, "timing", "speedup_vs_fp32", "values"), [3.5, 0], "positive"),
        ((*CASE, "timing", "latency"), {}, "timing must map"),
        ((*CASE, "runs"), [], "non-empty"),
        ((*CASE, "identity"), {"data": 1}, "identity"),
        ((*CASE, "latency"), 1, "unknown fields"),
    ],
)
def test_bad_baseline_files_are_refused(tmp_path: Path, keys: tuple[str, ...], value: Any, match: str) -> None:
    doc = _document(tmp_path)
    _edit(doc, *keys, value=value)
    baseline_path(tmp_path, ENV_KEY).write_text(json.dumps(doc))
    with pytest.raises(ResultsError, match=match) as err:
        load_baseline(tmp_path, ENV_KEY)
    assert ENV_KEY in str(err.value)


@pytest.mark.parametrize("text", ['{"schema_version": 2, "env_key": ', "[]", '{"schema_version": 2, "x": NaN}', ""])
def test_unreadable_baseline_files_are_refused_and_never_overwritten(tmp_path: Path, text: str) -> None:
    path = baseline_path(tmp_path, ENV_KEY)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ResultsError, match=f"{ENV_KEY}.*(restore it from git|delete it)"):
        load_baseline(tmp_path, ENV_KEY)
    with pytest.raises(ResultsError):
        stored(tmp_path, [make_case()])
    assert path.read_text(encoding="utf-8") == text


def test_nan_is_never_written(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="not valid JSON"):
        write_json_atomic(tmp_path / "x.json", {"speedup": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_accuracy_of_the_first_run_is_kept_with_its_bits(tmp_path: Path) -> None:
    baseline = stored(tmp_path, [make_case(correct=with_wrong(3))])
    entry = baseline.entries["static_int8-cpu-bs1"]
    assert entry.values["top1"] == pytest.approx(497 / 500)
    assert entry.correct_bits() == with_wrong(3)


def test_baseline_write_records_runs_whose_checks_failed_and_lists_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Recording is measuring: a floor this machine does not reach fails its check, and the run is recorded all the
    same, the failed check printed (as `nox -s update_baselines` calls it)."""
    failing = {"case_id": "static_int8-cpu-bs1", "metric": "speedup_floor", "outcome": "fail",
               "message": "2.1 against the floor 3x"}
    paths = []
    for run in range(2):
        case = make_case(speedup=2.1 + run / 100)
        case.checks = [failing]
        paths.append(tmp_path / f"baseline-run-{run + 1}.json")
        save_run(paths[-1], make_record([case]))
    assert write_command(paths, baselines_dir=tmp_path / "baselines", thresholds=None, force=False) == 0
    out = capsys.readouterr().out
    assert out.count("1 checks failed in this run (recorded all the same") == 2
    assert "static_int8-cpu-bs1 speedup_floor: 2.1 against the floor 3x" in out
    baseline = load_baseline(tmp_path / "baselines", ENV_KEY)
    assert baseline is not None and baseline.entries["static_int8-cpu-bs1"].timing["speedup_vs_fp32"].values == (
        pytest.approx((2.1, 2.11)))
