"""Tests of harness.data: the digits, imagenet:PATH and folder:PATH loaders, their splits and their errors."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from _trees import (
    WNID_INDEX,
    make_folder_tree,
    make_imagenet_tree,
    val_name,
    write_image,
    write_not_an_image,
    write_truncated_jpeg,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import Dataset

from harness.data import (
    DEFAULT_SPEC,
    DIGITS_MEAN,
    DIGITS_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataBundle,
    ImageDataset,
    TensorImageDataset,
    imagenet_wnids,
    load_data,
)
from harness.data_spec import DATASETS
from harness.errors import DataError

WNIDS = ("n01440764", "n02099601", "n02123045", "n15075141")


def labels_of(dataset: Dataset | None) -> list[int]:
    assert isinstance(dataset, ImageDataset)
    return [dataset[i][1] for i in range(len(dataset))]


def file_names(ids: tuple[str, ...]) -> list[str]:
    return [Path(i).name for i in ids]


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_data()


@pytest.fixture(scope="module")
def imagenet_val(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve val images: 4 synsets x 3, numbers dealt at random over the classes."""
    return make_imagenet_tree(tmp_path_factory.mktemp("imagenet"), WNIDS, per_class=3)


# --- the registry and the wnid list -------------------------------------------------------------------------


def test_registry_lists_every_kind() -> None:
    assert set(DATASETS) == {"digits", "imagenet", "folder"}
    assert DEFAULT_SPEC == "digits"
    assert all(isinstance(text, str) and "\n" not in text for text in DATASETS.values())


def test_wnids_are_the_sorted_imagenet_synsets_in_torchvision_order() -> None:
    from torchvision.models import ResNet18_Weights

    wnids = imagenet_wnids()
    assert len(wnids) == len(set(wnids)) == 1000
    assert list(wnids) == sorted(wnids)
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    for wnid, index in WNID_INDEX.items():
        assert wnids.index(wnid) == index
    assert [categories[i] for i in (0, 1, 207, 281, 999)] == [
        "tench",
        "goldfish",
        "golden retriever",
        "tabby",
        "toilet tissue",
    ]


# --- digits -------------------------------------------------------------------------------------------------


def test_digits_sizes_shapes_and_labels(digits: DataBundle) -> None:
    assert (len(digits.train_ids), len(digits.eval_ids), len(digits.calibration_ids)) == (1297, 500, 256)
    assert [len(labels_of(split)) for split in (digits.train, digits.eval, digits.calibration)] == [
        1297,
        500,
        256,
    ]
    assert all(
        isinstance(split, TensorImageDataset) for split in (digits.train, digits.eval, digits.calibration)
    )
    image, label = digits.eval[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert isinstance(label, int)
    assert set(labels_of(digits.eval)) == set(range(10))
    assert (digits.kind, digits.num_classes, digits.image_size) == ("digits", 10, (32, 32))
    assert digits.class_names == tuple("0123456789")
    assert "1297" in digits.describe() and "500" in digits.describe()


def test_digits_images_are_the_upsampled_normalized_digits(digits: DataBundle) -> None:
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(load_digits().images).float() / 16.0
    for position in (0, 123, 499):
        index = int(digits.eval_ids[position].removeprefix("digits:"))
        upsampled = torch.nn.functional.interpolate(
            raw[index][None, None], size=(32, 32), mode="bilinear", align_corners=False
        )[0]
        expected = ((upsampled - DIGITS_MEAN) / DIGITS_STD).expand(3, -1, -1)
        image, label = digits.eval[position]
        assert torch.allclose(image, expected)
        assert label == int(load_digits().target[index])
    assert digits.eval.images.min() >= -1.0 and digits.eval.images.max() <= 1.0  # type: ignore[attr-defined]


def test_digits_eval_split_is_stratified(digits: DataBundle) -> None:
    from sklearn.datasets import load_digits

    total = Counter(load_digits().target.tolist())
    in_eval = Counter(labels_of(digits.eval))
    for label, count in total.items():
        assert abs(in_eval[label] - 500 * count / 1797) <= 1


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**31 - 1))
def test_digits_splits_are_disjoint_and_deterministic(seed: int) -> None:
    bundle = load_data("digits", seed=seed, calibration_count=100)
    assert not set(bundle.train_ids) & set(bundle.eval_ids)
    assert set(bundle.calibration_ids) <= set(bundle.train_ids)
    assert bundle.calibration_ids == bundle.train_ids[:100]
    assert len(set(bundle.train_ids) | set(bundle.eval_ids)) == 1797
    again = load_data("digits", seed=seed, calibration_count=100)
    assert (again.train_ids, again.eval_ids) == (bundle.train_ids, bundle.eval_ids)


