"""Long-tail classification metrics: overall, many/medium/few-shot, per-class, balanced, MCC, NMI."""

from __future__ import annotations

import numpy as np


def shot_groups(train_counts: np.ndarray, many: int = 100, few: int = 20) -> dict[str, np.ndarray]:
    """Class ids per group: many-shot (> many), few-shot (< few), medium otherwise."""
    counts = np.asarray(train_counts)
    return {"many": np.flatnonzero(counts > many), "medium": np.flatnonzero((counts <= many) & (counts >= few)),
            "few": np.flatnonzero(counts < few)}


def _mean_or_none(values: np.ndarray):
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, train_counts: np.ndarray,
                           many: int = 100, few: int = 20) -> dict:
    from sklearn.metrics import matthews_corrcoef, normalized_mutual_info_score

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    c = len(train_counts)
    correct = (y_true == y_pred).astype(np.float64)
    support = np.bincount(y_true, minlength=c)
    hits = np.bincount(y_true, weights=correct, minlength=c)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, hits / np.maximum(support, 1), np.nan)
    groups = shot_groups(train_counts, many, few)
    return {
        "samples": int(y_true.size),
        "accuracy": float(correct.mean()) if y_true.size else None,
        "many_shot": _mean_or_none(per_class[groups["many"]]),
        "medium_shot": _mean_or_none(per_class[groups["medium"]]),
        "few_shot": _mean_or_none(per_class[groups["few"]]),
        "balanced_accuracy": _mean_or_none(per_class),
        "mcc": float(matthews_corrcoef(y_true, y_pred)) if y_true.size else None,
        "nmi": float(normalized_mutual_info_score(y_true, y_pred)) if y_true.size else None,
        "group_sizes": {k: int(v.size) for k, v in groups.items()},
        "per_class_accuracy": [None if np.isnan(a) else float(a) for a in per_class],
    }


def routing_share(exit_depth: np.ndarray, depth: int) -> list[float]:
    """Share of samples exiting at each depth 1..depth, then at the regular classifier."""
    exit_depth = np.asarray(exit_depth)
    n = max(exit_depth.size, 1)
    return [float((exit_depth == d).sum()) / n for d in range(1, depth + 2)]


def display_rows(metrics: dict) -> dict:
    """{"dlsa": m, "plain_BSM": m, ...} -> {"DLSA": m, "plain BSM": m, ...} for format_table."""
    return {("DLSA" if k == "dlsa" else k.replace("plain_", "plain ")): v for k, v in metrics.items()}


def format_table(rows: dict[str, dict], title: str = "") -> str:
    """Plain-text metrics table; None shows as 'n/a'."""
    cols = [("accuracy", "overall"), ("many_shot", "many"), ("medium_shot", "medium"), ("few_shot", "few"),
            ("balanced_accuracy", "balanced"), ("mcc", "MCC"), ("nmi", "NMI")]
    name_w = max([len("method")] + [len(k) for k in rows])
    head = f"{'method':<{name_w}}  " + "  ".join(f"{h:>8}" for _, h in cols)
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for name, m in rows.items():
        cells = []
        for key, _ in cols:
            v = m.get(key)
            cells.append(f"{'n/a':>8}" if v is None else f"{100 * v:8.2f}" if key not in ("mcc", "nmi") else f"{v:8.4f}")
        lines.append(f"{name:<{name_w}}  " + "  ".join(cells))
    return "\n".join(lines)
