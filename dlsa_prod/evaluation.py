"""Score a trained cascade and its baselines on a feature set."""

from __future__ import annotations

import numpy as np
import torch

from .data import FeatureSet
from .metrics import FEW_SHOT, MANY_SHOT, classification_metrics, routing_by_class, routing_share
from .models import DLSAModel, FeatureClassifier


@torch.no_grad()
def cascade_predictions(model: DLSAModel, x: np.ndarray, device, batch_size: int = 4096, with_loglik: bool = False):
    """(pred, exit_depth[, loglik (N, D)]) of the cascade over x, in batches."""
    preds, exits, lls = [], [], []
    model.eval()
    for i in range(0, len(x), batch_size):
        out = model(torch.from_numpy(x[i:i + batch_size]).to(device))
        preds.append(out.pred.cpu())
        exits.append(out.exit_depth.cpu())
        lls.append(out.loglik.cpu())
    result = (torch.cat(preds).numpy(), torch.cat(exits).numpy())
    return result + (torch.cat(lls).numpy(),) if with_loglik else result


@torch.no_grad()
def classifier_predictions(model: FeatureClassifier, x: np.ndarray, device, batch_size: int = 4096) -> np.ndarray:
    model.eval()
    return torch.cat([model(torch.from_numpy(x[i:i + batch_size]).to(device)).argmax(1).cpu()
                      for i in range(0, len(x), batch_size)]).numpy()


def input_guard_warning(model: DLSAModel, meta: dict, x: np.ndarray, device, where: str) -> str | None:
    """The input guard's one-line warning for features X scored by a run's cascade (None: in
    distribution, or a run trained before the guard existed)."""
    from .input_guard import InputGuard

    guard = InputGuard.from_dict(meta.get("input_guard"))
    if guard is None or model.depth == 0:
        return None
    _pred, _exits, loglik = cascade_predictions(model, x, device, with_loglik=True)
    return guard.warning(loglik[:, 0], where)


def evaluate(model: DLSAModel, baselines: dict[str, FeatureClassifier], fs: FeatureSet, train_counts: np.ndarray,
             device, many: int = MANY_SHOT, few: int = FEW_SHOT) -> dict:
    """{"dlsa": metrics + routing, "plain_<name>": metrics per baseline}."""
    pred, exits = cascade_predictions(model, fs.features, device)
    dlsa = classification_metrics(fs.labels, pred, train_counts, many, few)
    dlsa["routing_share"] = routing_share(exits, model.depth)
    dlsa["routing_by_class"] = routing_by_class(exits, fs.labels, model.depth, len(train_counts))
    # accuracy of the samples at each exit: how well each classifier does on what it receives
    dlsa["exit_accuracy"] = [float((pred[exits == d] == fs.labels[exits == d]).mean()) if (exits == d).any() else None
                             for d in range(1, model.depth + 2)]
    out = {"dlsa": dlsa}
    for name, clf in baselines.items():
        out[f"plain_{name}"] = classification_metrics(fs.labels, classifier_predictions(clf, fs.features, device),
                                                      train_counts, many, few)
    return out
