"""The `Dataset` record every reader returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from models.config import ModelSpec, TensorPair


@dataclass
class Dataset:
    """One data set, split into train and test, with what a model needs to know about it.

    Attributes:
        name: the registry name (`digits`, `cifar10`, ...).
        spec: task, per-sample input shape, classes and vocabulary.
        train, test: CPU tensors; the training loop moves them to its device once.
        difficulty_test: float (N_test,) known per-sample difficulty (synthetic task only).
    """

    name: str
    spec: ModelSpec
    train: TensorPair
    test: TensorPair
    difficulty_test: Tensor | None = None
