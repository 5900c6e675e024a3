"""The trained DLSA cascade as one nn.Module: features -> (logits, predicted class, exit depth).

Depth d (1-based) holds a flow filter, its log-likelihood threshold, the cluster priors
(K x C class histograms) and a cluster-aided classifier.  A sample whose log-likelihood is at
least the threshold exits at depth d; the rest continue.  After the last depth the regular
classifier takes the remainder (reported as exit depth D + 1).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from ..config import RunConfig
from ..array_ops import TorchOps
from ..routing import staged_route
from .classifiers import FeatureClassifier
from .flow_gmm import FlowGMM


class DLSAOutput(NamedTuple):
    logits: torch.Tensor  # (B, C) of the classifier each sample exits at
    pred: torch.Tensor  # (B,) int64
    exit_depth: torch.Tensor  # (B,) int64 in 1..D+1
    loglik: torch.Tensor  # (B, D); NaN where a sample never reached that depth


class DepthStage(nn.Module):
    def __init__(self, filter_model: FlowGMM, classifier: FeatureClassifier, num_classes: int):
        super().__init__()
        self.filter = filter_model
        self.classifier = classifier
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float32))
        self.register_buffer("cluster_prior", torch.full((filter_model.num_cluster, num_classes), 1.0 / num_classes))

    def route(self, x: torch.Tensor):
        out = self.filter(x)
        return out.loglik, out.cluster

    def classify(self, x: torch.Tensor, cluster: torch.Tensor) -> torch.Tensor:
        prior = self.cluster_prior[cluster] if self.classifier.uses_prior else None
        return self.classifier(x, prior)


class DLSAModel(nn.Module):
    def __init__(self, stages: list[DepthStage], regular: FeatureClassifier, num_classes: int):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.regular = regular
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg: RunConfig, dim: int, num_classes: int, depth: int) -> "DLSAModel":
        stages = [DepthStage(FlowGMM.from_config(dim, cfg.gmflow.model),
                             FeatureClassifier(dim, num_classes, cfg.cacls.model), num_classes)
                  for _ in range(depth)]
        regular = FeatureClassifier(dim, num_classes, cfg.regcls.model, uses_prior=False)
        return cls(stages, regular, num_classes)

    @property
    def depth(self) -> int:
        return len(self.stages)

    @property
    def thresholds(self) -> list[float]:
        return [float(s.threshold) for s in self.stages]

    def forward(self, x: torch.Tensor) -> DLSAOutput:
        """Per-sample routing: each sample runs only the stages it reaches."""
        loglik = x.new_full((x.shape[0], self.depth), float("nan"))

        def record(d, remaining, ll):
            loglik[remaining, d - 1] = ll

        logits, exit_depth = staged_route(lambda d, xr: self.stages[d - 1].route(xr),
                                          lambda d, xe, ce: self.stages[d - 1].classify(xe, ce), self.regular, x,
                                          self.thresholds, self.depth, TorchOps(x.device), record)
        return DLSAOutput(logits, logits.argmax(1), exit_depth, loglik)
