"""Long-tail classification metrics: overall, many/medium/few-shot, per-class, balanced, MCC, NMI;
per-class routing; the comparison table (best method marked, DLSA's gap to the best baseline)."""

from __future__ import annotations

import numpy as np

# The one definition of the shot groups: many-shot classes have more than MANY_SHOT training
# samples, few-shot classes fewer than FEW_SHOT, medium-shot the rest (the usual ImageNet-LT split).
MANY_SHOT = 100
FEW_SHOT = 20
SHOT_KEYS = ("accuracy", "many_shot", "medium_shot", "few_shot")


def run_shot_thresholds(meta: dict) -> tuple[int, int]:
    """(many, few) thresholds a run was trained with (older runs: the defaults)."""
    return int(meta.get("many_shot", MANY_SHOT)), int(meta.get("few_shot", FEW_SHOT))


def shot_groups(train_counts: np.ndarray, many: int = MANY_SHOT, few: int = FEW_SHOT) -> dict[str, np.ndarray]:
    """Class ids per group: many-shot (> many), few-shot (< few), medium otherwise."""
    counts = np.asarray(train_counts)
    return {"many": np.flatnonzero(counts > many), "medium": np.flatnonzero((counts <= many) & (counts >= few)),
            "few": np.flatnonzero(counts < few)}


def _mean_or_none(values: np.ndarray):
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, train_counts: np.ndarray,
                           many: int = MANY_SHOT, few: int = FEW_SHOT) -> dict:
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


def routing_by_class(exit_depth: np.ndarray, labels: np.ndarray, depth: int, num_classes: int) -> list[list]:
    """[exit d][class c]: share of class c's samples exiting at depth d (d = depth + 1: the regular
    classifier); None for a class without samples."""
    exit_depth, labels = np.asarray(exit_depth), np.asarray(labels)
    support = np.bincount(labels, minlength=num_classes)
    rows = []
    for d in range(1, depth + 2):
        hits = np.bincount(labels[exit_depth == d], minlength=num_classes)
        rows.append([float(h / s) if s else None for h, s in zip(hits, support)])
    return rows


def format_routing_by_class(rows: list[list]) -> str:
    """One line per exit: 'depth 1: 12% 10% ... (class 0..C-1)'."""
    names = [f"depth {d}" for d in range(1, len(rows))] + ["regular"]
    cells = lambda row: " ".join("  n/a" if v is None else f"{100 * v:4.0f}%" for v in row)  # noqa: E731
    return "\n".join(f"{n:>8}: {cells(r)}" for n, r in zip(names, rows))


def display_name(key: str) -> str:
    """metrics key -> table row name: "dlsa" -> "DLSA", "plain_BSM" -> "plain BSM"."""
    return "DLSA" if key == "dlsa" else key.replace("plain_", "plain ")


def method_metrics(metrics: dict) -> dict:
    """The method entries of a split's metrics ({"dlsa": m, "plain_BSM": m, ...}); entries that are
    not method metrics, e.g. "best_on_val", are left out."""
    return {k: v for k, v in metrics.items() if isinstance(v, dict) and "accuracy" in v}


def display_rows(metrics: dict) -> dict:
    """{"dlsa": m, "plain_BSM": m, ...} -> {"DLSA": m, "plain BSM": m, ...} for format_table
    (entries that are not method metrics, e.g. "best_on_val", are left out)."""
    return {display_name(k): v for k, v in method_metrics(metrics).items()}


def gap_line(metrics: dict, baseline_key: str) -> str:
    """"DLSA - plain BSM: overall -1.23, many +0.40, medium -2.00, few -0.10 (points)"."""
    d, b = metrics["dlsa"], metrics[baseline_key]
    parts = []
    for key, label in zip(SHOT_KEYS, ("overall", "many", "medium", "few")):
        if d.get(key) is None or b.get(key) is None:
            parts.append(f"{label} n/a")
        else:
            parts.append(f"{label} {100 * (d[key] - b[key]):+.2f}")
    return f"DLSA - {display_name(baseline_key)}: " + ", ".join(parts) + " (points)"


def format_table(rows: dict[str, dict], title: str = "", best: str | None = None) -> str:
    """Plain-text metrics table; None shows as 'n/a'; the row named `best` is marked with '*'."""
    cols = [("accuracy", "overall"), ("many_shot", "many"), ("medium_shot", "medium"), ("few_shot", "few"),
            ("balanced_accuracy", "balanced"), ("mcc", "MCC"), ("nmi", "NMI")]
    label = {name: (f"{name} *" if name == best else name) for name in rows}
    name_w = max([len("method")] + [len(v) for v in label.values()])
    head = f"{'method':<{name_w}}  " + "  ".join(f"{h:>8}" for _, h in cols)
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for name, m in rows.items():
        cells = []
        for key, _ in cols:
            v = m.get(key)
            cells.append(f"{'n/a':>8}" if v is None else f"{100 * v:8.2f}" if key not in ("mcc", "nmi") else f"{v:8.4f}")
        lines.append(f"{label[name]:<{name_w}}  " + "  ".join(cells))
    if best is not None:
        lines.append("* best on val")
    return "\n".join(lines)
