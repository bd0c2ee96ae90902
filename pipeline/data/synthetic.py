"""A seeded synthetic sequence-classification task whose per-sample difficulty is known.

"The last word counts". A sequence of noise tokens carries a few class tokens; the label is the
class of the last class token, which sits at a random position r ≥ T/4. Earlier class tokens
have random classes, so they may contradict the label.

Why it separates plain passes from fixed-point iteration. The LSTM backbone reads left to right
and its classifier averages the last layer's (tanh-bounded) outputs over time. A left-to-right
reader believes "the class of the most recent class token", so over the positions before r it
may hold the wrong answer, and only the T − r positions after r hold the right one: when the
decisive token comes late after a contradicting one, the plain pass is outvoted. A layer
iterated to its fixed point z = tanh(u + s(z)) with the temporal state conv s (non-causal,
kernel 3) moves information backwards in time as well, so positions before r learn of the
decisive token: extra computation genuinely helps exactly these samples.

Difficulty (`difficulty_test`): r / (T − 1), in about [1/4, 1], the share of the sequence read
before the decisive token arrives, i.e. how far its information must travel back to reach the
positions a left-to-right reader has already committed. Whether the earlier tokens actually
contradict the label is random (it is not part of the difficulty), so late samples are hard
only in expectation.

Token ids: 0 is padding (unused here, by the data contract), 1..n_noise are noise, then one id
per class.
"""

from __future__ import annotations

import torch

from models.config import ModelSpec, TensorPair
from pipeline.data.dataset import Dataset


def _sample(
    n: int,
    seq_len: int,
    num_classes: int,
    n_noise: int,
    max_early: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (tokens int64 n×T, labels int64 n, difficulty float32 n)."""
    first_class_id = 1 + n_noise
    x = 1 + torch.randint(0, n_noise, (n, seq_len), generator=generator)
    y = torch.randint(0, num_classes, (n,), generator=generator)
    last = torch.randint(seq_len // 4, seq_len, (n,), generator=generator)
    rows = torch.arange(n)
    n_early = torch.randint(1, max_early + 1, (n,), generator=generator)
    for j in range(max_early):  # a handful of slots, vectorised over samples
        position = (torch.rand(n, generator=generator) * last).long()  # in [0, last)
        label = torch.randint(0, num_classes, (n,), generator=generator)
        used = j < n_early
        x[rows[used], position[used]] = first_class_id + label[used]
    x[rows, last] = first_class_id + y

    # How far the decisive information must travel back: the share of the sequence a
    # left-to-right reader has read before the decisive token arrives.
    difficulty = last.float() / (seq_len - 1)
    return x, y, difficulty


def make_synthetic(
    n_train: int = 2000,
    n_test: int = 500,
    seq_len: int = 32,
    seed: int = 0,
    *,
    num_classes: int = 2,
    n_noise: int = 4,
    max_early: int = 2,
) -> Dataset:
    """Generates the task (see the module docstring); the same seed gives the same data.

    Args:
        n_train, n_test: sequences per split.
        seq_len: tokens per sequence (≥ 8).
        seed: seeds everything drawn.
        num_classes: classes (and class-token ids).
        n_noise: distinct noise tokens.
        max_early: most class tokens before the decisive one (1..max_early per sequence).
    """
    if seq_len < 8:
        raise ValueError(f"seq_len must be >= 8, got {seq_len}")
    if num_classes < 2 or n_noise < 1 or max_early < 1:
        raise ValueError("num_classes >= 2, n_noise >= 1 and max_early >= 1 are required")
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y, _ = _sample(
        n_train, seq_len, num_classes, n_noise, max_early, generator
    )
    test_x, test_y, difficulty = _sample(
        n_test, seq_len, num_classes, n_noise, max_early, generator
    )
    vocab_size = 1 + n_noise + num_classes
    return Dataset(
        name="synthetic",
        spec=ModelSpec(
            task="sequence", input_shape=(seq_len,), num_classes=num_classes, vocab_size=vocab_size
        ),
        train=TensorPair(train_x, train_y),
        test=TensorPair(test_x, test_y),
        difficulty_test=difficulty,
    )
