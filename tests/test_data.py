"""The data readers on small files in the real formats, and the batch augmentation."""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from models.contraction import ContractiveConv, ContractiveFlood, ContractiveMaxSpread
from models.fpi import fixed_point_iteration
from pipeline.data import (
    BatchAugment,
    Dataset,
    dataset_names,
    load_dataset,
    training_augmentation,
)
from pipeline.data.augment import flip_and_translate
from pipeline.data.idx import read_idx
from pipeline.data.maze import CELL_PIXELS, make_maze
from pipeline.data.mnist import FASHION_MNIST, IDX_FILES, load_idx_release
from pipeline.data.wikitext import load_wikitext2
from pipeline.errors import UsageError
from tests.fixtures_data import (
    CIFAR_ARCHIVE,
    CIFAR_FOLDER,
    IMDB_REVIEWS,
    NOT_A_PICKLE,
    WIKI_TEST,
    WIKI_TRAIN,
    idx_bytes,
    write_cifar,
    write_idx_release,
    write_imdb,
    write_wikitext,
)

torch.set_num_threads(1)


def _standardised(pixels: np.ndarray, train_pixels: np.ndarray) -> np.ndarray:
    """What the reader must return: ``[0, 1]`` images standardised by train channel stats."""
    def images(raw: np.ndarray) -> np.ndarray:
        return raw.reshape(-1, 3, 32, 32).astype(np.float64) / 255.0

    train = images(train_pixels)
    mean = train.mean(axis=(0, 2, 3), keepdims=True)
    std = train.std(axis=(0, 2, 3), keepdims=True, ddof=1)
    return (images(pixels) - mean) / std


# ------------------------------------------------------------------------------------ registry


def test_registry_names_every_data_set() -> None:
    assert dataset_names() == (
        "digits", "cifar10", "cifar100", "wikitext2", "imdb", "synthetic", "fashion_mnist", "mnist",
        "maze",
    )


def test_unknown_data_set_is_a_usage_error_listing_the_known_ones() -> None:
    with pytest.raises(UsageError, match=r"unknown data set 'svhn' \(known: digits, cifar10"):
        load_dataset("svhn")


def test_only_cifar_trains_with_augmentation() -> None:
    assert isinstance(training_augmentation("cifar10"), BatchAugment)
    assert isinstance(training_augmentation("cifar100"), BatchAugment)
    for name in ("digits", "wikitext2", "imdb", "synthetic", "fashion_mnist", "mnist", "maze"):
        assert training_augmentation(name) is None


def test_synthetic_is_generated_from_the_seed_with_known_difficulty() -> None:
    first, again = load_dataset("synthetic", seed=3), load_dataset("synthetic", seed=3)
    assert first.spec.task == "sequence"
    assert first.difficulty_test is not None
    assert first.difficulty_test.shape == (len(first.test),)
    assert torch.equal(first.train.x, again.train.x) and torch.equal(first.test.y, again.test.y)
    assert not torch.equal(first.train.x, load_dataset("synthetic", seed=4).train.x)


# -------------------------------------------------------------------------------------- digits


def test_digits_is_a_seeded_stratified_80_20_split() -> None:
    first, again, other = (load_dataset("digits", seed=s) for s in (0, 0, 1))
    assert isinstance(first, Dataset)
    assert first.spec.task == "image" and first.spec.input_shape == (1, 8, 8)
    assert first.spec.num_classes == 10 and first.difficulty_test is None
    assert first.train.x.shape == (1437, 1, 8, 8) and first.test.x.shape == (360, 1, 8, 8)
    assert first.train.x.dtype == torch.float32 and first.train.y.dtype == torch.int64
    assert torch.equal(first.test.x, again.test.x) and torch.equal(first.test.y, again.test.y)
    assert not torch.equal(first.test.y, other.test.y)
    # Stratified: each class's test share is its overall share, to within one image.
    test_counts = torch.bincount(first.test.y, minlength=10)
    counts = test_counts + torch.bincount(first.train.y, minlength=10)
    assert (test_counts - 0.2 * counts).abs().max() <= 1


def test_digits_are_standardised_by_the_train_split() -> None:
    train = load_dataset("digits").train.x
    assert abs(train.mean().item()) < 1e-5
    assert abs(train.std().item() - 1.0) < 1e-4


