"""Read and write feature files: HDF5 (datasets ``features``, ``labels``; the research layout) and .npz."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from .feature_set import FeatureSet

HDF5_SUFFIXES = (".h5", ".hdf5")
NPZ_SUFFIXES = (".npz",)
# research layout inside a feature directory
RESEARCH_FILES = {"train": "feature_train.h5", "val": "feature_val.h5", "test": "feature_test.h5"}


def _read_hdf5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            missing = [k for k in ("features", "labels") if k not in fh]
            if missing:
                raise DataError(f"{path}: missing dataset(s) {', '.join(missing)} (found: {', '.join(fh.keys()) or 'none'})")
            return np.asarray(fh["features"]), np.asarray(fh["labels"])
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from None


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a readable .npz file (not a zip archive: truncated, corrupted or another format)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("features", "labels") if k not in npz.files]
            if missing:
                raise DataError(f"{path}: missing array(s) {', '.join(missing)} (found: {', '.join(npz.files) or 'none'})")
            return npz["features"], npz["labels"]
    except ValueError as exc:
        if "pickle" in str(exc):
            raise DataError(f"{path}: holds object arrays, which are not loaded (they could run code); "
                            f"save plain numeric arrays") from None
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None


def read_features(path: str | Path, num_classes: int | None = None, dim: int | None = None) -> FeatureSet:
    """Load and validate one feature file; the format follows the file suffix."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: feature file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    if suffix in HDF5_SUFFIXES:
        feats, labels = _read_hdf5(path)
    elif suffix in NPZ_SUFFIXES:
        feats, labels = _read_npz(path)
    else:
        raise DataError(f"{path}: unknown feature file type {suffix!r} (use .h5, .hdf5 or .npz)")
    if not np.issubdtype(labels.dtype, np.integer):
        if (np.issubdtype(labels.dtype, np.floating) and np.all(np.isfinite(labels))
                and np.all(np.mod(labels, 1) == 0) and np.all(np.abs(labels) < 2**53)):
            labels = labels.astype(np.int64)
        else:
            raise DataError(f"{path}: labels must be integers, got dtype {labels.dtype}")
    if not np.issubdtype(feats.dtype, np.number):
        raise DataError(f"{path}: features must be numeric, got dtype {feats.dtype}")
    return FeatureSet(feats, labels, str(path)).validate(num_classes, dim)


def write_features(path: str | Path, fs: FeatureSet) -> Path:
    """Write atomically (temp file in the same directory, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    suffix = path.suffix.lower()
    try:
        if suffix in HDF5_SUFFIXES:
            import h5py

            with h5py.File(tmp, "w") as fh:
                fh.create_dataset("features", data=fs.features)
                fh.create_dataset("labels", data=fs.labels)
        elif suffix in NPZ_SUFFIXES:
            with open(tmp, "wb") as fh:
                np.savez(fh, features=fs.features, labels=fs.labels)
        else:
            raise DataError(f"{path}: unknown feature file type {suffix!r} (use .h5, .hdf5 or .npz)")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
