"""Train the whole DLSA cascade: flow filter -> threshold -> cluster-aided classifier, per depth,
then the regular classifier on what remains.

Steps (one function each): ``_train_filter`` (flow, scores, threshold, cluster priors) ->
``_train_exit_classifier`` (cluster-aided classifier of the samples that exit) -> next depth;
then ``_train_regular``.  The options of ``cfg.cascade`` (warm start, prior shift, mixing with
the base classifier, prior temperature, per-depth proportions, route prior) build on a ``base``
classifier trained beforehand with the baselines (see baselines.py).

Route prior: a classifier trained with balanced softmax on its routed subset is calibrated to a
uniform label prior, but on a class-balanced test set the samples reaching it follow the share of
each class routed there (tail classes mostly exit at depth 1).  ``cascade.route_prior`` adds
log(that share) to its bias -- the same prior the research code gets by giving the regular
classifier's balanced softmax the full train counts.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from ..config import RunConfig
from ..data import Splits
from ..errors import DLSAError
from ..models import DepthStage, DLSAModel, FeatureClassifier
from ..ops import filter_split
from .baselines import adjust_bias, implied_log_prior
from .classifier_trainer import ClassifierData, predict_logits, train_classifier
from .cluster_stats import cluster_priors, score_flow
from .flow_trainer import train_flow
from .options import active_options

log = logging.getLogger(__name__)

MIX_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def llh_threshold(loglik: torch.Tensor, llh_proportion: float | None, llh_thres: float | None) -> float:
    """Fixed threshold, or the (1 - proportion) quantile of the remaining training log-likelihoods."""
    if llh_thres is not None:
        return float(llh_thres)
    return float(torch.quantile(loglik.double().cpu(), 1.0 - llh_proportion))


def depth_proportion(cfg: RunConfig, depth: int) -> float | None:
    """llh_proportion of depth `depth` (1-based): cascade.llh_proportions (last repeats) or filter's."""
    per = cfg.cascade.llh_proportions
    if per and cfg.filter.llh_thres is None:
        return per[min(depth, len(per)) - 1]
    return cfg.filter.llh_proportion


def tempered_priors(priors: torch.Tensor, temperature: float) -> torch.Tensor:
    """P -> P^(1/T) renormalised per cluster (T = 1: unchanged; T > 1 flatter; T < 1 sharper)."""
    if temperature == 1.0:
        return priors
    p = priors.clamp(min=0) ** (1.0 / temperature)
    return p / p.sum(1, keepdim=True).clamp(min=1e-12)


@dataclass
class DLSATrainResult:
    model: DLSAModel
    depth_reports: list[dict]
    train_exit_depth: np.ndarray  # exit depth of each training sample as split during training
    val_exit_depth: np.ndarray
    histories: dict = field(default_factory=dict)


@dataclass
class _Remaining:
    """Training and val samples still in the cascade (indices into the full splits)."""
    x_tr: torch.Tensor
    y_tr: torch.Tensor
    x_va: torch.Tensor
    y_va: torch.Tensor
    tr: torch.Tensor
    va: torch.Tensor


@dataclass
class _Filter:
    xd: torch.Tensor  # the remaining training / val samples this depth was trained on
    yd: torch.Tensor
    xv: torch.Tensor
    yv: torch.Tensor
    flow: object
    threshold: float
    priors: torch.Tensor
    cl_tr: torch.Tensor
    cl_va: torch.Tensor
    out_tr: torch.Tensor
    cont_tr: torch.Tensor
    out_va: torch.Tensor
    cont_va: torch.Tensor


def _tensors(fs, device):
    return torch.from_numpy(fs.features).to(device), torch.from_numpy(fs.labels).to(device)


def _is_plain_linear(model: FeatureClassifier) -> bool:
    return all(len(h) == 1 and isinstance(h[0], nn.Linear) for h in (model.head_x, model.head_zp))


# Trained flows of this process by flow_cache_key: runs that differ only in classifier-side
# settings (benchmark variants, tuner candidates) train the identical flow once.  A hit restores
# the random streams as they were after training, so everything downstream is unchanged.
_FLOW_CACHE: dict = {}
FLOW_CACHE_SIZE = 8


def flow_cache_key(xd: torch.Tensor, yd: torch.Tensor, sel, cfg: RunConfig, generator: torch.Generator) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in (xd, yd, *[t for t in sel if t is not None]):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(cfg.gmflow.model_dump_json().encode())
    h.update(cfg.filter.model_dump_json(include={"min_purity", "min_size", "max_cluster_size"}).encode())
    h.update(generator.get_state().numpy().tobytes())
    h.update(torch.get_rng_state().numpy().tobytes())
    h.update(str(xd.device).encode())
    opts = active_options()  # precision / compile / data-parallel ranks change the trained flow
    h.update(f"{opts.precision}|{opts.compile}|{opts.dist.world_size}".encode())
    return h.hexdigest()


