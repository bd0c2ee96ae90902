"""Writers of small data sets in their real on-disk formats, for the reader and CLI tests.

Each writer returns what a correct reader must recover, so the tests compare against the
values written rather than against the reader's own arithmetic.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CIFAR_TRAIN_FILES = {
    "cifar10": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "cifar100": ("train",),
}
CIFAR_TEST_FILE = {"cifar10": "test_batch", "cifar100": "test"}
CIFAR_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CIFAR_ARCHIVE = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}


@dataclass(frozen=True)
class CifarFixture:
    """Where a fixture CIFAR release was written and the uint8 pixels and labels it holds."""

    path: Path  # the tarball or the extracted folder
    train_pixels: np.ndarray  # N×3072, uint8, batches in file order
    train_labels: np.ndarray
    test_pixels: np.ndarray
    test_labels: np.ndarray


def cifar_batches(
    name: str, per_batch: int = 6, seed: int = 0
) -> dict[str, dict[bytes, object]]:
    """The pickled dicts of a small CIFAR release, keyed by file name, as the release has them."""
    rng = np.random.default_rng(seed)
    classes = CIFAR_CLASSES[name]
    batches: dict[str, dict[bytes, object]] = {}
    for file in (*CIFAR_TRAIN_FILES[name], CIFAR_TEST_FILE[name]):
        count = per_batch * (2 if name == "cifar100" and file == "train" else 1)
        labels = [int(v) for v in rng.integers(0, classes, size=count)]
        batch: dict[bytes, object] = {
            b"batch_label": f"fixture {file}".encode(),
            b"data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
            b"filenames": [f"img_{file}_{i}.png".encode() for i in range(count)],
        }
        if name == "cifar10":
            batch[b"labels"] = labels
        else:
            batch[b"fine_labels"] = labels
            batch[b"coarse_labels"] = [label // 5 for label in labels]
        batches[file] = batch
    return batches


def write_cifar(root: Path, name: str, form: str = "tar", per_batch: int = 6,
                seed: int = 0) -> CifarFixture:
    """Write a small ``cifar10``/``cifar100`` release into ``root`` as ``tar`` or ``folder``.

    Batches are pickled with protocol 2, as the Python 2 release was; the meta file beside them
    is written too, though readers need not read it.
    """
    batches = cifar_batches(name, per_batch, seed)
    meta_name = "batches.meta" if name == "cifar10" else "meta"
    meta = {b"label_names": [f"class{i}".encode() for i in range(CIFAR_CLASSES[name])]}
    files = {file: pickle.dumps(batch, protocol=2) for file, batch in batches.items()}
    files[meta_name] = pickle.dumps(meta, protocol=2)
    folder = CIFAR_FOLDER[name]
    root.mkdir(parents=True, exist_ok=True)
    if form == "folder":
        path = root / folder
        path.mkdir()
        for file, payload in files.items():
            (path / file).write_bytes(payload)
    elif form == "tar":
        path = root / CIFAR_ARCHIVE[name]
        with tarfile.open(path, "w:gz") as archive:
            for file, payload in files.items():
                info = tarfile.TarInfo(f"{folder}/{file}")
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
    else:
        raise ValueError(form)
    label_key = b"labels" if name == "cifar10" else b"fine_labels"
    train = [batches[file] for file in CIFAR_TRAIN_FILES[name]]
    test = batches[CIFAR_TEST_FILE[name]]
    return CifarFixture(
        path=path,
        train_pixels=np.concatenate([b[b"data"] for b in train]),
        train_labels=np.concatenate([b[label_key] for b in train]).astype(np.int64),
        test_pixels=test[b"data"],
        test_labels=np.asarray(test[label_key], dtype=np.int64),
    )


def _wiki_text(*lines: str) -> str:
    """Lines as WikiText writes them: a space on each side, blank lines a lone space."""
    return "".join(f" {line} \n" if line else " \n" for line in lines)


WIKI_TRAIN = _wiki_text(
    "",
    "= Valkyria Chronicles III =",
    "",
    "Senjō no Valkyria 3 : <unk> Chronicles is a tactical role @-@ playing video game .",
    "The game began development in 2010 , carrying over a large portion of the work .",
    "",
    "= = Gameplay = =",
    "",
    "As with previous games , the game is a tactical role @-@ playing game .",
    "Troops are divided into five classes , and each class has a role in the game .",
)
WIKI_VALID = _wiki_text(
    "", "= Homarus gammarus =", "", "Homarus gammarus is a species of clawed lobster ."
)
WIKI_TEST = _wiki_text(
    "",
    "= Robert Boulter =",
    "",
    "Robert Boulter is an English film and television actor . He had a guest role in 2000 .",
    "This was followed by a starring role in the play Herons , a game of the work .",
)


def write_wikitext(root: Path, nested: bool = True) -> Path:
    """Write ``wiki.{train,valid,test}.tokens`` (WikiText's own layout) and return their folder."""
    folder = root / "wikitext-2" if nested else root
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in (("train", WIKI_TRAIN), ("valid", WIKI_VALID), ("test", WIKI_TEST)):
        (folder / f"wiki.{split}.tokens").write_text(text, encoding="utf-8")
    return folder


IMDB_REVIEWS = {
    "pos": [
        "A wonderful film.<br /><br />The acting is great and the story is great.",
        "Great fun, a wonderful cast; I loved it.",
        "Loved every minute: great film, great story!",
    ],
    "neg": [
        "A terrible film.<br /><br />The acting is awful and the story is boring.",
        "Boring and awful; I hated it.",
        "Hated every minute: awful film, terrible story!",
    ],
}


def write_imdb(root: Path) -> Path:
    """Write an ``aclImdb/`` tree with the release's layout and file naming; return its path."""
    folder = root / "aclImdb"
    for split in ("train", "test"):
        for label, reviews in IMDB_REVIEWS.items():
            directory = folder / split / label
            directory.mkdir(parents=True)
            for i, review in enumerate(reviews):
                rating = 8 + i % 3 if label == "pos" else 1 + i % 3
                (directory / f"{i}_{rating}.txt").write_text(review, encoding="utf-8")
    (folder / "imdb.vocab").write_text("the\na\n", encoding="utf-8")
    (folder / "train" / "unsup").mkdir()
    return folder


IDX_TYPE_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(">i2"): 0x0B,
    np.dtype(">i4"): 0x0C,
    np.dtype(">f4"): 0x0D,
    np.dtype(">f8"): 0x0E,
}


