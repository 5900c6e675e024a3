"""Long-tailed class-count profiles and draws from a balanced source (CIFAR-LT style)."""

from __future__ import annotations

import numpy as np


def longtail_counts(n_max: int, num_classes: int, imbalance_ratio: float, profile: str = "exponential") -> np.ndarray:
    """Per-class counts from n_max (class 0) down to n_max / imbalance_ratio (last class)."""
    if num_classes == 1:
        return np.array([n_max], dtype=np.int64)
    i = np.arange(num_classes, dtype=np.float64)
    if profile == "exponential":
        counts = n_max * imbalance_ratio ** (-i / (num_classes - 1))
    elif profile == "pareto":
        # power law n_i = n_max * (1 + a i)^-1 with a chosen so the last class hits n_max / ratio
        a = (imbalance_ratio - 1.0) / (num_classes - 1)
        counts = n_max / (1.0 + a * i)
    else:
        raise ValueError(f"unknown long-tail profile {profile!r} (use exponential or pareto)")
    return np.maximum(1, np.floor(counts + 1e-9)).astype(np.int64)


def draw_longtail(labels: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices taking counts[c] random samples of each class c (sorted)."""
    picked = []
    for c, n in enumerate(counts):
        idx = np.flatnonzero(labels == c)
        if n > idx.size:
            raise ValueError(f"class {c} has {idx.size} samples, {n} requested")
        picked.append(rng.choice(idx, size=int(n), replace=False))
    return np.sort(np.concatenate(picked))
