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
