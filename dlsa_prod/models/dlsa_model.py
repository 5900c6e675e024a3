"""The trained DLSA cascade as one nn.Module: features -> (logits, predicted class, exit depth).

Depth d (1-based) holds a flow filter, its log-likelihood threshold, the cluster priors
(K x C class histograms) and a cluster-aided classifier.  A sample whose log-likelihood is at
least the threshold exits at depth d; the rest continue.  After the last depth the regular
classifier takes the remainder (reported as exit depth D + 1).  With soft gates
(``cascade.exit_gate: soft``, soft_gate.py) every sample runs every stage and the logits are
the gated mixture of the classifiers' log-probabilities; exit depth is still the hard route.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from ..config import RunConfig
from ..array_ops import TorchOps
from ..routing import exits, soft_cascade, staged_route
from .classifiers import FeatureClassifier
from .flow_gmm import FlowGMM
from .soft_gate import stage_outputs


class DLSAOutput(NamedTuple):
    logits: torch.Tensor  # (B, C) of the classifier each sample exits at
    pred: torch.Tensor  # (B,) int64
    exit_depth: torch.Tensor  # (B,) int64 in 1..D+1
    loglik: torch.Tensor  # (B, D); NaN where a sample never reached that depth


class DepthStage(nn.Module):
    def __init__(self, filter_model: FlowGMM, classifier: FeatureClassifier, num_classes: int, gated: bool = False,
                 latent: bool = False):
        super().__init__()
        self.filter = filter_model
        self.classifier = classifier
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float32))
        self.register_buffer("cluster_prior", torch.full((filter_model.num_cluster, num_classes), 1.0 / num_classes))
        if gated:  # soft exit gate: s = sigmoid(gate_slope * (loglik - threshold) + gate_offset)
            self.register_buffer("gate_slope", torch.zeros((), dtype=torch.float32))
            self.register_buffer("gate_offset", torch.zeros((), dtype=torch.float32))
        if latent:  # the classifier's z input: the flow latent, standardised by the training samples' mean / std
            dim = filter_model.means.shape[1]
            self.register_buffer("latent_mean", torch.zeros(dim))
            self.register_buffer("latent_std", torch.ones(dim))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the threshold takes the shape it was saved with: a 0-d tensor for the rule as shipped, any
        # shape a routing rule reads (routing.exits), e.g. one per cluster
        t = state_dict.get(prefix + "threshold")
        if t is not None and t.shape != self.threshold.shape:
            self.threshold = torch.zeros_like(t, dtype=self.threshold.dtype, device=self.threshold.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def gated(self) -> bool:
        return hasattr(self, "gate_slope")

    def route(self, x: torch.Tensor):
        out = self.filter(x)
        return out.loglik, out.cluster

    @property
    def uses_latent(self) -> bool:
        return hasattr(self, "latent_mean")

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """The standardised flow latent of x (cascade.flow_latent)."""
        return (self.filter.flow(x)[0] - self.latent_mean) / self.latent_std

    def classify(self, x: torch.Tensor, cluster: torch.Tensor) -> torch.Tensor:
        prior = self.cluster_prior[cluster] if self.classifier.uses_prior else None
        return self.classifier(x, prior, self.latent(x) if self.uses_latent else None)


class DLSAModel(nn.Module):
    def __init__(self, stages: list[DepthStage], regular: FeatureClassifier, num_classes: int):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.regular = regular
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg: RunConfig, dim: int, num_classes: int, depth: int) -> "DLSAModel":
        stages = [DepthStage(FlowGMM.from_config(dim, cfg.gmflow.model),
                             FeatureClassifier(dim, num_classes, cfg.cacls.model), num_classes,
                             gated=cfg.cascade.exit_gate == "soft", latent=cfg.cascade.flow_latent)
                  for _ in range(depth)]
        regular = FeatureClassifier(dim, num_classes, cfg.regcls.model, uses_prior=False)
        return cls(stages, regular, num_classes)

    @property
    def depth(self) -> int:
        return len(self.stages)

    @property
    def thresholds(self) -> list:
        """Each depth's threshold as plain Python (a float for the rule as shipped): run metadata, reports, bundles."""
        return [s.threshold.tolist() for s in self.stages]

    def forward(self, x: torch.Tensor) -> DLSAOutput:
        """Per-sample routing: each sample runs only the stages it reaches (soft gates: every stage)."""
        if self.stages and self.stages[0].gated:
            return self._soft_forward(x)
        loglik = x.new_full((x.shape[0], self.depth), float("nan"))
        if x.shape[0] == 0:  # nothing to route: empty outputs of the right shapes
            logits = x.new_zeros(0, self.num_classes)
            return DLSAOutput(logits, logits.argmax(1), torch.zeros(0, dtype=torch.int64, device=x.device), loglik)

        def record(d, remaining, ll):
            loglik[remaining, d - 1] = ll

        logits, exit_depth = staged_route(lambda d, xr: self.stages[d - 1].route(xr),
                                          lambda d, xe, ce: self.stages[d - 1].classify(xe, ce), self.regular, x,
                                          [s.threshold for s in self.stages], self.depth, TorchOps(x.device), record)
        return DLSAOutput(logits, logits.argmax(1), exit_depth, loglik)

    def _soft_forward(self, x: torch.Tensor) -> DLSAOutput:
        logp, lls, clusters, reg = stage_outputs(self, x)
        gates = [(s.gate_slope, s.gate_offset) for s in self.stages]
        logits = soft_cascade(logp, lls, clusters, [s.threshold for s in self.stages], gates, reg)
        exit_depth = torch.full((x.shape[0],), self.depth + 1, dtype=torch.int64, device=x.device)
        loglik = x.new_full((x.shape[0], self.depth), float("nan"))
        reached = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for d, (ll, cluster, stage) in enumerate(zip(lls, clusters, self.stages)):
            loglik[reached, d] = ll[reached]
            out = reached & exits(ll, stage.threshold, cluster)
            exit_depth[out] = d + 1
            reached = reached & ~out
        return DLSAOutput(logits, logits.argmax(1), exit_depth, loglik)
