"""Read IDX files (MNIST / Fashion-MNIST format), plain or gzip-compressed."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..errors import DataError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: IDX file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable IDX file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX payload has {len(raw) - header} bytes, header says {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def read_idx_split(directory: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, H, W), labels int64) for split 'train' or 't10k' of an MNIST-style directory."""
    directory = Path(directory)
    found = {}
    for kind, stem in (("images", f"{split}-images-idx3-ubyte"), ("labels", f"{split}-labels-idx1-ubyte")):
        for name in (stem, stem + ".gz"):
            if (directory / name).is_file():
                found[kind] = directory / name
                break
        else:
            raise DataError(f"{directory}: no {stem}[.gz] file")
    images, labels = read_idx(found["images"]), read_idx(found["labels"])
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{directory}: {images.shape[0]} images but {labels.shape[0]} labels in split {split!r}")
    return images, labels.astype(np.int64)
