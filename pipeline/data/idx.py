"""The IDX file format of MNIST and Fashion-MNIST: one typed, big-endian n-dimensional array.

Layout: two zero bytes, a type code, the number of dimensions ``n``, then ``n`` big-endian
uint32 sizes, then the values in row-major order (big-endian for multi-byte types). The files
are usually distributed gzipped (``*-ubyte.gz``); :func:`read_idx` accepts either form and tells
them apart by the gzip magic bytes, not by the name.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from pipeline.errors import UsageError

__all__ = ["read_idx"]

_GZIP_MAGIC = b"\x1f\x8b"

_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (plain or gzipped) into an array of its stored shape and type.

    Raises:
        UsageError: naming ``path``, for an unreadable or truncated file, a header that is not
            IDX, or a payload whose length does not match the header's sizes.
    """
    try:
        payload = path.read_bytes()
        if payload.startswith(_GZIP_MAGIC):
            payload = gzip.decompress(payload)
    except (OSError, EOFError, zlib.error) as error:
        raise UsageError(f"{path}: unreadable or truncated ({error})") from None
    if len(payload) < 4 or payload[:2] != b"\x00\x00" or payload[2] not in _TYPES:
        raise UsageError(f"{path}: not an IDX file (its header is {payload[:4].hex() or 'empty'})")
    dtype, ndim = _TYPES[payload[2]], payload[3]
    header_end = 4 + 4 * ndim
    if len(payload) < header_end:
        raise UsageError(f"{path}: truncated IDX header ({len(payload)} bytes)")
    shape = tuple(int(size) for size in np.frombuffer(payload, ">u4", ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(payload) - header_end != expected:
        raise UsageError(
            f"{path}: holds {len(payload) - header_end} bytes of data, but its header "
            f"announces {'×'.join(map(str, shape))} {dtype.name} values ({expected} bytes); "
            f"truncated or corrupt"
        )
    values = np.frombuffer(payload, dtype, offset=header_end).reshape(shape)
    return values.astype(dtype.newbyteorder("="), copy=False)
