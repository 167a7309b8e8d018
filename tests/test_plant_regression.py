"""scripts/plant_regression.py plants what it says: the gate-quality numbers are only as honest as the plants."""

from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType

import pytest
import torch
from helpers import load_script, tiny_classifier

from harness import cpu_memory
from harness.measure import activation_peak_bytes, size_stats

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "plant_regression.py"


@pytest.fixture
def plant(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The plant module, loaded fresh with no PLANT set (so it patches nothing)."""
    monkeypatch.delenv("PLANT", raising=False)
    return load_script(SCRIPT, "plant_regression_under_test", monkeypatch)


def test_plants_parse_and_presets_resolve(plant: ModuleType) -> None:
    assert plant.parse_plants("slow:fastest_cpu:0.15,acc:fp32:0.02,mem:bf16:0.5,size:fp32:0.05") == [
        plant.Plant("slow", "prune_structured+static_int8", 0.15),
        plant.Plant("acc", "fp32", 0.02),
        plant.Plant("mem", "bf16", 0.5),
        plant.Plant("size", "fp32", 0.05),
    ]
    with pytest.raises(ValueError, match="KIND:VARIANT:FRACTION"):
        plant.parse_plants("fast:fp32:0.1")


def test_accuracy_plant_picks_the_same_images_every_time(plant: ModuleType) -> None:
    images = torch.randn(2000, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    picked = [plant.image_selected(img, 0.02) for img in images]
    assert picked == [plant.image_selected(img, 0.02) for img in images] and 20 <= sum(picked) <= 60
    logits = torch.eye(10).repeat(200, 1)[:2000]
    out = plant.corrupted(lambda x: logits, 0.02)(images)
    assert (out.argmax(1) != logits.argmax(1)).tolist() == picked


def test_slow_plant_adds_its_share_of_the_call(plant: ModuleType) -> None:
    def work(x: torch.Tensor) -> torch.Tensor:
        end = time.perf_counter() + 0.02
        while time.perf_counter() < end:
            pass
        return x

    slowed = plant.slowed(work, 0.5)
    start = time.perf_counter()
    slowed(torch.zeros(1))
    assert time.perf_counter() - start >= 0.03


def test_memory_plant_raises_the_peak_by_its_fraction(plant: ModuleType) -> None:
    if cpu_memory.tracker() is None:
        pytest.skip(f"no counting allocator here: {cpu_memory.unavailable_reason()}")
    model, x = tiny_classifier(), torch.randn(16, 3, 32, 32)
    weights = size_stats(model).tensor_bytes
    before = weights + (activation_peak_bytes(lambda: model(x), "cpu") or 0)
    hungry = plant.hungrier(model, 0.5, weights)
    hungry(x)  # the first call per shape measures the unplanted peak
    after = weights + (activation_peak_bytes(lambda: hungry(x), "cpu") or 0)
    assert after == pytest.approx(1.5 * before, rel=0.01)


def test_size_plant_raises_the_serialized_size_by_its_fraction(plant: ModuleType) -> None:
    model = tiny_classifier()
    before = size_stats(model)
    plant.heavier(model, 0.05)
    after = size_stats(model)
    # 5% of the bytes, plus the few hundred bytes torch.save spends on one more entry
    assert 1.05 * before.size_bytes <= after.size_bytes <= 1.05 * before.size_bytes + 1024
    assert after.compressed_size_bytes > before.compressed_size_bytes
