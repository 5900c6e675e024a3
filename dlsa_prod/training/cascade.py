"""Train the whole DLSA cascade: flow filter -> threshold -> cluster-aided classifier, per depth,
then the regular classifier on what remains; plus the plain baseline classifiers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import RunConfig
from ..data import Splits
from ..errors import DLSAError
from ..models import DepthStage, DLSAModel, FeatureClassifier
from ..ops import filter_split
from .classifier_trainer import ClassifierData, train_classifier
from .cluster_stats import cluster_priors, score_flow
from .flow_trainer import train_flow

log = logging.getLogger(__name__)


def llh_threshold(loglik: torch.Tensor, llh_proportion: float | None, llh_thres: float | None) -> float:
    """Fixed threshold, or the (1 - proportion) quantile of the remaining training log-likelihoods."""
    if llh_thres is not None:
        return float(llh_thres)
    return float(torch.quantile(loglik.double().cpu(), 1.0 - llh_proportion))


@dataclass
class DLSATrainResult:
    model: DLSAModel
    depth_reports: list[dict]
    train_exit_depth: np.ndarray  # exit depth of each training sample as split during training
    val_exit_depth: np.ndarray
    histories: dict = field(default_factory=dict)


def _tensors(fs, device):
    return torch.from_numpy(fs.features).to(device), torch.from_numpy(fs.labels).to(device)


def train_dlsa(splits: Splits, cfg: RunConfig, device: torch.device, generator: torch.Generator) -> DLSATrainResult:
    c = splits.num_classes
    x_tr, y_tr = _tensors(splits.train, device)
    x_va, y_va = _tensors(splits.val, device)
    rem_tr = torch.arange(len(splits.train), device=device)
    rem_va = torch.arange(len(splits.val), device=device)
    train_exit = np.full(len(splits.train), 0, dtype=np.int64)
    val_exit = np.full(len(splits.val), 0, dtype=np.int64)
    min_remaining = cfg.filter.min_remaining or 2 * c
    stages, reports, histories = [], [], {}

    for d in range(1, cfg.max_depth + 1):
        if rem_tr.numel() < min_remaining:
            log.info("depth %d: only %d training samples remain (< %d); stopping the recursion",
                     d, rem_tr.numel(), min_remaining)
            break
        xd, yd = x_tr[rem_tr], y_tr[rem_tr]
        xv, yv = x_va[rem_va], y_va[rem_va]
        sel = (xv, yv) if cfg.gmflow.select_on == "val" else (None, None)
        flow = train_flow(xd, yd, c, cfg.gmflow, cfg.filter, generator, *sel, desc=f"depth {d} flow")
        ll_tr, cl_tr = score_flow(flow.model, xd)
        ll_va, cl_va = score_flow(flow.model, xv)
        thr = llh_threshold(ll_tr, cfg.filter.llh_proportion, cfg.filter.llh_thres)
        priors = cluster_priors(cl_tr.cpu(), yd.cpu(), flow.model.num_cluster, c).to(device)
        out_tr, cont_tr = filter_split(ll_tr, thr)
        out_va, cont_va = filter_split(ll_va, thr)
        log.info("depth %d: threshold %.4g; %d/%d training and %d/%d val samples exit here",
                 d, thr, out_tr.numel(), rem_tr.numel(), out_va.numel(), rem_va.numel())
        cls = train_classifier(
            ClassifierData(xd[out_tr], yd[out_tr], priors[cl_tr[out_tr]]),
            ClassifierData(xv[out_va], yv[out_va], priors[cl_va[out_va]]),
            c, cfg.cacls, generator, desc=f"depth {d} cluster-aided")
        stage = DepthStage(flow.model, cls.model, c).to(device)
        stage.threshold.fill_(thr)
        stage.cluster_prior.copy_(priors)
        stages.append(stage)
        train_exit[rem_tr[out_tr].cpu().numpy()] = d
        val_exit[rem_va[out_va].cpu().numpy()] = d
        exiting_counts = torch.bincount(yd[out_tr].cpu(), minlength=c)
        reports.append({
            "depth": d, "threshold": thr, "train_samples": int(rem_tr.numel()), "train_exit": int(out_tr.numel()),
            "val_samples": int(rem_va.numel()), "val_exit": int(out_va.numel()),
            "flow_epoch": flow.best_epoch, "pure_clusters": flow.quality.good_clusters,
            "used_clusters": flow.quality.used_clusters, "cluster_purity": flow.quality.mean_purity,
            "largest_cluster": flow.quality.max_size, "classifier_epoch": cls.best_epoch,
            "classifier_val_acc": cls.val_accuracy, "exit_classes": int((exiting_counts > 0).sum()),
        })
        histories[f"depth{d}_flow"] = flow.history
        histories[f"depth{d}_cacls"] = cls.history
        rem_tr, rem_va = rem_tr[cont_tr], rem_va[cont_va]

    if not stages:
        raise DLSAError("no depth was trained: too few training samples (see filter.min_remaining)")
    depth = len(stages)
    reg = train_classifier(ClassifierData(x_tr[rem_tr], y_tr[rem_tr]), ClassifierData(x_va[rem_va], y_va[rem_va]),
                           c, cfg.regcls, generator, uses_prior=False, desc="regular classifier")
    histories["regcls"] = reg.history
    train_exit[rem_tr.cpu().numpy()] = depth + 1
    val_exit[rem_va.cpu().numpy()] = depth + 1
    reports.append({"depth": depth + 1, "regular": True, "train_samples": int(rem_tr.numel()),
                    "val_samples": int(rem_va.numel()), "classifier_epoch": reg.best_epoch,
                    "classifier_val_acc": reg.val_accuracy})
    model = DLSAModel(stages, reg.model, c).to(device).eval()
    return DLSATrainResult(model, reports, train_exit, val_exit, histories)


def train_baseline(splits: Splits, cfg: RunConfig, loss_type: str, device: torch.device,
                   generator: torch.Generator) -> FeatureClassifier:
    """The plain classifier of the regular classifier's kind on all training data (no DLSA)."""
    ccfg = cfg.regcls.model_copy(deep=True)
    ccfg.loss.type = loss_type
    x_tr, y_tr = _tensors(splits.train, device)
    x_va, y_va = _tensors(splits.val, device)
    res = train_classifier(ClassifierData(x_tr, y_tr), ClassifierData(x_va, y_va), splits.num_classes, ccfg,
                           generator, uses_prior=False, desc=f"plain {loss_type} classifier")
    return res.model
