"""Masked autoregressive flow: MADE blocks, each followed by a batch-norm flow layer.

The input order is reversed between blocks (sequential) or redrawn (random).  Per-sample
log|det| terms are summed in log space.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .batchnorm_flow import BatchNormFlow
from .made import MADE


class MAF(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, n_blocks: int = 2, n_hidden: int = 1,
                 input_order: str = "sequential", batch_norm: bool = True, log_scale_clamp: float = 10.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        degrees = torch.arange(input_size)
        for _ in range(n_blocks):
            if input_order == "random":
                degrees = torch.randperm(input_size, generator=generator)
            layers.append(MADE(input_size, hidden_size, n_hidden, degrees, input_order, log_scale_clamp, generator))
            if input_order == "sequential":
                degrees = degrees.flip(0)
            if batch_norm:
                layers.append(BatchNormFlow(input_size))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            log_det = log_det + ld
        return x, log_det

    @torch.no_grad()
    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            u = layer.inverse(u)
        return u
