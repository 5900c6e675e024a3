"""Soft exit gates (``cascade.exit_gate: soft``; chosen on val in training/exit_gate.py): instead of a
hard cut at the threshold, each depth mixes its exit classifier's log-probabilities with those of
everything after it by a calibrated function of the log-likelihood,

    s_d = sigmoid(slope_d * (loglik_d - threshold_d) + offset_d)
    z_d = s_d * log_softmax(exit_d) + (1 - s_d) * z_{d+1},   z_{D+1} = log_softmax(regular)

The recursion is ``routing.soft_cascade`` (the routing rule's soft form); every sample runs every
stage.  The exported graphs route by a hard threshold, so export refuses
such a run (models/exportable.py); what the graphs would need is in docs/benchmarks.md.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def stage_outputs(model, x: torch.Tensor):
    """Every stage on every sample: (log-probs of each exit classifier, log-likelihoods, clusters,
    regular log-probs)."""
    logp, lls, clusters = [], [], []
    for stage in model.stages:
        ll, cluster = stage.route(x)
        logp.append(stage.classify(x, cluster).log_softmax(1))
        lls.append(ll)
        clusters.append(cluster)
    return logp, lls, clusters, model.regular(x).log_softmax(1)
