"""Fine-tune one flow filter (MAF + fixed GMM) with the likelihood, purity and balance losses.

Epoch selection keeps the epoch with the most clusters of purity > min_purity and size >
min_size (largest cluster below max_cluster_size), measured on train or val, never test.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..config import FilterConfig, GMFlowConfig
from ..errors import DLSAError
from ..models import FlowGMM
from .cluster_stats import ClusterQuality, cluster_quality, score_flow
from .losses import BalanceLoss, class_weights, likelihood_loss, purity_loss
from .samplers import PairSampler
from .schedule import clip_value, set_lr

log = logging.getLogger(__name__)


@dataclass
class FlowLosses:
    total: torch.Tensor
    likelihood: torch.Tensor
    purity: torch.Tensor
    balance: torch.Tensor


def flow_step_losses(model: FlowGMM, x_pos: torch.Tensor, y_pos: torch.Tensor, x_neg: torch.Tensor | None,
                     weights: torch.Tensor, balance: BalanceLoss, cfg: GMFlowConfig) -> FlowLosses:
    """Losses of one flow training step; positives and negatives share one forward pass."""
    lcfg = cfg.loss
    x = x_pos if x_neg is None else torch.cat([x_pos, x_neg])
    out = model(x, return_log_probs=True)
    b = x_pos.shape[0]
    lh = likelihood_loss(out.loglik[:b], y_pos, weights)
    bal = balance(out.log_probs[:b])
    if x_neg is None:
        pur = lh.new_zeros(())
    else:
        pur = purity_loss(out.log_probs[:b], out.log_probs[b:], lcfg.contrast_freeze)
    total = lcfg.lambda_lh * lh + lcfg.lambda_purity * pur + lcfg.lambda_balance * bal
    return FlowLosses(total, lh, pur, bal)


@dataclass
class FlowTrainResult:
    model: FlowGMM
    best_epoch: int
    quality: ClusterQuality
    history: list[dict] = field(default_factory=list)


def train_flow(x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: GMFlowConfig, fcfg: FilterConfig,
               generator: torch.Generator, select_x: torch.Tensor | None = None, select_y: torch.Tensor | None = None,
               desc: str = "flow") -> FlowTrainResult:
    """x, y: this depth's training samples (on the training device). select_*: the split used for
    epoch selection (defaults to x, y)."""
    device = x.device
    model = FlowGMM.from_config(x.shape[1], cfg.model, generator).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                          weight_decay=cfg.optim.weight_decay)
    counts = torch.bincount(y.cpu(), minlength=num_classes)
    weights = class_weights(counts, cfg.data.weight_q).to(device)
    sampler = PairSampler(y.cpu(), num_classes, cfg.data.batchsize, generator)
    balance = BalanceLoss(model.num_cluster, cfg.loss.posterior_momentum)
    clip = clip_value(cfg.optim)
    sx, sy = (x, y) if select_x is None else (select_x, select_y)

    best_state, best_score, best_epoch, best_q = None, None, -1, None
    history = []
    bar = tqdm(range(cfg.optim.epoch), desc=desc, unit="ep", leave=False, dynamic_ncols=True, disable=None)
    for epoch in bar:
        model.train()
        lr = set_lr(opt, epoch, cfg.optim)
        sums = {"loss": 0.0, "lh": 0.0, "purity": 0.0, "balance": 0.0}
        for pos, neg in sampler:
            pos = pos.to(device)
            losses = flow_step_losses(model, x[pos], y[pos], None if neg is None else x[neg.to(device)],
                                      weights, balance, cfg)
            if not torch.isfinite(losses.total):
                raise DLSAError(f"{desc}: flow loss became {losses.total.item()} at epoch {epoch + 1}; "
                                f"lower gmflow.optim.lr (now {cfg.optim.lr}) or set gmflow.optim.grad_clip")
            opt.zero_grad(set_to_none=True)
            losses.total.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            for k, v in zip(sums, (losses.total, losses.likelihood, losses.purity, losses.balance)):
                sums[k] += float(v.detach())
        row = {"epoch": epoch + 1, "lr": lr, **{k: v / len(sampler) for k, v in sums.items()}}
        if (epoch + 1) % cfg.eval_freq == 0 or epoch + 1 == cfg.optim.epoch:
            _, cluster = score_flow(model, sx)
            q = cluster_quality(cluster, sy, model.num_cluster, num_classes, fcfg.min_purity, fcfg.min_size)
            score = q.score(fcfg.max_cluster_size)
            row.update(good_clusters=q.good_clusters, max_cluster=q.max_size, purity=q.mean_purity)
            if best_score is None or score >= best_score:
                best_state = copy.deepcopy(model.state_dict())
                best_score, best_epoch, best_q = score, epoch + 1, q
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", good=row.get("good_clusters", "-"))
    model.load_state_dict(best_state)
    model.eval()
    log.info("%s: selected epoch %d/%d (%d pure clusters of %d used, purity %.3f, largest %d)", desc, best_epoch,
             cfg.optim.epoch, best_q.good_clusters, best_q.used_clusters, best_q.mean_purity, best_q.max_size)
    return FlowTrainResult(model, best_epoch, best_q, history)
