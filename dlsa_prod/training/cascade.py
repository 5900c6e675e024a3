"""Train the whole DLSA cascade: flow filter -> threshold -> cluster-aided classifier, per depth,
then the regular classifier on what remains.

Steps (one function each): ``_train_filter`` (flow, scores, threshold, cluster priors) ->
``_train_exit_classifier`` (cluster-aided classifier of the samples that exit) -> next depth;
then ``_train_regular``.  The options of ``cfg.cascade`` (warm start, prior shift, mixing with
the base classifier, prior temperature, per-depth proportions, route prior) build on a ``base``
classifier trained beforehand with the baselines (see baselines.py).  ``cascade.crossfit_folds``
routes the training samples as unseen samples are routed (crossfit.py); mixing weights and the
route prior strength are fixed after every classifier is trained (head_calibration.py), and so are
the soft exit gates of ``cascade.exit_gate: soft`` (exit_gate.py).

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
from ..routing import split_indices
from .baselines import has_bias_head, implied_log_prior
from .classifier_trainer import ClassifierData, train_classifier
from .cluster_stats import cluster_priors, score_flow
from .crossfit import cross_fit, held_out_route_rates
from .exit_gate import choose_gates
from .flow_trainer import train_flow
from .head_calibration import PendingHead, choose_strength, mix_with_base  # noqa: F401 (re-exported)
from .options import TrainOptions, resolved
from .random_streams import drawing_from, module_init_generator
from .train_cache import TrainCache, cached, digest

log = logging.getLogger(__name__)


def llh_threshold(loglik: torch.Tensor, llh_proportion: float | None, llh_thres: float | None) -> float:
    """Fixed threshold, or the (1 - proportion) quantile of the remaining training log-likelihoods."""
    if llh_thres is not None:
        return float(llh_thres)
    return float(torch.quantile(loglik.double().cpu(), 1.0 - llh_proportion))


def plain_threshold(thr):
    """A depth's threshold as plain Python: the float as computed, or a rule's several as a list."""
    return thr.tolist() if isinstance(thr, torch.Tensor) else float(thr)


def shown_threshold(thr) -> str:
    """A depth's threshold for the log: one number, or the range of a rule's several (routing.exits)."""
    if not isinstance(thr, torch.Tensor) or thr.dim() == 0:
        return f"{float(thr):.4g}"
    return f"{thr.numel()} values {float(thr.min()):.4g}..{float(thr.max()):.4g}"


def depth_proportion(cfg: RunConfig, depth: int) -> float | None:
    """llh_proportion of depth `depth` (1-based): cascade.llh_proportions (last repeats) or filter's."""
    per = cfg.cascade.llh_proportions
    if per and cfg.filter.llh_thres is None:
        return per[min(depth, len(per)) - 1]
    return cfg.filter.llh_proportion


def balanced_priors(priors: torch.Tensor, class_counts: torch.Tensor) -> torch.Tensor:
    """p(y | cluster) of a class-balanced set: each class's column divided by its training count,
    rows renormalised (the histogram of the long-tailed training samples, p(k | y) p_train(y),
    becomes p(k | y) -- the prior a balanced-softmax classifier does not count twice)."""
    p = priors.clamp(min=0) / class_counts.to(priors).clamp(min=1)[None, :]
    return p / p.sum(1, keepdim=True).clamp(min=1e-12)


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
    # cross-fitting: log share of each class's training samples that reach the current depth, the
    # product of the held-out exit / continue rates of the depths before (None: count on train)
    reach_log: torch.Tensor | None = None


@dataclass
class _Filter:
    xd: torch.Tensor  # the remaining training / val samples this depth was trained on
    yd: torch.Tensor
    xv: torch.Tensor
    yv: torch.Tensor
    flow: object
    threshold: float
    priors: torch.Tensor
    p_tr: torch.Tensor  # (N, C) cluster prior of each remaining training sample
    p_va: torch.Tensor
    out_tr: torch.Tensor
    cont_tr: torch.Tensor
    out_va: torch.Tensor
    cont_va: torch.Tensor
    route_exit_log: torch.Tensor | None = None  # cross-fitting: log share of each class exiting here
    route_cont_log: torch.Tensor | None = None  # ... and continuing past this depth


def _tensors(fs, device):
    return torch.from_numpy(fs.features).to(device), torch.from_numpy(fs.labels).to(device)


def _is_plain_linear(model: FeatureClassifier) -> bool:
    return all(len(h) == 1 and isinstance(h[0], nn.Linear) for h in (model.head_x, model.head_zp))


