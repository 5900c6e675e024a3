"""In-memory feature set: float32 features (N, D) and int64 labels (N,), validated once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError


@dataclass
class FeatureSet:
    features: np.ndarray
    labels: np.ndarray
    source: str = "<memory>"

    def __post_init__(self):
        self.features = np.ascontiguousarray(self.features, dtype=np.float32)
        self.labels = np.ascontiguousarray(self.labels).astype(np.int64, copy=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def subset(self, index: np.ndarray, source: str | None = None) -> "FeatureSet":
        return FeatureSet(self.features[index], self.labels[index], source or self.source)

    def validate(self, num_classes: int | None = None, dim: int | None = None) -> "FeatureSet":
        """Raise DataError naming the source on any problem; return self."""
        f, y, src = self.features, self.labels, self.source
        if f.ndim != 2:
            raise DataError(f"{src}: features must be 2-D (samples, dim), got shape {f.shape}")
        if y.ndim != 1:
            raise DataError(f"{src}: labels must be 1-D, got shape {y.shape}")
        if f.shape[0] == 0:
            raise DataError(f"{src}: no samples")
        if f.shape[0] != y.shape[0]:
            raise DataError(f"{src}: {f.shape[0]} feature rows but {y.shape[0]} labels")
        if dim is not None and f.shape[1] != dim:
            raise DataError(f"{src}: features have dim {f.shape[1]}, expected {dim} (as in the train split)")
        bad = ~np.isfinite(f)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DataError(f"{src}: features contain NaN/inf ({int(bad.sum())} values, first in row {row})")
        if y.min() < 0 or (num_classes is not None and y.max() >= num_classes):
            hi = "C-1" if num_classes is None else str(num_classes - 1)
            raise DataError(f"{src}: labels must lie in 0..{hi}, found {int(y.min())}..{int(y.max())}")
        return self

    def class_counts(self, num_classes: int) -> np.ndarray:
        if len(self) and (self.labels.min() < 0 or self.labels.max() >= num_classes):
            raise DataError(f"{self.source}: labels must lie in 0..{num_classes - 1}, "
                            f"found {int(self.labels.min())}..{int(self.labels.max())}")
        return np.bincount(self.labels, minlength=num_classes).astype(np.int64)
