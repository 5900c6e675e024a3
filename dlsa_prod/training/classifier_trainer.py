"""Train a feature classifier (cluster-aided or regular) with CE or balanced softmax.

The epoch is selected by accuracy on the validation samples routed to this classifier,
evaluated every ``eval_freq`` epochs (never on test).  Balanced softmax uses the class counts
of this classifier's own training subset (floored at 1).

Hot loop: one on-device permutation (or class-balanced draw) per epoch; each step gathers its
rows into a reused buffer; losses are summed on the device and read once per epoch; fused SGD
on CUDA.  Data-parallel (torchrun): every rank draws the same order and computes its contiguous
share of each batch; the loss is normalised by the global batch and gradients are summed.
Validation is sharded and the correct counts summed, so every rank selects the same epoch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..config import ClassifierConfig
from ..errors import DLSAError
from ..models import FeatureClassifier
from .grad_sync import GradientSync
from .losses import balanced_softmax_loss, classification_loss
from .classifier_data import ClassifierData, predict_logits  # noqa: F401 (re-exported)
from .lr_candidates import train_over_learning_rates
from .options import TrainOptions, resolved
from .random_streams import drawing_from
from .precision import forward_autocast, matmul_precision
from .samplers import ClassIndex, device_generator, epoch_order
from .schedule import classifier_schedule, clip_value
from .select_loop import EvalResult, LoopSpec, train_and_select

log = logging.getLogger(__name__)


@dataclass
class ClassifierTrainResult:
    model: FeatureClassifier
    best_epoch: int
    val_accuracy: float | None
    history: list[dict] = field(default_factory=list)
    stopped_epoch: int | None = None
    learning_rate: float | None = None  # the one chosen on val when optim.lr lists candidates


def _hint(cfg: ClassifierConfig, key: str) -> str:
    return f"lower {key}.optim.lr (now {cfg.optim.lr}) or set {key}.optim.grad_clip (now {cfg.optim.grad_clip})"


def train_classifier(train: ClassifierData, val: ClassifierData, num_classes: int, cfg: ClassifierConfig,
                     generator: torch.Generator, uses_prior: bool | None = None, desc: str = "classifier",
                     init_state: Optional[dict] = None, options: TrainOptions | None = None,
                     config_key: str | None = None, init_generator: torch.Generator | None = None) -> ClassifierTrainResult:
    """init_state: a state dict loaded into the model before training (warm start).  options:
    precision / compile / process group (default: TrainOptions()).  config_key: the config
    section named in messages (default: regcls when uses_prior is False, else cacls).  generator:
    the batch order; init_generator: the initial weights (None: the global generator; see
    random_streams.py)."""
    if len(train) == 0:
        raise DLSAError(f"{desc}: no training samples reach this classifier; adjust the filter settings")
    if isinstance(cfg.optim.lr, list):  # candidates: each trained, the val-best kept (lr_candidates.py)
        return train_over_learning_rates(train_classifier, train, val, num_classes, cfg, generator, desc,
                                         uses_prior=uses_prior, init_state=init_state, options=options,
                                         config_key=config_key, init_generator=init_generator)
    opts = resolved(options)
    dist = opts.dist
    key = config_key or ("regcls" if uses_prior is False else "cacls")
    device = train.x.device
    with drawing_from(init_generator):
        model = FeatureClassifier(train.x.shape[1], num_classes, cfg.model, uses_prior)
    model = model.to(device)
    if init_state is not None:
        model.load_state_dict(init_state)
    dist.sync_module_(model)  # identical start on every rank
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                          weight_decay=cfg.model.weight_decay, **fused)
    counts = torch.bincount(train.y, minlength=num_classes).clamp(min=1).float()
    log_prior = torch.log(counts / counts.sum())
    bsm = cfg.loss.type == "BSM"
    balanced = cfg.data.sampler.name == "class-balanced"
    index = ClassIndex(train.y, num_classes) if balanced else None
    gen = device_generator(generator, device)
    clip = clip_value(cfg.optim)
    smoothing = cfg.loss.label_smoothing
    has_bn = any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())
    grads = GradientSync(model, dist)
    forward = torch.compile(model) if opts.compile else model
    bs = cfg.data.batchsize
    rows_buf = torch.empty(bs, train.x.shape[1], device=device, dtype=train.x.dtype)

    def run_epoch(epoch: int) -> tuple[torch.Tensor, int]:
        total = torch.zeros((), device=device, dtype=torch.float32)
        order = epoch_order(train.y, num_classes, balanced, gen, index)
        steps = 0
        for s in range(0, len(train), bs):
            e = min(s + bs, len(train))
            if e - s < 2 and has_bn:
                continue  # BatchNorm cannot train on a single sample
            a, b = dist.shard_bounds(e - s) if dist.enabled else (0, e - s)
            idx = order[s + a:s + b]
            xb = torch.index_select(train.x, 0, idx, out=rows_buf[:idx.shape[0]])
            prior = None if train.prior is None else train.prior.index_select(0, idx)
            zb = None if train.z is None else train.z.index_select(0, idx)
            with forward_autocast(opts.precision, device):
                logits = forward(xb, prior, zb)
            yb = train.y.index_select(0, idx)
            denom = (e - s) if dist.enabled else None
            if bsm:
                loss = balanced_softmax_loss(logits.float(), yb, log_prior, smoothing, denom)
            else:
                loss = classification_loss(logits.float(), yb, smoothing, denom)
            opt.zero_grad(set_to_none=False)
            loss.backward()
            grads.all_reduce()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            total.add_(loss.detach())
            steps += 1
        return total.reshape(1), steps

    val_shard = val.rows(*dist.shard_bounds(len(val))) if dist.enabled else val

    def evaluate(epoch: int) -> EvalResult:
        if dist.enabled and has_bn:
            dist.sync_module_(model)  # per-rank batch-norm running stats: evaluate rank 0's model
        correct = (predict_logits(model, val_shard).argmax(1) == val_shard.y).sum().double().reshape(1)
        acc = float(dist.all_reduce_(correct)) / len(val)
        return EvalResult(acc, {"val_acc": acc}, acc)

    epochs, eval_freq, optim = classifier_schedule(cfg, len(train))
    spec = LoopSpec(desc, epochs, eval_freq, optim, ("loss",), _hint(cfg, key), dist=dist)
    with matmul_precision(opts.precision, device):
        sel = train_and_select(model, opt, spec, run_epoch, evaluate if len(val) else None)
    if dist.enabled and has_bn:
        dist.sync_module_(model)
    best_epoch = sel.best_epoch if sel.best_epoch is not None else epochs
    log.info("%s: %d train / %d val samples, selected epoch %d/%d (val acc %s)", desc, len(train), len(val),
             best_epoch, epochs, "n/a" if sel.best_score is None else f"{sel.best_score:.4f}")
    return ClassifierTrainResult(model, best_epoch, sel.best_score, sel.history, sel.stopped_epoch)