def _cached_train_flow(xd, yd, c, cfg: RunConfig, generator: torch.Generator, sel, desc: str):
    key = flow_cache_key(xd, yd, sel, cfg, generator)
    hit = _FLOW_CACHE.get(key)
    if hit is None:
        flow = train_flow(xd, yd, c, cfg.gmflow, cfg.filter, generator, *sel, desc=desc)
        _FLOW_CACHE[key] = hit = (copy.deepcopy(flow), generator.get_state(), torch.get_rng_state())
        while len(_FLOW_CACHE) > FLOW_CACHE_SIZE:
            _FLOW_CACHE.pop(next(iter(_FLOW_CACHE)))
    else:
        log.info("%s: identical flow trained earlier in this process; reused", desc)
    flow, gen_state, rng_state = hit
    generator.set_state(gen_state)
    torch.set_rng_state(rng_state)
    return copy.deepcopy(flow)


def _train_filter(rem: _Remaining, d: int, c: int, cfg: RunConfig, generator: torch.Generator) -> _Filter:
    """Depth d's flow on the remaining training samples, its threshold and cluster priors, and the split."""
    xd, yd = rem.x_tr[rem.tr], rem.y_tr[rem.tr]
    xv, yv = rem.x_va[rem.va], rem.y_va[rem.va]
    sel = (xv, yv) if cfg.gmflow.select_on == "val" else (None, None)
    flow = _cached_train_flow(xd, yd, c, cfg, generator, sel, f"depth {d} flow")
    ll_tr, cl_tr = score_flow(flow.model, xd)
    ll_va, cl_va = score_flow(flow.model, xv)
    thr = llh_threshold(ll_tr, depth_proportion(cfg, d), cfg.filter.llh_thres)
    priors = cluster_priors(cl_tr.cpu(), yd.cpu(), flow.model.num_cluster, c).to(xd.device)
    priors = tempered_priors(priors, cfg.cascade.prior_temperature)
    out_tr, cont_tr = filter_split(ll_tr, thr)
    out_va, cont_va = filter_split(ll_va, thr)
    log.info("depth %d: threshold %.4g; %d/%d training and %d/%d val samples exit here",
             d, thr, out_tr.numel(), rem.tr.numel(), out_va.numel(), rem.va.numel())
    return _Filter(xd, yd, xv, yv, flow, thr, priors, cl_tr, cl_va, out_tr, cont_tr, out_va, cont_va)


def warm_state_for_exit(base: FeatureClassifier, target: FeatureClassifier) -> dict | None:
    """The base (XZ) classifier's weights as a start for a cluster-aided (XZP) classifier: head_x
    copied, head_zp's feature columns copied and its prior columns zero.  None unless both are linear."""
    if not (_is_plain_linear(base) and _is_plain_linear(target)):
        return None
    state = copy.deepcopy(target.state_dict())
    b = base.state_dict()
    d = b["head_zp.0.weight"].shape[1]
    state["head_x.0.weight"], state["head_x.0.bias"] = b["head_x.0.weight"].clone(), b["head_x.0.bias"].clone()
    w = torch.zeros_like(state["head_zp.0.weight"])
    w[:, :d] = b["head_zp.0.weight"]
    state["head_zp.0.weight"], state["head_zp.0.bias"] = w, b["head_zp.0.bias"].clone()
    return state


def mix_with_base(exit_clf: FeatureClassifier, base: FeatureClassifier, w: float) -> FeatureClassifier:
    """(1 - w) * exit logits + w * base logits, folded into one linear cluster-aided classifier."""
    out = copy.deepcopy(exit_clf)
    b = base.state_dict()
    d = b["head_x.0.weight"].shape[1]
    with torch.no_grad():
        for lin in (out.head_x[0], out.head_zp[0]):
            lin.weight.mul_(1 - w)
            lin.bias.mul_(1 - w)
        out.head_x[0].weight.add_(w * (b["head_x.0.weight"] + b["head_zp.0.weight"][:, :d]).to(out.head_x[0].weight))
        out.head_x[0].bias.add_(w * (b["head_x.0.bias"] + b["head_zp.0.bias"]).to(out.head_x[0].bias))
    return out


def _choose_mix(clf: FeatureClassifier, base: FeatureClassifier, val: ClassifierData, d: int,
                shift: torch.Tensor | None = None) -> tuple:
    """Mixing weight of depth d chosen on the val samples exiting there (ties: less mixing)."""
    if not len(val) or not (_is_plain_linear(clf) and _is_plain_linear(base)):
        return clf, None
    exit_logits = predict_logits(clf, val)
    base_logits = predict_logits(base, ClassifierData(val.x, val.y))
    add = 0.0 if shift is None else shift.to(exit_logits)
    scores = [float((((1 - w) * exit_logits + w * base_logits + add).argmax(1) == val.y).float().mean())
              for w in MIX_GRID]
    w = MIX_GRID[int(np.argmax(scores))]
    log.info("depth %d: base-classifier mixing weight %.2f chosen on val (val acc %.4f)", d, w, max(scores))
    return (mix_with_base(clf, base, w) if w else clf), w