# --------------------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("form", ["tar", "folder"])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_the_release(tmp_path: Path, name: str, form: str) -> None:
    written = write_cifar(tmp_path, name, form)
    dataset = load_dataset(name, tmp_path)
    assert dataset.spec.task == "image" and dataset.spec.input_shape == (3, 32, 32)
    assert dataset.spec.num_classes == (10 if name == "cifar10" else 100)
    assert dataset.train.x.dtype == torch.float32
    assert np.array_equal(dataset.train.y.numpy(), written.train_labels)  # fine labels for 100
    assert np.array_equal(dataset.test.y.numpy(), written.test_labels)
    expected_train = _standardised(written.train_pixels, written.train_pixels)
    expected_test = _standardised(written.test_pixels, written.train_pixels)
    np.testing.assert_allclose(dataset.train.x.numpy(), expected_train, atol=1e-5)
    np.testing.assert_allclose(dataset.test.x.numpy(), expected_test, atol=1e-5)


@pytest.mark.parametrize("form", ["tar", "folder"])
def test_cifar_data_dir_may_be_the_tarball_or_folder_itself(tmp_path: Path, form: str) -> None:
    written = write_cifar(tmp_path, "cifar10", form)
    dataset = load_dataset("cifar10", written.path)
    assert np.array_equal(dataset.test.y.numpy(), written.test_labels)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _corrupt_folder_batch(folder: Path, how: str, tmp_path: Path) -> str:
    """Damage ``data_batch_3`` of an extracted CIFAR-10 folder; return the expected message."""
    path = folder / "data_batch_3"
    batch = pickle.loads(path.read_bytes())
    if how == "truncated":
        _truncate(path)
        return r"data_batch_3: .*(truncated|corrupt)"
    if how == "garbage":
        path.write_bytes(NOT_A_PICKLE)
        return r"data_batch_3: not a CIFAR batch pickle"
    if how == "code":
        path.write_bytes(pickle.dumps({b"data": _RunsCode(tmp_path / "pwned")}))
        return r"data_batch_3: .*refuses the global"
    if how == "not a dict":
        path.write_bytes(pickle.dumps([1, 2, 3]))
        return r"data_batch_3: not a CIFAR batch \(a pickled list"
    if how == "no labels":
        del batch[b"labels"]
        path.write_bytes(pickle.dumps(batch))
        return r"data_batch_3: no b'labels' entry"
    if how == "wrong shape":
        batch[b"data"] = batch[b"data"][:, :1024]
        path.write_bytes(pickle.dumps(batch))
        return r"data_batch_3: b'data' is uint8 of shape \(6, 1024\), expected uint8 N×3072"
    if how == "label count":
        batch[b"labels"] = batch[b"labels"][:-1]
        path.write_bytes(pickle.dumps(batch))
        return r"data_batch_3: b'labels' must hold 6 integer labels"
    if how == "label range":
        batch[b"labels"][0] = 10
        path.write_bytes(pickle.dumps(batch))
        return r"data_batch_3: b'labels' has labels outside 0..9"
    if how == "missing":
        path.unlink()
        return r"data_batch_3: missing"
    raise ValueError(how)


@pytest.mark.parametrize(
    "how",
    ["truncated", "garbage", "code", "not a dict", "no labels", "wrong shape", "label count",
     "label range", "missing"],
)
def test_a_malformed_cifar_batch_is_a_usage_error_naming_it(tmp_path: Path, how: str) -> None:
    written = write_cifar(tmp_path, "cifar10", "folder")
    expected = _corrupt_folder_batch(written.path, how, tmp_path)
    with pytest.raises(UsageError, match=expected):
        load_dataset("cifar10", tmp_path)
    assert not (tmp_path / "pwned").exists()  # the refused global never ran


def test_a_truncated_cifar_tarball_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    written = write_cifar(tmp_path, "cifar100", "tar")
    _truncate(written.path)
    with pytest.raises(UsageError, match=re.escape(CIFAR_ARCHIVE["cifar100"])):
        load_dataset("cifar100", tmp_path)


def test_a_cifar_tarball_without_a_batch_is_a_usage_error(tmp_path: Path) -> None:
    archive = tmp_path / CIFAR_ARCHIVE["cifar10"]
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(f"{CIFAR_FOLDER['cifar10']}/readme.html")
        tar.addfile(info)
    with pytest.raises(UsageError, match=r"has no member cifar-10-batches-py/data_batch_1"):
        load_dataset("cifar10", tmp_path)


