"""`dlsa-prod evaluate-features`: compare feature spaces with DLSA's flow filter.

The paper proposes the filter as a probe of how separable head and tail classes are in a
feature space.  For each feature set (a directory in the research layout) this trains one flow
filter on the training features and reports, on the evaluation split:
  * head share of filtered samples: of the samples whose log-likelihood clears the train
    threshold (those DLSA would send to the cluster-aided classifier), the share from
    many-shot classes;
  * head recall: the share of many-shot samples that clear it;
  * cluster purity (size-weighted, train) and the number of pure clusters;
  * the accuracy and few-shot accuracy of the plain balanced-softmax linear classifier.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig, config_from_dict
from .data import load_splits
from .evaluation import classifier_predictions
from .metrics import classification_metrics, shot_groups
from .pipeline import seed_everything
from .routing import exits
from .training import llh_threshold, train_baseline
from .training.cluster_stats import cluster_quality, score_flow
from .training.flow_trainer import train_flow

log = logging.getLogger("dlsa_prod")

DEFAULTS = {
    "gmflow": {"model": {"num_cluster": 100}, "data": {"batchsize": 512}, "optim": {"lr": 0.05, "epoch": 10},
               "eval_freq": 2},
    "filter": {"llh_proportion": 0.3, "min_size": 5},
    "regcls": {"eval_freq": 2, "model": {"inputs": "XZ"}, "loss": {"type": "BSM"}, "data": {"batchsize": 128},
               "optim": {"lr": 0.02, "epoch": 20, "momentum": 0.9}},
}


def evaluate_feature_set(feat_dir: Path, base: dict, device: torch.device) -> dict:
    tree = {**base, "data": {**base.get("data", {}), "source": "features", "feat_dir": str(feat_dir)}}
    cfg: RunConfig = config_from_dict(tree, str(feat_dir))
    gen = seed_everything(cfg.seed)
    splits = load_splits(cfg.data, cfg.seed)
    c = splits.num_classes
    counts = splits.train_counts()
    groups = shot_groups(counts, cfg.data.many_shot, cfg.data.few_shot)
    head = np.zeros(c, bool)
    head[groups["many"]] = True
    x_tr = torch.from_numpy(splits.train.features).to(device)
    y_tr = torch.from_numpy(splits.train.labels).to(device)
    flow = train_flow(x_tr, y_tr, c, cfg.gmflow, cfg.filter, gen, desc=f"{feat_dir.name} flow")
    ll_tr, _ = score_flow(flow.model, x_tr)
    thr = llh_threshold(ll_tr, cfg.filter.llh_proportion, cfg.filter.llh_thres)
    ll_te, cl_te = score_flow(flow.model, torch.from_numpy(splits.test.features).to(device))
    out = exits(ll_te, thr, cl_te).cpu().numpy()
    y_te = splits.test.labels
    q = cluster_quality(cl_te.cpu(), torch.from_numpy(y_te), flow.model.num_cluster, c, cfg.filter.min_purity,
                        cfg.filter.min_size)
    notes = not_available_notes(int(head.sum()), bool(out.any()), cfg.data.many_shot)
    clf = train_baseline(splits, cfg, "BSM", device)
    m = classification_metrics(y_te, classifier_predictions(clf, splits.test.features, device), counts,
                               cfg.data.many_shot, cfg.data.few_shot)
    return {
        "features": str(feat_dir), "dim": splits.dim, "classes": c, "head_classes": int(head.sum()),
        "filtered_share": float(out.mean()),
        "head_share_of_filtered": float(head[y_te[out]].mean()) if out.any() and head.any() else None,
        "head_share_of_all": float(head[y_te].mean()),
        "head_recall": float(out[head[y_te]].mean()) if head[y_te].any() else None,
        "train_cluster_purity": flow.quality.mean_purity, "test_cluster_purity": q.mean_purity,
        "pure_clusters": flow.quality.good_clusters,
        "plain_bsm_accuracy": m["accuracy"], "plain_bsm_few_shot": m["few_shot"],
        "notes": notes + ([] if m["few_shot"] is not None else
                          [f"BSM few: n/a, no few-shot class (fewer than {cfg.data.few_shot} training samples)"]),
    }


def not_available_notes(head_classes: int, any_filtered: bool, many_shot: int) -> list[str]:
    """Why the head metrics are n/a, one line each (shown under the table and in the plot)."""
    if head_classes == 0:
        return [f"head share and head recall: n/a, no many-shot (head) class: none has more than {many_shot} "
                f"training samples (set data.many_shot lower in --config)"]
    if not any_filtered:
        return ["head share of filtered: n/a, no test sample clears the train threshold"]
    return []


def format_feature_table(rows: list[dict]) -> str:
    cols = [("head_share_of_filtered", "head share of filtered"), ("head_recall", "head recall"),
            ("train_cluster_purity", "cluster purity"), ("pure_clusters", "pure clusters"),
            ("plain_bsm_accuracy", "BSM acc"), ("plain_bsm_few_shot", "BSM few")]
    lines = ["| features | dim | " + " | ".join(h for _, h in cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for r in rows:
        cells = []
        for k, _ in cols:
            v = r[k]
            cells.append("n/a" if v is None else str(v) if isinstance(v, int) else f"{100 * v:.1f}%")
        lines.append(f"| {r['features']} | {r['dim']} | " + " | ".join(cells) + " |")
    notes = [f"{r['features']}: {n}" for r in rows for n in r.get("notes", [])]
    return "\n".join(lines + ([""] + notes if notes else []))


def plot_feature_table(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("head_share_of_filtered", "head share\nof filtered"), ("head_recall", "head recall"),
            ("train_cluster_purity", "cluster purity"), ("plain_bsm_accuracy", "BSM accuracy"),
            ("plain_bsm_few_shot", "BSM few-shot")]
    notes = [f"{Path(r['features']).name}: {n}" for r in rows for n in r.get("notes", [])]
    fig, ax = plt.subplots(figsize=(8, 3.5 + 0.25 * len(notes)))
    w = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        x = np.arange(len(keys)) + i * w
        vals = [r[k] if r[k] is not None else 0 for k, _ in keys]
        bars = ax.bar(x, vals, w, label=Path(r["features"]).name)
        for xi, (k, _), b in zip(x, keys, bars):  # a missing value is written, never drawn as an empty bar
            if r[k] is None:
                ax.text(xi, 0.02, "n/a", ha="center", va="bottom", fontsize=8, rotation=90, color=b.get_facecolor())
    ax.set_xticks(np.arange(len(keys)) + w * (len(rows) - 1) / 2)
    ax.set_xticklabels([h for _, h in keys])
    ax.set_ylim(0, 1)
    ax.set_ylabel("share (0..1)")
    ax.legend(fontsize=8)
    ax.set_title("Feature spaces compared by the DLSA flow filter")
    if notes:
        fig.text(0.01, -0.02, "\n".join(notes), ha="left", va="top", fontsize=8, wrap=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
