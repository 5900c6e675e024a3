"""Flow filter: MAF latent + Gaussian mixture with K fixed centres (identity covariance, uniform weights)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..config import FlowModelConfig
from ..ops import GMMOutput, gmm_loglik
from .maf import MAF


class FlowGMM(nn.Module):
    def __init__(self, dim: int, num_cluster: int, center_std: float, hidden_size: int | None = None,
                 n_blocks: int = 2, n_hidden: int = 1, input_order: str = "sequential", batch_norm: bool = True,
                 log_scale_clamp: float = 10.0, generator: torch.Generator | None = None):
        super().__init__()
        self.flow = MAF(dim, hidden_size or dim, n_blocks, n_hidden, input_order, batch_norm, log_scale_clamp, generator)
        # fixed buffer, never trained (as in the paper)
        self.register_buffer("means", torch.randn(num_cluster, dim, generator=generator) * center_std)
        self.gmm_backend = "auto"  # see dlsa_prod.ops.gmm_loglik

    @classmethod
    def from_config(cls, dim: int, cfg: FlowModelConfig, generator: torch.Generator | None = None) -> "FlowGMM":
        return cls(dim, cfg.num_cluster, cfg.gmm_center_std, cfg.hidden_size, cfg.n_blocks, cfg.n_hidden,
                   cfg.input_order, cfg.batch_norm, cfg.log_scale_clamp, generator)

    @property
    def num_cluster(self) -> int:
        return int(self.means.shape[0])

    def forward(self, x: torch.Tensor, cluster_mask: Optional[torch.Tensor] = None,
                return_log_probs: bool = False) -> GMMOutput:
        u, log_det = self.flow(x)
        return gmm_loglik(u, self.means, log_det, cluster_mask, return_log_probs, backend=self.gmm_backend)
