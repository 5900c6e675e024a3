"""The baselines a practitioner would pick instead of DLSA, trained on the same features and val split.

- ``CE``:  the regular classifier's kind trained with cross-entropy on all training samples.
- ``BSM``: the same with balanced softmax.
- ``LA``:  post-hoc logit adjustment (Menon et al. 2021) of the CE classifier: logits - tau * log prior,
           tau chosen on val from TAU_GRID (TAU_RULE), baked into the final bias (a plain FeatureClassifier).
- ``cRT``: classifier re-training (Kang et al. 2020, decoupling): the representation is kept, the
           classifier's last layer is re-initialised and re-trained with class-balanced sampling and
           cross-entropy.  The representation here is the frozen feature (plus, with hidden layers,
           the CE classifier's hidden layers, which start from CE and keep training).

Every baseline draws from its own two generators (batch order, initial weights), derived from
(seed, name), so it does not depend on DLSA's settings, on which other baselines run or on the
global generator; every epoch (and tau) is selected on val.  Hence a caller that passes a
``TrainCache`` (tune, the benchmarks) trains each baseline once per (data, regcls section, seed,
device, training options) and reuses it.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from ..config import BASELINE_NAMES, ClassifierConfig, RunConfig
from ..data import Splits, data_digest
from ..models import FeatureClassifier
from ..selection import val_scores
from .classifier_data import ClassifierData, predict_logits
from .classifier_trainer import train_classifier
from .options import TrainOptions, resolved
from .random_streams import drawing_from
from .train_cache import TrainCache, cached, digest

log = logging.getLogger(__name__)

TAU_GRID = tuple(float(t) for t in np.round(np.arange(0.0, 2.01, 0.25), 2))
# LA's tau: the lowest class-balanced val log-loss (continuous; val accuracy on 200 images tied or
# favoured tau 0 = plain CE in every seed with the long schedules: docs/benchmarks.md, "Schedules")
TAU_RULE = "lowest class-balanced val log-loss (ties: higher val accuracy, then smaller tau)"


def derived_seed(seed: int, name: str) -> int:
    """A 63-bit seed from (seed, name): stable across runs, machines and Python versions."""
    raw = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(raw[:8], "little") & (2**63 - 1)


def derived_generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(seed, name))


@dataclass
class Baseline:
    model: FeatureClassifier
    epoch: int | None
    val_accuracy: float | None
    info: dict = field(default_factory=dict)  # e.g. {"tau": 1.0}


class BaselineContext:
    """Shared inputs of the baseline trainers; the CE classifier is trained once and reused by LA and cRT.
    cache: reuse across calls (None: train every baseline this context is asked for)."""

    def __init__(self, splits: Splits, cfg: RunConfig, device: torch.device, seed: int,
                 options: TrainOptions | None = None, cache: TrainCache | None = None):
        self.splits, self.cfg, self.device, self.seed = splits, cfg, device, seed
        self.options, self.cache = resolved(options), cache
        self.c = splits.num_classes
        self.train = ClassifierData(torch.from_numpy(splits.train.features).to(device),
                                    torch.from_numpy(splits.train.labels).to(device))
        self.val = ClassifierData(torch.from_numpy(splits.val.features).to(device),
                                  torch.from_numpy(splits.val.labels).to(device))
        self.log_prior = implied_log_prior("CE", splits.train_counts()).to(device)
        self.done: dict[str, Baseline] = {}
        self._data_hash: str | None = None

    def classifier_config(self, loss: str, sampler: str = "none") -> ClassifierConfig:
        ccfg = self.cfg.regcls.model_copy(deep=True)
        ccfg.loss.type = loss
        ccfg.data.sampler.name = sampler
        return ccfg

    def fit(self, name: str, ccfg: ClassifierConfig, init_state: dict | None = None) -> Baseline:
        """Train one classifier on its own generators from (seed, name): batch order and initial weights."""
        res = train_classifier(self.train, self.val, self.c, ccfg, derived_generator(self.seed, name),
                               uses_prior=False, desc=f"baseline {name}", init_state=init_state,
                               options=self.options, init_generator=derived_generator(self.seed, f"{name}/init"))
        return Baseline(res.model, res.best_epoch, res.val_accuracy,
                        {} if res.learning_rate is None else {"lr": res.learning_rate})  # lr: chosen on val

    def get(self, name: str) -> Baseline:
        if name not in self.done:
            self.done[name], _ = cached(self.cache, "baseline", lambda: self.cache_key(name),
                                        lambda: REGISTRY[name](self))
        return self.done[name]

    def cache_key(self, name: str) -> str:
        """A baseline reads the training and val data, the regcls section (full dump), the seed, the
        device and the training options (precision, compile, data-parallel world size)."""
        if self._data_hash is None:
            self._data_hash = data_digest(self.splits)
        return digest(self._data_hash, self.cfg.regcls, self.seed, str(self.device), self.options, name)


def _train_ce(ctx: BaselineContext) -> Baseline:
    return ctx.fit("CE", ctx.classifier_config("CE"))


def _train_bsm(ctx: BaselineContext) -> Baseline:
    return ctx.fit("BSM", ctx.classifier_config("BSM"))


def has_bias_head(model: FeatureClassifier) -> bool:
    """Whether adjust_bias can shift the classifier: head_x ends in a linear layer with a bias."""
    last = model.head_x[-1]
    return isinstance(last, nn.Linear) and last.bias is not None


def adjust_bias(model: FeatureClassifier, shift: torch.Tensor) -> FeatureClassifier:
    """A copy of the classifier whose logits are the original's + shift (added to head_x's final bias)."""
    if not has_bias_head(model):
        raise ValueError("a bias shift needs a linear final layer (classifier type 'linear')")
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.head_x[-1].bias.add_(shift.to(out.head_x[-1].bias))
    return out


def _train_la(ctx: BaselineContext) -> Baseline:
    ce = ctx.get("CE")
    if not isinstance(ce.model.head_x[-1], nn.Linear):
        raise ValueError("LA needs regcls.model.type linear")
    logits, labels = predict_logits(ce.model, ctx.val), ctx.val.y.cpu().numpy()
    per_tau = [val_scores((logits - tau * ctx.log_prior).cpu().numpy(), labels, ctx.c) for tau in TAU_GRID]
    scores = [s["accuracy"] for s in per_tau]
    losses = [s["balanced_log_loss"] for s in per_tau]
    best = min(range(len(TAU_GRID)), key=lambda i: (losses[i], -scores[i]))  # TAU_RULE; ties: the smallest tau
    tau = TAU_GRID[best]
    log.info("baseline LA: tau %.2f chosen on val (balanced log-loss %.4f, val acc %.4f; tau 0 = CE: %.4f, %.4f)",
             tau, losses[best], scores[best], losses[0], scores[0])
    return Baseline(adjust_bias(ce.model, -tau * ctx.log_prior), ce.epoch, scores[best],
                    {"tau": tau, "tau_grid": list(TAU_GRID), "val_acc_per_tau": scores,
                     "val_log_loss_per_tau": losses, "rule": TAU_RULE})


def _train_crt(ctx: BaselineContext) -> Baseline:
    ce = ctx.get("CE")
    state = copy.deepcopy(ce.model.state_dict())
    with drawing_from(derived_generator(ctx.seed, "cRT/reinit")):
        fresh = FeatureClassifier(ctx.splits.dim, ctx.c, ctx.cfg.regcls.model, uses_prior=False)
    fresh_state = fresh.state_dict()
    for head in ("head_x", "head_zp"):
        last = f"{head}.{len(getattr(fresh, head)) - 1}."
        for k in fresh_state:
            if k.startswith(last):
                state[k] = fresh_state[k].to(state[k].device)
    return ctx.fit("cRT", ctx.classifier_config("CE", "class-balanced"), init_state=state)


REGISTRY: dict[str, Callable[[BaselineContext], Baseline]] = dict(zip(BASELINE_NAMES, (
    _train_ce, _train_bsm, _train_la, _train_crt)))  # in BASELINE_NAMES' order: CE, BSM, LA, cRT


def unavailable_reason(name: str, cfg: RunConfig) -> str | None:
    """Why cfg cannot run baseline `name` (None: it can).  LA adds -tau * log prior to the final
    layer's bias; a cosine classifier has no bias (its logits are scaled cosines), so LA is dropped."""
    if name == "LA" and cfg.regcls.model.type != "linear":
        return (f"post-hoc logit adjustment needs a linear final layer with a bias; regcls.model.type is "
                f"{cfg.regcls.model.type!r}")
    return None


