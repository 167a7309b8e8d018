"""Tests of harness.models: checkpoints, hub weights, the trained-model cache, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from harness import models
from harness.errors import WeightsError


def test_build_gives_requested_classes() -> None:
    model = models.build("resnet18", 10)
    assert model.fc.out_features == 10
    assert sum(p.numel() for p in models.build("resnet18", 1000).parameters()) == 11_689_512


def test_unknown_arch_lists_choices() -> None:
    with pytest.raises(WeightsError, match="resnet18, resnet50"):
        models.build("vgg99", 10)


def test_checkpoint_round_trip_and_prefixes(tmp_path: Path) -> None:
    source = models.build("resnet18", 10)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}
    path = tmp_path / "ckpt.pth"
    torch.save(wrapped, path)
    loaded = models.load_checkpoint(models.build("resnet18", 10), path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_missing_checkpoint_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match="nope.pth does not exist"):
        models.load_checkpoint(models.build("resnet18", 10), path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated zip"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=r"bad.pth cannot be read .*torch.save"):
        models.load_checkpoint(models.build("resnet18", 10), path)


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.pth"
    torch.save(models.build("resnet18", 10).state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match="cut.pth cannot be read"):
        models.load_checkpoint(models.build("resnet18", 10), path)


def test_mismatched_checkpoint_says_what_differs(tmp_path: Path) -> None:
    path = tmp_path / "imagenet_head.pth"
    torch.save(models.build("resnet18", 1000).state_dict(), path)
    with pytest.raises(WeightsError, match=r"fc.weight: file \(1000, 512\) vs model \(10, 512\)"):
        models.load_checkpoint(models.build("resnet18", 10), path)


def test_checkpoint_of_another_arch(tmp_path: Path) -> None:
    path = tmp_path / "r50.pth"
    torch.save(models.build("resnet50", 10).state_dict(), path)
    with pytest.raises(WeightsError, match="missing .* keys|unexpected .* keys"):
        models.load_checkpoint(models.build("resnet18", 10), path)


def test_hub_weights_missing_says_which_file_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsError, match=r"resnet18-f37072fd.pth .* in .*hub/checkpoints"):
        models.hub_weights_path("resnet18")


def test_hub_weights_found_in_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    # ResNet50: V2 preferred, V1 accepted when only it is cached.
    (folder / "resnet50-0676ba61.pth").write_bytes(b"x")
    assert models.hub_weights_path("resnet50").name == "resnet50-0676ba61.pth"


def test_load_or_train_caches(isolated_cache: Path) -> None:
    calls: list[int] = []

    def train(model: nn.Module) -> None:
        calls.append(1)
        with torch.no_grad():
            model.weight.fill_(3.0)

    first, hit1 = models.load_or_train("lin", {"a": 1}, nn.Linear(2, 2), train)
    second, hit2 = models.load_or_train("lin", {"a": 1}, nn.Linear(2, 2), train)
    third, hit3 = models.load_or_train("lin", {"a": 2}, nn.Linear(2, 2), train)
    assert (hit1, hit2, hit3) == (False, True, False)
    assert len(calls) == 2
    assert torch.all(second.weight == 3.0)


def test_damaged_cache_entry_is_retrained(isolated_cache: Path) -> None:
    def train(model: nn.Module) -> None:
        with torch.no_grad():
            model.weight.fill_(1.0)

    models.load_or_train("lin", {"k": 1}, nn.Linear(2, 2), train)
    (entry,) = (Path(str(isolated_cache)) / "models").glob("lin-*.pt")
    entry.write_bytes(b"garbage")
    model, hit = models.load_or_train("lin", {"k": 1}, nn.Linear(2, 2), train)
    assert not hit
    assert torch.all(model.weight == 1.0)


def test_weights_fingerprint_tracks_values() -> None:
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.load_state_dict(a.state_dict())
    assert models.weights_fingerprint(a) == models.weights_fingerprint(b)
    with torch.no_grad():
        b.bias[0] += 1
    assert models.weights_fingerprint(a) != models.weights_fingerprint(b)


def test_build_draws_the_same_initial_weights_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b = models.build("resnet18", 10), models.build("resnet18", 10)
    assert models.weights_fingerprint(a) == models.weights_fingerprint(b)
    assert models.weights_fingerprint(models.build("resnet18", 10, seed=1)) != models.weights_fingerprint(a)
    assert torch.equal(torch.rand(1), expected_next)


@pytest.mark.slow
def test_two_empty_caches_train_the_same_default_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default model is the same bits on every machine of a kind, so a baseline's per-image results pair
    with a fresh checkout's (the thread count of the process does not matter: training fixes its own). The default
    recipe cut to one epoch of 256 images: the same code path, a fortieth of the time."""
    import dataclasses

    from torch.utils.data import Subset

    from harness.data import load_data

    full = load_data("digits")
    data = dataclasses.replace(full, train=Subset(full.train, range(256)), train_ids=full.train_ids[:256])
    recipe = dataclasses.replace(models.recipe_for("resnet18"), epochs=1)
    hashes = []
    for i, threads in enumerate((1, 2)):
        monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / f"cache-{i}"))
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            model, cached = models.train_on_data(
                "resnet18", data, device=torch.device("cpu"), recipe=recipe, progress=False
            )
        finally:
            torch.set_num_threads(before)
        assert not cached
        hashes.append(models.weights_fingerprint(model))
    assert hashes[0] == hashes[1]
