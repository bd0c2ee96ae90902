"""The IMDB movie-review sentiment set (Maas et al., 2011) from its ``aclImdb/`` folder.

The reader accepts ``data_dir/aclImdb/`` (or ``data_dir`` being that folder) laid out as
released: ``{train,test}/{pos,neg}/*.txt``, one review per file; the other files of the release
(``unsup/``, ``*.feat``, ``urls_*.txt``) are not read. Reviews are tokenised with a word-level
HF ``tokenizers`` tokenizer trained on the train split alone (lower-cased, ``<br />`` removed,
split on whitespace and punctuation; words seen fewer than twice become ``<unk>``) and cut or
padded to ``seq_len`` ids. Labels: 0 = negative, 1 = positive.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from models.config import ModelSpec, TensorPair
from pipeline.data.dataset import Dataset
from pipeline.errors import UsageError

__all__ = ["PAD_ID", "SEQ_LEN", "VOCAB_SIZE", "load_imdb"]

SEQ_LEN = 256
"""Token ids per review; longer reviews keep their first ``SEQ_LEN`` tokens."""

VOCAB_SIZE = 20_000
"""Largest vocabulary, special tokens included: the most frequent train words."""

PAD_ID = 0
"""Id of ``<pad>``, which fills short reviews on the left."""

_FOLDER = "aclImdb"
_PAD, _UNK = "<pad>", "<unk>"
_LABELS = {"neg": 0, "pos": 1}


def load_imdb(data_dir: Path | None, download: bool = False, seed: int = 0,
              seq_len: int = SEQ_LEN, vocab_size: int = VOCAB_SIZE) -> Dataset:
    """Read IMDB as two-class sequence classification over ``seq_len`` token ids.

    The canonical 25k/25k split is kept; ``seed`` shuffles the order of each split (the files
    come sorted by label, and a fold cut from a sorted split would hold one class).
    Raises :class:`UsageError` for a missing folder, a split without ``pos/`` or ``neg/`` or
    without reviews, and a review that is not UTF-8 text.
    """
    root = _locate(data_dir, download)
    train_texts, train_labels = _read_split(root / "train")
    test_texts, test_labels = _read_split(root / "test")
    tokenizer = _train_tokenizer(train_texts, vocab_size, seq_len)
    generator = torch.Generator().manual_seed(seed)
    return Dataset(
        name="imdb",
        spec=ModelSpec(task="sequence", input_shape=(seq_len,), num_classes=2,
                       vocab_size=tokenizer.get_vocab_size()),
        train=_shuffled(_encode(tokenizer, train_texts), train_labels, generator),
        test=_shuffled(_encode(tokenizer, test_texts), test_labels, generator),
        difficulty_test=None,
    )


def _locate(data_dir: Path | None, download: bool) -> Path:
    """The ``aclImdb`` folder: ``data_dir/aclImdb`` or ``data_dir`` itself."""
    place = f"place the extracted {_FOLDER}/ folder (from aclImdb_v1.tar.gz)"
    if data_dir is None:
        raise UsageError(f"imdb is read from --data-dir, and none was given: {place} in a folder")
    if not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir}: no such directory")
    if (data_dir / _FOLDER).is_dir():
        return data_dir / _FOLDER
    if data_dir.name == _FOLDER or (data_dir / "train").is_dir():
        return data_dir
    # torchvision, the one downloader here, has no IMDB.
    cannot = "; imdb has no --download" if download else ""
    raise UsageError(f"{data_dir}: no {_FOLDER}/ folder there ({place} in it){cannot}")


def _read_split(split: Path) -> tuple[list[str], torch.Tensor]:
    """Every review of one split, negatives first, and their int64 labels."""
    if not split.is_dir():
        raise UsageError(f"{split}: missing (an {_FOLDER} folder needs train/ and test/)")
    texts: list[str] = []
    counts = []
    for label in _LABELS:
        folder = split / label
        if not folder.is_dir():
            raise UsageError(f"{folder}: missing (an {_FOLDER} split needs pos/ and neg/)")
        paths = sorted(folder.glob("*.txt"))
        if not paths:
            raise UsageError(f"{folder}: no *.txt reviews")
        texts.extend(_read_review(path) for path in paths)
        counts.append(len(paths))
    labels = torch.repeat_interleave(torch.tensor(list(_LABELS.values())), torch.tensor(counts))
    return texts, labels


def _read_review(path: Path) -> str:
    """One review, lower-cased and with its ``<br />`` line breaks turned into spaces.

    Normalised here rather than by a ``tokenizers`` normalizer: Python's string methods do it
    in a fraction of a second for 50,000 reviews, the normalizer (which tracks offsets) in
    seconds.
    """
    try:
        return path.read_text(encoding="utf-8").replace("<br />", " ").lower()
    except UnicodeDecodeError as error:
        raise UsageError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise UsageError(f"{path}: cannot read ({error.strerror})") from None


def _train_tokenizer(texts: list[str], vocab_size: int, seq_len: int) -> Tokenizer:
    """A word-level tokenizer fitted to normalised ``texts`` that emits exactly ``seq_len`` ids."""
    tokenizer = Tokenizer(models.WordLevel(unk_token=_UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # words and runs of punctuation
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[_PAD, _UNK], show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    # ModelSpec's contract: id 0 pads sequences. Special tokens take the first ids, in order.
    assert tokenizer.token_to_id(_PAD) == PAD_ID
    tokenizer.enable_truncation(max_length=seq_len)
    # Pad on the left: an LSTM classifier reads its last state, which then follows real words.
    tokenizer.enable_padding(direction="left", pad_id=PAD_ID, pad_token=_PAD, length=seq_len)
    return tokenizer


def _encode(tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    encodings = tokenizer.encode_batch(texts)  # batched in the tokenizer's native code
    return torch.from_numpy(np.array([encoding.ids for encoding in encodings], dtype=np.int64))


def _shuffled(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> TensorPair:
    order = torch.randperm(x.shape[0], generator=generator)
    return TensorPair(x[order], y[order])
