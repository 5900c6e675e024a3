"""Fine-tune one flow filter (MAF + fixed GMM) with the likelihood, purity and balance losses.

Epoch selection keeps the epoch with the most clusters of purity > min_purity and size >
min_size (largest cluster below max_cluster_size), measured on train or val, never test.  An
epoch whose selection pass gives any non-finite log-likelihood cannot be selected.

Hot loop: the epoch's pair indices are drawn at once on the training device; each step gathers
its rows into a reused buffer, and the losses are summed on the device and read once per epoch
(see select_loop.py).  Data-parallel (torchrun): every rank draws the same pairs and computes
its contiguous share of each batch; the losses are normalised by the global batch, batch-norm
statistics and the balance posterior are summed across ranks (differentiably), and gradients
are summed, so the update equals the single-process one up to float summation order.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch

from ..config import FilterConfig, GMFlowConfig
from ..distributed import SINGLE, DistContext
from ..errors import DLSAError
from ..models import BatchNormFlow, FlowGMM
from .cluster_stats import ClusterQuality, cluster_class_histogram, quality_from_histogram, score_flow
from .grad_sync import GradientSync
from .losses import BalanceLoss, class_weights, likelihood_loss, purity_loss
from .options import TrainOptions, resolved
from .random_streams import drawing_from
from .precision import forward_autocast, matmul_precision
from .samplers import PairSampler, device_generator
from .schedule import clip_value
from .select_loop import EvalResult, LoopSpec, train_and_select

log = logging.getLogger(__name__)

LOSS_NAMES = ("loss", "lh", "purity", "balance")  # history columns of the flow's training losses


@dataclass
class FlowLosses:
    total: torch.Tensor
    likelihood: torch.Tensor
    purity: torch.Tensor
    balance: torch.Tensor

    def stacked(self) -> torch.Tensor:
        return torch.stack([self.total, self.likelihood, self.purity, self.balance]).detach()


def flow_losses(model, x: torch.Tensor, n_pos: int, y_pos: torch.Tensor, has_neg: bool, weights: torch.Tensor,
                balance: BalanceLoss, cfg: GMFlowConfig, global_pos: int | None = None,
                dist: DistContext = SINGLE, precision: str = "fp32") -> FlowLosses:
    """Losses of one step on rows x = [positives (n_pos); negatives], one forward pass.

    global_pos: positives in the whole (all-rank) batch; each rank returns its share of the
    global losses (sum over ranks = the single-process losses)."""
    lcfg = cfg.loss
    with forward_autocast(precision, x.device):
        out = model(x, return_log_probs=True)
    denom = global_pos if global_pos is not None else n_pos
    lp_pos = out.log_probs[:n_pos]
    lh = likelihood_loss(out.loglik[:n_pos], y_pos, weights, denom)
    bal = balance(lp_pos, denom, dist.sum_with_grad if dist.enabled else None) / dist.world_size
    pur = purity_loss(lp_pos, out.log_probs[n_pos:], lcfg.contrast_freeze, denom) if has_neg else lh.new_zeros(())
    total = lcfg.lambda_lh * lh + lcfg.lambda_purity * pur + lcfg.lambda_balance * bal
    return FlowLosses(total, lh, pur, bal)


def flow_step_losses(model: FlowGMM, x_pos: torch.Tensor, y_pos: torch.Tensor, x_neg: torch.Tensor | None,
                     weights: torch.Tensor, balance: BalanceLoss, cfg: GMFlowConfig) -> FlowLosses:
    """Losses of one single-process flow training step; positives and negatives share one forward pass."""
    x = x_pos if x_neg is None else torch.cat([x_pos, x_neg])
    return flow_losses(model, x, x_pos.shape[0], y_pos, x_neg is not None, weights, balance, cfg)


@contextlib.contextmanager
def synced_batch_norm(model: torch.nn.Module, dist: DistContext):
    """Batch-norm flow layers use the statistics of the global (all-rank) batch in this block."""
    layers = [m for m in model.modules() if isinstance(m, BatchNormFlow)]
    for m in layers:
        m.dist = dist if dist.enabled else None
    try:
        yield
    finally:
        for m in layers:
            m.dist = None


@dataclass
class FlowTrainResult:
    model: FlowGMM
    best_epoch: int
    quality: ClusterQuality
    history: list[dict] = field(default_factory=list)
    stopped_epoch: int | None = None  # epoch whose loss became non-finite (training stopped there)


def _hint(cfg: GMFlowConfig) -> str:
    return (f"lower gmflow.optim.lr (now {cfg.optim.lr}) or set gmflow.optim.grad_clip "
            f"(now {cfg.optim.grad_clip})")


def train_flow(x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: GMFlowConfig, fcfg: FilterConfig,
               generator: torch.Generator, select_x: torch.Tensor | None = None, select_y: torch.Tensor | None = None,
               desc: str = "flow", options: TrainOptions | None = None,
               init_generator: torch.Generator | None = None) -> FlowTrainResult:
    """x, y: this depth's training samples (on the training device). select_*: the split used for
    epoch selection (defaults to x, y).  options: precision / compile / process group (default:
    TrainOptions(), see training/options.py).  generator: the sampler's stream and the cluster
    centres; init_generator: the MADE layers' initial weights (None: the global generator; see
    random_streams.py)."""
    opts = resolved(options)
    dist = opts.dist
    device = x.device
    with drawing_from(init_generator):
        model = FlowGMM.from_config(x.shape[1], cfg.model, generator)
    model = model.to(device)
    dist.sync_module_(model)  # identical start on every rank, whatever their global RNG states
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                          weight_decay=cfg.optim.weight_decay, **fused)
    counts = torch.bincount(y, minlength=num_classes)
    weights = class_weights(counts.cpu(), cfg.data.weight_q).to(device)
    sampler = PairSampler(y, num_classes, cfg.data.batchsize, device_generator(generator, device), device)
    balance = BalanceLoss(model.num_cluster, cfg.loss.posterior_momentum)
    clip = clip_value(cfg.optim)
    sx, sy = (x, y) if select_x is None else (select_x, select_y)
    grads = GradientSync(model, dist)
    forward = torch.compile(model) if opts.compile else model
    has_neg = sampler.has_negatives
    rows_buf = torch.empty(2 * cfg.data.batchsize, x.shape[1], device=device, dtype=x.dtype)
    idx_buf = torch.empty(2 * cfg.data.batchsize, device=device, dtype=torch.int64)

    def run_epoch(epoch: int) -> tuple[torch.Tensor, int]:
        sums = torch.zeros(len(LOSS_NAMES), device=device, dtype=torch.float32)
        pos, neg = sampler.epoch()
        bounds = sampler.batch_bounds()
        for s, e in bounds:
            a, b = dist.shard_bounds(e - s) if dist.enabled else (0, e - s)
            n = b - a
            if has_neg:
                idx = torch.cat([pos[s + a:s + b], neg[s + a:s + b]], out=idx_buf[:2 * n])
            else:
                idx = pos[s + a:s + b]
            rows = torch.index_select(x, 0, idx, out=rows_buf[:idx.shape[0]])
            losses = flow_losses(forward, rows, n, y.index_select(0, idx[:n]), has_neg, weights, balance, cfg,
                                 e - s, dist, opts.precision)
            opt.zero_grad(set_to_none=False)
            losses.total.backward()
            grads.all_reduce()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            sums.add_(losses.stacked())
        return sums, len(bounds)

    shard_x, shard_y = dist.shard(sx), dist.shard(sy)

    def evaluate(epoch: int) -> EvalResult:
        ll, cluster = score_flow(model, shard_x)
        finite = torch.isfinite(ll)
        hist = cluster_class_histogram(cluster[finite], shard_y[finite], model.num_cluster, num_classes)
        packed = torch.cat([hist.flatten(), (~finite).sum().reshape(1)]).double()
        packed = dist.all_reduce_(packed).cpu().long()  # one host read per evaluation
        q = quality_from_histogram(packed[:-1].reshape(hist.shape), fcfg.min_purity, fcfg.min_size, int(packed[-1]))
        row = {"good_clusters": q.good_clusters, "max_cluster": q.max_size, "cluster_purity": q.mean_purity}
        if q.nonfinite:
            row["nonfinite_loglik"] = q.nonfinite
            log.warning("%s: epoch %d gives %d non-finite log-likelihoods on the selection split; "
                        "it cannot be selected", desc, epoch + 1, q.nonfinite)
        return EvalResult(q.score(fcfg.max_cluster_size), row, q)

    spec = LoopSpec(desc, cfg.optim.epoch, cfg.eval_freq, cfg.optim, LOSS_NAMES, _hint(cfg),
                    later_wins_ties=True, dist=dist)
    with matmul_precision(opts.precision, device), synced_batch_norm(model, dist):
        sel = train_and_select(model, opt, spec, run_epoch, evaluate)
    if sel.best_epoch is None:
        raise DLSAError(f"{desc}: no epoch gave finite log-likelihoods on the selection split; {_hint(cfg)}")
    q = sel.best_info
    log.info("%s: selected epoch %d/%d (%d pure clusters of %d used, purity %.3f, largest %d)", desc, sel.best_epoch,
             cfg.optim.epoch, q.good_clusters, q.used_clusters, q.mean_purity, q.max_size)
    return FlowTrainResult(model, sel.best_epoch, q, sel.history, sel.stopped_epoch)
