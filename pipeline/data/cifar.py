"""CIFAR-10 and CIFAR-100 from the canonical python-pickle release.

The reader accepts, in ``data_dir``, either the tarball as distributed
(``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``, read in place without extracting) or
its extracted folder (``cifar-10-batches-py/`` / ``cifar-100-python/``); ``data_dir`` may also
be that folder or that tarball itself. Each batch is a pickled dict with ``b'data'`` (uint8,
N×3072, channel-major 32×32 planes) and ``b'labels'`` (CIFAR-10) or ``b'fine_labels'``
(CIFAR-100). The canonical train/test split is kept, so ``seed`` plays no part.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch

from models.config import ModelSpec, TensorPair
from pipeline.data.dataset import Dataset
from pipeline.data.images import standardise_channels
from pipeline.errors import UsageError

__all__ = ["CIFAR10", "CIFAR100", "CifarLayout", "load_cifar"]

_PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR release keeps its batches and labels."""

    name: str
    archive: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    label_key: str
    num_classes: int
    torchvision_class: str


CIFAR10 = CifarLayout(
    name="cifar10",
    archive="cifar-10-python.tar.gz",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    label_key="labels",
    num_classes=10,
    torchvision_class="CIFAR10",
)

CIFAR100 = CifarLayout(
    name="cifar100",
    archive="cifar-100-python.tar.gz",
    folder="cifar-100-python",
    train_files=("train",),
    test_file="test",
    label_key="fine_labels",
    num_classes=100,
    torchvision_class="CIFAR100",
)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays, and refuses any other global.

    The batches are pickles; refusing arbitrary globals keeps a doctored file from running code
    and turns a file that is not a CIFAR batch into a clean error.
    """

    _ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("_codecs", "encode"),  # how protocol 2 stores bytes
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refuses the global {module}.{name}")
        return super().find_class(module, name)


def load_cifar(
    layout: CifarLayout, data_dir: Path | None, download: bool = False, seed: int = 0
) -> Dataset:
    """Read one CIFAR release from ``data_dir`` into standardised ``3×32×32`` float32 images.

    With ``download`` and nothing in ``data_dir``, fetches the tarball through torchvision when
    torchvision imports. Raises :class:`UsageError` naming the file for a missing directory, a
    missing batch, a truncated or corrupt archive or pickle, or a batch of the wrong shape.
    """
    del seed  # the canonical split is fixed
    if data_dir is None:
        raise UsageError(
            f"{layout.name} is read from --data-dir, and none was given: "
            f"place {layout.archive} or its extracted folder {layout.folder}/ in a folder "
            f"and pass it as --data-dir"
        )
    source = _locate(layout, data_dir)
    if source is None and download:
        _download(layout, data_dir)
        source = _locate(layout, data_dir)
    if source is None:
        if not data_dir.is_dir():
            raise UsageError(f"--data-dir {data_dir}: no such directory")
        raise UsageError(
            f"{data_dir}: neither {layout.archive} nor {layout.folder}/ is there "
            f"(place one of them there, or pass --download)"
        )
    batches = _read_batches(layout, source)
    train_x, train_y = _stack([batches[name] for name in layout.train_files])
    test_x, test_y = _stack([batches[layout.test_file]])
    train_x, test_x = standardise_channels(train_x, test_x)
    return Dataset(
        name=layout.name,
        spec=ModelSpec(task="image", input_shape=(3, 32, 32), num_classes=layout.num_classes),
        train=TensorPair(train_x, train_y),
        test=TensorPair(test_x, test_y),
        difficulty_test=None,
    )


def _locate(layout: CifarLayout, data_dir: Path) -> Path | None:
    """The extracted folder or the tarball in ``data_dir`` (or ``data_dir`` itself), or None."""
    for folder in (data_dir / layout.folder, data_dir):
        if folder.name == layout.folder and folder.is_dir():
            return folder
    for archive in (data_dir / layout.archive, data_dir):
        if archive.name == layout.archive and archive.is_file():
            return archive
    return None


def _download(layout: CifarLayout, data_dir: Path) -> None:
    where = f"place {layout.archive} or its extracted folder {layout.folder}/ in {data_dir}"
    try:
        import torchvision.datasets
    # Not only ImportError: a torchvision whose compiled extension does not match the installed
    # torch (a CUDA build on a CPU host) fails to import with OSError or RuntimeError.
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(
            f"--download needs torchvision, which does not import here ({reason}); {where}"
        ) from None
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        getattr(torchvision.datasets, layout.torchvision_class)(
            root=str(data_dir), train=True, download=True
        )
    except Exception as error:  # network, disk and checksum failures all mean the same here
        raise UsageError(f"--download of {layout.name} failed ({error}); {where}") from None


def _read_batches(layout: CifarLayout, source: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Unpickle and check every batch the layout needs, from a folder or the tarball in place.

    Returns ``{file name: (uint8 images N×3072, int64 labels N)}``.
    """
    wanted = (*layout.train_files, layout.test_file)
    if source.is_dir():
        batches = {}
        for name in wanted:
            path = source / name
            if not path.is_file():
                raise UsageError(f"{path}: missing (the {layout.folder}/ folder is incomplete)")
            with path.open("rb") as stream:
                batches[name] = _parse_batch(layout, stream, str(path))
        return batches
    members = {f"{layout.folder}/{name}": name for name in wanted}
    batches = {}
    try:
        with tarfile.open(source, "r:gz") as archive:
            # One pass over the archive: seeking backwards in a gzip stream re-decompresses it.
            for member in archive:
                name = members.get(member.name.removeprefix("./"))
                stream = archive.extractfile(member) if name and member.isfile() else None
                if stream is not None:
                    batches[name] = _parse_batch(layout, stream, f"{source}:{member.name}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise UsageError(f"{source}: not a readable gzip tarball ({error})") from None
    missing = [member for member, name in members.items() if name not in batches]
    if missing:
        raise UsageError(f"{source}: has no member {missing[0]}")
    return batches


def _parse_batch(
    layout: CifarLayout, stream: IO[bytes], where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Unpickle one batch and check it holds uint8 N×3072 images and N labels in range."""
    try:
        # Read fully first so a short file fails here and not halfway through unpickling.
        batch = _ArrayUnpickler(io.BytesIO(stream.read()), encoding="bytes").load()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise UsageError(f"{where}: truncated or unreadable ({error})") from None
    # Unpickling garbage can raise nearly anything (ValueError, KeyError, MemoryError, ...).
    except Exception as error:
        raise UsageError(
            f"{where}: not a CIFAR batch pickle (truncated or corrupt: {error})"
        ) from None
    if not isinstance(batch, dict):
        kind = type(batch).__name__
        raise UsageError(f"{where}: not a CIFAR batch (a pickled {kind}, not a dict)")
    # The release was pickled by Python 2, so its keys load as bytes; accept str keys too.
    entries = {key.decode("latin-1") if isinstance(key, bytes) else key: value
               for key, value in batch.items()}
    for key in ("data", layout.label_key):
        if key not in entries:
            raise UsageError(f"{where}: no b'{key}' entry (is this a {layout.name} batch?)")
    data = np.asarray(entries["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise UsageError(
            f"{where}: b'data' is {data.dtype} of shape {data.shape}, expected uint8 N×{_PIXELS}"
        )
    labels = np.asarray(entries[layout.label_key])
    if labels.shape != data.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
        raise UsageError(
            f"{where}: b'{layout.label_key}' must hold {data.shape[0]} integer labels, "
            f"one per image, not {labels.dtype} of shape {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise UsageError(
            f"{where}: b'{layout.label_key}' has labels outside 0..{layout.num_classes - 1}"
        )
    return data, labels.astype(np.int64)


def _stack(batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack checked batches into float images in ``[0, 1]`` (N×3×32×32) and int64 labels."""
    pixels = torch.from_numpy(np.concatenate([data for data, _ in batches])).view(-1, 3, 32, 32)
    labels = torch.from_numpy(np.concatenate([labels for _, labels in batches]))
    return pixels.float().div_(255.0), labels