def test_cifar_without_files_says_what_to_place_where(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"neither cifar-10-python.tar.gz nor cifar-10-batches"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(UsageError, match=r"no such directory"):
        load_dataset("cifar10", tmp_path / "absent")
    with pytest.raises(UsageError, match=r"none was given"):
        load_dataset("cifar100")


def test_cifar_download_without_torchvision_says_what_to_place_where(tmp_path: Path) -> None:
    try:
        import torchvision  # noqa: F401
    except Exception:
        pass
    else:
        pytest.skip("torchvision imports here; --download would try the network")
    with pytest.raises(
        UsageError, match=r"--download needs torchvision.*place cifar-10-python.tar.gz"
    ):
        load_dataset("cifar10", tmp_path, download=True)


# ---------------------------------------------------------------------------------- WikiText-2


def _words(text: str) -> list[str]:
    return [word for line in text.splitlines() if line.strip() for word in [*line.split(), "<eos>"]]


def test_wikitext2_windows_are_next_token_pairs(tmp_path: Path) -> None:
    dataset = load_wikitext2(write_wikitext(tmp_path).parent, seq_len=8)
    x, y = dataset.train.x, dataset.train.y
    assert x.dtype == torch.int64 and x.shape[1] == 8 and x.shape == y.shape
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one token ...
    assert torch.equal(x[1:, 0], y[:-1, -1])  # ... across window boundaries too
    words = _words(WIKI_TRAIN)
    assert x.shape[0] == (len(words) - 1) // 8
    # The ids stand for the words one to one: equal ids exactly where the words are equal.
    stream = x.flatten().numpy()
    _, codes = np.unique(np.array(words[: stream.size]), return_inverse=True)
    pairs = set(zip(codes.tolist(), stream.tolist()))
    assert len(pairs) == len(set(codes.tolist())) == len(set(stream.tolist()))


def test_wikitext2_vocabulary_comes_from_train_and_test_words_outside_it_are_unk(
    tmp_path: Path,
) -> None:
    dataset = load_wikitext2(write_wikitext(tmp_path, nested=False), seq_len=4)
    train_words, test_words = _words(WIKI_TRAIN), _words(WIKI_TEST)
    vocabulary = set(train_words) | {"<unk>", "<eos>"}
    assert dataset.spec.task == "language_model"
    assert dataset.spec.vocab_size == dataset.spec.num_classes == len(vocabulary)
    train_ids = dataset.train.x.flatten().tolist()
    test_ids = dataset.test.x.flatten().tolist()
    assert max(train_ids) < len(vocabulary)
    id_of = dict(zip(train_words, train_ids))
    unk = id_of["<unk>"]
    expected = [id_of.get(word, unk) for word in test_words[: len(test_ids)]]
    assert test_ids == expected
    assert any(word not in vocabulary for word in test_words)  # the fixture does test OOV


def test_wikitext2_default_load(tmp_path: Path) -> None:
    write_wikitext(tmp_path)
    dataset = load_dataset("wikitext2", tmp_path)
    assert dataset.spec.input_shape == (35,)
    assert dataset.train.x.shape[1] == dataset.test.y.shape[1] == 35


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("empty train", r"wiki.train.tokens: empty"),
        ("blank train", r"wiki.train.tokens: empty"),
        ("no test", r"wiki.test.tokens: missing"),
        ("binary test", r"wiki.test.tokens: not UTF-8 text"),
        ("short test", r"wiki.test.tokens: 3 tokens, too few for one sequence of 35"),
        ("no files", r"no wiki.train.tokens there or in wikitext-2/"),
    ],
)
def test_a_malformed_wikitext2_folder_is_a_usage_error(
    tmp_path: Path, damage: str, expected: str
) -> None:
    folder = write_wikitext(tmp_path)
    if damage == "empty train":
        (folder / "wiki.train.tokens").write_text("")
    elif damage == "blank train":
        (folder / "wiki.train.tokens").write_text(" \n \n")
    elif damage == "no test":
        (folder / "wiki.test.tokens").unlink()
    elif damage == "binary test":
        (folder / "wiki.test.tokens").write_bytes(b"\xff\xfe\x00 game")
    elif damage == "short test":
        (folder / "wiki.test.tokens").write_text(" the game \n")
    elif damage == "no files":
        for path in folder.iterdir():
            path.unlink()
    with pytest.raises(UsageError, match=expected):
        load_dataset("wikitext2", tmp_path)


# ---------------------------------------------------------------------------------------- IMDB