def test_digits_eval_count_takes_the_first_images(digits: DataBundle) -> None:
    small = load_data("digits", eval_count=100)
    assert small.eval_ids == digits.eval_ids[:100]
    assert torch.equal(small.eval[7][0], digits.eval[7][0])


def test_digits_eval_count_beyond_the_split_says_how_many() -> None:
    with pytest.raises(DataError, match=r"only 500 eval images but eval_count is 501"):
        load_data("digits", eval_count=501)


# --- spec errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mnist", r"unknown data spec 'mnist'; valid specs: digits, imagenet:PATH, folder:PATH"),
        ("imagenet", r"'imagenet' needs a folder: write imagenet:PATH"),
        ("imagenet:", r"'imagenet:' needs a folder"),
        ("folder", r"'folder' needs a folder: write folder:PATH"),
        ("digits:/data", r"digits is built in and takes no path"),
    ],
)
def test_bad_spec_is_refused(spec: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_data(spec)


@pytest.mark.parametrize("name", ["eval_count", "calibration_count"])
@pytest.mark.parametrize("value", [0, -3])
def test_non_positive_counts_are_refused(name: str, value: int) -> None:
    with pytest.raises(DataError, match=rf"{name} must be a positive number of images, got {value}"):
        load_data("digits", **{name: value})


@pytest.mark.parametrize("kind", ["imagenet", "folder"])
def test_missing_path_is_named(kind: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=rf"{re.escape(str(missing))} does not exist"):
        load_data(f"{kind}:{missing}")


@pytest.mark.parametrize("kind", ["imagenet", "folder"])
def test_file_instead_of_folder_is_named(kind: str, tmp_path: Path) -> None:
    file = write_image(tmp_path / "one.png")
    with pytest.raises(DataError, match=rf"{re.escape(str(file))} is a file, not a folder"):
        load_data(f"{kind}:{file}")


# --- imagenet -----------------------------------------------------------------------------------------------


def test_imagenet_eval_is_the_first_images_by_file_name(imagenet_val: Path) -> None:
    bundle = load_data(f"imagenet:{imagenet_val}", eval_count=5, calibration_count=4)
    assert file_names(bundle.eval_ids) == [val_name(n) for n in range(1, 6)]
    assert all(i.startswith("val/") for i in bundle.eval_ids)
    # Not class-major: the first five images come from more than one synset.
    assert len({Path(i).parent.name for i in bundle.eval_ids}) > 1
    for index, image_id in enumerate(bundle.eval_ids):
        image, label = bundle.eval[index]
        assert image.shape == (3, 224, 224) and image.dtype == torch.float32
        assert label == WNID_INDEX[Path(image_id).parent.name]
    assert (bundle.kind, bundle.num_classes, bundle.image_size) == ("imagenet", 1000, (224, 224))
    assert bundle.class_names[207] == "golden retriever"


def test_imagenet_without_train_split_calibrates_on_the_next_images(imagenet_val: Path) -> None:
    bundle = load_data(f"imagenet:{imagenet_val}", eval_count=5, calibration_count=4)
    assert file_names(bundle.calibration_ids) == [val_name(n) for n in range(6, 10)]
    assert bundle.train_ids == bundle.calibration_ids
    assert not set(bundle.calibration_ids) & set(bundle.eval_ids)
    assert labels_of(bundle.calibration) == [WNID_INDEX[Path(i).parent.name] for i in bundle.calibration_ids]


def test_imagenet_calibration_is_capped_at_what_is_left(imagenet_val: Path) -> None:
    bundle = load_data(f"imagenet:{imagenet_val}", eval_count=5)
    assert file_names(bundle.calibration_ids) == [val_name(n) for n in range(6, 13)]


def test_imagenet_with_everything_evaluated_has_no_train(imagenet_val: Path) -> None:
    bundle = load_data(f"imagenet:{imagenet_val}", eval_count=12)
    assert bundle.train is None and bundle.train_ids == ()
    assert labels_of(bundle.calibration) == [] and bundle.calibration_ids == ()
    assert "lower eval_count" in bundle.describe()


def test_imagenet_flat_layout(tmp_path: Path) -> None:
    root = make_imagenet_tree(tmp_path, WNIDS[:2], per_class=2, layout="flat")
    bundle = load_data(f"imagenet:{root}", eval_count=3)
    assert file_names(bundle.eval_ids) == [val_name(n) for n in range(1, 4)]
    assert labels_of(bundle.eval) == [WNID_INDEX[Path(i).parent.name] for i in bundle.eval_ids]
    assert bundle.train_ids == bundle.calibration_ids == (bundle.calibration_ids[0],)


def test_imagenet_train_split_feeds_train_and_calibration(tmp_path: Path) -> None:
    root = make_imagenet_tree(tmp_path, WNIDS[:2], per_class=2, train_per_class=3)
    bundle = load_data(f"imagenet:{root}", eval_count=4, calibration_count=2, seed=5)
    assert len(bundle.eval_ids) == 4 and all(i.startswith("val/") for i in bundle.eval_ids)
    assert bundle.train is not None and len(bundle.train_ids) == 6
    assert all(i.startswith("train/") for i in bundle.train_ids)
    assert len(bundle.calibration_ids) == 2 and set(bundle.calibration_ids) <= set(bundle.train_ids)
    again = load_data(f"imagenet:{root}", eval_count=4, calibration_count=2, seed=5)
    assert again.calibration_ids == bundle.calibration_ids
    assert labels_of(bundle.train) == [WNID_INDEX[Path(i).parent.name] for i in bundle.train_ids]


def test_imagenet_folder_that_is_not_a_wnid_is_named(tmp_path: Path) -> None:
    root = make_imagenet_tree(tmp_path, WNIDS[:1], per_class=1)
    write_image(root / "val" / "cats" / "a.JPEG")
    with pytest.raises(DataError, match=rf"{re.escape(str(root / 'val' / 'cats'))} is not an ImageNet-1k"):
        load_data(f"imagenet:{root}", eval_count=1)


def test_imagenet_without_synset_folders(tmp_path: Path) -> None:
    write_image(tmp_path / "val" / val_name(1))  # the raw, unsorted val layout
    with pytest.raises(DataError, match=rf"no synset folders in {re.escape(str(tmp_path / 'val'))}"):
        load_data(f"imagenet:{tmp_path}", eval_count=1)


def test_imagenet_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"no synset folders in {re.escape(str(tmp_path))}"):
        load_data(f"imagenet:{tmp_path}")