@dataclass
class _RunStreams:
    """What every step of one train_dlsa call draws from or trains with, passed explicitly: the run
    generator (samplers, folds, cluster centres), the module-init generator (MADE layers and
    classifier weights: random_streams.py), the training options and the caller's cache (or None)."""
    generator: torch.Generator
    init: torch.Generator
    options: TrainOptions
    cache: TrainCache | None


def flow_cache_key(xd: torch.Tensor, yd: torch.Tensor, sel, cfg: RunConfig, run: _RunStreams) -> str:
    """A flow reads its training (and selection) samples, the gmflow and filter sections (full dumps),
    the run and module-init generators' states, the device and the training options."""
    return digest(xd, yd, *[t for t in sel if t is not None], cfg.gmflow, cfg.filter, run.generator, run.init,
                  str(xd.device), run.options)


def _cached_train_flow(xd, yd, c, cfg: RunConfig, run: _RunStreams, sel, desc: str):
    """train_flow, or the identical flow from run.cache: its entry holds the flow and both generators'
    states after training, which a hit restores into run's generators (the global generator is
    never touched), so everything downstream is unchanged."""
    def train():
        flow = train_flow(xd, yd, c, cfg.gmflow, cfg.filter, run.generator, *sel, desc=desc, options=run.options,
                          init_generator=run.init)
        return flow, run.generator.get_state(), run.init.get_state()

    (flow, gen_state, init_state), hit = cached(run.cache, "flow", lambda: flow_cache_key(xd, yd, sel, cfg, run), train)
    if hit:
        log.info("%s: identical flow trained earlier by this caller; reused", desc)
        run.generator.set_state(gen_state)
        run.init.set_state(init_state)
    return flow


def _train_filter(rem: _Remaining, d: int, c: int, cfg: RunConfig, run: _RunStreams) -> _Filter:
    """Depth d's flow on the remaining training samples, its threshold and cluster priors, and the
    split (training samples routed by the same flow, or cross-fitted: see crossfit.py)."""
    xd, yd = rem.x_tr[rem.tr], rem.y_tr[rem.tr]
    xv, yv = rem.x_va[rem.va], rem.y_va[rem.va]
    sel = (xv, yv) if cfg.gmflow.select_on == "val" else (None, None)
    prop = depth_proportion(cfg, d)
    counts = torch.bincount(yd, minlength=c)

    def temper(p: torch.Tensor) -> torch.Tensor:
        p = balanced_priors(p, counts) if cfg.cascade.prior_balance else p
        return tempered_priors(p, cfg.cascade.prior_temperature)

    folds = cfg.cascade.crossfit_folds
    route_logs = (None, None)
    if folds:
        cf = cross_fit(xd, yd, folds, c, run.generator,
                       lambda xf, yf, f: _cached_train_flow(xf, yf, c, cfg, run, sel,
                                                            f"depth {d} flow, fold {f + 1}/{folds}"),
                       lambda ll, _cl: llh_threshold(ll, prop, cfg.filter.llh_thres), temper, cfg.cascade.crossfit_routing)
        flow, thr, priors, p_tr = cf.flow, cf.threshold, cf.priors, cf.sample_priors
        out_tr, cont_tr = torch.nonzero(cf.exits).flatten(), torch.nonzero(~cf.exits).flatten()
        exit_log, cont_log = held_out_route_rates(cf, yd, c)
        reach = torch.zeros(c) if rem.reach_log is None else rem.reach_log
        route_logs = (reach + exit_log, reach + cont_log)
        log.info("depth %d: %d-fold cross-fitted routing; fold thresholds %s", d, folds,
                 ", ".join(shown_threshold(t) for t in cf.fold_thresholds))
    else:
        flow = _cached_train_flow(xd, yd, c, cfg, run, sel, f"depth {d} flow")
        ll_tr, cl_tr = score_flow(flow.model, xd)
        thr = llh_threshold(ll_tr, prop, cfg.filter.llh_thres)
        priors = temper(cluster_priors(cl_tr.cpu(), yd.cpu(), flow.model.num_cluster, c).to(xd.device))
        p_tr = priors[cl_tr]
        out_tr, cont_tr = split_indices(ll_tr, thr, cl_tr)
    ll_va, cl_va = score_flow(flow.model, xv)
    out_va, cont_va = split_indices(ll_va, thr, cl_va)
    log.info("depth %d: threshold %s; %d/%d training and %d/%d val samples exit here",
             d, shown_threshold(thr), out_tr.numel(), rem.tr.numel(), out_va.numel(), rem.va.numel())
    return _Filter(xd, yd, xv, yv, flow, thr, priors, p_tr, priors[cl_va], out_tr, cont_tr, out_va, cont_va,
                   *route_logs)


