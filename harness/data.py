"""The data a model is measured on: digits (built in), imagenet:PATH, folder:PATH; splits never overlap."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from harness.data_spec import parse_spec
from harness.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})  # compared lower-cased, so .JPEG counts
DEFAULT_SPEC = "digits"
DIGITS_EVAL_SIZE = 500
DIGITS_IMAGE_SIZE = 32
DIGITS_CALIBRATION_COUNT = 256
DIGITS_MEAN, DIGITS_STD = 0.5, 0.5  # pixels 0..1 -> -1..1, the same for every split seed
IMAGENET_EVAL_COUNT = 1000
CALIBRATION_COUNT = 1000
FOLDER_EVAL_FRACTION = 0.3
Items = list[tuple[Path, int]]  # (image file, class index) pairs in a fixed order



@dataclass(frozen=True)
class DataBundle:
    """The splits of one data spec: train and calibration never share an image with eval."""

    spec: str
    kind: str
    train: ImageDataset | None
    calibration: ImageDataset
    eval: ImageDataset
    num_classes: int
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    train_ids: tuple[str, ...]
    calibration_ids: tuple[str, ...]
    eval_ids: tuple[str, ...]

    @property
    def is_imagenet(self) -> bool:
        """Return True for ImageNet data: torchvision's ImageNet weights and class indices apply to it."""
        return self.kind == "imagenet"

    @property
    def has_training_split(self) -> bool:
        """Return True when images disjoint from the eval ones are left to train, fine-tune or calibrate on."""
        return self.train is not None and len(self.train) > 0

    def describe(self) -> str:
        """Return one line: kind, split sizes, classes, image size, and why train is missing if it is."""
        height, width = self.image_size
        train = str(len(self.train_ids)) if self.has_training_split else "none"
        line = (
            f"{self.spec} ({self.kind}): eval {len(self.eval_ids)}, calibration {len(self.calibration_ids)}, "
            f"train {train} images; {self.num_classes} classes; {height}x{width}"
        )
        if not self.has_training_split:
            line += (
                "; no image is left for fine-tuning or calibration (each one would also be evaluated): "
                "lower eval_count or add a train/ folder"
            )
        return line

    def training_split(self, purpose: str) -> ImageDataset:
        """Return the training split, or raise a DataError saying that `purpose` needs one and how to get it."""
        if self.train is None or not self.has_training_split:
            raise DataError(
                f"{purpose} needs training images and {self.spec} has none: add a train/ folder, or lower "
                "--eval-count so that images are left over after the evaluated ones"
            )
        return self.train


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """A sized dataset of (normalized float32 image [3, H, W], int label) pairs, in a fixed order."""

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        raise NotImplementedError


class TensorImageDataset(ImageDataset):
    """Images held in memory as one normalized tensor; yields (image, int label)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


class ImageFileDataset(ImageDataset):
    """Image files read lazily in a fixed order; yields (transformed image, int label)."""

    def __init__(
        self, paths: Sequence[Path], labels: Sequence[int], transform: Callable[[Image.Image], torch.Tensor]
    ) -> None:
        self.paths = tuple(paths)
        self.labels = tuple(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(read_rgb(self.paths[index])), self.labels[index]


def read_rgb(path: Path) -> Image.Image:
    """Return the image at `path` decoded to RGB; any file that is not a readable image (random bytes, a
    truncation, a decompression bomb) raises DataError naming the path."""
    with _image_errors(path), Image.open(path) as image:
        return image.convert("RGB")


def check_image_header(path: Path) -> None:
    """Parse only the header of the image at `path` (cheap); raise DataError as read_rgb does."""
    with _image_errors(path), Image.open(path):
        pass


@contextlib.contextmanager
def _image_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except Image.DecompressionBombError as exc:
        raise DataError(f"image {path} is too large to decode safely ({exc}); resize or delete the file") from exc
    except Exception as exc:  # noqa: BLE001 - PIL's decoders raise many kinds on a damaged file
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read image {path}: {detail}; replace or delete the file") from exc


def load_data(
    spec: str = DEFAULT_SPEC,
    *,
    eval_count: int | None = None,
    calibration_count: int | None = None,
    seed: int = 0,
) -> DataBundle:
    """Return the train, calibration and eval splits that `spec` names ("digits", "imagenet:PATH", ...)."""
    for name, value in (("eval_count", eval_count), ("calibration_count", calibration_count)):
        if value is not None and value <= 0:
            raise DataError(f"{name} must be a positive number of images, got {value}")
    kind, root = parse_spec(spec)
    if kind == "digits":
        return _load_digits(spec, eval_count, calibration_count, seed)
    assert root is not None
    if kind == "imagenet":
        return _load_imagenet(spec, root, eval_count, calibration_count, seed)
    return _load_folder(spec, root, eval_count, calibration_count, seed)


@cache
def imagenet_wnids() -> tuple[str, ...]:
    """Return the 1000 ImageNet-1k synset ids; position i is class index i of torchvision's weights."""
    text = resources.files("harness").joinpath("imagenet_wnids.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def imagenet_transform() -> Callable[[Image.Image], torch.Tensor]:
    """Return the eval transform of torchvision's ImageNet weights: resize 256, center crop 224, normalize."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


# --- digits ---------------------------------------------------------------------------------------------


@cache
def _digits_normalized() -> tuple[np.ndarray, np.ndarray]:
    """Return all 1797 digits as normalized [N, 3, 32, 32] float32 and their labels (seed independent)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)
    images = torch.nn.functional.interpolate(
        images, size=(DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE), mode="bilinear", align_corners=False
    )
    # Fixed constants rather than the train split's statistics, so the inputs a model was trained on do not
    # shift with the split seed, and no eval pixel leaks into the normalization.
    images = (images - DIGITS_MEAN) / DIGITS_STD
    return images.expand(-1, 3, -1, -1).contiguous().numpy(), digits.target.astype(np.int64)