def _imdb_vocabulary_size() -> int:
    """Train words seen twice or more, tokenised as the reader promises, plus <pad> and <unk>."""
    counts = Counter(
        word
        for reviews in IMDB_REVIEWS.values()
        for review in reviews
        for word in re.findall(r"\w+|[^\w\s]+", review.replace("<br />", " ").lower())
    )
    return 2 + sum(count >= 2 for count in counts.values())


def _rows(x: torch.Tensor, y: torch.Tensor) -> set[tuple[tuple[int, ...], int]]:
    return {(tuple(row), label) for row, label in zip(x.tolist(), y.tolist())}


def test_imdb_reads_the_acl_tree(tmp_path: Path) -> None:
    write_imdb(tmp_path)
    dataset = load_dataset("imdb", tmp_path, seed=0)
    assert dataset.spec.task == "sequence" and dataset.spec.num_classes == 2
    assert dataset.spec.input_shape == (256,)
    assert dataset.spec.vocab_size == _imdb_vocabulary_size()
    x, y = dataset.train.x, dataset.train.y
    assert x.dtype == torch.int64 and x.shape == (6, 256)
    assert sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]
    assert int(x.max()) < dataset.spec.vocab_size
    # Short reviews are padded with id 0 on the left, so each row ends in words.
    assert bool((x[:, 0] == 0).all()) and bool((x[:, -1] != 0).all())
    padding = (x == 0).int()
    assert bool((padding[:, 1:] <= padding[:, :-1]).all())  # no pad after the first word
    # The test split holds the same reviews and is tokenised by the same tokenizer.
    assert _rows(x, y) == _rows(dataset.test.x, dataset.test.y)


def test_imdb_order_is_shuffled_by_seed(tmp_path: Path) -> None:
    folder = write_imdb(tmp_path)
    first, again = load_dataset("imdb", folder, seed=0), load_dataset("imdb", folder, seed=0)
    orders = {tuple(load_dataset("imdb", folder, seed=s).train.y.tolist()) for s in range(6)}
    assert torch.equal(first.train.x, again.train.x)
    assert len(orders) > 1


def test_imdb_truncates_long_reviews_to_their_start(tmp_path: Path) -> None:
    folder = write_imdb(tmp_path)
    long_review = " ".join(["great"] * 300 + ["awful"] * 10)
    (folder / "train" / "pos" / "9_10.txt").write_text(long_review)
    dataset = load_dataset("imdb", tmp_path)
    row = dataset.train.x[dataset.train.x[:, 0] != 0]
    assert row.shape == (1, 256) and row.unique().numel() == 1  # only "great"


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("no neg", r"aclImdb/test/neg: missing"),
        ("empty pos", r"aclImdb/train/pos: no \*.txt reviews"),
        ("no test", r"aclImdb/test: missing"),
        ("binary review", r"1_3.txt: not UTF-8 text"),
        ("no tree", r"no aclImdb/ folder there"),
    ],
)
def test_a_malformed_acl_imdb_tree_is_a_usage_error(
    tmp_path: Path, damage: str, expected: str
) -> None:
    folder = write_imdb(tmp_path / "data")
    if damage == "no neg":
        for path in (folder / "test" / "neg").iterdir():
            path.unlink()
        (folder / "test" / "neg").rmdir()
    elif damage == "empty pos":
        for path in (folder / "train" / "pos").glob("*.txt"):
            path.unlink()
    elif damage == "no test":
        (folder / "test").rename(folder / "test_elsewhere")
    elif damage == "binary review":
        (folder / "train" / "neg" / "1_3.txt").write_bytes(b"\x80\x81 bad")
    elif damage == "no tree":
        folder.rename(tmp_path / "data" / "aclImdb_elsewhere")
    with pytest.raises(UsageError, match=expected):
        load_dataset("imdb", tmp_path / "data")


def test_imdb_data_dir_may_be_the_acl_folder_itself(tmp_path: Path) -> None:
    folder = write_imdb(tmp_path)
    assert load_dataset("imdb", folder).train.x.shape == (6, 256)


# ------------------------------------------------------------------------ MNIST, Fashion-MNIST


def _idx_standardised(images: np.ndarray, train_images: np.ndarray) -> np.ndarray:
    """What the reader must return: ``[0, 1]`` images standardised by the train statistics."""
    train = train_images.astype(np.float64) / 255.0
    return ((images.astype(np.float64) / 255.0 - train.mean()) / train.std(ddof=1))[:, None]