def dropped_baselines(cfg: RunConfig, names) -> dict[str, str]:
    """{name: reason} for every requested baseline cfg cannot run."""
    return {n: r for n in names if (r := unavailable_reason(n, cfg)) is not None}


def train_baselines(splits: Splits, cfg: RunConfig, device: torch.device, names: list[str] | tuple[str, ...],
                    seed: int | None = None, options: TrainOptions | None = None,
                    cache: TrainCache | None = None) -> dict[str, Baseline]:
    """Train the named baselines (in the given order); the ones cfg cannot run (dropped_baselines:
    LA on cosine heads) are skipped with one warning naming the reason.  cache: see train_cache.py."""
    ctx = BaselineContext(splits, cfg, device, cfg.seed if seed is None else seed, options, cache)
    out = {}
    for name in names:
        reason = unavailable_reason(name, cfg)
        if reason is not None:
            log.warning("baseline %s not run: %s", name, reason)
            continue
        try:
            out[name] = ctx.get(name)
        except ValueError as exc:
            log.warning("baseline %s skipped: %s", name, exc)
    return out


def implied_log_prior(name: str, train_counts: np.ndarray) -> torch.Tensor:
    """The label prior a baseline's logits carry: the train prior for CE, uniform for the re-balanced ones."""
    c = len(train_counts)
    if name == "CE":
        counts = torch.as_tensor(np.maximum(train_counts, 1), dtype=torch.float64)
        return torch.log(counts / counts.sum()).float()
    return torch.full((c,), -float(np.log(c)))


def train_baseline(splits: Splits, cfg: RunConfig, name: str, device: torch.device,
                   seed: int | None = None, options: TrainOptions | None = None) -> FeatureClassifier:
    """One baseline's classifier (see train_baselines)."""
    return BaselineContext(splits, cfg, device, cfg.seed if seed is None else seed, options).get(name).model
