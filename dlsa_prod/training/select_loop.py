"""The train-and-select loop shared by the flow and the classifier trainers.

Per epoch: set the learning rate, run the epoch's steps (the trainer's ``run_epoch``), read the
loss sums once (the only host synchronisation of a training epoch), check them, and every
``eval_freq`` epochs (and at the last) score the model and keep a copy of the best state.

Non-finite losses: the epoch's loss sums are checked once per epoch (never per step).  When a
sum is NaN or inf, training stops with one line naming the epoch and the setting to change; if
an earlier epoch was already selected it is kept (a warning), otherwise it is an error.
Evaluations may return ``None`` for "this epoch cannot be selected" (e.g. non-finite scores).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..config import OptimConfig
from ..distributed import DistContext
from ..errors import DLSAError
from ..progress import progress
from .schedule import set_lr

log = logging.getLogger(__name__)


class BestState:
    """A copy of a module's state dict, allocated at the first save and overwritten in place."""

    def __init__(self):
        self.state: Optional[dict[str, torch.Tensor]] = None

    def save(self, module: torch.nn.Module) -> None:
        src = module.state_dict()
        if self.state is None:
            self.state = {k: v.detach().clone() for k, v in src.items()}
        else:
            for k, v in src.items():
                self.state[k].copy_(v)

    def restore(self, module: torch.nn.Module) -> None:
        if self.state is not None:
            module.load_state_dict(self.state)


@dataclass
class EvalResult:
    score: Optional[float]  # higher is better; None: this epoch cannot be selected
    row: dict = field(default_factory=dict)  # extra history columns
    info: object = None  # kept for the selected epoch (e.g. the cluster quality)


@dataclass
class Selection:
    best_epoch: Optional[int]  # None when no epoch could be evaluated (the last epoch is kept)
    best_score: Optional[float]
    best_info: object
    history: list[dict]
    stopped_epoch: Optional[int] = None  # epoch whose loss became non-finite


@dataclass
class LoopSpec:
    desc: str
    epochs: int
    eval_freq: int
    optim: OptimConfig
    loss_names: tuple[str, ...]
    hint: str  # what to change when the loss becomes non-finite
    later_wins_ties: bool = False
    dist: DistContext = field(default_factory=DistContext)


def _postfix(row: dict) -> dict:
    out = {"loss": f"{row.get('loss', float('nan')):.3f}"}
    for k in ("good_clusters", "val_acc"):
        if k in row:
            out[k] = row[k] if isinstance(row[k], int) else f"{row[k]:.3f}"
    return out


def train_and_select(module: torch.nn.Module, optimizer: torch.optim.Optimizer, spec: LoopSpec,
                     run_epoch: Callable[[int], tuple[torch.Tensor, int]],
                     evaluate: Optional[Callable[[int], EvalResult]]) -> Selection:
    """run_epoch(epoch) -> (loss sums as one device tensor ordered like spec.loss_names, steps);
    evaluate(epoch) -> EvalResult, or evaluate None: the last epoch is kept.  The module is left
    holding the selected state, in eval mode."""
    best = BestState()
    best_score = best_epoch = best_info = stopped = None
    history: list[dict] = []
    bar = progress(range(spec.epochs), desc=spec.desc, unit="epoch")
    for epoch in bar:
        module.train()
        lr = set_lr(optimizer, epoch, spec.optim)
        sums, steps = run_epoch(epoch)
        values = spec.dist.all_reduce_(sums.detach().double()).tolist()  # one host read per epoch
        row = {"epoch": epoch + 1, "lr": lr, **{n: v / max(steps, 1) for n, v in zip(spec.loss_names, values)}}
        bad = [(n, v) for n, v in zip(spec.loss_names, values) if not math.isfinite(v)]
        if bad:
            stopped = epoch + 1
            row["stopped"] = "non-finite loss"
            history.append(row)
            term = "" if bad[0][0] == "loss" else f" ({bad[0][0]} term)"
            msg = f"{spec.desc}: the training loss{term} became {bad[0][1]} in epoch {epoch + 1}; {spec.hint}"
            if best.state is None:
                raise DLSAError(msg)
            log.warning("%s (training stopped; keeping the selected epoch %d)", msg, best_epoch)
            break
        if evaluate is not None and ((epoch + 1) % spec.eval_freq == 0 or epoch + 1 == spec.epochs):
            res = evaluate(epoch)
            row.update(res.row)
            if res.score is not None and (best_score is None or res.score > best_score
                                          or (spec.later_wins_ties and res.score == best_score)):
                best.save(module)
                best_score, best_epoch, best_info = res.score, epoch + 1, res.info
        history.append(row)
        bar.set_postfix(_postfix(row))
    bar.close()
    if evaluate is None or best.state is None:
        if stopped is not None:  # no selectable epoch before the loss went non-finite
            raise DLSAError(f"{spec.desc}: the loss became non-finite in epoch {stopped} before any epoch "
                            f"could be selected; {spec.hint}")
    else:
        best.restore(module)
    module.eval()
    return Selection(best_epoch, best_score, best_info, history, stopped)
