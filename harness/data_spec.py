"""The data specs `--data` accepts: the registry of dataset kinds and the parser of a spec.

Torch-free and cheap (reads no image), so a command checks its --data before any work and `list` prints the kinds
without starting torch; harness/data.py loads what a spec names.
"""

from __future__ import annotations

from pathlib import Path

from harness.errors import DataError
from harness.preflight import input_folder

DATASETS: dict[str, str] = {
    "digits": "built-in default: scikit-learn's handwritten digits (1797 8x8 images, 10 classes, nothing "
    "downloaded) upsampled to 32x32; 1297 train / 500 eval, stratified by the seed",
    "imagenet": "imagenet:PATH: the ImageNet val split (PATH/val/<wnid>/ or PATH/<wnid>/), first N images by "
    "file name; PATH/train, when present, for training and calibration",
    "folder": "folder:PATH: an ImageFolder of your own classes (PATH/<class>/), with PATH/train + PATH/val "
    "(or eval) or else a stratified 70/30 split by the seed",
}
"""Each kind of data spec, with what it means: `python -m harness list` and README show them."""


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """Return (kind, folder) of a data spec, the folder checked to exist; a bad spec raises DataError.

    Cheap (reads no image), so a command checks its --data before any work.
    """
    kind, has_path, raw_path = spec.partition(":")
    if kind == "digits":
        if has_path:
            raise DataError(f"data spec {spec!r}: digits is built in and takes no path; write just digits")
        return kind, None
    if kind in ("imagenet", "folder") and raw_path:
        return kind, existing_folder(raw_path)
    if kind in ("imagenet", "folder"):
        raise DataError(f"data spec {spec!r} needs a folder: write {kind}:PATH, e.g. {kind}:/data/{kind}")
    raise DataError(f"unknown data spec {spec!r}; valid specs: digits, imagenet:PATH, folder:PATH")


def existing_folder(raw_path: str) -> Path:
    """Return the folder of a data spec, checked to exist and be readable (DataError naming the fix)."""
    fix = "pass the folder that holds the images (the path after the ':' in the data spec)"
    return input_folder(Path(raw_path), "data folder", fix, error=DataError)