def _train_exit_classifier(rem: _Remaining, f: _Filter, d: int, c: int, cfg: RunConfig,
                           generator: torch.Generator, base: FeatureClassifier | None, split_labels: tuple):
    """Depth d's cluster-aided classifier on the exiting samples (epoch selected on exiting val samples)."""
    xd, yd, xv, yv = f.xd, f.yd, f.xv, f.yv
    train = ClassifierData(xd[f.out_tr], yd[f.out_tr], f.priors[f.cl_tr[f.out_tr]])
    val = ClassifierData(xv[f.out_va], yv[f.out_va], f.priors[f.cl_va[f.out_va]])
    init = None
    if cfg.cascade.warm_start and base is not None:
        init = warm_state_for_exit(base, FeatureClassifier(xd.shape[1], c, cfg.cacls.model))
        if init is None:
            log.warning("depth %d: warm start needs linear classifiers; starting from scratch", d)
    res = train_classifier(train, val, c, cfg.cacls, generator, desc=f"depth {d} cluster-aided", init_state=init)
    shift = None
    if cfg.cascade.route_prior:
        labels, reaches = route_shares_source(cfg, rem.tr[f.out_tr], rem.va[f.out_va], *split_labels)
        shift = route_shift(cfg.cacls, train.y, labels, reaches, c).to(xd.device)
    model, mix = res.model, None
    if cfg.cascade.mix_base and base is not None:
        model, mix = _choose_mix(model, base, val, d, shift)
    return res, _shifted(model, shift, f"depth {d} cluster-aided"), mix


def route_log_prior(labels: np.ndarray, reaches: np.ndarray, c: int) -> torch.Tensor:
    """log of each class's (smoothed) share of samples that reach a classifier (`reaches`: a mask
    over `labels`' split): the label prior that classifier meets on a class-balanced test set."""
    n = np.bincount(labels, minlength=c).astype(np.float64)
    r = np.bincount(labels[reaches], minlength=c).astype(np.float64)
    return torch.from_numpy(np.log((r + 0.5) / (n + 1.0))).float()