@pytest.mark.parametrize("gzipped", [True, False])
@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_idx_release_reads_the_official_split(tmp_path: Path, name: str, gzipped: bool) -> None:
    written = write_idx_release(tmp_path, gzipped=gzipped)
    dataset = load_dataset(name, tmp_path)
    assert dataset.name == name and dataset.spec.task == "image"
    assert dataset.spec.input_shape == (1, 28, 28) and dataset.spec.num_classes == 10
    assert dataset.train.x.shape == (12, 1, 28, 28) and dataset.test.x.shape == (5, 1, 28, 28)
    assert dataset.train.x.dtype == torch.float32 and dataset.train.y.dtype == torch.int64
    np.testing.assert_array_equal(dataset.train.y.numpy(), written.train_labels)
    np.testing.assert_array_equal(dataset.test.y.numpy(), written.test_labels)
    np.testing.assert_allclose(
        dataset.test.x.numpy(), _idx_standardised(written.test_images, written.train_images),
        rtol=1e-5, atol=1e-5,
    )


@pytest.mark.parametrize(("name", "folder"), [("fashion_mnist", "fashion-mnist"),
                                              ("mnist", "mnist")])
def test_idx_release_may_sit_in_its_folder_under_data_dir(
    tmp_path: Path, name: str, folder: str
) -> None:
    written = write_idx_release(tmp_path / folder)
    np.testing.assert_array_equal(load_dataset(name, tmp_path).train.y.numpy(),
                                  written.train_labels)


def test_read_idx_reads_every_type_and_rank(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for values in (
        rng.integers(-128, 128, size=(3, 4), dtype=np.int8),
        rng.integers(-(2**15), 2**15, size=(2, 3, 5), dtype=np.int16),
        rng.integers(-(2**31), 2**31, size=(7,), dtype=np.int32),
        rng.standard_normal((2, 2, 2, 2)).astype(np.float32),
        rng.standard_normal((4, 1)),
    ):
        path = tmp_path / "values.idx"
        path.write_bytes(idx_bytes(values))
        read = read_idx(path)
        assert read.shape == values.shape and read.dtype == values.dtype
        np.testing.assert_array_equal(read, values)


def test_fashion_mnist_without_files_names_the_debian_package(tmp_path: Path) -> None:
    not_installed = dataclasses.replace(FASHION_MNIST, installed_at=tmp_path / "absent")
    with pytest.raises(UsageError) as caught:
        load_idx_release(not_installed, None)
    message = str(caught.value)
    assert "\n" not in message
    assert "no train-images-idx3-ubyte[.gz]" in message
    assert "dataset-fashion-mnist" in message and "--data-dir" in message


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("no data dir", r"--data-dir .*nowhere: no such directory"),
        ("no test labels", r"fashion_mnist: no t10k-labels-idx1-ubyte\[\.gz\] in .*; install"),
        ("truncated gzip", r"train-images-idx3-ubyte.gz: unreadable or truncated"),
        ("truncated data", r"t10k-images-idx3-ubyte.gz: holds 3000 bytes of data, but its header "
                           r"announces 5×28×28 uint8 values \(3920 bytes\)"),
        ("not idx", r"train-labels-idx1-ubyte.gz: not an IDX file \(its header is 89504e47\)"),
        ("short header", r"t10k-images-idx3-ubyte.gz: truncated IDX header \(8 bytes\)"),
        ("wrong shape", r"train-images-idx3-ubyte.gz: holds uint8 of shape \(12, 27, 28\)"),
        ("label count", r"t10k-labels-idx1-ubyte.gz: 4 labels for the 5 images"),
        ("label range", r"train-labels-idx1-ubyte.gz: has labels outside 0..9"),
    ],
)
def test_a_damaged_idx_release_is_a_one_line_usage_error_naming_the_file(
    tmp_path: Path, damage: str, expected: str
) -> None:
    written = write_idx_release(tmp_path)
    data_dir = tmp_path

    def rewrite(stem: str, payload: bytes) -> None:
        written.file(stem).write_bytes(gzip.compress(payload))

    if damage == "no data dir":
        data_dir = tmp_path / "nowhere"
    elif damage == "no test labels":
        written.file("t10k-labels-idx1-ubyte").unlink()
    elif damage == "truncated gzip":
        path = written.file("train-images-idx3-ubyte")
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "truncated data":
        rewrite("t10k-images-idx3-ubyte", idx_bytes(written.test_images)[: 16 + 3000])
    elif damage == "not idx":
        rewrite("train-labels-idx1-ubyte", b"\x89PNG\r\n\x1a\n")
    elif damage == "short header":
        rewrite("t10k-images-idx3-ubyte", idx_bytes(written.test_images)[:8])
    elif damage == "wrong shape":
        rewrite("train-images-idx3-ubyte", idx_bytes(written.train_images[:, 1:]))
    elif damage == "label count":
        rewrite("t10k-labels-idx1-ubyte", idx_bytes(written.test_labels[:4]))
    elif damage == "label range":
        labels = written.train_labels.copy()
        labels[3] = 10
        rewrite("train-labels-idx1-ubyte", idx_bytes(labels))
    with pytest.raises(UsageError, match=expected) as caught:
        load_dataset("fashion_mnist", data_dir)
    assert "\n" not in str(caught.value)


