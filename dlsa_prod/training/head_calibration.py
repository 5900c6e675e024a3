"""The cascade's classifiers before their post-hoc parts are fixed: mixing with the base classifier
and the route prior's strength, both chosen on val, then folded into each linear head.

Route prior strength: a classifier that reaches a class-balanced test set through the cascade meets
the label prior p(y | routed here) = the share of class y routed there, and ``route_prior`` adds
log(that share).  But the route is a function of x, and a classifier that already sees what the
flow used has part of that information in its logits: the full shift then counts it twice (on
Fashion-MNIST-LT r100 with cross-fitted routing, the medium- and few-shot samples reaching the
regular classifier lost 4.9 and 7.5 points to plain cRT at full strength, 1.5 and 1.5 at the
strength chosen on val; docs/benchmarks.md).  ``cascade.route_prior_strength`` scales the route
part of every shift by tau (the part that removes the prior a classifier was trained under always
stays whole); "val" picks one tau for the whole cascade from STRENGTH_GRID on the val samples'
cascade accuracy, the way logit adjustment picks its tau.

Criterion (``cascade.calibrate_by``): "accuracy" counts the val samples right (ties: less mixing,
stronger tau); "log_loss" minimises the cascade's class-balanced val log-loss, the criterion the
selection rule ranks models by (selection.py).  Each val sample reaches exactly one head, so the
cascade's class-balanced log-loss is a sum over heads of their samples' log-losses, each weighted by
1 / (its class's val count x the number of classes present), and each head's weight is chosen alone.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models import FeatureClassifier
from .baselines import adjust_bias, has_bias_head
from .classifier_data import ClassifierData, predict_logits

log = logging.getLogger(__name__)

MIX_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
STRENGTH_GRID = (1.0, 0.75, 0.5, 0.25, 0.0)  # ties go to the earlier (stronger) entry


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


@dataclass
class PendingHead:
    """One cascade classifier with its val samples' logits; its final logits are
    (1 - w) * logits + w * base_logits + tau * route + offset."""
    name: str
    model: FeatureClassifier
    val_y: torch.Tensor
    val_logits: torch.Tensor
    base_logits: torch.Tensor | None = None  # set when the head may be mixed with the base
    route: torch.Tensor | None = None  # log route share (None: no route prior)
    offset: torch.Tensor | None = None  # removes the prior the classifier was trained under

    @classmethod
    def build(cls, name: str, model: FeatureClassifier, val: ClassifierData, base: FeatureClassifier | None = None,
              route: torch.Tensor | None = None, offset: torch.Tensor | None = None) -> "PendingHead":
        if (route is not None or offset is not None) and not has_bias_head(model):
            # decided before any strength is chosen, so the val accuracy logged is the kept model's
            log.warning("%s: route prior needs a linear classifier; left unshifted", name)
            route = offset = None
        logits = predict_logits(model, val)
        base_logits = predict_logits(base, ClassifierData(val.x, val.y)) if base is not None else None
        to = lambda t: None if t is None else t.to(logits)  # noqa: E731
        return cls(name, model, val.y, logits, base_logits, to(route), to(offset))

    def shift(self, tau: float) -> torch.Tensor | None:
        if self.route is None and self.offset is None:
            return None
        out = torch.zeros_like(self.route if self.route is not None else self.offset)
        if self.route is not None:
            out = out + tau * self.route
        if self.offset is not None:
            out = out + self.offset
        return out

    def val_score(self, logits: torch.Tensor, weights: torch.Tensor | None = None) -> float:
        """Higher is better: val samples right (weights None), or minus the weighted sum of the val
        samples' log-losses (``calibrate_by: log_loss``; weights from log_loss_weights)."""
        if weights is None:
            return int((logits.argmax(1) == self.val_y).sum())
        nll = F.cross_entropy(logits.double(), self.val_y, reduction="none")
        return -float((nll * weights.to(nll)).sum())

    def best_mix(self, tau: float, weights: torch.Tensor | None = None) -> tuple[float | None, float]:
        """(mixing weight, val score) at strength tau; weight None when not mixable.  weights: see val_score."""
        add = self.shift(tau)
        add = 0.0 if add is None else add
        if self.base_logits is None or not len(self.val_y):
            return None, self.val_score(self.val_logits + add, weights) if len(self.val_y) else 0
        scores = [self.val_score((1 - w) * self.val_logits + w * self.base_logits + add, weights) for w in MIX_GRID]
        i = max(range(len(MIX_GRID)), key=lambda j: (scores[j], -j))  # ties: less mixing
        return MIX_GRID[i], scores[i]

    def fold(self, base: FeatureClassifier | None, w: float | None, tau: float) -> FeatureClassifier:
        model = mix_with_base(self.model, base, w) if w else self.model
        shift = self.shift(tau)
        return model if shift is None else adjust_bias(model, shift.cpu())


def log_loss_weights(heads: list[PendingHead]) -> list[torch.Tensor]:
    """Per head, each val sample's weight in the cascade's class-balanced log-loss: 1 / (its class's
    count over all heads' val samples x the number of classes present)."""
    labels = torch.cat([h.val_y.cpu() for h in heads])
    counts = torch.bincount(labels).double()
    present = int((counts > 0).sum())
    return [1.0 / (counts[h.val_y.cpu()] * present) for h in heads]


def choose_strength(heads: list[PendingHead], strength: float | str,
                    criterion: str = "accuracy") -> tuple[float, dict]:
    """tau (given, or the STRENGTH_GRID entry with the best cascade val score over all heads) and
    each head's mixing weight at that tau; criterion "accuracy" or "log_loss" (see the module doc)."""
    if criterion not in ("accuracy", "log_loss"):
        raise ValueError(f"unknown calibration criterion {criterion!r}")
    taus = STRENGTH_GRID if strength == "val" else (float(strength),)
    weights = log_loss_weights(heads) if criterion == "log_loss" else [None] * len(heads)
    best = None
    for tau in taus:
        mixes = {h.name: h.best_mix(tau, w) for h, w in zip(heads, weights)}
        score = sum(r for _, r in mixes.values())
        if best is None or score > best[1]:
            best = (tau, score, mixes)
    tau, score, mixes = best
    total = sum(len(h.val_y) for h in heads)
    if strength == "val" and any(h.route is not None for h in heads):
        shown = (f"cascade val acc {score / max(total, 1):.4f}" if criterion == "accuracy"
                 else f"cascade class-balanced val log-loss {-score:.4f}")
        log.info("route prior strength %.2f chosen on val (%s)", tau, shown)
    for h in heads:
        w = mixes[h.name][0]
        if w is not None:
            log.info("%s: base-classifier mixing weight %.2f chosen on val", h.name, w)
    return tau, {name: w for name, (w, _) in mixes.items()}
