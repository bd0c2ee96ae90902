"""scikit-learn's bundled 8×8 handwritten digits: the embedded default, no download."""

from __future__ import annotations

import numpy as np
import torch

from models.config import ModelSpec, TensorPair
from pipeline.data.dataset import Dataset
from pipeline.data.images import standardise_channels

__all__ = ["TEST_FRACTION", "load_digits"]

TEST_FRACTION = 0.2
"""Share of the 1,797 images held out as the test split (stratified by class)."""


def load_digits(seed: int = 0) -> Dataset:
    """Load the 8×8 digits as ``1×8×8`` float32 images in ``[0, 1]``, then standardise them.

    The split is a stratified 80/20 train/test split drawn with ``seed``, so the same seed gives
    the same split on every machine.
    """
    # Imported here: scikit-learn's import costs a second that other data sets need not pay.
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    # Pixel intensities are integers 0..16.
    images = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=seed
    )
    train_x, test_x = standardise_channels(torch.from_numpy(x_train), torch.from_numpy(x_test))
    return Dataset(
        name="digits",
        spec=ModelSpec(task="image", input_shape=(1, 8, 8), num_classes=10),
        train=TensorPair(train_x.contiguous(), torch.from_numpy(y_train)),
        test=TensorPair(test_x.contiguous(), torch.from_numpy(y_test)),
        difficulty_test=None,
    )
