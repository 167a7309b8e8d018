"""Tests of harness.results: JSON round trips, atomic writes, refusing bad files, migrations, merging."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import results
from harness.errors import ResultsError
from harness.jsonio import write_json_atomic
from harness.results import CaseResult, RunRecord, load_run, merge_runs, save_run

finite = st.floats(allow_nan=False, allow_infinity=False)
fraction = st.one_of(st.none(), st.floats(0, 1))
count = st.one_of(st.none(), st.integers(0, 2**40))
short_text = st.text(max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | short_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(short_text, inner, max_size=3),
    max_leaves=6,
)

cases = st.builds(
    CaseResult,
    variant=st.sampled_from(["fp32", "int8-dynamic", "prune-30", "fp16", "distilled"]),
    device=st.sampled_from(["cpu", "cuda"]),
    batch_size=st.integers(1, 512),
    top1=fraction,
    top5=fraction,
    latency_ms=st.dictionaries(st.sampled_from(["median", "p90", "mean", "rounds"]), finite),
    throughput_ips=st.one_of(st.none(), st.floats(0, 1e9)),
    size_bytes=count,
    compressed_size_bytes=count,
    params=count,
    nonzero_params=count,
    macs=count,
    peak_memory_bytes=count,
    speedup_vs_fp32=st.one_of(st.none(), st.floats(0, 1e6)),
    top1_change=st.one_of(st.none(), st.floats(-1, 1)),
    coverage=st.dictionaries(
        short_text, st.dictionaries(st.sampled_from(["macs_fraction", "params_fraction"]), finite)
    ),
    compile_seconds=st.one_of(st.none(), st.floats(0, 1e4)),
    eval_images=count,
    correct=st.one_of(st.none(), st.lists(st.booleans(), max_size=50)),
    notes=st.lists(short_text, max_size=3),
    status=st.sampled_from(["ok", "skipped", "error"]),
    reason=st.one_of(st.none(), short_text),
    extra=st.dictionaries(short_text, json_values, max_size=3),
)


def records(case_list: st.SearchStrategy[list[CaseResult]] | None = None) -> st.SearchStrategy[RunRecord]:
    return st.builds(
        RunRecord,
        environment=st.dictionaries(short_text, json_values, max_size=4),
        env_key=st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True),
        cases=case_list if case_list is not None else st.lists(cases, max_size=4),
        created=st.datetimes().map(lambda d: d.isoformat() + "Z"),
        command=short_text,
        data=st.just("digits"),
        model=st.just("resnet18"),
    )


def simple_case(variant: str = "fp32", **overrides: Any) -> CaseResult:
    fields: dict[str, Any] = {
        "variant": variant, "device": "cpu", "batch_size": 1, "top1": 0.9, "top5": 1.0,
        "latency_ms": {"median": 1.0, "p90": 1.2}, "throughput_ips": 1000.0, "size_bytes": 10,
        "compressed_size_bytes": 9, "params": 5, "nonzero_params": 5, "macs": 100,
    }  # fmt: skip
    fields.update(overrides)
    return CaseResult(**fields)


def simple_record(*case_list: CaseResult, **overrides: Any) -> RunRecord:
    fields: dict[str, Any] = {
        "environment": {"torch": "2.14"}, "env_key": "cpu-x-torch2.14", "cases": list(case_list),
        "created": "2026-01-01T00:00:00Z", "command": "harness run", "data": "digits", "model": "resnet18",
    }  # fmt: skip
    fields.update(overrides)
    return RunRecord(**fields)


def tmp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ------------------------------------------------------------------------------------ round trips


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(record=records())
def test_save_then_load_gives_the_same_record(record: RunRecord) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.json"
        save_run(path, record)
        assert load_run(path) == record


def test_file_format_is_sorted_indented_with_trailing_newline_and_compact_correctness(tmp_path: Path) -> None:
    record = simple_record(simple_case(correct=[True, False, True]))
    path = tmp_path / "deep" / "folder" / "run.json"
    save_run(path, record)
    text = path.read_text()
    obj = json.loads(text)
    assert text.endswith("}\n") and text == json.dumps(obj, indent=2, sort_keys=True) + "\n"
    assert obj["schema_version"] == results.SCHEMA_VERSION
    assert obj["cases"][0]["correct"] == "101"
    assert record.cases[0].case_id == "fp32-cpu-bs1"


def test_case_lookup_names_the_available_ids() -> None:
    record = simple_record(simple_case("fp32"), simple_case("int8"))
    assert record.case("int8-cpu-bs1").variant == "int8"
    with pytest.raises(ResultsError, match="fp32-cpu-bs1, int8-cpu-bs1"):
        record.case("fp16-cpu-bs1")


# -------------------------------------------------------------------------------------- atomicity


def test_unserializable_data_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    write_json_atomic(path, {"old": 1})
    with pytest.raises(ResultsError, match="not valid JSON"):
        write_json_atomic(path, {"new": [1, 2, object()]})
    assert json.loads(path.read_text()) == {"old": 1}
    assert tmp_files(tmp_path) == []


def test_a_failed_rename_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.json"
    save_run(path, simple_record(simple_case()))
    before = path.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(ResultsError, match="simulated crash"):
        save_run(path, simple_record(simple_case("other")))
    assert path.read_bytes() == before
    assert tmp_files(tmp_path) == []


def test_a_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.json"
    write_json_atomic(path, {"old": True})

    def crash(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(ResultsError, match="disk full"):
        write_json_atomic(path, {"new": True})
    assert json.loads(path.read_text()) == {"old": True}
    assert tmp_files(tmp_path) == []


def test_written_files_are_readable_by_others_and_keep_their_mode(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    write_json_atomic(path, {"a": 1})
    assert path.stat().st_mode & 0o777 == 0o644  # not the temp file's private 0600
    path.chmod(0o664)
    write_json_atomic(path, {"a": 2})
    assert path.stat().st_mode & 0o777 == 0o664


# ------------------------------------------------------------------------------------ bad files


def write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


def valid_dict() -> dict[str, Any]:
    return results.record_to_dict(simple_record(simple_case()))


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match=r"does not exist.*run the benchmark"):
        load_run(tmp_path / "nope.json")


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_truncated_file_is_refused(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.json"
        save_run(path, simple_record(simple_case(correct=[True, False]), simple_case("b")))
        text = path.read_text()
        # Any prefix that stops before the closing brace is broken JSON.
        cut = data.draw(st.integers(0, len(text) - 2))
        path.write_text(text[:cut])
        with pytest.raises(ResultsError, match="truncated or not JSON") as info:
            load_run(path)
        assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([1, 2], "not an object"),
        ({"cases": []}, "no integer 'schema_version'"),
        ({"schema_version": "1"}, "no integer 'schema_version'"),
    ],
)
def test_non_records_are_refused(tmp_path: Path, content: object, message: str) -> None:
    with pytest.raises(ResultsError, match=message):
        load_run(write(tmp_path / "x.json", content))


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    obj = valid_dict()
    obj["schema_version"] = results.SCHEMA_VERSION + 1
    with pytest.raises(ResultsError, match="newer harness.*upgrade"):
        load_run(write(tmp_path / "new.json", obj))


def test_missing_and_unknown_fields_are_named(tmp_path: Path) -> None:
    obj = valid_dict()
    del obj["env_key"], obj["model"]
    with pytest.raises(ResultsError, match="missing required field.*env_key, model"):
        load_run(write(tmp_path / "a.json", obj))
    obj = valid_dict()
    del obj["cases"][0]["macs"]
    with pytest.raises(ResultsError, match="case #0 is missing required field.*macs"):
        load_run(write(tmp_path / "b.json", obj))
    obj = valid_dict()
    obj["cases"][0]["flops"] = 1
    with pytest.raises(ResultsError, match="unknown field.*flops"):
        load_run(write(tmp_path / "c.json", obj))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", "8", "'batch_size' must be int"),
        ("top1", "high", "'top1' must be int or float"),
        ("params", True, "'params' must be int"),
        ("correct", "10x", "string of 0s and 1s"),
        ("status", "maybe", "status must be one of ok, skipped, error"),
        ("variant", None, "'variant' must be str"),
    ],
)
def test_mistyped_case_fields_are_named(tmp_path: Path, field: str, value: object, message: str) -> None:
    obj = valid_dict()
    obj["cases"][0][field] = value
    with pytest.raises(ResultsError, match=message):
        load_run(write(tmp_path / "t.json", obj))


def test_older_schema_is_migrated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = valid_dict()
    old["schema_version"] = 0
    old["results"] = old.pop("cases")  # a made-up v0 layout
    path = write(tmp_path / "v0.json", old)
    with pytest.raises(ResultsError, match="no migration from it"):
        load_run(path)

    def v0_to_v1(obj: dict[str, Any]) -> dict[str, Any]:
        obj["cases"] = obj.pop("results")
        return obj

    monkeypatch.setitem(results.MIGRATIONS, 0, v0_to_v1)
    record = load_run(path)
    assert record.schema_version == results.SCHEMA_VERSION
    assert record == simple_record(simple_case())


def test_a_version_1_record_keeps_its_speedup_interval_as_a_ratio(tmp_path: Path) -> None:
    old = valid_dict()
    old["schema_version"] = 1
    case = old["cases"][0]
    for name in ("ratios", "contention", "identity", "checks", "confirmation"):
        case.pop(name, None)
    case.update(speedup_vs_fp32=2.0, latency_ms={"median": 5.0, "rounds": 40})
    case["extra"] = {"speedup_low": 1.8, "speedup_high": 2.2, "build_seconds": 1.0}
    record = load_run(write(tmp_path / "v1.json", old))
    (migrated,) = record.cases
    speedup = migrated.ratios["speedup_vs_fp32"]
    assert speedup["value"] == 2.0 and speedup["low"] == 1.8 and speedup["high"] == 2.2 and speedup["rounds"] == 40
    assert speedup["log_se"] == pytest.approx((math.log(2.2) - math.log(1.8)) / 3.92, rel=1e-3)
    assert migrated.extra == {} and migrated.build_seconds == 1.0  # and on to version 3


def test_a_version_2_record_keeps_its_build_time_as_the_metric(tmp_path: Path) -> None:
    old = valid_dict()
    old["schema_version"] = 2
    old["cases"][0].pop("build_seconds", None)
    old["cases"][0]["extra"] = {"build_seconds": 12.5, "weights_bytes": 10}
    (case,) = load_run(write(tmp_path / "v2.json", old)).cases
    assert case.build_seconds == 12.5 and case.extra == {"weights_bytes": 10}


@pytest.mark.parametrize("value", [-1, float("inf")])
def test_negative_or_infinite_measurements_are_refused(tmp_path: Path, value: float) -> None:
    obj = valid_dict()
    obj["cases"][0]["size_bytes" if value == -1 else "throughput_ips"] = value
    with pytest.raises(ResultsError, match="finite number >= 0|not JSON"):
        load_run(write(tmp_path / "bad.json", obj))


# ------------------------------------------------------------------------------------------ merging


@settings(deadline=None, max_examples=40)
@given(
    case_list=st.lists(cases, max_size=10, unique_by=lambda c: c.case_id),
    data=st.data(),
)
def test_merge_runs_keeps_every_case_exactly_once(case_list: list[CaseResult], data: st.DataObject) -> None:
    workers = data.draw(st.integers(1, 4))
    owner = data.draw(st.lists(st.integers(0, workers - 1), min_size=len(case_list), max_size=len(case_list)))
    parts: list[list[CaseResult]] = [[] for _ in range(workers)]
    for case, worker in zip(case_list, owner, strict=True):
        parts[worker].append(case)
    # A worker may also report a case another one ran, as long as it is identical.
    duplicate = data.draw(st.booleans())
    if case_list and duplicate:
        parts[-1].append(case_list[0])
    recs = [
        simple_record(*part, environment={"worker": i}, created=f"2026-01-0{i + 1}T00:00:00Z")
        for i, part in enumerate(parts)
    ]
    merged = merge_runs(recs)
    assert sorted(c.case_id for c in merged.cases) == sorted(c.case_id for c in case_list)
    assert {c.case_id: c for c in merged.cases} == {c.case_id: c for c in case_list}
    assert merged.created == "2026-01-01T00:00:00Z"
    workers_info = merged.environment["workers"]
    assert isinstance(workers_info, list) and len(workers_info) == workers
    assert merged.environment["worker"] == 0


def test_merge_runs_refuses_conflicts_and_mixed_runs() -> None:
    a = simple_record(simple_case(top1=0.9))
    b = simple_record(simple_case(top1=0.8))
    with pytest.raises(ResultsError, match="'fp32-cpu-bs1'.*different results"):
        merge_runs([a, b])
    with pytest.raises(ResultsError, match="different data/model"):
        merge_runs([a, simple_record(simple_case("x"), data="imagenet:/d")])
    with pytest.raises(ResultsError, match="at least one"):
        merge_runs([])


def test_merged_record_round_trips(tmp_path: Path) -> None:
    merged = merge_runs([simple_record(simple_case("a")), simple_record(simple_case("b"), env_key="other")])
    assert merged.environment["workers"] == [
        {"env_key": "cpu-x-torch2.14", "devices": ["cpu"], "environment": {"torch": "2.14"}},
        {"env_key": "other", "devices": ["cpu"], "environment": {"torch": "2.14"}},
    ]
    save_run(tmp_path / "m.json", merged)
    assert load_run(tmp_path / "m.json") == merged
