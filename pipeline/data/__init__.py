"""The data sets, by name: one reader per module, one registry, one entry point.

>>> dataset = load_dataset("digits", seed=0)        # the embedded default: no files needed
>>> dataset.spec.task, dataset.train.x.shape[1:]
('image', torch.Size([1, 8, 8]))

=================  =============================================================  ==================
name               read from                                                      task
=================  =============================================================  ==================
``digits``         scikit-learn's bundled 8×8 digits (stratified 80/20 by seed)   ``image``
``cifar10``        ``cifar-10-python.tar.gz`` or ``cifar-10-batches-py/``         ``image``
``cifar100``       ``cifar-100-python.tar.gz`` or ``cifar-100-python/``           ``image``
``wikitext2``      ``wiki.{train,test}.tokens`` (or under ``wikitext-2/``)        ``language_model``
``imdb``           ``aclImdb/{train,test}/{pos,neg}/*.txt``                       ``sequence``
``synthetic``      generated from the seed, per-sample difficulty known           ``sequence``
``fashion_mnist``  the four IDX ``*-ubyte.gz`` of Debian's dataset-fashion-mnist  ``image``
``mnist``          the four IDX ``*-ubyte[.gz]`` files in ``data_dir``            ``image``
``maze``           generated from the seed: do the two marks share one path?      ``image``
=================  =============================================================  ==================

File-based sets are read from ``data_dir``; every problem with the name, the folder or the files
raises :class:`~pipeline.errors.UsageError`. Tensors come back on the CPU; the training loop
moves them to its device once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.data.augment import BatchAugment
from pipeline.data.cifar import CIFAR10, CIFAR100, load_cifar
from pipeline.data.dataset import Dataset
from pipeline.data.digits import load_digits
from pipeline.data.imdb import load_imdb
from pipeline.data.maze import make_maze
from pipeline.data.mnist import FASHION_MNIST, MNIST, load_idx_release
from pipeline.data.synthetic import make_synthetic
from pipeline.data.wikitext import load_wikitext2
from pipeline.errors import UsageError

__all__ = [
    "BatchAugment",
    "Dataset",
    "DatasetEntry",
    "dataset_names",
    "load_dataset",
    "training_augmentation",
]

Reader = Callable[[Path | None, bool, int], Dataset]
"""``reader(data_dir, download, seed) -> Dataset``."""


@dataclass(frozen=True)
class DatasetEntry:
    """A registered data set: how to read it and whether its training batches are augmented."""

    name: str
    read: Reader
    augmented: bool = False


def _read_digits(data_dir: Path | None, download: bool, seed: int) -> Dataset:
    return load_digits(seed=seed)  # bundled with scikit-learn: no folder, nothing to fetch


def _read_synthetic(data_dir: Path | None, download: bool, seed: int) -> Dataset:
    return make_synthetic(seed=seed)  # generated: no folder, nothing to fetch


def _read_maze(data_dir: Path | None, download: bool, seed: int) -> Dataset:
    return make_maze(seed=seed)  # generated: no folder, nothing to fetch


_REGISTRY: dict[str, DatasetEntry] = {
    entry.name: entry
    for entry in (
        DatasetEntry("digits", _read_digits),
        # Flips and shifts keep a natural image's class; they would not keep a digit's.
        DatasetEntry("cifar10", lambda d, dl, s: load_cifar(CIFAR10, d, dl, s), augmented=True),
        DatasetEntry("cifar100", lambda d, dl, s: load_cifar(CIFAR100, d, dl, s), augmented=True),
        DatasetEntry("wikitext2", load_wikitext2),
        DatasetEntry("imdb", load_imdb),
        DatasetEntry("synthetic", _read_synthetic),
        DatasetEntry("fashion_mnist", lambda d, dl, s: load_idx_release(FASHION_MNIST, d)),
        DatasetEntry("mnist", lambda d, dl, s: load_idx_release(MNIST, d)),
        DatasetEntry("maze", _read_maze),
    )
}


def dataset_names() -> tuple[str, ...]:
    """The registered data set names, in registration order."""
    return tuple(_REGISTRY)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    seed: int = 0,
) -> Dataset:
    """Read the data set registered as ``name``.

    Args:
        name: one of :func:`dataset_names`.
        data_dir: the folder holding a file-based set's files; unused by ``digits``,
            ``synthetic`` and ``maze``.
        download: fetch missing CIFAR files through torchvision where it imports.
        seed: seeds whatever the set draws at random (the digits split, the synthetic and maze
            samples, the order of IMDB reviews); the canonical CIFAR, WikiText and (Fashion-)MNIST
            splits ignore it.

    Raises:
        UsageError: an unknown name, or a missing or malformed folder or file.
    """
    entry = _entry(name)
    folder = Path(data_dir).expanduser() if data_dir is not None else None
    return entry.read(folder, download, seed)


def training_augmentation(
    name: str, seed: int = 0
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The batch augmentation to train ``name`` with, or None where it has none.

    CIFAR trains with :class:`BatchAugment` (flip and 4-pixel reflect-padded crop); the other
    sets train on their batches as they are.
    """
    return BatchAugment(pad=4, seed=seed) if _entry(name).augmented else None


def _entry(name: str) -> DatasetEntry:
    if name not in _REGISTRY:
        raise UsageError(f"unknown data set {name!r} (known: {', '.join(_REGISTRY)})")
    return _REGISTRY[name]
