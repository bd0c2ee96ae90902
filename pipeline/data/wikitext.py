"""WikiText-2 for word-level language modelling.

The reader accepts ``wiki.train.tokens`` and ``wiki.test.tokens`` (the release's
``wiki.valid.tokens`` may sit beside them and is not read) in ``data_dir`` or in
``data_dir/wikitext-2/``. The files are already tokenised: words separated by spaces, rare words
already ``<unk>``. The vocabulary is every word of the train split plus ``<unk>`` and ``<eos>``
(which ends each non-blank line); test words outside it become ``<unk>``. The token stream is
cut into non-overlapping windows of ``seq_len`` tokens, each target window shifted by one:
``x = tokens[t : t + T]``, ``y = tokens[t + 1 : t + T + 1]``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from models.config import ModelSpec, TensorPair
from pipeline.data.dataset import Dataset
from pipeline.errors import UsageError

__all__ = ["SEQ_LEN", "load_wikitext2"]

SEQ_LEN = 35
"""Tokens per sequence: the usual truncated-BPTT length for WikiText-2."""

_FOLDER = "wikitext-2"
_UNK, _EOS = "<unk>", "<eos>"


def load_wikitext2(data_dir: Path | None, download: bool = False, seed: int = 0,
                   seq_len: int = SEQ_LEN) -> Dataset:
    """Read WikiText-2 as next-token prediction over ``seq_len``-token windows.

    Raises :class:`UsageError` for a missing directory or file, a file that is not UTF-8 text,
    and a split too short for one window.
    """
    del seed  # the split and the windows are fixed
    folder = _locate(data_dir, download)
    train_lines = _read_lines(folder / "wiki.train.tokens")
    test_lines = _read_lines(folder / "wiki.test.tokens")
    tokenizer = _train_tokenizer(train_lines)
    train = _windows(_encode(tokenizer, train_lines), seq_len, folder / "wiki.train.tokens")
    test = _windows(_encode(tokenizer, test_lines), seq_len, folder / "wiki.test.tokens")
    vocab_size = tokenizer.get_vocab_size()
    return Dataset(
        name="wikitext2",
        spec=ModelSpec(task="language_model", input_shape=(seq_len,), num_classes=vocab_size,
                       vocab_size=vocab_size),
        train=train,
        test=test,
        difficulty_test=None,
    )


def _locate(data_dir: Path | None, download: bool) -> Path:
    """The folder holding ``wiki.train.tokens``: ``data_dir`` or ``data_dir/wikitext-2``."""
    place = f"place wiki.train.tokens and wiki.test.tokens (or a {_FOLDER}/ folder holding them)"
    if data_dir is None:
        raise UsageError(
            f"wikitext2 is read from --data-dir, and none was given: {place} in a folder"
        )
    if not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir}: no such directory")
    for folder in (data_dir, data_dir / _FOLDER):
        if (folder / "wiki.train.tokens").is_file():
            return folder
    # torchvision, the one downloader here, has no WikiText.
    cannot = "; wikitext2 has no --download" if download else ""
    raise UsageError(f"{data_dir}: no wiki.train.tokens there or in {_FOLDER}/ ({place}){cannot}")


def _read_lines(path: Path) -> list[str]:
    """The non-blank lines of a tokens file."""
    if not path.is_file():
        raise UsageError(f"{path}: missing")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise UsageError(f"{path}: cannot read ({error.strerror})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise UsageError(f"{path}: empty (no tokens)")
    return lines


def _train_tokenizer(lines: list[str]) -> Tokenizer:
    """A word-level tokenizer whose vocabulary is every whitespace-separated word of ``lines``.

    Ids: ``<unk>`` 0, ``<eos>`` 1, then the words by falling frequency (ties in order of first
    appearance). The vocabulary is counted here rather than by ``WordLevelTrainer``: WikiText
    already writes rare words as ``<unk>``, and the trainer would then give that word a second
    id beside the special token's and leave a hole in the numbering.
    """
    counts = Counter(" ".join(lines).split())  # split and counted in C
    words = [word for word, _ in counts.most_common() if word not in (_UNK, _EOS)]
    vocabulary = {token: index for index, token in enumerate([_UNK, _EOS, *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token=_UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {_EOS}", special_tokens=[(_EOS, vocabulary[_EOS])]
    )
    return tokenizer


def _encode(tokenizer: Tokenizer, lines: list[str]) -> torch.Tensor:
    """The token ids of ``lines`` as one int64 stream, each line ended by ``<eos>``."""
    encodings = tokenizer.encode_batch(lines)  # batched in the tokenizer's native code
    ids = np.concatenate([encoding.ids for encoding in encodings]).astype(np.int64)
    return torch.from_numpy(ids)


def _windows(stream: torch.Tensor, seq_len: int, where: Path) -> TensorPair:
    """Non-overlapping ``seq_len`` windows of ``stream`` and their one-step-ahead targets."""
    count = (stream.numel() - 1) // seq_len
    if count < 1:
        raise UsageError(
            f"{where}: {stream.numel()} tokens, too few for one sequence of {seq_len} + 1"
        )
    inputs = stream[: count * seq_len].view(count, seq_len)
    targets = stream[1 : count * seq_len + 1].view(count, seq_len)
    return TensorPair(inputs.clone(), targets.clone())