def route_shares_source(cfg: RunConfig, train_idx: torch.Tensor, val_idx: torch.Tensor,
                        train_labels: np.ndarray, val_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, mask of the samples reaching a classifier) of the split route shares are counted on."""
    labels, idx = (val_labels, val_idx) if cfg.cascade.route_share_from == "val" else (train_labels, train_idx)
    reaches = np.zeros(len(labels), bool)
    reaches[idx.cpu().numpy()] = True
    return labels, reaches


def route_shift(cfg_cls, y_subset: torch.Tensor, labels: np.ndarray, reaches: np.ndarray,
                c: int) -> torch.Tensor:
    """Bias shift that moves a classifier trained on a routed subset to the label prior it meets at
    test time: log(route share) minus the prior its training bakes in (the subset's for plain CE)."""
    shift = route_log_prior(labels, reaches, c)
    if cfg_cls.loss.type == "CE" and cfg_cls.data.sampler.name == "none":
        counts = torch.bincount(y_subset.cpu(), minlength=c).double().clamp(min=0.5)
        shift = shift - torch.log(counts / counts.sum()).float()
    return shift


def _shifted(model: FeatureClassifier, shift: torch.Tensor | None, what: str) -> FeatureClassifier:
    if shift is None:
        return model
    try:
        return adjust_bias(model, shift)
    except ValueError:
        log.warning("%s: route prior needs a linear classifier; left unshifted", what)
        return model


def _train_regular(rem: _Remaining, c: int, cfg: RunConfig, generator: torch.Generator,
                   base: FeatureClassifier | None, base_name: str, train_counts: np.ndarray,
                   split_labels: tuple):
    """The regular classifier of the remainder: trained on it (research), or the base classifier
    with the remainder's label prior (prior shift: no data removed)."""
    if cfg.cascade.regular == "prior_shift" and base is not None:
        labels, reaches = route_shares_source(cfg, rem.tr, rem.va, *split_labels)
        shift = route_log_prior(labels, reaches, c) - implied_log_prior(base_name, train_counts)
        try:
            model = adjust_bias(base, shift)
            log.info("regular classifier: base %s with the remainder's label prior (prior shift)", base_name)
            return model, None, None, []
        except ValueError:
            log.warning("regular classifier: prior shift needs a linear base classifier; training one instead")
    init = base.state_dict() if (cfg.cascade.warm_start and base is not None) else None
    res = train_classifier(ClassifierData(rem.x_tr[rem.tr], rem.y_tr[rem.tr]),
                           ClassifierData(rem.x_va[rem.va], rem.y_va[rem.va]),
                           c, cfg.regcls, generator, uses_prior=False, desc="regular classifier", init_state=init)
    model = res.model
    if cfg.cascade.route_prior:
        labels, reaches = route_shares_source(cfg, rem.tr, rem.va, *split_labels)
        shift = route_shift(cfg.regcls, rem.y_tr[rem.tr], labels, reaches, c).to(rem.x_tr.device)
        model = _shifted(model, shift, "regular classifier")
    return model, res.best_epoch, res.val_accuracy, res.history


def _depth_report(d: int, f: _Filter, rem: _Remaining, res, mix, c: int) -> dict:
    exiting_counts = torch.bincount(f.yd[f.out_tr].cpu(), minlength=c)
    return {
        "depth": d, "threshold": f.threshold, "train_samples": int(rem.tr.numel()), "train_exit": int(f.out_tr.numel()),
        "val_samples": int(rem.va.numel()), "val_exit": int(f.out_va.numel()),
        "flow_epoch": f.flow.best_epoch, "pure_clusters": f.flow.quality.good_clusters,
        "used_clusters": f.flow.quality.used_clusters, "cluster_purity": f.flow.quality.mean_purity,
        "largest_cluster": f.flow.quality.max_size, "classifier_epoch": res.best_epoch,
        "classifier_val_acc": res.val_accuracy, "exit_classes": int((exiting_counts > 0).sum()),
        "train_exit_class_counts": exiting_counts.tolist(), "base_mix_weight": mix,
    }


def train_dlsa(splits: Splits, cfg: RunConfig, device: torch.device, generator: torch.Generator,
               base: FeatureClassifier | None = None) -> DLSATrainResult:
    """base: the classifier the cascade options build on (cfg.cascade.base), trained with the baselines."""
    c = splits.num_classes
    x_tr, y_tr = _tensors(splits.train, device)
    x_va, y_va = _tensors(splits.val, device)
    rem = _Remaining(x_tr, y_tr, x_va, y_va, torch.arange(len(splits.train), device=device),
                     torch.arange(len(splits.val), device=device))
    train_exit = np.zeros(len(splits.train), dtype=np.int64)
    val_exit = np.zeros(len(splits.val), dtype=np.int64)
    min_remaining = cfg.filter.min_remaining or 2 * c
    stages, reports, histories = [], [], {}

    for d in range(1, cfg.max_depth + 1):
        if rem.tr.numel() < min_remaining:
            log.info("depth %d: only %d training samples remain (< %d); stopping the recursion",
                     d, rem.tr.numel(), min_remaining)
            break
        f = _train_filter(rem, d, c, cfg, generator)
        res, clf, mix = _train_exit_classifier(rem, f, d, c, cfg, generator, base,
                                               (splits.train.labels, splits.val.labels))
        stage = DepthStage(f.flow.model, clf, c).to(device)
        stage.threshold.fill_(f.threshold)
        stage.cluster_prior.copy_(f.priors)
        stages.append(stage)
        train_exit[rem.tr[f.out_tr].cpu().numpy()] = d
        val_exit[rem.va[f.out_va].cpu().numpy()] = d
        reports.append(_depth_report(d, f, rem, res, mix, c))
        histories[f"depth{d}_flow"] = f.flow.history
        histories[f"depth{d}_cacls"] = res.history
        rem.tr, rem.va = rem.tr[f.cont_tr], rem.va[f.cont_va]

    if not stages:
        raise DLSAError("no depth was trained: too few training samples (see filter.min_remaining)")
    depth = len(stages)
    reg, epoch, val_acc, history = _train_regular(rem, c, cfg, generator, base, cfg.cascade.base,
                                                  splits.train_counts(), (splits.train.labels, splits.val.labels))
    histories["regcls"] = history
    train_exit[rem.tr.cpu().numpy()] = depth + 1
    val_exit[rem.va.cpu().numpy()] = depth + 1
    reports.append({"depth": depth + 1, "regular": True, "train_samples": int(rem.tr.numel()),
                    "val_samples": int(rem.va.numel()), "classifier_epoch": epoch, "classifier_val_acc": val_acc,
                    "train_class_counts": torch.bincount(y_tr[rem.tr].cpu(), minlength=c).tolist(),
                    "prior_shift": cfg.cascade.regular == "prior_shift"})
    model = DLSAModel(stages, reg, c).to(device).eval()
    return DLSATrainResult(model, reports, train_exit, val_exit, histories)


def uses_base(cfg: RunConfig) -> bool:
    """Whether the cascade options need the base classifier."""
    o = cfg.cascade
    return o.warm_start or o.mix_base or o.regular == "prior_shift"