def test_mnist_without_data_dir_says_to_pass_one() -> None:
    with pytest.raises(UsageError, match=r"mnist is read from --data-dir, and none was given"):
        load_dataset("mnist")


@pytest.mark.skipif(
    not all((FASHION_MNIST.installed_at / f"{stem}.gz").is_file() for stem in IDX_FILES),
    reason="Debian's dataset-fashion-mnist is not installed (`make data-deps` installs it)",
)
def test_fashion_mnist_reads_the_installed_release() -> None:
    dataset = load_dataset("fashion_mnist")
    assert dataset.train.x.shape == (60_000, 1, 28, 28)
    assert dataset.test.x.shape == (10_000, 1, 28, 28)
    # The official release is balanced: 6,000 train and 1,000 test images per class.
    assert torch.equal(torch.bincount(dataset.train.y), torch.full((10,), 6_000))
    assert torch.equal(torch.bincount(dataset.test.y), torch.full((10,), 1_000))
    assert abs(dataset.train.x.mean().item()) < 1e-4
    assert abs(dataset.train.x.std().item() - 1.0) < 1e-4
    # Classes differ in what they draw: a sandal (5) has far less ink than a pullover (2).
    ink = torch.stack([dataset.test.x[dataset.test.y == c].mean() for c in range(10)])
    assert ink[5] < ink[2]


# ---------------------------------------------------------------------------------------- maze


def _flood(open_cells: np.ndarray, start: tuple[int, int]) -> tuple[np.ndarray, int]:
    """The cells a 4-neighbour flood from ``start`` covers, and the steps it takes to stop
    growing. Written independently of the generator (plain dilation, no graph library)."""
    reached = np.zeros_like(open_cells)
    reached[start] = True
    for step in range(open_cells.size):
        grown = reached.copy()
        grown[1:] |= reached[:-1]
        grown[:-1] |= reached[1:]
        grown[:, 1:] |= reached[:, :-1]
        grown[:, :-1] |= reached[:, 1:]
        grown &= open_cells
        if (grown == reached).all():
            return reached, step
        reached = grown
    raise AssertionError("unreachable: a flood stops growing within the grid's size")


def _open_neighbours(open_cells: np.ndarray) -> np.ndarray:
    padded = np.pad(open_cells, 1).astype(int)
    return padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]


def _maze_cells(dataset: Dataset) -> np.ndarray:
    return dataset.test.x[:, :, ::CELL_PIXELS, ::CELL_PIXELS].numpy() > 0.5  # one pixel per cell


def test_maze_is_generated_from_the_seed() -> None:
    first, again, other = (make_maze(n_train=30, n_test=30, seed=s) for s in (3, 3, 4))
    assert first.spec.task == "image" and first.spec.input_shape == (3, 32, 32)
    assert first.spec.num_classes == 2
    assert first.train.x.shape == (30, 3, 32, 32) and first.test.x.dtype == torch.float32
    assert torch.equal(first.train.x, again.train.x) and torch.equal(first.test.y, again.test.y)
    assert not torch.equal(first.train.x, other.train.x)
    small = make_maze(n_train=5, n_test=5, size=10, max_length=12, seed=0)
    assert small.spec.input_shape == (3, 20, 20)
    assert small.difficulty_test is not None and small.difficulty_test.max() <= 12


