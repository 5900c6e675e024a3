"""A ~1k-sample training set from a benchmark's stage-1 features: every class's train samples
subsampled by the same fraction (seeded, at least `minimum` per class); val and test kept whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlsa_prod.data import read_features, write_features

SMALL = {"fmnist_lt_r100_1k": ("fmnist_lt_r100", 0.072, 4)}  # 14,686 -> 1,062 train samples


def small_features(name: str, features_root: Path, ensure) -> Path:
    """bench_out/features/<name>/feature_{train,val,test}.h5 for a SMALL entry (ensure: stage 1 of its source)."""
    source, fraction, minimum = SMALL[name]
    out = features_root / name
    if all((out / f"feature_{s}.h5").is_file() for s in ("train", "val", "test")):
        return out
    src = ensure(source, features_root)
    train = read_features(src / "feature_train.h5")
    rng = np.random.default_rng(1087)
    keep = []
    for c in np.unique(train.labels):
        idx = np.flatnonzero(train.labels == c)
        keep.append(rng.choice(idx, max(minimum, round(fraction * idx.size)), replace=False))
    out.mkdir(parents=True, exist_ok=True)
    write_features(out / "feature_train.h5", train.subset(np.sort(np.concatenate(keep)), f"{name} train"))
    for split in ("val", "test"):
        write_features(out / f"feature_{split}.h5", read_features(src / f"feature_{split}.h5"))
    return out
