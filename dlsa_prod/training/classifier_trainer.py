"""Train a feature classifier (cluster-aided or regular) with CE or balanced softmax.

The epoch is selected by accuracy on the validation samples routed to this classifier,
evaluated every ``eval_freq`` epochs (never on test).  Balanced softmax uses the class counts
of this classifier's own training subset (floored at 1).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import ClassifierConfig
from ..errors import DLSAError
from ..models import FeatureClassifier
from .losses import balanced_softmax_loss
from .samplers import epoch_batches
from .schedule import clip_value, set_lr

log = logging.getLogger(__name__)


@dataclass
class ClassifierData:
    x: torch.Tensor
    y: torch.Tensor
    prior: torch.Tensor | None = None  # (N, C) cluster prior rows, for XZP

    def __len__(self) -> int:
        return int(self.y.shape[0])


@torch.no_grad()
def predict_logits(model: FeatureClassifier, data: ClassifierData, batch_size: int = 4096) -> torch.Tensor:
    was = model.training
    model.eval()
    outs = []
    for i in range(0, len(data), batch_size):
        p = None if data.prior is None else data.prior[i:i + batch_size]
        outs.append(model(data.x[i:i + batch_size], p))
    model.train(was)
    return torch.cat(outs) if outs else data.x.new_zeros(0, model.head_x[-1].weight.shape[0])


@dataclass
class ClassifierTrainResult:
    model: FeatureClassifier
    best_epoch: int
    val_accuracy: float | None
    history: list[dict] = field(default_factory=list)


def train_classifier(train: ClassifierData, val: ClassifierData, num_classes: int, cfg: ClassifierConfig,
                     generator: torch.Generator, uses_prior: bool | None = None, desc: str = "classifier") -> ClassifierTrainResult:
    if len(train) == 0:
        raise DLSAError(f"{desc}: no training samples reach this classifier; adjust the filter settings")
    device = train.x.device
    model = FeatureClassifier(train.x.shape[1], num_classes, cfg.model, uses_prior).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                          weight_decay=cfg.optim.weight_decay + cfg.model.weight_decay)
    counts = torch.bincount(train.y.cpu(), minlength=num_classes).clamp(min=1).float()
    log_prior = torch.log(counts / counts.sum()).to(device)
    balanced = cfg.data.sampler.name == "class-balanced"
    clip = clip_value(cfg.optim)
    smoothing = cfg.loss.label_smoothing

    best_state, best_acc, best_epoch = None, None, cfg.optim.epoch
    history = []
    bar = tqdm(range(cfg.optim.epoch), desc=desc, unit="ep", leave=False, dynamic_ncols=True, disable=None)
    for epoch in bar:
        model.train()
        lr = set_lr(opt, epoch, cfg.optim)
        total, steps = 0.0, 0
        for idx in epoch_batches(train.y.cpu(), num_classes, cfg.data.batchsize, balanced, generator):
            if idx.numel() < 2 and any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules()):
                continue  # BatchNorm cannot train on a single sample
            idx = idx.to(device)
            prior = None if train.prior is None else train.prior[idx]
            logits = model(train.x[idx], prior)
            if cfg.loss.type == "BSM":
                loss = balanced_softmax_loss(logits, train.y[idx], log_prior, smoothing)
            else:
                loss = F.cross_entropy(logits, train.y[idx], label_smoothing=smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            total += float(loss.detach())
            steps += 1
        row = {"epoch": epoch + 1, "lr": lr, "loss": total / max(steps, 1)}
        if len(val) and ((epoch + 1) % cfg.eval_freq == 0 or epoch + 1 == cfg.optim.epoch):
            acc = float((predict_logits(model, val).argmax(1) == val.y).float().mean())
            row["val_acc"] = acc
            if best_acc is None or acc > best_acc:
                best_state, best_acc, best_epoch = copy.deepcopy(model.state_dict()), acc, epoch + 1
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", val=f"{row.get('val_acc', float('nan')):.3f}")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    log.info("%s: %d train / %d val samples, selected epoch %d/%d (val acc %s)", desc, len(train), len(val),
             best_epoch, cfg.optim.epoch, "n/a" if best_acc is None else f"{best_acc:.4f}")
    return ClassifierTrainResult(model, best_epoch, best_acc, history)
