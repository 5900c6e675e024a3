"""Cluster statistics: purity/size (flow epoch selection), class-histogram priors, batched scoring."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models import FlowGMM


@torch.no_grad()
def score_flow(model: FlowGMM, x: torch.Tensor, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(loglik, cluster) of every row of x, in eval mode, batched."""
    was_training = model.training
    model.eval()
    ll, cl = [], []
    for chunk in torch.split(x, batch_size):
        out = model(chunk)
        ll.append(out.loglik)
        cl.append(out.cluster)
    model.train(was_training)
    if not ll:
        return x.new_zeros(0), torch.zeros(0, dtype=torch.int64, device=x.device)
    return torch.cat(ll), torch.cat(cl)


def cluster_class_histogram(cluster: torch.Tensor, labels: torch.Tensor, num_cluster: int, num_classes: int) -> torch.Tensor:
    """(K, C) counts of each class among the samples assigned to each cluster."""
    flat = cluster.long() * num_classes + labels.long()
    return torch.bincount(flat, minlength=num_cluster * num_classes).reshape(num_cluster, num_classes)


def cluster_priors(cluster: torch.Tensor, labels: torch.Tensor, num_cluster: int, num_classes: int) -> torch.Tensor:
    """Normalised class histogram per cluster; an empty cluster gets the uniform prior."""
    hist = cluster_class_histogram(cluster, labels, num_cluster, num_classes).double()
    size = hist.sum(1, keepdim=True)
    prior = torch.where(size > 0, hist / size.clamp(min=1), torch.full_like(hist, 1.0 / num_classes))
    return prior.float()


@dataclass
class ClusterQuality:
    good_clusters: int  # purity > min_purity and size > min_size
    max_size: int
    used_clusters: int
    mean_purity: float  # size-weighted purity of all (finite) samples
    nonfinite: int = 0  # samples whose log-likelihood is NaN or inf (left out of the counts)

    def score(self, max_cluster_size: int) -> int | None:
        """Selection score: the number of good clusters; -1 when the largest cluster is too big;
        None (not selectable) when any log-likelihood is non-finite."""
        if self.nonfinite:
            return None
        return self.good_clusters if self.max_size < max_cluster_size else -1


def quality_from_histogram(hist: torch.Tensor, min_purity: float, min_size: int, nonfinite: int = 0) -> ClusterQuality:
    """Quality of a (K, C) cluster-class count histogram."""
    hist = hist.cpu()
    size = hist.sum(1)
    top = hist.max(1).values
    purity = top.double() / size.clamp(min=1).double()
    good = ((purity > min_purity) & (size > min_size)).sum()
    total = int(size.sum())
    return ClusterQuality(int(good), int(size.max()) if total else 0, int((size > 0).sum()),
                          float(top.sum()) / total if total else 0.0, int(nonfinite))


def cluster_quality(cluster: torch.Tensor, labels: torch.Tensor, num_cluster: int, num_classes: int,
                    min_purity: float, min_size: int, loglik: torch.Tensor | None = None) -> ClusterQuality:
    """Purity and size statistics of an assignment.  With ``loglik``, samples whose
    log-likelihood is non-finite are counted in ``nonfinite`` and left out of the histogram."""
    nonfinite = 0
    if loglik is not None:
        finite = torch.isfinite(loglik)
        nonfinite = int((~finite).sum())
        if nonfinite:
            cluster, labels = cluster[finite], labels[finite]
    hist = cluster_class_histogram(cluster.cpu(), labels.cpu(), num_cluster, num_classes)
    return quality_from_histogram(hist, min_purity, min_size, nonfinite)