def _load_digits(spec: str, eval_count: int | None, calibration_count: int | None, seed: int) -> DataBundle:
    from sklearn.model_selection import train_test_split

    images, labels = _digits_normalized()
    train_idx, eval_idx = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_EVAL_SIZE, stratify=labels, random_state=seed
    )
    eval_idx = eval_idx[: _checked_eval_count(eval_count, len(eval_idx), len(eval_idx), spec)]
    calib_idx = train_idx[: calibration_count or DIGITS_CALIBRATION_COUNT]

    def subset(indices: np.ndarray) -> TensorImageDataset:
        # numpy's fancy indexing copies (the cache stays intact) and, single-threaded, is fast on a busy CPU.
        return TensorImageDataset(torch.from_numpy(images[indices]), torch.from_numpy(labels[indices]))

    return DataBundle(
        spec=spec,
        kind="digits",
        train=subset(train_idx),
        calibration=subset(calib_idx),
        eval=subset(eval_idx),
        num_classes=10,
        class_names=tuple(str(digit) for digit in range(10)),
        image_size=(DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE),
        train_ids=tuple(f"digits:{i}" for i in train_idx),
        calibration_ids=tuple(f"digits:{i}" for i in calib_idx),
        eval_ids=tuple(f"digits:{i}" for i in eval_idx),
    )


# --- image folders --------------------------------------------------------------------------------------


def _class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    """Return every image below `folder` (following links, like ImageFolder), in no particular order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath, f) for f in filenames if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    return found


def _labelled_images(folder: Path, class_index: dict[str, int], root: Path) -> Items:
    """Return (path, label) of every image in folder's class subfolders, sorted by file name then path."""
    items = [(p, class_index[name]) for name in _class_folders(folder) for p in _image_files(folder / name)]
    if not items:
        raise DataError(
            f"no images in {folder}: its class folders hold no {'/'.join(sorted(IMAGE_EXTENSIONS))} files; "
            "put the images inside the class folders"
        )
    # File name first: ImageNet val names (ILSVRC2012_val_00000001.JPEG, ...) are spread at random over the
    # classes, so the first N by name sample all classes, whereas ImageFolder's class-major order would make
    # "the first 1000 images" the first ~20 classes only.
    return sorted(items, key=lambda item: (item[0].name, item[0].relative_to(root).as_posix()))


def _checked_eval_count(eval_count: int | None, default: int, available: int, where: object) -> int:
    wanted = default if eval_count is None else eval_count
    if wanted > available:
        given = "the default" if eval_count is None else "requested"
        raise DataError(
            f"{where} has only {available} eval images but eval_count is {wanted} ({given}); "
            f"pass an eval_count of at most {available}"
        )
    return wanted


def _check_headers(items: Items) -> None:
    """Fail now, naming the file, if an image that will surely be read is not an image at all.

    Only the header is parsed (cheap even for 50k files); a file truncated later in its body still fails,
    with its path, when it is loaded.
    """
    for path, _ in items:
        check_image_header(path)


def _seeded_subset(items: Items, count: int, seed: int) -> Items:
    """Return `count` items chosen by `seed`, kept in their original order."""
    if count >= len(items):
        return list(items)
    chosen = np.sort(np.random.default_rng(seed).choice(len(items), size=count, replace=False))
    return [items[i] for i in chosen]


def _bundle(
    spec: str,
    kind: str,
    root: Path,
    class_names: Sequence[str],
    train: Items,
    calibration: Items,
    evaluated: Items,
) -> DataBundle:
    _check_headers(evaluated)
    _check_headers(calibration)
    transform = imagenet_transform()

    def dataset(items: Items) -> ImageFileDataset:
        return ImageFileDataset([p for p, _ in items], [label for _, label in items], transform)

    def ids(items: Items) -> tuple[str, ...]:
        return tuple(p.relative_to(root).as_posix() for p, _ in items)

    return DataBundle(
        spec=spec,
        kind=kind,
        train=dataset(train) if train else None,
        calibration=dataset(calibration),
        eval=dataset(evaluated),
        num_classes=len(class_names),
        class_names=tuple(class_names),
        image_size=(224, 224),
        train_ids=ids(train),
        calibration_ids=ids(calibration),
        eval_ids=ids(evaluated),
    )


