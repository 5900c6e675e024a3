from .baselines import BASELINE_NAMES, Baseline, train_baseline, train_baselines
from .cascade import DLSATrainResult, llh_threshold, train_dlsa, uses_base

__all__ = ["BASELINE_NAMES", "Baseline", "DLSATrainResult", "llh_threshold", "train_baseline", "train_baselines",
           "train_dlsa", "uses_base"]
