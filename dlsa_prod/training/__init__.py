from .cascade import DLSATrainResult, llh_threshold, train_baseline, train_dlsa

__all__ = ["DLSATrainResult", "llh_threshold", "train_baseline", "train_dlsa"]
