"""Soft exit gates (``cascade.exit_gate: soft``; chosen on val in training/exit_gate.py): instead of a
hard cut at the threshold, each depth mixes its exit classifier's log-probabilities with those of
everything after it by a calibrated function of the log-likelihood,

    s_d = sigmoid(slope_d * (loglik_d - threshold_d) + offset_d)
    z_d = s_d * log_softmax(exit_d) + (1 - s_d) * z_{d+1},   z_{D+1} = log_softmax(regular)

Every sample runs every stage.  The exported graphs route by a hard threshold, so export refuses
such a run (models/exportable.py); what the graphs would need is in docs/benchmarks.md.
"""

from __future__ import annotations

import torch


def gate_weight(loglik: torch.Tensor, threshold, slope, offset) -> torch.Tensor:
    """s in (0, 1): the exit classifier's share of the log-probabilities."""
    return torch.sigmoid(slope * (loglik - threshold) + offset)


def soft_cascade(logp_exit: list[torch.Tensor], loglik: list[torch.Tensor], thresholds: list, gates: list,
                 logp_regular: torch.Tensor) -> torch.Tensor:
    """z_1 of the recursion above; gates: one (slope, offset) per depth, None = the hard cut."""
    z = logp_regular
    for d in reversed(range(len(logp_exit))):
        if gates[d] is None:
            s = (loglik[d] >= thresholds[d]).to(z.dtype)
        else:
            s = gate_weight(loglik[d], thresholds[d], *gates[d])
        z = s[:, None] * logp_exit[d] + (1 - s[:, None]) * z
    return z


@torch.no_grad()
def stage_outputs(model, x: torch.Tensor):
    """Every stage on every sample: (log-probs of each exit classifier, log-likelihoods, regular log-probs)."""
    logp, lls = [], []
    for stage in model.stages:
        ll, cluster = stage.route(x)
        logp.append(stage.classify(x, cluster).log_softmax(1))
        lls.append(ll)
    return logp, lls, model.regular(x).log_softmax(1)
