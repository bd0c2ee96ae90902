"""MNIST and Fashion-MNIST from their four official IDX files.

Both releases ship the same four files, ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each plain or gzipped (``.gz``),
holding uint8 28×28 images and uint8 labels 0..9. The reader looks for them in ``data_dir``,
then in ``data_dir/<release folder>`` (``fashion-mnist/``, ``mnist/``). Without ``data_dir``,
Fashion-MNIST is read where Debian's package ``dataset-fashion-mnist`` installs it
(``/usr/share/datasets/fashion-mnist``); MNIST has no such package and needs ``data_dir``.
The official split is kept (60,000 train, 10,000 test), so ``seed`` plays no part.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.config import ModelSpec, TensorPair
from pipeline.data.dataset import Dataset
from pipeline.data.idx import read_idx
from pipeline.data.images import standardise_channels
from pipeline.errors import UsageError

__all__ = ["FASHION_MNIST", "IDX_FILES", "MNIST", "IdxRelease", "load_idx_release"]

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""The four files of a release, without the optional ``.gz``: train images and labels, then
test images and labels."""

_SIDE = 28
_CLASSES = 10


@dataclass(frozen=True)
class IdxRelease:
    """Where one MNIST-format release lives and how to get it."""

    name: str
    folder: str
    installed_at: Path | None
    how_to_get: str


FASHION_MNIST = IdxRelease(
    name="fashion_mnist",
    folder="fashion-mnist",
    installed_at=Path("/usr/share/datasets/fashion-mnist"),
    how_to_get="install Debian's package dataset-fashion-mnist "
    "(apt-get install dataset-fashion-mnist, or `make data-deps`)",
)

MNIST = IdxRelease(
    name="mnist",
    folder="mnist",
    installed_at=None,
    how_to_get="place the four MNIST *-ubyte(.gz) files in a folder",
)


def load_idx_release(release: IdxRelease, data_dir: Path | None) -> Dataset:
    """Read a release's official split as standardised ``1×28×28`` float32 images.

    Pixels are scaled to ``[0, 1]``, then standardised by the train split's mean and standard
    deviation (as every image reader here does).

    Raises:
        UsageError: a missing folder or file (naming what to install or place where), or a
            truncated, corrupt or inconsistent file (naming it).
    """
    folder = _locate(release, data_dir)
    train_images, train_labels, test_images, test_labels = (
        read_idx(_file(folder, stem)) for stem in IDX_FILES
    )
    train_x, train_y = _checked(folder, IDX_FILES[:2], train_images, train_labels)
    test_x, test_y = _checked(folder, IDX_FILES[2:], test_images, test_labels)
    train_x, test_x = standardise_channels(train_x, test_x)
    return Dataset(
        name=release.name,
        spec=ModelSpec(task="image", input_shape=(1, _SIDE, _SIDE), num_classes=_CLASSES),
        train=TensorPair(train_x, train_y),
        test=TensorPair(test_x, test_y),
        difficulty_test=None,
    )


def _file(folder: Path, stem: str) -> Path:
    """``stem.gz`` where it exists, else ``stem``."""
    gzipped = folder / f"{stem}.gz"
    return gzipped if gzipped.is_file() else folder / stem


def _has(folder: Path, stem: str) -> bool:
    return _file(folder, stem).is_file()


def _locate(release: IdxRelease, data_dir: Path | None) -> Path:
    """The first candidate folder holding all four files; otherwise a UsageError saying why."""
    if data_dir is None:
        if release.installed_at is None:
            raise UsageError(
                f"{release.name} is read from --data-dir, and none was given: "
                f"{release.how_to_get} and pass it as --data-dir"
            )
        candidates = [release.installed_at]
    elif not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir}: no such directory")
    else:
        candidates = [data_dir, data_dir / release.folder]
    for folder in candidates:
        if all(_has(folder, stem) for stem in IDX_FILES):
            return folder
    # Name the first missing file of the most complete candidate: the likeliest typo or gap.
    folder = max(candidates, key=lambda c: sum(_has(c, stem) for stem in IDX_FILES))
    missing = next(stem for stem in IDX_FILES if not _has(folder, stem))
    where = f"{data_dir} or {data_dir / release.folder}" if data_dir is not None else folder
    hint = release.how_to_get
    if data_dir is None:
        hint += ", or pass --data-dir holding the four *-ubyte.gz files"
    raise UsageError(f"{release.name}: no {missing}[.gz] in {where}; {hint}")


def _checked(
    folder: Path, stems: tuple[str, ...], images: np.ndarray, labels: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check one split's arrays and turn them into ``N×1×28×28`` floats in [0, 1] and labels."""
    images_file, labels_file = (_file(folder, stem) for stem in stems)
    if images.dtype != np.uint8 or images.shape[1:] != (_SIDE, _SIDE):
        raise UsageError(
            f"{images_file}: holds {images.dtype} of shape {images.shape}, "
            f"expected uint8 N×{_SIDE}×{_SIDE} images"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise UsageError(
            f"{labels_file}: holds {labels.dtype} of shape {labels.shape}, expected uint8 labels"
        )
    if len(labels) != len(images):
        raise UsageError(
            f"{labels_file}: {len(labels)} labels for the {len(images)} images of {images_file}"
        )
    if labels.size and labels.max() >= _CLASSES:
        raise UsageError(f"{labels_file}: has labels outside 0..{_CLASSES - 1}")
    pixels = torch.from_numpy(images.astype(np.float32)).div_(255.0).unsqueeze(1)
    return pixels, torch.from_numpy(labels.astype(np.int64))
