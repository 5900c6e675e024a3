"""Cross-fitted routing: route each training sample as the deployed cascade routes an unseen one.

Why: in the research cascade the flow that routes the training samples is the flow they trained,
and the threshold is a quantile of those same (in-sample) scores.  A flow fits its own training
samples better than unseen ones, most of all the few samples of a tail class, so tail training
samples exit at depth d more often than tail test samples do (Fashion-MNIST-LT r100, class 9:
53% of its training samples vs 28% of its test samples).  The classifier after the exit then
trains on a remainder with almost no tail samples while many tail test samples reach it, and
every route share counted on train is biased.

How (``cascade.crossfit_folds = F >= 2``): the remaining training samples of a depth are split
into F class-stratified folds.  The deployed flow of the depth trains on every fold but fold 0;
its threshold is the (1 - llh_proportion) quantile of its scores on fold 0 and its cluster
priors are counted on fold 0 -- samples it never trained on, like the test samples it will meet.
``crossfit_routing`` then decides how the other folds are routed:

- ``out_of_fold``: flow f trains without fold f and routes fold f at its own held-out quantile
  (F flows per depth);
- ``deployed``: the deployed flow routes every sample (one flow per depth).

Either way a training sample's cluster prior never counts the sample itself, and route shares
(route_prior, prior_shift) come from fold 0 only -- at depth d, the product of each earlier
depth's held-out continue rate and depth d's held-out exit rate (``held_out_route_rates``): two
flows trained on different halves can route a class very differently (measured: class 5 exits 12% under one half's flow and 95% under
the other's, 93% of its test samples under the deployed one), so only the deployed flow's
held-out fold gives the shares test samples meet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..routing import exits as exit_mask
from ..errors import DLSAError
from .cluster_stats import cluster_class_histogram, cluster_priors, score_flow


def stratified_folds(labels: torch.Tensor, folds: int, generator: torch.Generator) -> torch.Tensor:
    """Fold id (0..folds-1) of each sample: each class spread over the folds as evenly as it can be
    (its counts per fold differ by at most one), in a seeded random order, starting at a random
    fold per class.  Fold sizes are even in expectation, not exactly: with few samples per class
    a fold can come out small or empty (cross_fit refuses an empty fold)."""
    y = labels.cpu()
    perm = torch.randperm(len(y), generator=_cpu(generator))
    order = perm[torch.argsort(y[perm], stable=True)]  # random order within each class
    fold = torch.empty(len(y), dtype=torch.int64)
    start = 0
    counts = torch.bincount(y, minlength=int(y.max()) + 1 if len(y) else 0)
    offsets = torch.randint(0, folds, (len(counts),), generator=_cpu(generator))
    for c, n in enumerate(counts.tolist()):
        fold[order[start:start + n]] = (torch.arange(n) + offsets[c]) % folds
        start += n
    return fold.to(labels.device)


def _cpu(generator: torch.Generator) -> torch.Generator:
    if generator.device.type == "cpu":
        return generator
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator,
                                                           device=generator.device)))


def leave_one_out_priors(cluster: torch.Tensor, labels: torch.Tensor, num_cluster: int,
                         num_classes: int) -> torch.Tensor:
    """(N, C): each sample's cluster class histogram without the sample itself, normalised
    (uniform where the sample is alone in its cluster)."""
    hist = cluster_class_histogram(cluster.cpu(), labels.cpu(), num_cluster, num_classes).double()
    own = hist[cluster.cpu()] - torch.nn.functional.one_hot(labels.cpu().long(), num_classes).double()
    size = own.sum(1, keepdim=True)
    uniform = torch.full_like(own, 1.0 / num_classes)
    return torch.where(size > 0, own / size.clamp(min=1), uniform).float().to(cluster.device)


@dataclass
class CrossFit:
    """What the cascade needs from one depth's cross-fitted flows."""
    flow: object              # the deployed flow (trained without fold 0)
    threshold: float          # its threshold: the quantile of its held-out fold's scores
    priors: torch.Tensor      # (K, C) its cluster priors, counted on its held-out fold
    exits: torch.Tensor       # (N,) bool: each training sample's exit decision
    sample_priors: torch.Tensor  # (N, C) each training sample's cluster prior (never counting itself)
    fold: torch.Tensor        # (N,) fold ids
    fold_thresholds: list

    @property
    def held_out(self) -> torch.Tensor:
        """(N,) bool: the deployed flow's held-out fold, routed exactly as unseen samples are: the
        samples route shares are counted on."""
        return self.fold == 0


