"""The flow filter's three losses and the classifiers' balanced softmax.

likelihood: -lambda_lh * mean_b(w_{y_b} * log p(x_b)), w_c = (n_max / n_c)^q normalised to sum 1.
purity:     lambda_purity * mean_b sum_k softmax(logp_pos)_k * log_softmax(logp_neg)_k
            (positive posterior detached); minimising it pushes each negative sample out of
            the positive sample's clusters.
balance:    lambda_balance * (sum_k p_k log p_k + log K) with p the bias-corrected EMA of the
            mean cluster posterior of the positive samples: KL(p || uniform).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def class_weights(counts: np.ndarray | torch.Tensor, q: float) -> torch.Tensor:
    """(n_max / n_c)^q over classes with samples, normalised to sum 1; 0 for empty classes."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    present = counts > 0
    w = torch.zeros_like(counts)
    w[present] = (counts.max() / counts[present]) ** q
    return (w / w.sum()).to(torch.float32)


def likelihood_loss(loglik: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                    denom: int | None = None) -> torch.Tensor:
    """denom: the batch size to average over (default: these rows; data-parallel: the global batch)."""
    if denom is None:
        return -(weights[labels] * loglik).mean()
    return -(weights[labels] * loglik).sum() / denom


def purity_loss(log_probs_pos: torch.Tensor, log_probs_neg: torch.Tensor, freeze_pos: bool = True,
                denom: int | None = None) -> torch.Tensor:
    p_pos = torch.softmax(log_probs_pos, dim=1)
    if freeze_pos:
        p_pos = p_pos.detach()
    log_q_neg = torch.log_softmax(log_probs_neg, dim=1)
    # masked (-inf) components have p_pos = 0; avoid 0 * -inf
    per_pair = torch.where(p_pos > 0, p_pos * log_q_neg, torch.zeros_like(log_q_neg)).sum(1)
    return per_pair.mean() if denom is None else per_pair.sum() / denom


class BalanceLoss:
    """KL of the (EMA-smoothed, bias-corrected) mean cluster posterior to uniform."""

    def __init__(self, num_cluster: int, momentum: float):
        self.momentum = momentum
        self.num_cluster = num_cluster
        self.state: torch.Tensor | None = None
        self.steps = 0

    def __call__(self, log_probs_pos: torch.Tensor, denom: int | None = None, reduce=None) -> torch.Tensor:
        """denom: rows of the (global) batch; reduce: sums the posterior over data-parallel ranks."""
        post = torch.softmax(log_probs_pos, dim=1)
        if denom is None and reduce is None:
            p_bar = post.mean(0) + 1e-7
        else:
            p_sum = post.sum(0)
            p_bar = (reduce(p_sum) if reduce is not None else p_sum) / (denom or post.shape[0]) + 1e-7
        m = self.momentum
        prev = self.state if self.state is not None else torch.zeros_like(p_bar)
        ema = m * prev + (1 - m) * p_bar
        self.state = ema.detach()
        self.steps += 1
        p = ema / (1 - m ** self.steps)
        return (p * torch.log(p)).sum() + math.log(self.num_cluster)


def balanced_softmax_loss(logits: torch.Tensor, labels: torch.Tensor, log_prior: torch.Tensor,
                          label_smoothing: float = 0.0, denom: int | None = None) -> torch.Tensor:
    """Cross-entropy on logits + log class prior (training only; plain argmax at test)."""
    return classification_loss(logits + log_prior, labels, label_smoothing, denom)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0,
                        denom: int | None = None) -> torch.Tensor:
    """Cross-entropy averaged over these rows, or summed and divided by denom (the global batch)."""
    if denom is None:
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="sum") / denom