def test_imagenet_train_without_val(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "n01440764" / "a.JPEG")
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path))} has train/ but no val/"):
        load_data(f"imagenet:{tmp_path}")


def test_imagenet_synset_folders_without_images(tmp_path: Path) -> None:
    (tmp_path / "val" / "n01440764").mkdir(parents=True)
    (tmp_path / "val" / "n01440764" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=rf"no images in {re.escape(str(tmp_path / 'val'))}"):
        load_data(f"imagenet:{tmp_path}")


def test_imagenet_eval_count_beyond_what_is_there(imagenet_val: Path) -> None:
    with pytest.raises(DataError, match=r"has only 12 eval images but eval_count is 13 \(requested\)"):
        load_data(f"imagenet:{imagenet_val}", eval_count=13)
    with pytest.raises(
        DataError, match=r"eval_count is 1000 \(the default\); pass an eval_count of at most 12"
    ):
        load_data(f"imagenet:{imagenet_val}")


def test_imagenet_file_that_is_not_an_image_is_named_at_load(tmp_path: Path) -> None:
    root = make_imagenet_tree(tmp_path, WNIDS[:1], per_class=2)
    bad = write_not_an_image(root / "val" / "n01440764" / val_name(3))
    with pytest.raises(DataError, match=rf"cannot read image {re.escape(str(bad))}"):
        load_data(f"imagenet:{root}", eval_count=3)


def test_imagenet_truncated_image_is_named_when_read(tmp_path: Path) -> None:
    root = make_imagenet_tree(tmp_path, WNIDS[:1], per_class=1)
    bad = write_truncated_jpeg(root / "val" / "n01440764" / val_name(2))
    bundle = load_data(f"imagenet:{root}", eval_count=2)
    assert bundle.eval[0][0].shape == (3, 224, 224)
    with pytest.raises(DataError, match=rf"cannot read image {re.escape(str(bad))}"):
        bundle.eval[1]