def test_maze_label_is_whether_the_start_path_ends_at_the_goal() -> None:
    dataset = make_maze(n_train=10, n_test=80, seed=1)
    assert dataset.difficulty_test is not None
    blocks = dataset.test.x.numpy().reshape(80, 3, 16, 2, 16, 2)
    cells = _maze_cells(dataset)
    assert np.isin(blocks, (0.0, 1.0)).all() and (blocks == cells[:, :, :, None, :, None]).all()
    labels = dataset.test.y.numpy()
    assert 0.3 < labels.mean() < 0.7
    for (walls, start_mark, goal_mark), label, length in zip(cells, labels, dataset.difficulty_test.tolist()):
        assert walls[[0, -1]].all() and walls[:, [0, -1]].all()  # a walled border
        (start,), (goal,) = np.argwhere(start_mark), np.argwhere(goal_mark)
        open_cells = ~walls
        # The open cells are chains one cell wide: two paths, each with two ends.
        neighbours = _open_neighbours(open_cells)[open_cells]
        assert neighbours.max() <= 2 and (neighbours == 1).sum() == 4
        assert _open_neighbours(open_cells)[tuple(start)] == 1
        assert _open_neighbours(open_cells)[tuple(goal)] == 1
        path, steps = _flood(open_cells, tuple(start))
        assert label == path[tuple(goal)]
        assert steps == length  # the difficulty: the steps a flood needs to cover the path
        assert path.sum() == length + 1
        other, _ = _flood(open_cells & ~path, tuple(np.argwhere(open_cells & ~path)[0]))
        assert (other | path).sum() == open_cells.sum()  # exactly two paths


def test_maze_difficulty_spreads_alike_over_both_labels() -> None:
    dataset = make_maze(n_train=10, n_test=400, seed=2)
    assert dataset.difficulty_test is not None
    difficulty, labels = dataset.difficulty_test.numpy(), dataset.test.y.numpy()
    assert difficulty.min() >= 2 and difficulty.max() <= 32
    medians = [np.median(difficulty[labels == label]) for label in (0, 1)]
    assert abs(medians[0] - medians[1]) <= 2


