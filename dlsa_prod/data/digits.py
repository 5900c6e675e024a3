"""Quickstart data: a long-tailed split of scikit-learn's bundled 8x8 digits images.

Features are the flattened pixels scaled to [0, 1] (dim 64).  The test split is balanced
(``test_per_class`` per class); train is drawn long-tailed from the rest.
"""

from __future__ import annotations

import numpy as np

from .feature_set import FeatureSet
from .longtail import draw_longtail, longtail_counts


def digits_longtail(imbalance_ratio: float, test_per_class: int, profile: str, seed: int) -> tuple[FeatureSet, FeatureSet]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test_idx = draw_longtail(y, np.full(10, test_per_class), rng)
    rest = np.setdiff1d(np.arange(y.size), test_idx)
    n_max = int(np.bincount(y[rest], minlength=10).min())
    # the most frequent class gets as many as every class can give
    counts = longtail_counts(n_max, 10, imbalance_ratio, profile)
    order = rng.permutation(10)  # which digit is the head class is seeded, not fixed
    per_class = np.empty(10, dtype=np.int64)
    per_class[order] = counts
    train_idx = rest[draw_longtail(y[rest], per_class, rng)]
    return (FeatureSet(x[train_idx], y[train_idx], "digits (long-tailed train)"),
            FeatureSet(x[test_idx], y[test_idx], "digits (balanced test)"))
