"""Every reader of a file the harness is handed or keeps, fed random and mutated files: it returns, or it raises the
project's error naming the file. Never another exception (a traceback for the user).

Each reader gets three kinds of input from a real file of its kind (the seed): random bytes, the seed's bytes cut or
edited, and (for JSON) the seed's document with one value replaced by any JSON value or one key dropped. Examples
Hypothesis once found are kept below as @example.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _gate import ENV_KEY, make_case, make_record, stored, with_wrong
from helpers import fuzz_examples
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from harness import models
from harness.data import check_image_header, read_rgb
from harness.errors import HarnessError
from harness.gate.remeasure import read_remeasured
from harness.gate.store import load_baseline
from harness.gate.thresholds import THRESHOLDS_FILE, load_thresholds
from harness.models import read_state_dict
from harness.results import load_run, save_run

REPO = Path(__file__).resolve().parent.parent
QUIET = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
FUZZ = settings(max_examples=fuzz_examples(700), deadline=None, suppress_health_check=QUIET)
"""A JSON reader's three tests (random bytes, byte edits, JSON edits): 2,100 examples per reader."""
FUZZ_BINARY = settings(max_examples=fuzz_examples(1000), deadline=None, suppress_health_check=QUIET)
"""A binary reader's two tests (random bytes, byte edits): 2,000 examples per reader (the checkpoint 2,700)."""

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)

pytestmark = pytest.mark.statistical


def edited(seed: bytes) -> st.SearchStrategy[bytes]:
    """Return the seed cut short, with bytes overwritten, or with bytes inserted."""
    if not seed:
        return st.binary(max_size=64)
    cut = st.integers(0, len(seed) - 1).map(lambda n: seed[:n])
    flips = st.lists(st.tuples(st.integers(0, len(seed) - 1), st.integers(0, 255)), min_size=1, max_size=8)
    overwritten = flips.map(lambda edits: _overwrite(seed, edits))
    inserted = st.tuples(st.integers(0, len(seed)), st.binary(min_size=1, max_size=32)).map(
        lambda pos_bytes: seed[: pos_bytes[0]] + pos_bytes[1] + seed[pos_bytes[0] :]
    )
    return st.one_of(cut, overwritten, inserted)