def test_imagenet_transform_matches_torchvision_weights(imagenet_val: Path) -> None:
    from torchvision.models import ResNet18_Weights
    from torchvision.transforms.functional import pil_to_tensor

    bundle = load_data(f"imagenet:{imagenet_val}", eval_count=1)
    image, _ = bundle.eval[0]
    with Image.open(imagenet_val / bundle.eval_ids[0]) as raw:
        expected = ResNet18_Weights.IMAGENET1K_V1.transforms()(pil_to_tensor(raw.convert("RGB")))
    assert torch.allclose(image, expected, atol=0.05)
    assert ResNet18_Weights.IMAGENET1K_V1.transforms().mean == list(IMAGENET_MEAN)
    assert ResNet18_Weights.IMAGENET1K_V1.transforms().std == list(IMAGENET_STD)


# --- folder -------------------------------------------------------------------------------------------------


def test_folder_stratified_split(tmp_path: Path) -> None:
    root = make_folder_tree(tmp_path, {"dog": 7, "cat": 10, "bird": 2})
    bundle = load_data(f"folder:{root}", seed=3)
    assert bundle.class_names == ("bird", "cat", "dog") and bundle.num_classes == 3
    assert Counter(labels_of(bundle.eval)) == {0: 1, 1: 3, 2: 2}
    assert not set(bundle.train_ids) & set(bundle.eval_ids)
    assert len(set(bundle.train_ids) | set(bundle.eval_ids)) == 19
    assert set(bundle.calibration_ids) == set(bundle.train_ids)
    assert labels_of(bundle.eval) == [bundle.class_names.index(i.split("/")[0]) for i in bundle.eval_ids]
    assert bundle.eval[0][0].shape == (3, 224, 224)
    again = load_data(f"folder:{root}", seed=3)
    assert (again.train_ids, again.eval_ids) == (bundle.train_ids, bundle.eval_ids)
    assert load_data(f"folder:{root}", eval_count=2, seed=3).eval_ids == bundle.eval_ids[:2]


@pytest.mark.parametrize("eval_name", ["val", "eval"])
def test_folder_train_and_val_subfolders(tmp_path: Path, eval_name: str) -> None:
    root = make_folder_tree(tmp_path, {"b": 3, "a": 2}, split=("train", eval_name), eval_per_class=2)
    bundle = load_data(f"folder:{root}", calibration_count=2)
    assert bundle.class_names == ("a", "b")
    assert len(bundle.train_ids) == 5 and all(i.startswith("train/") for i in bundle.train_ids)
    assert len(bundle.eval_ids) == 4 and all(i.startswith(f"{eval_name}/") for i in bundle.eval_ids)
    assert len(bundle.calibration_ids) == 2 and set(bundle.calibration_ids) <= set(bundle.train_ids)
    assert sorted(labels_of(bundle.eval)) == [0, 0, 1, 1]


def test_folder_class_mismatch_between_train_and_val(tmp_path: Path) -> None:
    root = make_folder_tree(tmp_path, {"a": 2, "b": 2}, split=("train", "val"))
    write_image(root / "val" / "c" / "c.png")
    with pytest.raises(DataError, match=r"only in train: \[\], only in eval: \['c'\]"):
        load_data(f"folder:{root}")


def test_folder_with_train_but_no_val(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "a" / "x.png")
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path))} has only one of train/ and val/"):
        load_data(f"folder:{tmp_path}")


def test_folder_without_class_folders(tmp_path: Path) -> None:
    write_image(tmp_path / "loose.png")
    with pytest.raises(DataError, match=rf"no class folders in {re.escape(str(tmp_path))}"):
        load_data(f"folder:{tmp_path}")


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("nothing")
    with pytest.raises(DataError, match=rf"no images in {re.escape(str(tmp_path))}"):
        load_data(f"folder:{tmp_path}")


def test_folder_where_no_class_can_be_split(tmp_path: Path) -> None:
    root = make_folder_tree(tmp_path, {"a": 1, "b": 1})
    with pytest.raises(DataError, match=r"every class there has fewer than two images"):
        load_data(f"folder:{root}")
