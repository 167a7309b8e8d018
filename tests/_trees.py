"""Builders of small on-disk image trees (real JPEG/PNG files) for tests of the data loaders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

# Two shapes, one landscape and one portrait, so Resize(256) + CenterCrop(224) is exercised both ways.
DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((300, 260), (180, 400))
# Real ImageNet-1k synsets with their class index in torchvision's weights.
WNID_INDEX = {"n01440764": 0, "n01443537": 1, "n02099601": 207, "n02123045": 281, "n15075141": 999}


def write_image(path: Path, size: tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    """Write a random-noise RGB image of `size` (width, height), PNG or JPEG by suffix; returns path."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG" if path.suffix.lower() == ".png" else "JPEG")
    return path


def write_not_an_image(path: Path) -> Path:
    """Write a file with an image suffix whose content is not an image; returns path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a JPEG file\n" * 10)
    return path


def write_truncated_jpeg(path: Path, size: tuple[int, int] = (300, 260)) -> Path:
    """Write a JPEG whose header is valid but whose body is cut off; returns path."""
    write_image(path, size)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def val_name(number: int) -> str:
    """Return the official ImageNet val file name of image `number` (1-based)."""
    return f"ILSVRC2012_val_{number:08d}.JPEG"


def make_imagenet_tree(
    root: Path,
    wnids: Sequence[str],
    per_class: int,
    layout: str = "val",
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    train_per_class: int = 0,
    seed: int = 0,
) -> Path:
    """Build an ImageNet-style tree of real JPEGs and return the PATH to pass as imagenet:PATH.

    layout "val" writes root/val/<wnid>/ILSVRC2012_val_<n>.JPEG (plus root/train/<wnid>/<wnid>_<i>.JPEG when
    train_per_class > 0); "flat" writes root/<wnid>/ILSVRC2012_val_<n>.JPEG. The val numbers 1..len(wnids) *
    per_class are dealt to the classes in a seeded random order, as in the official val set, so sorting by
    file name differs from ImageFolder's class-major order.
    """
    if layout not in ("val", "flat"):
        raise ValueError(f"layout must be 'val' or 'flat', got {layout!r}")
    if layout == "flat" and train_per_class:
        raise ValueError("a train split needs layout='val'")
    val_root = root / "val" if layout == "val" else root
    numbers = np.random.default_rng(seed).permutation(len(wnids) * per_class) + 1
    for position, number in enumerate(numbers):
        wnid = wnids[position // per_class]
        write_image(val_root / wnid / val_name(int(number)), sizes[position % len(sizes)], seed=int(number))
    for c, wnid in enumerate(wnids):
        for i in range(train_per_class):
            write_image(
                root / "train" / wnid / f"{wnid}_{i}.JPEG", sizes[i % len(sizes)], seed=1000 + c * 100 + i
            )
    return root


def make_folder_tree(
    root: Path,
    per_class: Mapping[str, int],
    split: tuple[str, str] | None = None,
    eval_per_class: int = 1,
    suffix: str = ".png",
    size: tuple[int, int] = (64, 48),
) -> Path:
    """Build an ImageFolder of real images and return the PATH to pass as folder:PATH.

    Without `split`: root/<class>/<class>_<i><suffix>, per_class[class] images each. With a split such as
    ("train", "eval"): per_class[class] images in root/train/<class>/, eval_per_class in root/eval/<class>/.
    """
    for c, (name, count) in enumerate(sorted(per_class.items())):
        first = root / split[0] if split else root
        for i in range(count):
            write_image(first / name / f"{name}_{i}{suffix}", size, seed=c * 1000 + i)
        if split:
            for i in range(eval_per_class):
                write_image(root / split[1] / name / f"{name}_v{i}{suffix}", size, seed=c * 1000 + 500 + i)
    return root