def _hand_set_flood(dataset: Dataset, state: ContractiveConv, activation, **solve: float):
    """The FPI layer's form z ← state.combine(u, s(z), φ) (φ(u + s(z)) but for the flood)
    seeded at the start, walls at −1e3."""
    cells = torch.from_numpy(_maze_cells(dataset).astype(np.float32))
    walls, start = cells[:, 0:1], cells[:, 1:2]
    u = start - 1e3 * walls
    weight = state.effective_weight((16, 16))

    def flood(z: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        return state.combine(injection, state.apply_weight(z, weight), activation)

    with torch.no_grad():
        return fixed_point_iteration(flood, u, activation(u), **solve), cells[:, 2:3]


def test_maze_is_solved_by_a_max_norm_flood_in_as_many_steps_as_the_difficulty() -> None:
    """ContractiveMaxSpread (the backbone's `max` state path) with W = 1 at norm 0.99, and ReLU
    capped at 1 so that the source saturates at once, floods the start's path: at its fixed
    point the goal reads 0.99^L when the label is 1 and exactly 0 when it is 0, and each solve
    stops after exactly L + 1 applications."""
    dataset = make_maze(n_train=1, n_test=80, seed=1)
    assert dataset.difficulty_test is not None
    state = ContractiveMaxSpread(1, contraction=0.99)
    with torch.no_grad():
        state.weight.fill_(1.0)
        state.gain.fill_(30.0)
    fixed, goal = _hand_set_flood(dataset, state, torch.nn.Hardtanh(0.0, 1.0), tol=1e-6, max_iter=100)
    assert bool(fixed.converged.all())
    at_goal = (fixed.z * goal).flatten(1).sum(dim=1)
    torch.testing.assert_close(at_goal, dataset.test.y * 0.99 ** dataset.difficulty_test)
    assert torch.equal(fixed.iterations, dataset.difficulty_test.long() + 1)


def test_maze_is_solved_by_the_flood_state_path_in_as_many_steps_as_the_difficulty() -> None:
    """ContractiveFlood (`state_path: flood`) needs no cap: with plain ReLU the seeded start
    holds 1 (its echo, 0.99², never beats it), the goal reads 0.99^L or exactly 0, and each
    solve stops after exactly L + 1 applications, where the additive form with plain ReLU
    lets the start grow towards 1/(1 − 0.99) and runs every solve to the cap."""
    dataset = make_maze(n_train=1, n_test=80, seed=1)
    assert dataset.difficulty_test is not None
    flood, additive = ContractiveFlood(1, contraction=0.99), ContractiveMaxSpread(1, contraction=0.99)
    with torch.no_grad():
        for state in (flood, additive):
            state.weight.fill_(1.0)
            state.gain.fill_(30.0)
    fixed, goal = _hand_set_flood(dataset, flood, torch.relu, tol=1e-6, max_iter=100)
    assert bool(fixed.converged.all())
    at_goal = (fixed.z * goal).flatten(1).sum(dim=1)
    torch.testing.assert_close(at_goal, dataset.test.y * 0.99 ** dataset.difficulty_test)
    assert torch.equal(fixed.iterations, dataset.difficulty_test.long() + 1)
    grown, _ = _hand_set_flood(dataset, additive, torch.relu, tol=1e-6, max_iter=100)
    assert not bool(grown.converged.any()) and bool((grown.iterations == 100).all())


def test_maze_signal_drowns_under_a_linear_l2_contractive_flood() -> None:
    """The 3×3 ContractiveConv (L2 norm 0.99) spreading to the 4 neighbours passes on about c/4
    per step along a chain one cell wide: long paths leave nothing a readout could use."""
    dataset = make_maze(n_train=1, n_test=80, seed=1)
    assert dataset.difficulty_test is not None
    state = ContractiveConv(1, 3, contraction=0.99)
    with torch.no_grad():
        state.weight.copy_(torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
        state.gain.fill_(30.0)
    fixed, goal = _hand_set_flood(dataset, state, torch.relu, tol=1e-9, max_iter=400)
    at_goal = (fixed.z * goal).flatten(1).sum(dim=1)
    long_connected = (dataset.difficulty_test >= 16) & (dataset.test.y == 1)
    assert bool(long_connected.any()) and float(at_goal[long_connected].max()) < 1e-6


# ------------------------------------------------------------------------------- augmentation


def _reflect_padded(x: torch.Tensor, pad: int) -> np.ndarray:
    """Reflection padding by NumPy, independent of the torch code under test."""
    return np.pad(x.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")


def _transform_of(original: torch.Tensor, padded: np.ndarray, result: torch.Tensor,
                  pad: int) -> set[tuple[bool, int, int]]:
    """Every (flip, dy, dx) that turns ``original``'s padded image into ``result``."""
    height, width = original.shape[-2:]
    found = set()
    for flip in (False, True):
        for dy in range(-pad, pad + 1):
            for dx in range(-pad, pad + 1):
                window = padded[:, pad + dy : pad + dy + height, pad + dx : pad + dx + width]
                if flip:
                    window = window[:, :, ::-1]
                if np.array_equal(window, result.numpy()):
                    found.add((flip, dy, dx))
    return found


@pytest.mark.parametrize("pad", [2, 4])
def test_augmentation_is_a_flip_and_translation_of_each_image(pad: int) -> None:
    x = torch.randn(32, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    result = BatchAugment(pad=pad, seed=7)(x)
    assert result.shape == x.shape and result.dtype == x.dtype
    padded = _reflect_padded(x, pad)
    transforms = [_transform_of(x[i], padded[i], result[i], pad) for i in range(len(x))]
    assert all(transforms), "an image is no flip/translation of its input"
    chosen = [min(t) for t in transforms]
    assert {flip for flip, _, _ in chosen} == {False, True}  # both happen in 32 draws
    assert len({(dy, dx) for _, dy, dx in chosen}) > 4


def test_flip_and_translate_applies_the_given_amounts_exactly() -> None:
    x = torch.arange(2 * 1 * 5 * 6, dtype=torch.float32).view(2, 1, 5, 6)
    flip = torch.tensor([False, True])
    shift = torch.tensor([[1, -2], [0, 0]])
    result = flip_and_translate(x, flip, shift, pad=2)
    padded = _reflect_padded(x, 2)
    assert np.array_equal(result[0].numpy(), padded[0, :, 3:8, 0:6])
    assert torch.equal(result[1], x[1].flip(-1))


def test_augmentation_is_deterministic_by_seed() -> None:
    x = torch.randn(16, 3, 8, 8)
    first, same, other = BatchAugment(seed=1), BatchAugment(seed=1), BatchAugment(seed=2)
    outputs = [first(x), first(x)]
    assert torch.equal(outputs[0], same(x)) and torch.equal(outputs[1], same(x))
    assert not torch.equal(outputs[0], outputs[1])  # a fresh draw per batch
    assert not torch.equal(outputs[0], other(x))


def test_augmentation_without_flip_or_pad_is_the_identity() -> None:
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(BatchAugment(pad=0, flip=False)(x), x)