def cross_fit(x: torch.Tensor, y: torch.Tensor, folds: int, num_classes: int, generator: torch.Generator,
              train_fold_flow, threshold_of, temper=lambda p: p, routing: str = "out_of_fold") -> CrossFit:
    """``train_fold_flow(x_train, y_train, fold_index)`` trains one flow (the caller's settings,
    cache and epoch selection); ``threshold_of(held_out_loglik, held_out_cluster)`` gives a fold's threshold (the
    llh_proportion quantile, or the fixed filter.llh_thres); ``temper`` maps cluster priors
    (cascade.prior_temperature).

    routing "out_of_fold": every fold is routed by the flow trained without it (F flows).
    routing "deployed": only the deployed flow is trained (without fold 0); it routes every
    training sample with the threshold and cluster priors of its held-out fold (its own training
    samples are scored in-sample, but no sample's cluster prior counts the sample itself)."""
    if routing not in ("out_of_fold", "deployed"):
        raise ValueError(f"unknown cross-fit routing {routing!r}")
    fold = stratified_folds(y, folds, generator)
    sizes = torch.bincount(fold.cpu(), minlength=folds)
    if bool((sizes == 0).any()):
        raise DLSAError(f"cascade.crossfit_folds: {len(y)} remaining training samples leave a fold empty "
                        f"(fold sizes {sizes.tolist()}); lower crossfit_folds or max_depth")
    exits = torch.zeros(len(y), dtype=torch.bool, device=x.device)
    sample_priors = torch.empty(len(y), num_classes, device=x.device)
    deployed, thresholds = None, []
    for f in range(folds if routing == "out_of_fold" else 1):
        held = fold == f
        flow = train_fold_flow(x[~held], y[~held], f)
        ll, cl = score_flow(flow.model, x[held])
        thr = threshold_of(ll, cl)
        thresholds.append(thr)
        exits[held] = exit_mask(ll, thr, cl)
        k = flow.model.num_cluster
        sample_priors[held] = temper(leave_one_out_priors(cl, y[held], k, num_classes))
        if f == 0:
            deployed = (flow, thr, temper(cluster_priors(cl.cpu(), y[held].cpu(), k, num_classes)).to(x.device))
    flow, thr, priors = deployed
    if routing == "deployed":
        rest = fold != 0
        ll, cl = score_flow(flow.model, x[rest])
        exits[rest] = exit_mask(ll, thr, cl)
        sample_priors[rest] = priors[cl]  # counted on fold 0: never includes these samples
    return CrossFit(flow, thr, priors, exits, sample_priors, fold, thresholds)


def held_out_route_rates(cf: CrossFit, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log exit rate, log continue rate) of each class among the deployed flow's held-out fold,
    smoothed as (k + 0.5) / (n + 1).  A class's share of samples reaching a later classifier is the
    product of these rates over the depths before it (each depth counted on its own held-out fold):
    samples of other folds are routed by other flows, or in-sample, and must not be counted."""
    held = cf.held_out.cpu()
    yh = y.cpu()[held]
    n = torch.bincount(yh, minlength=num_classes).double()
    k = torch.bincount(yh[cf.exits.cpu()[held]], minlength=num_classes).double()
    return (torch.log((k + 0.5) / (n + 1)).float(), torch.log((n - k + 0.5) / (n + 1)).float())