def idx_bytes(values: np.ndarray) -> bytes:
    """``values`` in the IDX format: zero bytes, type code, rank, big-endian sizes, data."""
    big_endian = values.astype(values.dtype.newbyteorder(">"), copy=False)
    header = bytes([0, 0, IDX_TYPE_CODES[big_endian.dtype], values.ndim])
    sizes = np.asarray(values.shape, dtype=">u4").tobytes()
    return header + sizes + big_endian.tobytes()


IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class IdxFixture:
    """Where a fixture MNIST-format release was written and the uint8 arrays it holds."""

    folder: Path
    train_images: np.ndarray  # N×28×28 uint8
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    def file(self, stem: str) -> Path:
        """The written file of ``stem`` (gzipped or not)."""
        return next(self.folder.glob(f"{stem}*"))


def write_idx_release(
    folder: Path, gzipped: bool = True, n_train: int = 12, n_test: int = 5, seed: int = 0
) -> IdxFixture:
    """Write the four files of a small MNIST/Fashion-MNIST release into ``folder``."""
    rng = np.random.default_rng(seed)
    arrays = (
        rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, size=n_train, dtype=np.uint8),
        rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, size=n_test, dtype=np.uint8),
    )
    folder.mkdir(parents=True, exist_ok=True)
    for stem, values in zip(IDX_FILES, arrays):
        payload = idx_bytes(values)
        if gzipped:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / stem).write_bytes(payload)
    return IdxFixture(folder, *arrays)


#: Bytes no unpickler accepts ('t' asks for a MARK that was never pushed). Random bytes are not a
#: safe stand-in: about 1 in 2,500 random 3-kB strings unpickles to a dict, set, int or str, and
#: some make CPython print an unraisable SystemError, so a test on them fails now and then.
NOT_A_PICKLE = b"this is not a pickle\n" * 150