def warm_state_for_exit(base: FeatureClassifier, target: FeatureClassifier, latent: bool = False) -> dict | None:
    """The base (XZ) classifier's weights as a start for a cluster-aided (XZP) classifier: head_x
    copied, head_zp's feature columns copied and its prior columns zero.  latent (z is the flow
    latent, not the feature): both base heads folded into head_x, head_zp all zero.  None unless
    both are linear."""
    if not (_is_plain_linear(base) and _is_plain_linear(target)):
        return None
    state = copy.deepcopy(target.state_dict())
    b = base.state_dict()
    d = b["head_zp.0.weight"].shape[1]
    state["head_x.0.weight"], state["head_x.0.bias"] = b["head_x.0.weight"].clone(), b["head_x.0.bias"].clone()
    w = torch.zeros_like(state["head_zp.0.weight"])
    if latent:
        state["head_x.0.weight"] = state["head_x.0.weight"] + b["head_zp.0.weight"]
        state["head_x.0.bias"] = state["head_x.0.bias"] + b["head_zp.0.bias"]
        state["head_zp.0.weight"], state["head_zp.0.bias"] = w, torch.zeros_like(state["head_zp.0.bias"])
        return state
    w[:, :d] = b["head_zp.0.weight"]
    state["head_zp.0.weight"], state["head_zp.0.bias"] = w, b["head_zp.0.bias"].clone()
    return state


@dataclass
class _Latents:
    """cascade.flow_latent: the depth's flow latent of the remaining training / val samples,
    standardised by the training samples' mean and std (kept in the DepthStage)."""
    z_tr: torch.Tensor
    z_va: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


@torch.no_grad()
def flow_latents(f: _Filter) -> _Latents:
    model = f.flow.model
    was = model.training
    model.eval()
    u_tr, u_va = (torch.cat([model.flow(chunk)[0] for chunk in torch.split(x, 4096)]) if len(x)
                  else x.new_zeros(0, x.shape[1]) for x in (f.xd, f.xv))
    model.train(was)
    mean, std = u_tr.mean(0), u_tr.std(0).clamp(min=1e-6)
    return _Latents((u_tr - mean) / std, (u_va - mean) / std, mean, std)


def _train_exit_classifier(rem: _Remaining, f: _Filter, d: int, c: int, cfg: RunConfig,
                           run: _RunStreams, base: FeatureClassifier | None, split_labels: tuple,
                           lat: _Latents | None = None):
    """Depth d's cluster-aided classifier on the exiting samples (epoch selected on exiting val
    samples), pending its mixing weight and route prior strength (head_calibration.py).
    lat: the flow latents as the classifier's z input (cascade.flow_latent)."""
    xd, yd, xv, yv = f.xd, f.yd, f.xv, f.yv
    fit = f.out_tr if cfg.cascade.exit_train == "routed" else slice(None)  # "all": every remaining sample
    train = ClassifierData(xd[fit], yd[fit], f.p_tr[fit], None if lat is None else lat.z_tr[fit])
    val = ClassifierData(xv[f.out_va], yv[f.out_va], f.p_va[f.out_va], None if lat is None else lat.z_va[f.out_va])
    init = None
    if cfg.cascade.warm_start and base is not None:
        with drawing_from(run.init):
            target = FeatureClassifier(xd.shape[1], c, cfg.cacls.model)
        init = warm_state_for_exit(base, target, latent=lat is not None)
        if init is None:
            log.warning("depth %d: warm start needs linear classifiers; starting from scratch", d)
    res = train_classifier(train, val, c, cfg.cacls, run.generator, desc=f"depth {d} cluster-aided", init_state=init,
                           options=run.options, init_generator=run.init)
    route = offset = None
    if cfg.cascade.route_prior:
        route = _route_log(cfg, f.route_exit_log, rem.tr[f.out_tr], rem.va[f.out_va], split_labels, c)
        offset = trained_log_prior(cfg.cacls, train.y, c)
    mixable = cfg.cascade.mix_base and base is not None and _is_plain_linear(res.model) and _is_plain_linear(base)
    head = PendingHead.build(f"depth {d} cluster-aided", res.model, val, base if mixable else None, route, offset)
    return res, head


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


