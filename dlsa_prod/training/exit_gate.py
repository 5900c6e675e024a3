"""Choose the soft exit gates of ``cascade.exit_gate: soft`` (models/soft_gate.py) on val.

(slope, offset) of each depth come from a grid, after every classifier is fixed, the deepest depth
first (the earlier ones at the hard cut meanwhile): the most val samples right, ties broken by the
class-balanced val log-loss (a continuous score, less noisy than a count on a small val split).
The slope grid is in units of the val log-likelihood's std, so it means the same for every flow;
its largest entry is practically the hard cut, where an offset moves the threshold.
"""

from __future__ import annotations

import logging

import torch

from ..models.soft_gate import stage_outputs
from ..routing import soft_cascade
from ..selection import val_scores

log = logging.getLogger(__name__)

SLOPE_GRID = (0.5, 1.0, 2.0, 4.0, 8.0, 64.0)  # per std of the val log-likelihood; 64 ~ hard cut
OFFSET_GRID = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)


def choose_gates(model, x_val: torch.Tensor, y_val: torch.Tensor) -> list[tuple[float, float]]:
    """(slope, offset) per depth in log-likelihood units, chosen on val (module docstring)."""
    logp, lls, clusters, reg = stage_outputs(model, x_val)
    thresholds = [s.threshold for s in model.stages]
    gates: list = [None] * len(logp)
    labels = y_val.cpu().numpy()
    for d in reversed(range(len(logp))):
        scale = float(lls[d].std().clamp(min=1e-6)) if len(lls[d]) > 1 else 1.0
        best = None
        for a in SLOPE_GRID:
            for b in OFFSET_GRID:
                trial = gates[:d] + [(a / scale, b)] + gates[d + 1:]
                z = soft_cascade(logp, lls, clusters, thresholds, trial, reg)
                loss = val_scores(z.cpu().numpy(), labels, z.shape[1])["balanced_log_loss"]
                key = (int((z.argmax(1) == y_val).sum()), -loss)
                if best is None or key > best[0]:
                    best = (key, a, b)
        (right, loss), a, b = best
        gates[d] = (a / scale, b)
        log.info("depth %d: soft exit gate slope %.2f / std, offset %.2f chosen on val (%d/%d right, "
                 "balanced log-loss %.4f)", d + 1, a, b, right, len(y_val), -loss)
    return gates
