"""scikit-learn's bundled 8x8 digits: the one loader behind both digits sources.

* ``data.source: digits`` (quickstart) uses flattened pixels scaled to [0, 1] as features (dim 64);
* ``data.images.format: digits`` uses the images as uint8 (8, 8, 1) for a backbone.

Both take the same balanced test split (``test_per_class`` per class, seeded); the features
source draws its long-tailed train split from the rest here, the images source via
``data.images.longtail``.
"""

from __future__ import annotations

import numpy as np

from .feature_set import FeatureSet
from .longtail import draw_longtail, longtail_counts

NUM_CLASSES = 10


def load_digits_pixels() -> tuple[np.ndarray, np.ndarray]:
    """Pixel values 0..16 as float64 (N, 8, 8) and int64 labels (N,)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target.astype(np.int64)


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 8, 8, 1) scaled to 0..255, and labels."""
    pixels, labels = load_digits_pixels()
    return np.round(pixels * (255.0 / 16.0)).astype(np.uint8)[..., None], labels


def balanced_test_split(labels: np.ndarray, test_per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(test indices: ``test_per_class`` random samples of each class, the remaining indices)."""
    test_idx = draw_longtail(labels, np.full(NUM_CLASSES, test_per_class), rng)
    return test_idx, np.setdiff1d(np.arange(labels.size), test_idx)


def digits_longtail(imbalance_ratio: float, test_per_class: int, profile: str, seed: int) -> tuple[FeatureSet, FeatureSet]:
    """(long-tailed train, balanced test) feature sets of flattened pixels in [0, 1]."""
    pixels, y = load_digits_pixels()
    x = (pixels.reshape(len(y), -1) / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    test_idx, rest = balanced_test_split(y, test_per_class, rng)
    n_max = int(np.bincount(y[rest], minlength=NUM_CLASSES).min())
    # the most frequent class gets as many as every class can give
    counts = longtail_counts(n_max, NUM_CLASSES, imbalance_ratio, profile)
    order = rng.permutation(NUM_CLASSES)  # which digit is the head class is seeded, not fixed
    per_class = np.empty(NUM_CLASSES, dtype=np.int64)
    per_class[order] = counts
    train_idx = rest[draw_longtail(y[rest], per_class, rng)]
    return (FeatureSet(x[train_idx], y[train_idx], "digits (long-tailed train)"),
            FeatureSet(x[test_idx], y[test_idx], "digits (balanced test)"))