def _route_log(cfg: RunConfig, cross_fitted: torch.Tensor | None, train_idx: torch.Tensor, val_idx: torch.Tensor,
               split_labels: tuple, c: int) -> torch.Tensor:
    """log route share of each class at a classifier: the cross-fitted held-out rates when there
    are any (and shares are counted on train), else counted over the split's samples reaching it."""
    if cross_fitted is not None and cfg.cascade.route_share_from == "train":
        return cross_fitted
    return route_log_prior(*route_shares_source(cfg, train_idx, val_idx, *split_labels), c)


def trained_log_prior(cfg_cls, y_subset: torch.Tensor, c: int) -> torch.Tensor | None:
    """Minus the label prior a classifier's training bakes into its logits: its subset's for plain
    CE (no re-balancing sampler), none (uniform) for the re-balanced losses."""
    if cfg_cls.loss.type == "CE" and cfg_cls.data.sampler.name == "none":
        counts = torch.bincount(y_subset.cpu(), minlength=c).double().clamp(min=0.5)
        return -torch.log(counts / counts.sum()).float()
    return None


def route_shift(cfg_cls, y_subset: torch.Tensor, labels: np.ndarray, reaches: np.ndarray,
                c: int) -> torch.Tensor:
    """Bias shift that moves a classifier trained on a routed subset to the label prior it meets at
    test time (at full route prior strength): log(route share) minus the prior its training bakes in."""
    off = trained_log_prior(cfg_cls, y_subset, c)
    shift = route_log_prior(labels, reaches, c)
    return shift if off is None else shift + off


def _train_regular(rem: _Remaining, c: int, cfg: RunConfig, run: _RunStreams,
                   base: FeatureClassifier | None, base_name: str, train_counts: np.ndarray,
                   split_labels: tuple):
    """The regular classifier of the remainder, pending its route prior strength: trained on the
    remainder (research), or the base classifier with the remainder's label prior (prior shift: no
    data removed).  Returns (head, selected epoch, val acc, history)."""
    val = ClassifierData(rem.x_va[rem.va], rem.y_va[rem.va])
    if cfg.cascade.regular == "prior_shift" and base is not None:
        if has_bias_head(base):
            log.info("regular classifier: base %s with the remainder's label prior (prior shift)", base_name)
            return PendingHead.build("regular classifier", base, val, None,
                                     _route_log(cfg, rem.reach_log, rem.tr, rem.va, split_labels, c),
                                     -implied_log_prior(base_name, train_counts)), None, None, []
        log.warning("regular classifier: prior shift needs a linear base classifier; training one instead")
    init = base.state_dict() if (cfg.cascade.warm_start and base is not None) else None
    res = train_classifier(ClassifierData(rem.x_tr[rem.tr], rem.y_tr[rem.tr]), val,
                           c, cfg.regcls, run.generator, uses_prior=False, desc="regular classifier", init_state=init,
                           options=run.options, init_generator=run.init)
    route = offset = None
    if cfg.cascade.route_prior:
        route = _route_log(cfg, rem.reach_log, rem.tr, rem.va, split_labels, c)
        offset = trained_log_prior(cfg.regcls, rem.y_tr[rem.tr], c)
    head = PendingHead.build("regular classifier", res.model, val, None, route, offset)
    return head, res.best_epoch, res.val_accuracy, res.history


def _depth_report(d: int, f: _Filter, rem: _Remaining, res, c: int) -> dict:
    exiting_counts = torch.bincount(f.yd[f.out_tr].cpu(), minlength=c)
    return {
        "depth": d, "threshold": plain_threshold(f.threshold), "train_samples": int(rem.tr.numel()), "train_exit": int(f.out_tr.numel()),
        "val_samples": int(rem.va.numel()), "val_exit": int(f.out_va.numel()),
        "flow_epoch": f.flow.best_epoch, "pure_clusters": f.flow.quality.good_clusters,
        "used_clusters": f.flow.quality.used_clusters, "cluster_purity": f.flow.quality.mean_purity,
        "largest_cluster": f.flow.quality.max_size, "classifier_epoch": res.best_epoch,
        "classifier_val_acc": res.val_accuracy, "exit_classes": int((exiting_counts > 0).sum()),
        "train_exit_class_counts": exiting_counts.tolist(),
    }


