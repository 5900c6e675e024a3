"""A classifier's inputs (features, labels, cluster priors, second feature input) and batched
prediction: what the trainer, the lr candidates, the baselines and head calibration share."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models import FeatureClassifier


@dataclass
class ClassifierData:
    x: torch.Tensor
    y: torch.Tensor
    prior: torch.Tensor | None = None  # (N, C) cluster prior rows, for XZP
    z: torch.Tensor | None = None  # (N, dim) second feature input (None: x itself; cascade.flow_latent)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def rows(self, start: int, end: int) -> "ClassifierData":
        cut = lambda t: None if t is None else t[start:end]  # noqa: E731
        return ClassifierData(self.x[start:end], self.y[start:end], cut(self.prior), cut(self.z))


@torch.no_grad()
def predict_logits(model: FeatureClassifier, data: ClassifierData, batch_size: int = 4096) -> torch.Tensor:
    was = model.training
    model.eval()
    outs = []
    for i in range(0, len(data), batch_size):
        p = None if data.prior is None else data.prior[i:i + batch_size]
        z = None if data.z is None else data.z[i:i + batch_size]
        outs.append(model(data.x[i:i + batch_size], p, z))
    model.train(was)
    return torch.cat(outs) if outs else data.x.new_zeros(0, model.head_x[-1].weight.shape[0])
