"""Parity gate: ONNX Runtime outputs of a bundle against the PyTorch DLSAModel.

Predictions and exit depths must agree on every sample whose log-likelihood is not within
float tolerance of a threshold at a depth it reached (those may legitimately route either
way); logits of the agreeing samples must match to 1e-4 relative (|a - b| <= 1e-4 max(|b|, 1)).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DLSAError
from ..models import DLSAModel

LOGIT_RTOL = 1e-4


class ParityError(DLSAError):
    """The exported graphs disagree with the PyTorch model."""


def borderline(loglik: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Samples with a reached depth's log-likelihood within float tolerance of its threshold."""
    tol = 1e-3 + 1e-5 * np.abs(thresholds)
    near = np.abs(loglik - thresholds[None, :]) <= tol[None, :]
    return np.nan_to_num(near, nan=False).any(1) if near.size else np.zeros(len(loglik), bool)


@torch.no_grad()
def reference(model: DLSAModel, x: np.ndarray) -> dict:
    out = model(torch.from_numpy(x))
    return {"logits": out.logits.numpy(), "pred": out.pred.numpy(), "exit": out.exit_depth.numpy(),
            "loglik": out.loglik.numpy()}


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
