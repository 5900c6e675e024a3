"""A classifier's learning rate chosen on val from a list (``cacls`` / ``regcls`` ``optim.lr: [0.05, 0.1]``).

Every candidate trains from the same start: the states of the generators it draws from (batch order,
initial weights; training/random_streams.py) are put back before each, so a candidate trains exactly
as a run with that single learning rate would.  The global generator is never written: without an
init generator, the weights' stream starts from a copy of the global state (read, not changed).  Each selects
its own epoch on val as usual (val accuracy); of the candidates' selected models the one with the lowest
class-balanced val log-loss is kept (the continuous score the package ranks models by, dlsa_prod.selection;
val accuracy on 200 images ties often and, with a 0.05 / 0.1 list, picked the worse lr for cRT in every seed
on Fashion-MNIST-LT r100: docs/benchmarks.md, "Schedules"), ties broken by the higher val accuracy, then by
the list order.
With no val samples the first candidate is kept.  The generators are left as after the last candidate.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from ..selection import val_scores
from .classifier_data import predict_logits

log = logging.getLogger(__name__)


def learning_rates(cfg) -> list[float]:
    """The candidate learning rates of a classifier config (one when optim.lr is a number)."""
    lr = cfg.optim.lr
    return [float(x) for x in lr] if isinstance(lr, (list, tuple)) else [float(lr)]


def val_log_loss(model, val, num_classes: int) -> float:
    """Class-balanced log-loss of the model on val (lower is better)."""
    logits = predict_logits(model, val).float().cpu().numpy()
    return val_scores(logits, val.y.cpu().numpy(), num_classes)["balanced_log_loss"]


def train_over_learning_rates(train_one: Callable, train, val, num_classes: int, cfg, generator: torch.Generator,
                              desc: str, init_generator: torch.Generator | None = None, **kwargs):
    """train_one(train, val, num_classes, cfg_with_one_lr, generator, desc=..., init_generator=..., **kwargs)
    per candidate; the val-best result (see the module docstring)."""
    rates = learning_rates(cfg)
    if init_generator is None:  # the weights' stream from the global state, which stays as it is
        init_generator = torch.Generator()
        init_generator.set_state(torch.get_rng_state())
    start = (generator.get_state(), init_generator.get_state())
    best, best_key, keys = None, None, []
    for lr in rates:
        generator.set_state(start[0])
        init_generator.set_state(start[1])
        one = cfg.model_copy(deep=True)
        one.optim.lr = lr
        res = train_one(train, val, num_classes, one, generator, desc=f"{desc} (lr {lr:g})",
                        init_generator=init_generator, **kwargs)
        if len(val) == 0 or res.val_accuracy is None:
            key = (0.0, 0.0)
        else:
            key = (-val_log_loss(res.model, val, num_classes), res.val_accuracy)
        keys.append(key)
        if best is None or key > best_key:
            best, best_key, best_lr = res, key, lr
    log.info("%s: lr %g chosen on val from %s (balanced val log-loss / val acc: %s)", desc, best_lr, rates,
             ", ".join(f"{-a:.4f}/{b:.4f}" for a, b in keys))
    best.learning_rate = best_lr
    return best