def _overwrite(seed: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(seed)
    for pos, value in edits:
        out[pos] = value
    return bytes(out)


def _slots(doc: Any) -> Iterator[tuple[Any, Any]]:
    """Yield (container, key) of every value inside a JSON document (long lists: their first items only)."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield doc, key
            yield from _slots(value)
    elif isinstance(doc, list):
        for index, value in enumerate(doc[:3]):
            yield doc, index
            yield from _slots(value)


def json_edit(data: st.DataObject, seed: Any) -> bytes:
    """Return the seed document with one value replaced by any JSON value, or one key dropped, as text."""
    doc = copy.deepcopy(seed)
    slots = list(_slots(doc))
    container, key = data.draw(st.sampled_from(slots))
    if isinstance(container, dict) and data.draw(st.booleans()):
        del container[key]
    else:
        container[key] = data.draw(JSON_VALUES)
    return json.dumps(doc).encode()


def refused_or_read(read: Callable[[Path], object], path: Path, content: bytes) -> None:
    """Write `content` at `path` and read it: fine, or the project's error naming the file."""
    path.write_bytes(content)
    try:
        read(path)
    except HarnessError as err:
        assert str(path) in str(err) or path.name in str(err), f"the message does not name the file: {err}"
        assert "\n" not in str(err).strip(), f"the message is not one line: {err!r}"


# ------------------------------------------------------------------------------------------------ seeds


def results_seed(folder: Path) -> bytes:
    record = make_record([make_case("fp32", correct=with_wrong(3, 40)), make_case(correct=with_wrong(5, 40))])
    path = folder / "seed-results.json"
    save_run(path, record)
    return path.read_bytes()


def baseline_seed(folder: Path) -> bytes:
    runs = [[make_case("fp32", latency_ratio=r, correct=with_wrong(2, 40)), make_case(speedup=s,
             correct=with_wrong(4, 40))] for r, s in ((1.0, 3.4), (1.02, 3.6))]
    return stored(folder, *runs).path.read_bytes()


def checkpoint_seed() -> bytes:
    buffer = io.BytesIO()
    torch.save({"fc.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2)}, buffer)
    return buffer.getvalue()


def image_seed() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 30, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_seed() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((24, 16), 40).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


BENCHMARK_SEED = {
    "machine_info": {"node": "x", "cpu": {"brand_raw": "Test CPU"}},
    "commit_info": {"id": "abc123", "dirty": False},
    "benchmarks": [{"name": "test_gate[fp32-cpu-bs1]", "stats": {"min": 0.01, "mean": 0.011},
                    "extra_info": {"case_id": "fp32-cpu-bs1", "top1": 0.98}}],
    "datetime": "2026-11-28T00:00:00",
    "version": "5.1.0",
}
REMEASURED_SEED = {
    "ratios": {"speedup_vs_fp32": {"value": 1.5, "low": 1.4, "high": 1.6, "log_se": 0.02, "rounds": 30}},
    "contention": 0.01,
    "env_key": ENV_KEY,
    "latency_ms": {"median": 3.2},
}


# ------------------------------------------------------------------------------------------------ JSON readers


def read_baseline_at(path: Path) -> object:
    """Read the file at `path` as the baseline of ENV_KEY (the store finds it by name)."""
    target = path.parent / "store" / f"{ENV_KEY}.json"
    target.parent.mkdir(exist_ok=True)
    shutil.copyfile(path, target)
    try:
        return load_baseline(target.parent, ENV_KEY)
    except HarnessError as err:  # the store names its own copy; report it as the file we were handed
        raise HarnessError(str(err).replace(str(target), str(path))) from err


JSON_READERS: dict[str, tuple[Callable[[Path], object], Callable[[Path], bytes]]] = {
    "results": (load_run, results_seed),
    "baseline": (read_baseline_at, baseline_seed),
    "thresholds": (load_thresholds, lambda _folder: THRESHOLDS_FILE.read_bytes()),
    "pytest-benchmark": (load_run, lambda _folder: json.dumps(BENCHMARK_SEED).encode()),
    "re-measurement": (read_remeasured, lambda _folder: json.dumps(REMEASURED_SEED).encode()),
}


@pytest.mark.parametrize("reader", sorted(JSON_READERS))
@FUZZ
@given(content=st.binary(max_size=512))
@example(content=b"")
@example(content=b"\xff\xfe")
@example(content=b"[" * 5000)
@example(content=b'{"schema_version": NaN}')
def test_json_readers_refuse_random_bytes(reader: str, content: bytes, tmp_path: Path) -> None:
    refused_or_read(JSON_READERS[reader][0], tmp_path / f"{reader}.json", content)


@pytest.fixture(scope="module")
def json_seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The seed file of each JSON reader, made once."""
    folder = tmp_path_factory.mktemp("seeds")
    return {name: seed_of(folder) for name, (_read, seed_of) in JSON_READERS.items()}


@pytest.mark.parametrize("reader", sorted(JSON_READERS))
@FUZZ
@given(data=st.data())
def test_json_readers_refuse_cut_or_edited_files(
    reader: str, data: st.DataObject, tmp_path: Path, json_seeds: dict[str, bytes]
) -> None:
    refused_or_read(JSON_READERS[reader][0], tmp_path / f"{reader}.json", data.draw(edited(json_seeds[reader])))


@pytest.mark.parametrize("reader", sorted(JSON_READERS))
@FUZZ
@given(data=st.data())
def test_json_readers_refuse_valid_json_of_the_wrong_shape(
    reader: str, data: st.DataObject, tmp_path: Path, json_seeds: dict[str, bytes]
) -> None:
    seed = json.loads(json_seeds[reader])
    refused_or_read(JSON_READERS[reader][0], tmp_path / f"{reader}.json", json_edit(data, seed))


def test_the_seeds_themselves_are_read(tmp_path: Path) -> None:
    """The fuzzing starts from files the readers accept (else every example would be an early refusal)."""
    for reader in ("results", "baseline", "thresholds", "re-measurement"):
        read, seed_of = JSON_READERS[reader]
        path = tmp_path / f"{reader}.json"
        path.write_bytes(seed_of(tmp_path))
        assert read(path) is not None
    path = tmp_path / "bench.json"
    path.write_bytes(json.dumps(BENCHMARK_SEED).encode())
    with pytest.raises(HarnessError, match="pytest-benchmark file .* --results-json"):
        load_run(path)
    path.write_bytes(checkpoint_seed())
    assert set(read_state_dict(path)) == {"fc.weight", "fc.bias"}
    for seed in (image_seed(), jpeg_seed()):
        path.write_bytes(seed)
        assert read_rgb(path) is not None


def test_the_committed_baselines_are_read() -> None:
    for path in sorted((REPO / "baselines").glob("*.json")):
        if path.name != THRESHOLDS_FILE.name:
            assert load_baseline(path.parent, path.stem) is not None


# ------------------------------------------------------------------------------------------------ binary readers

BINARY_READERS: dict[str, tuple[Callable[[Path], object], Callable[[], bytes]]] = {
    "checkpoint": (read_state_dict, checkpoint_seed),
    "png": (read_rgb, image_seed),
    "png header": (check_image_header, image_seed),
    "jpeg": (read_rgb, jpeg_seed),
}


@pytest.mark.parametrize("reader", sorted(BINARY_READERS))
@FUZZ_BINARY
@given(content=st.binary(max_size=1024))
@example(content=b"PK\x03\x04")
@example(content=b"\x80\x02}q\x00.")
# Random bytes on which torch.load (weights_only) raised IndexError and KeyError, which escaped the old loader:
@example(content=b"\x86\x90\x1b\x82\xdbw\xa9iB\xfaw\xfd\xbc\xd6L\x14\x06r\xbe]\xbdipg\x15\xb2\x9d")
@example(content=b"hj\x7f\x86E\x12%\x1a\xe6>o\xe9_\xea\xfe0\xfb N\xa5")
def test_binary_readers_refuse_random_bytes(reader: str, content: bytes, tmp_path: Path) -> None:
    refused_or_read(BINARY_READERS[reader][0], tmp_path / f"input.{reader}", content)


@pytest.mark.parametrize("reader", sorted(BINARY_READERS))
@FUZZ_BINARY
@given(data=st.data())
def test_binary_readers_refuse_cut_or_edited_files(reader: str, data: st.DataObject, tmp_path: Path) -> None:
    read, seed_of = BINARY_READERS[reader]
    refused_or_read(read, tmp_path / f"input.{reader}", data.draw(edited(_binary_seed(reader))))


@functools.cache
def _binary_seed(reader: str) -> bytes:
    return BINARY_READERS[reader][1]()


@FUZZ
@given(data=st.data())
def test_checkpoint_reader_refuses_pickles_of_anything(data: st.DataObject, tmp_path: Path) -> None:
    """A torch.save of a JSON-like object (not a mapping of names to tensors) is refused with the fix."""
    buffer = io.BytesIO()
    torch.save(data.draw(JSON_VALUES), buffer)
    refused_or_read(read_state_dict, tmp_path / "any.pt", buffer.getvalue())


# ------------------------------------------------------------------------------------------------ the model cache


@settings(max_examples=fuzz_examples(150), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(st.binary(max_size=256), edited(checkpoint_seed())))
def test_a_damaged_model_cache_entry_is_retrained_over(
    content: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model cache is the harness's own: an entry it cannot read is trained again and rewritten whole."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    key = {"arch": "tiny", "version": 1}
    entry = tmp_path / "cache" / "models" / f"tiny-{models.cache_key(key)}.pt"
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_bytes(content)
    trained: list[bool] = []

    def train(module: torch.nn.Module) -> None:
        trained.append(True)
        torch.nn.init.constant_(module.weight, 0.5)

    module, cached = models.load_or_train("tiny", key, torch.nn.Linear(3, 2), train)
    assert cached is not bool(trained)
    again, cached_again = models.load_or_train("tiny", key, torch.nn.Linear(3, 2), train)
    assert cached_again and torch.equal(again.weight, module.weight)
