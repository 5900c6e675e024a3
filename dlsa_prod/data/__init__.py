"""Feature data: files, the quickstart digits source, long-tail draws and splits."""

from .feature_files import read_features, write_features
from .feature_set import FeatureSet
from .loading import Splits, data_digest, load_splits

__all__ = ["FeatureSet", "Splits", "data_digest", "load_splits", "read_features", "write_features"]
