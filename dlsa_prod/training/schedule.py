"""Per-epoch learning-rate factor: linear warm-up, then cosine or step decay (x0.1 at each step)."""

from __future__ import annotations

import math

from ..config import OptimConfig


def lr_factor(epoch: int, cfg: OptimConfig) -> float:
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return (epoch + 1) / cfg.warmup_epochs
    if cfg.cos_lr:
        span = max(cfg.epoch - cfg.warmup_epochs, 1)
        t = (epoch - cfg.warmup_epochs) / span
        return 0.5 * (1 + math.cos(math.pi * t))
    return 0.1 ** sum(1 for s in cfg.steps if epoch >= s)


def set_lr(optimizer, epoch: int, cfg: OptimConfig) -> float:
    lr = cfg.lr * lr_factor(epoch, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def clip_value(cfg: OptimConfig) -> float | None:
    if cfg.grad_clip is True:
        return 1.0
    if cfg.grad_clip is False or cfg.grad_clip is None:
        return None
    return float(cfg.grad_clip) if float(cfg.grad_clip) > 0 else None


def classifier_schedule(cfg, n_train: int) -> tuple[int, int, "OptimConfig"]:
    """(epochs, eval_freq, optim) a classifier trains with on n_train samples.  With ``optim.updates``
    the epoch count is ceil(updates / batches per epoch) and the val check runs at least 10 times
    (every min(eval_freq, epochs // 10) epochs, at least 1); otherwise the config's epoch and eval_freq."""
    if cfg.optim.updates is None:
        return cfg.optim.epoch, cfg.eval_freq, cfg.optim
    per_epoch = max(1, math.ceil(n_train / cfg.data.batchsize))
    epochs = max(1, math.ceil(cfg.optim.updates / per_epoch))
    return epochs, max(1, min(cfg.eval_freq, epochs // 10)), cfg.optim.model_copy(update={"epoch": epochs})
