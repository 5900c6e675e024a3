"""Batch-norm flow layer (RealNVP): y = exp(g) * (x - mean) / sqrt(var + eps) + beta.

Batch statistics in training (running averages updated with ``momentum``), running ones in eval.
log|det| per sample = sum(g - 0.5 log(var + eps)), identical for every sample of a batch.

Data-parallel training sets ``dist`` (a ``dlsa_prod.distributed.DistContext``) for the duration
of training: the batch statistics are then those of the global batch over all ranks, summed
with a differentiable all-reduce (two-pass mean and unbiased variance, as in one process).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class BatchNormFlow(nn.Module):
    def __init__(self, size: int, momentum: float = 0.9, eps: float = 1e-5):
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.log_gamma = nn.Parameter(torch.zeros(size))
        self.beta = nn.Parameter(torch.zeros(size))
        self.register_buffer("running_mean", torch.zeros(size))
        self.register_buffer("running_var", torch.ones(size))
        self.dist = None  # set only while training data-parallel (see flow_trainer.synced_batch_norm)

    def _global_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = torch.full((1,), float(x.shape[0]), device=x.device, dtype=x.dtype)
        s = self.dist.sum_with_grad(torch.cat([x.sum(0), count]))
        n = s[-1].detach()
        mean = s[:-1] / n
        sq = self.dist.sum_with_grad(((x - mean) ** 2).sum(0))
        return mean, sq / (n - 1).clamp(min=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and self.dist is not None:
            mean, var = self._global_moments(x)
            with torch.no_grad():
                self.running_mean.mul_(self.momentum).add_(mean.detach() * (1 - self.momentum))
                self.running_var.mul_(self.momentum).add_(var.detach() * (1 - self.momentum))
        elif self.training and x.shape[0] > 1:
            mean = x.mean(0)
            var = x.var(0)
            with torch.no_grad():
                self.running_mean.mul_(self.momentum).add_(mean.detach() * (1 - self.momentum))
                self.running_var.mul_(self.momentum).add_(var.detach() * (1 - self.momentum))
        else:
            mean, var = self.running_mean, self.running_var
        y = torch.exp(self.log_gamma) * (x - mean) / torch.sqrt(var + self.eps) + self.beta
        log_det = (self.log_gamma - 0.5 * torch.log(var + self.eps)).sum()
        return y, log_det.expand(x.shape[0])

    @torch.no_grad()
    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        mean, var = self.running_mean, self.running_var
        return (y - self.beta) * torch.exp(-self.log_gamma) * torch.sqrt(var + self.eps) + mean
