"""Flow filter: MAF latent + Gaussian mixture with K fixed centres (identity covariance, uniform weights)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import FlowModelConfig
from ..ops import GMM_BACKENDS, GMMOutput, gmm_loglik
from .maf import MAF


class FlowGMM(nn.Module):
    def __init__(self, dim: int, num_cluster: int, center_std: float, hidden_size: int | None = None,
                 n_blocks: int = 2, n_hidden: int = 1, input_order: str = "sequential", batch_norm: bool = True,
                 log_scale_clamp: float = 10.0, generator: torch.Generator | None = None,
                 gmm_backend: str = "auto"):
        super().__init__()
        if gmm_backend not in GMM_BACKENDS:
            raise ValueError(f"gmm_backend must be one of {', '.join(GMM_BACKENDS)}, got {gmm_backend!r}")
        self.flow = MAF(dim, hidden_size or dim, n_blocks, n_hidden, input_order, batch_norm, log_scale_clamp, generator)
        # fixed buffer, never trained (as in the paper)
        self.register_buffer("means", torch.randn(num_cluster, dim, generator=generator) * center_std)
        self._gmm_backend = gmm_backend  # gmflow.model.gmm_backend; see dlsa_prod.ops.gmm_loglik

    @classmethod
    def from_config(cls, dim: int, cfg: FlowModelConfig, generator: torch.Generator | None = None) -> "FlowGMM":
        return cls(dim, cfg.num_cluster, cfg.gmm_center_std, cfg.hidden_size, cfg.n_blocks, cfg.n_hidden,
                   cfg.input_order, cfg.batch_norm, cfg.log_scale_clamp, generator, cfg.gmm_backend)

    @property
    def gmm_backend(self) -> str:
        """The GMM implementation, fixed at construction (config: gmflow.model.gmm_backend)."""
        return self._gmm_backend

    @property
    def num_cluster(self) -> int:
        return int(self.means.shape[0])

    def forward(self, x: torch.Tensor, return_log_probs: bool = False) -> GMMOutput:
        u, log_det = self.flow(x)
        if torch.is_autocast_enabled(u.device.type):  # mixed-precision training: the GMM term stays fp32
            with torch.autocast(u.device.type, enabled=False):
                return gmm_loglik(_fp32(u), self.means, _fp32(log_det), return_log_probs, backend=self.gmm_backend)
        return gmm_loglik(u, self.means, log_det, return_log_probs, backend=self.gmm_backend)


def _fp32(t: torch.Tensor) -> torch.Tensor:
    """t in fp32 if autocast produced a half type; fp32 and fp64 unchanged."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t
