"""Resolve a config's ``data`` section into validated train / val / test feature sets."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .classes import check_train_classes, num_classes_of
from .digits import digits_longtail
from .feature_files import RESEARCH_FILES, read_features
from .feature_set import FeatureSet
from .splits import carve_val


@dataclass
class Splits:
    train: FeatureSet
    val: FeatureSet
    test: FeatureSet
    num_classes: int

    @property
    def dim(self) -> int:
        return self.train.dim

    def train_counts(self) -> np.ndarray:
        return self.train.class_counts(self.num_classes)


def data_digest(splits: Splits) -> str:
    """sha256 of the train and val features and labels: everything training reads of the data (a
    resumed tune must have seen the same data; a cached baseline was trained on it)."""
    h = hashlib.sha256()
    for fs in (splits.train, splits.val):
        h.update(np.ascontiguousarray(fs.features).tobytes())
        h.update(np.ascontiguousarray(fs.labels).tobytes())
    return h.hexdigest()


def _paths(cfg: DataConfig) -> tuple[Path, Path | None, Path]:
    train, val, test = cfg.train, cfg.val, cfg.test
    if cfg.feat_dir is not None:
        d = Path(cfg.feat_dir)
        if not d.is_dir():
            raise DataError(f"{d}: data.feat_dir is not a directory")
        train = train or d / RESEARCH_FILES["train"]
        test = test or d / RESEARCH_FILES["test"]
        if val is None and (d / RESEARCH_FILES["val"]).is_file():
            val = d / RESEARCH_FILES["val"]
    return Path(train), (Path(val) if val else None), Path(test)


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    if cfg.source == "digits":
        train, test = digits_longtail(cfg.digits.imbalance_ratio, cfg.digits.test_per_class,
                                      cfg.digits.profile, seed)
        val = None
    else:
        train_p, val_p, test_p = _paths(cfg)
        train = read_features(train_p)
        test = read_features(test_p, dim=train.dim)
        val = read_features(val_p, dim=train.dim) if val_p else None
    num_classes = num_classes_of(train, [s for s in (val, test) if s is not None], cfg.num_classes)
    check_train_classes(train.class_counts(num_classes), train.source, [s for s in (val, test) if s is not None])
    if val is None:
        train, val = carve_val(train, num_classes, cfg.val_per_class, cfg.val_max_fraction, seed)
    return Splits(train, val, test, num_classes)