def train_dlsa(splits: Splits, cfg: RunConfig, device: torch.device, generator: torch.Generator,
               base: FeatureClassifier | None = None, *, options: TrainOptions | None = None,
               cache: TrainCache | None = None, init_generator: torch.Generator | None = None) -> DLSATrainResult:
    """base: the classifier the cascade options build on (cfg.cascade.base), trained with the baselines.
    generator: the run's stream (samplers, folds, cluster centres); init_generator: the modules'
    initial weights (default: module_init_generator(cfg.seed)); the global generator is neither read
    nor changed.  options: see training/options.py; cache: see train_cache.py (None: train every flow)."""
    run = _RunStreams(generator, module_init_generator(cfg.seed) if init_generator is None else init_generator,
                      resolved(options), cache)
    c = splits.num_classes
    x_tr, y_tr = _tensors(splits.train, device)
    x_va, y_va = _tensors(splits.val, device)
    rem = _Remaining(x_tr, y_tr, x_va, y_va, torch.arange(len(splits.train), device=device),
                     torch.arange(len(splits.val), device=device))
    train_exit = np.zeros(len(splits.train), dtype=np.int64)
    val_exit = np.zeros(len(splits.val), dtype=np.int64)
    min_remaining = cfg.filter.min_remaining or 2 * c
    stages, reports, histories, heads = [], [], {}, []

    for d in range(1, cfg.max_depth + 1):
        if rem.tr.numel() < min_remaining:
            log.info("depth %d: only %d training samples remain (< %d); stopping the recursion",
                     d, rem.tr.numel(), min_remaining)
            break
        f = _train_filter(rem, d, c, cfg, run)
        lat = flow_latents(f) if cfg.cascade.flow_latent else None
        res, head = _train_exit_classifier(rem, f, d, c, cfg, run, base,
                                           (splits.train.labels, splits.val.labels), lat)
        heads.append(head)
        stage = DepthStage(f.flow.model, head.model, c, gated=cfg.cascade.exit_gate == "soft",
                           latent=lat is not None).to(device)
        if lat is not None:
            stage.latent_mean.copy_(lat.mean)
            stage.latent_std.copy_(lat.std)
        stage.threshold = torch.as_tensor(f.threshold, dtype=torch.float32, device=device)
        stage.cluster_prior.copy_(f.priors)
        stages.append(stage)
        train_exit[rem.tr[f.out_tr].cpu().numpy()] = d
        val_exit[rem.va[f.out_va].cpu().numpy()] = d
        reports.append(_depth_report(d, f, rem, res, c))
        histories[f"depth{d}_flow"] = f.flow.history
        histories[f"depth{d}_cacls"] = res.history
        rem.tr, rem.va = rem.tr[f.cont_tr], rem.va[f.cont_va]
        if f.route_cont_log is not None:
            rem.reach_log = f.route_cont_log

    if not stages:
        raise DLSAError("no depth was trained: too few training samples (see filter.min_remaining)")
    depth = len(stages)
    reg_head, epoch, val_acc, history = _train_regular(rem, c, cfg, run, base, cfg.cascade.base,
                                                       splits.train_counts(), (splits.train.labels, splits.val.labels))
    heads.append(reg_head)
    histories["regcls"] = history
    tau, mixes = choose_strength(heads, cfg.cascade.route_prior_strength, cfg.cascade.calibrate_by)
    for stage, head, report in zip(stages, heads, reports):
        stage.classifier = head.fold(base, mixes[head.name], tau).to(device)
        report["base_mix_weight"] = mixes[head.name]
    reg = reg_head.fold(base, None, tau)
    train_exit[rem.tr.cpu().numpy()] = depth + 1
    val_exit[rem.va.cpu().numpy()] = depth + 1
    reports.append({"depth": depth + 1, "regular": True, "train_samples": int(rem.tr.numel()),
                    "val_samples": int(rem.va.numel()), "classifier_epoch": epoch, "classifier_val_acc": val_acc,
                    "train_class_counts": torch.bincount(y_tr[rem.tr].cpu(), minlength=c).tolist(),
                    "prior_shift": cfg.cascade.regular == "prior_shift",
                    "route_prior_strength": tau if reg_head.route is not None or cfg.cascade.route_prior else None})
    model = DLSAModel(stages, reg, c).to(device).eval()
    if cfg.cascade.exit_gate == "soft":
        for stage, report, (slope, offset) in zip(model.stages, reports, choose_gates(model, x_va, y_va)):
            stage.gate_slope.fill_(slope)
            stage.gate_offset.fill_(offset)
            report["exit_gate"] = {"slope": slope, "offset": offset}
    return DLSATrainResult(model, reports, train_exit, val_exit, histories)


def uses_base(cfg: RunConfig) -> bool:
    """Whether the cascade options need the base classifier."""
    o = cfg.cascade
    return o.warm_start or o.mix_base or o.regular == "prior_shift"
