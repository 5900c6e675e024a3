"""Carving a class-balanced validation split from a long-tailed train split."""

from __future__ import annotations

import numpy as np

from .feature_set import FeatureSet


def carve_val(train: FeatureSet, num_classes: int, per_class: int, max_fraction: float, seed: int) -> tuple[FeatureSet, FeatureSet]:
    """Take min(per_class, floor(max_fraction * n_c)) samples of each class c for val.

    Every class keeps at least one training sample, so the val split is as balanced as the
    tail allows.  Returns (train_rest, val).
    """
    rng = np.random.default_rng(seed)
    val_idx = []
    for c in range(num_classes):
        idx = np.flatnonzero(train.labels == c)
        take = min(per_class, int(np.floor(max_fraction * idx.size)), max(idx.size - 1, 0))
        if take > 0:
            val_idx.append(rng.choice(idx, size=take, replace=False))
    val_idx = np.sort(np.concatenate(val_idx)) if val_idx else np.zeros(0, dtype=np.int64)
    keep = np.ones(len(train), dtype=bool)
    keep[val_idx] = False
    return (train.subset(np.flatnonzero(keep), train.source),
            train.subset(val_idx, f"{train.source} (carved val)"))
