"""Classifiers on features: cluster-aided (inputs XZP) and regular (inputs XZ).

logits = head_x(x) + head_zp([z; P]) with z the feature itself (as in the research code) and
P the class histogram of the sample's cluster (XZP only).  Heads are linear, optionally behind
hidden layers, or cosine classifiers (normalised weights and inputs, fixed scale).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ClassifierModelConfig


class CosineLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, scale: float = 16.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / in_features ** 0.5)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


def _head(in_features: int, num_classes: int, cfg: ClassifierModelConfig) -> nn.Module:
    layers: list[nn.Module] = []
    width = in_features
    for h in cfg.hidden_layers:
        layers.append(nn.Linear(width, h))
        if cfg.batch_norm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(nn.ReLU())
        width = h
    layers.append(CosineLinear(width, num_classes, cfg.cosine_scale) if cfg.type == "cosine"
                  else nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class FeatureClassifier(nn.Module):
    def __init__(self, dim: int, num_classes: int, cfg: ClassifierModelConfig, uses_prior: Optional[bool] = None):
        super().__init__()
        self.uses_prior = cfg.inputs == "XZP" if uses_prior is None else uses_prior
        self.head_x = _head(dim, num_classes, cfg)
        self.head_zp = _head(dim + (num_classes if self.uses_prior else 0), num_classes, cfg)

    def forward(self, x: torch.Tensor, prior: Optional[torch.Tensor] = None,
                z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """z: the second feature input (default: x itself, as in the research code; the flow latent
        with ``cascade.flow_latent``)."""
        z = x if z is None else z
        zp = torch.cat([z, prior], dim=1) if self.uses_prior else z
        return self.head_x(x) + self.head_zp(zp)
