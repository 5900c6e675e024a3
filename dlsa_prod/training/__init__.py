from .baselines import BASELINE_NAMES, Baseline, dropped_baselines, train_baseline, train_baselines
from .cascade import DLSATrainResult, llh_threshold, train_dlsa, uses_base

__all__ = ["BASELINE_NAMES", "Baseline", "DLSATrainResult", "dropped_baselines", "llh_threshold", "train_baseline", "train_baselines",
           "train_dlsa", "uses_base"]
