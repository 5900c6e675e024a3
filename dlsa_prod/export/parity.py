"""Parity gate: ONNX Runtime outputs of a bundle against the PyTorch DLSAModel.

Predictions and exit depths must agree on every sample whose log-likelihood is not within
float tolerance of a threshold at a depth it reached (those may legitimately route either
way); logits of the agreeing samples must match to 1e-4 relative (|a - b| <= 1e-4 max(|b|, 1)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DLSAError
from ..models import DLSAModel

LOGIT_RTOL = 1e-4
# the parity inputs, one definition: validation samples plus random draws
MAX_VALIDATION = 1024  # validation features (and samples.npy for bench)
VALIDATION_IMAGES = 256  # validation images run through the graphs (the backbone makes them costly)
RANDOM_FEATURES = 64  # features drawn with the validation set's per-dimension mean and std
RANDOM_IMAGES = 32  # uniformly random uint8 images


class ParityError(DLSAError):
    """The exported graphs disagree with the PyTorch model."""


def borderline(loglik: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Samples with a reached depth's log-likelihood within float tolerance of its threshold."""
    tol = 1e-3 + 1e-5 * np.abs(thresholds)
    near = np.abs(loglik - thresholds[None, :]) <= tol[None, :]
    return np.nan_to_num(near, nan=False).any(1) if near.size else np.zeros(len(loglik), bool)


@dataclass
class ParityInputs:
    x: np.ndarray  # graph-ready float32: features, or normalised NCHW images
    n_random: int  # the last n_random rows are random draws
    labels: np.ndarray | None = None  # labels of the validation rows, when known

    @property
    def n_validation(self) -> int:
        return int(len(self.x) - self.n_random)

    def counts(self) -> dict:
        return {"validation": self.n_validation, "random": int(self.n_random)}


def feature_inputs(val: np.ndarray, labels: np.ndarray | None = None, seed: int = 0) -> ParityInputs:
    """Up to MAX_VALIDATION validation features plus RANDOM_FEATURES draws with their per-dimension mean and std."""
    val = np.asarray(val, np.float32)[:MAX_VALIDATION]
    rng = np.random.default_rng(seed)
    mean, std = val.mean(0), val.std(0) + 1e-6
    rand = (mean + std * rng.standard_normal((RANDOM_FEATURES, val.shape[1]))).astype(np.float32)
    return ParityInputs(np.concatenate([val, rand]), RANDOM_FEATURES,
                        None if labels is None else np.asarray(labels)[:MAX_VALIDATION])


@torch.no_grad()
def reference(model, x: np.ndarray) -> dict:
    """Outputs of the PyTorch model: a DLSAModel, or a plain classifier (every sample exits at 1)."""
    t = torch.from_numpy(x)
    if isinstance(model, DLSAModel):
        out = model(t)
        return {"logits": out.logits.numpy(), "pred": out.pred.numpy(), "exit": out.exit_depth.numpy(),
                "loglik": out.loglik.numpy()}
    logits = model(t).numpy()
    return {"logits": logits, "pred": logits.argmax(1), "exit": np.ones(len(x), np.int64),
            "loglik": np.zeros((len(x), 0), np.float32)}


def compare(ref: dict, logits: np.ndarray, exit_depth: np.ndarray, thresholds: np.ndarray) -> dict:
    skip = borderline(ref["loglik"], thresholds)
    keep = ~skip
    pred = logits.argmax(1)
    pred_ok = pred[keep] == ref["pred"][keep]
    exit_ok = exit_depth[keep] == ref["exit"][keep]
    rel = np.abs(logits[keep] - ref["logits"][keep]) / np.maximum(np.abs(ref["logits"][keep]), 1.0)
    return {"samples": int(len(pred)), "borderline": int(skip.sum()),
            "pred_agreement": float(pred_ok.mean()) if keep.any() else 1.0,
            "exit_agreement": float(exit_ok.mean()) if keep.any() else 1.0,
            "max_logit_rel_err": float(rel.max()) if rel.size else 0.0}


def passed(report: dict) -> bool:
    return (report["pred_agreement"] == 1.0 and report["exit_agreement"] == 1.0
            and report["max_logit_rel_err"] <= LOGIT_RTOL)