def _load_imagenet(
    spec: str, root: Path, eval_count: int | None, calibration_count: int | None, seed: int
) -> DataBundle:
    from torchvision.models import ResNet18_Weights

    has_val, has_train = (root / "val").is_dir(), (root / "train").is_dir()
    if has_train and not has_val:
        raise DataError(
            f"{root} has train/ but no val/: the evaluated images must be in {root}/val/<wnid>/*.JPEG; "
            "add the val split (or point imagenet:PATH at the folder of synset folders itself)"
        )
    val_root = root / "val" if has_val else root
    train_root = root / "train" if has_train else None
    class_index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
    for folder in (val_root, train_root):
        if folder is None:
            continue
        names = _class_folders(folder)
        if not names:
            raise DataError(
                f"no synset folders in {folder}: expected {root}/val/<wnid>/*.JPEG or {root}/<wnid>/*.JPEG "
                "(e.g. n01440764/); sort flat val images into synset folders first (torchvision's ImageNet "
                "class does this from the devkit)"
            )
        unknown = [name for name in names if name not in class_index]
        if unknown:
            raise DataError(
                f"{folder / unknown[0]} is not an ImageNet-1k synset folder ({len(unknown)} such folders: "
                f"{', '.join(unknown[:5])}); folders must be named by wnid, e.g. n01440764; "
                "use folder:PATH for your own classes"
            )
    val_items = _labelled_images(val_root, class_index, root)
    n_eval = _checked_eval_count(eval_count, IMAGENET_EVAL_COUNT, len(val_items), val_root)
    wanted = calibration_count or CALIBRATION_COUNT
    if train_root is not None:
        train = _labelled_images(train_root, class_index, root)
        calibration = _seeded_subset(train, wanted, seed)
    else:
        # No train split: the val images after the evaluated ones are both the fine-tuning and the
        # calibration set, so no model is ever trained or calibrated on an image it is scored on.
        train = calibration = val_items[n_eval : n_eval + wanted]
    categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    return _bundle(spec, "imagenet", root, categories, train, calibration, val_items[:n_eval])


def _load_folder(spec: str, root: Path, eval_count: int | None, calibration_count: int | None, seed: int) -> DataBundle:
    eval_dir = next((root / name for name in ("val", "eval") if (root / name).is_dir()), None)
    if (root / "train").is_dir() != (eval_dir is not None):
        raise DataError(
            f"{root} has only one of train/ and val/ (or eval/); add the other, or put the class folders "
            f"directly in {root} to have them split {1 - FOLDER_EVAL_FRACTION:.0%}/{FOLDER_EVAL_FRACTION:.0%}"
        )
    sources = [root] if eval_dir is None else [root / "train", eval_dir]
    class_lists = [_class_folders(folder) for folder in sources]
    if not class_lists[0]:
        raise DataError(f"no class folders in {sources[0]}: expected {sources[0]}/<class name>/<image files>")
    if class_lists[-1] != class_lists[0]:
        only_train = sorted(set(class_lists[0]) - set(class_lists[-1]))
        only_eval = sorted(set(class_lists[-1]) - set(class_lists[0]))
        raise DataError(
            f"class folders of {sources[0]} and {sources[-1]} differ (only in train: {only_train}, only in "
            f"eval: {only_eval}); give both the same class folders"
        )
    class_names = class_lists[0]
    class_index = {name: i for i, name in enumerate(class_names)}
    if eval_dir is not None:
        train = _labelled_images(root / "train", class_index, root)
        evaluated = _labelled_images(eval_dir, class_index, root)
    else:
        train, evaluated = _stratified_split(_labelled_images(root, class_index, root), seed)
    if not evaluated:
        raise DataError(
            f"no eval images in {eval_dir or root}: every class there has fewer than two images; "
            "add images (or a val/ folder with some) so that each class can be both trained on and scored"
        )
    n_eval = _checked_eval_count(eval_count, len(evaluated), len(evaluated), eval_dir or root)
    calibration = _seeded_subset(train, calibration_count or CALIBRATION_COUNT, seed)
    return _bundle(spec, "folder", root, class_names, train, calibration, evaluated[:n_eval])


def _stratified_split(items: Items, seed: int) -> tuple[Items, Items]:
    """Return (train, eval): per class, a seeded 30% (at least one image if the class has two) is eval."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, Items] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    train: Items = []
    evaluated: Items = []
    for label in sorted(by_class):
        members = by_class[label]
        # A class with a single image keeps it for training: it cannot be both learnt and scored.
        n_eval = 0 if len(members) < 2 else max(1, round(FOLDER_EVAL_FRACTION * len(members)))
        order = rng.permutation(len(members))
        evaluated += [members[i] for i in order[:n_eval]]
        train += [members[i] for i in order[n_eval:]]
    position = {path: i for i, (path, _) in enumerate(items)}
    return sorted(train, key=lambda it: position[it[0]]), sorted(evaluated, key=lambda it: position[it[0]])
