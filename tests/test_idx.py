import gzip

import numpy as np
import pytest

from dlsa_prod.data.idx import read_idx, read_idx_split
from dlsa_prod.errors import DataError


def _idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C}[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def test_read_idx_plain_and_gzip(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, 1], dtype=np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(images))
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(_idx_bytes(labels))
    x, y = read_idx_split(tmp_path, "train")
    np.testing.assert_array_equal(x, images)
    assert y.tolist() == [7, 1] and y.dtype == np.int64
    ints = np.array([[1, -2], [300, 4]], dtype=np.int32)
    (tmp_path / "i.idx").write_bytes(_idx_bytes(ints))
    np.testing.assert_array_equal(read_idx(tmp_path / "i.idx"), ints)


def test_bad_idx_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="bad: not an IDX file"):
        read_idx(tmp_path / "bad")
    good = _idx_bytes(np.zeros((2, 2), dtype=np.uint8))
    (tmp_path / "short").write_bytes(good[:-1])
    with pytest.raises(DataError, match="short: IDX payload has 3 bytes, header says 4"):
        read_idx(tmp_path / "short")
    with pytest.raises(DataError, match="no t10k-images-idx3-ubyte"):
        read_idx_split(tmp_path, "t10k")
