"""Which model a run ships (meta.json ``best_on_val``, ``export --best``): decided on all of val.

1. **Rank the baselines** by a continuous score over every val sample: RANKING, the class-balanced
   val log-loss (mean over classes of each class's mean negative log-likelihood of its label; lower is
   better).  Accuracy on 100-200 val images ties often (every baseline at 89/100 in one run) and then
   "the first in the list" decided; the log-loss almost never ties and, measured over every data set
   and seed we have (docs/benchmarks.md, "Selection rule"), shipped a model within 0.5 points of the
   test-best more often than accuracy with list-order ties.
2. **DLSA against the best baseline**: a paired, class-stratified bootstrap over the val samples of
   the difference in balanced accuracy (DLSA - baseline; both models scored on the same resampled
   images).  DLSA ships only when the whole 95 % interval lies above 0.  Otherwise val cannot tell
   them apart (or the baseline is better): one log line gives the interval and the baseline ships --
   the simpler model, chosen by its continuous score, never by its place in a list.

The record (``selection_record``) is what meta.json / metrics.json store under ``best_on_val``:
{"model", "rule", "scores", "best_baseline", "dlsa_minus_baseline", "note"}; runs written before
this version stored only the model's name, and ``shipped_model`` reads both.
"""

from __future__ import annotations

import numpy as np
import torch

from .data import FeatureSet

DLSA = "dlsa"
RANKING = "balanced_log_loss"
CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 2000
RULE = ("baselines ranked by class-balanced val log-loss (lower is better); DLSA ships only if a paired, "
        "class-stratified bootstrap 95% interval of its val balanced-accuracy gain over the best baseline "
        "lies above 0")


def shipped_model(entry) -> str | None:
    """The model's name from a best_on_val entry: a record (this version) or a plain name (older runs)."""
    if isinstance(entry, dict):
        entry = entry.get("model")
    return entry if isinstance(entry, str) and entry else None


@torch.no_grad()
def logits_of(model, x: np.ndarray, device, batch_size: int = 4096) -> np.ndarray:
    """(N, C) logits of a classifier or of the cascade (the classifier each sample exits at)."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        y = model(torch.from_numpy(x[i:i + batch_size]).to(device))
        out.append((y.logits if hasattr(y, "logits") else y).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def val_scores(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """accuracy, balanced accuracy and class-balanced log-loss (classes without val samples left out)."""
    labels = np.asarray(labels)
    t = torch.from_numpy(np.asarray(logits, np.float64))
    nll = -torch.log_softmax(t, 1)[torch.arange(len(labels)), torch.from_numpy(labels)].numpy()
    right = (t.argmax(1).numpy() == labels).astype(np.float64)
    present = [c for c in range(num_classes) if (labels == c).any()]
    return {"accuracy": float(right.mean()),
            "balanced_accuracy": float(np.mean([right[labels == c].mean() for c in present])),
            "balanced_log_loss": float(np.mean([nll[labels == c].mean() for c in present]))}


def rank_key(scores: dict) -> tuple:
    """Sort key, best first: lower balanced log-loss, then higher balanced accuracy."""
    return (scores[RANKING], -scores["balanced_accuracy"])


def paired_interval(right_a: np.ndarray, right_b: np.ndarray, labels: np.ndarray, seed: int = 0,
                    samples: int = BOOTSTRAP_SAMPLES, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(difference, low, high) of balanced accuracy a - b: the val difference and its paired bootstrap
    interval, each class's val samples resampled with replacement (the same draw for both models)."""
    labels = np.asarray(labels)
    diff = np.asarray(right_a, np.float64) - np.asarray(right_b, np.float64)
    rng = np.random.default_rng([seed, 1717])
    per_class = []
    for c in np.unique(labels):
        d = diff[labels == c]
        per_class.append(d[rng.integers(0, d.size, (samples, d.size))].mean(1))
    boot = np.mean(per_class, 0)
    point = float(np.mean([diff[labels == c].mean() for c in np.unique(labels)]))
    alpha = (1 - confidence) / 2
    return point, float(np.quantile(boot, alpha)), float(np.quantile(boot, 1 - alpha))


def select_model(val_logits: dict[str, np.ndarray], labels: np.ndarray, num_classes: int, seed: int = 0) -> dict:
    """The selection record for {"dlsa": logits, "BSM": logits, ...} on the same val samples."""
    labels = np.asarray(labels)
    scores = {k: val_scores(v, labels, num_classes) for k, v in val_logits.items()}
    baselines = sorted((k for k in scores if k != DLSA), key=lambda k: rank_key(scores[k]))
    record = {"model": DLSA, "rule": RULE, "scores": scores, "best_baseline": baselines[0] if baselines else None,
              "dlsa_minus_baseline": None, "note": None}
    if not baselines or DLSA not in scores:
        record["model"] = baselines[0] if baselines else DLSA
        return record
    best = baselines[0]
    right = {k: np.asarray(val_logits[k]).argmax(1) == labels for k in (DLSA, best)}
    point, low, high = paired_interval(right[DLSA], right[best], labels, seed)
    record["dlsa_minus_baseline"] = {"balanced_accuracy": point, "low": low, "high": high,
                                     "confidence": CONFIDENCE, "samples": int(labels.size)}
    if low > 0:
        return record
    record["model"] = best
    verdict = "says the baseline is better" if high < 0 else "cannot separate them"
    record["note"] = (f"val ({labels.size} images) {verdict}: DLSA - {best} balanced accuracy {100 * point:+.2f} "
                      f"points, {int(100 * CONFIDENCE)}% interval [{100 * low:+.2f}, {100 * high:+.2f}]; shipping "
                      f"{best} (best baseline by val {RANKING.replace('_', ' ')} "
                      f"{scores[best][RANKING]:.4f})")
    return record


def method_val_logits(dlsa_model, baselines: dict, fs: FeatureSet, device) -> dict[str, np.ndarray]:
    """{"dlsa": logits, "<baseline>": logits, ...} over fs."""
    out = {DLSA: logits_of(dlsa_model, fs.features, device)}
    out.update({k: logits_of(m, fs.features, device) for k, m in baselines.items()})
    return out


MIN_PER_CLASS = 10  # fewer val images of a class than this: differences of a few points are noise


def small_split_warning(fs: FeatureSet, num_classes: int, purpose: str, minimum: int = MIN_PER_CLASS) -> str | None:
    """A one-line warning when some class has fewer than `minimum` samples in `fs`, else None."""
    counts = np.bincount(fs.labels, minlength=num_classes)
    small = np.flatnonzero(counts < minimum)
    if not small.size:
        return None
    return (f"{fs.source}: too small to decide {purpose}: classes {small[:10].tolist()} have "
            f"{int(counts.min())}..{int(counts[small].max())} samples (< {minimum} per class); "
            f"treat differences of a few points as noise (enlarge data.val_per_class)")
