"""`dlsa-prod report RUN_DIR`: PNG plots and a short markdown summary of a trained run.

Plots (test split unless told otherwise):
  per_class_accuracy.png   per-class accuracy against training frequency, DLSA vs plain classifiers
  routing_by_class.png     share of each class exiting at each depth
  loglik_hist.png          log-likelihood histograms per depth with the thresholds
  confusion_by_frequency.png   confusion matrix with classes binned by training frequency
  cluster_purity.png       purity and size of the clusters of each depth's flow filter (train)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .data import load_splits, read_features
from .evaluation import cascade_predictions, classifier_predictions
from .metrics import classification_metrics, format_table, shot_groups
from .run_dir import load_run
from .training.cluster_stats import cluster_class_histogram


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def _freq_bins(counts: np.ndarray, n_bins: int) -> list[np.ndarray]:
    order = np.argsort(-counts, kind="stable")
    return [b for b in np.array_split(order, min(n_bins, len(counts))) if b.size]


def write_report(run_dir: str | Path, out: str | Path | None = None, features: str | Path | None = None,
                 bins: int = 10) -> Path:
    plt = _plt()
    run = load_run(run_dir)
    out = Path(out or Path(run_dir) / "report")
    out.mkdir(parents=True, exist_ok=True)
    meta, model = run.meta, run.model
    counts = np.asarray(meta["train_class_counts"])
    c, depth = len(counts), model.depth
    if features is not None:
        test = read_features(features, c, meta["dim"])
        splits = None
    else:
        splits = load_splits(run.cfg.data, run.cfg.seed)
        test = splits.test
    pred, exits, loglik = cascade_predictions(model, test.features, "cpu", with_loglik=True)
    y = test.labels
    many, few = meta.get("many_shot", 100), meta.get("few_shot", 20)
    rows = {"DLSA": classification_metrics(y, pred, counts, many, few)}
    for loss, clf in run.baselines.items():
        rows[f"plain {loss}"] = classification_metrics(y, classifier_predictions(clf, test.features, "cpu"), counts,
                                                       many, few)
    order = np.argsort(-counts, kind="stable")

    # 1. per-class accuracy vs training frequency
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, m in rows.items():
        acc = np.array([np.nan if a is None else a for a in m["per_class_accuracy"]])
        ax.plot(np.arange(c), acc[order], marker="o" if c <= 30 else None, ms=3, lw=1.2, label=name)
    ax2 = ax.twinx()
    ax2.bar(np.arange(c), counts[order], color="0.85", zorder=0)
    ax2.set_yscale("log")
    ax2.set_ylabel("training images (log)")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_xlabel("class, by training frequency (head -> tail)")
    ax.set_ylabel("test accuracy")
    ax.legend(loc="lower left")
    ax.set_title("Per-class accuracy vs training frequency")
    _save(fig, out / "per_class_accuracy.png")
    plt.close(fig)

    # 2. routing share per class
    share = np.zeros((c, depth + 1))
    for k in range(c):
        e = exits[y == k]
        if e.size:
            share[k] = np.bincount(e, minlength=depth + 2)[1:] / e.size
    fig, ax = plt.subplots(figsize=(8, 3.5))
    bottom = np.zeros(c)
    for d in range(depth + 1):
        label = f"exit at depth {d + 1}" if d < depth else "regular classifier"
        ax.bar(np.arange(c), share[order, d], bottom=bottom, label=label)
        bottom += share[order, d]
    ax.set_xlabel("class, by training frequency (head -> tail)")
    ax.set_ylabel("share of test samples")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("Where each class exits")
    _save(fig, out / "routing_by_class.png")
    plt.close(fig)

    # 3. log-likelihood histograms with thresholds
    fig, axes = plt.subplots(1, depth, figsize=(4 * depth, 3), squeeze=False)
    for d in range(depth):
        ll = loglik[:, d]
        ll = ll[np.isfinite(ll)]
        ax = axes[0, d]
        ax.hist(ll, bins=40, color="tab:blue", alpha=0.8)
        ax.axvline(model.thresholds[d], color="tab:red", ls="--", label="threshold")
        ax.set_title(f"depth {d + 1}: {ll.size} samples reach it")
        ax.set_xlabel("log-likelihood")
        ax.legend(fontsize=8)
    _save(fig, out / "loglik_hist.png")
    plt.close(fig)

    # 4. confusion matrix, classes binned by training frequency
    groups = _freq_bins(counts, bins)
    gid = np.empty(c, dtype=int)
    for i, g in enumerate(groups):
        gid[g] = i
    conf = np.zeros((len(groups), len(groups)))
    np.add.at(conf, (gid[y], gid[pred]), 1)
    conf = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5, 4.3))
    im = ax.imshow(conf, cmap="Blues", vmin=0, vmax=1)
    ax.set_xlabel("predicted class bin (head -> tail)")
    ax.set_ylabel("true class bin (head -> tail)")
    ax.set_title("DLSA confusion, classes binned by frequency")
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, out / "confusion_by_frequency.png")
    plt.close(fig)

    # 5. cluster purity / size on the training samples reaching each depth
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if splits is not None:
        x_tr, y_tr = splits.train.features, splits.train.labels
        _, tr_exits = cascade_predictions(model, x_tr, "cpu")
        for d, stage in enumerate(model.stages):
            reach = tr_exits >= d + 1
            with torch.no_grad():
                cl = stage.filter(torch.from_numpy(x_tr[reach])).cluster
            hist = cluster_class_histogram(cl, torch.from_numpy(y_tr[reach]), stage.filter.num_cluster, c).numpy()
            size = hist.sum(1)
            used = size > 0
            ax.scatter(size[used], hist.max(1)[used] / size[used], s=10, alpha=0.6, label=f"depth {d + 1}")
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel("cluster size (training samples)")
    ax.set_ylabel("cluster purity")
    ax.set_title("Flow-filter clusters")
    _save(fig, out / "cluster_purity.png")
    plt.close(fig)

    groups_named = shot_groups(counts, many, few)
    summary = [f"# DLSA report: {Path(run_dir).name}", "",
               f"{len(y)} evaluation samples, {c} classes ({', '.join(f'{k} {v.size}' for k, v in groups_named.items())}),"
               f" depth {depth}, thresholds {', '.join(f'{t:.3g}' for t in model.thresholds)}.", "", "```",
               format_table(rows, "accuracy %"), "```", "",
               "Routing share (depth 1.." + str(depth) + ", regular): " +
               ", ".join(f"{100 * s:.1f}%" for s in np.bincount(exits, minlength=depth + 2)[1:] / len(exits)), ""]
    for png, title in (("per_class_accuracy.png", "Per-class accuracy vs training frequency"),
                       ("routing_by_class.png", "Where each class exits"),
                       ("loglik_hist.png", "Log-likelihoods and thresholds"),
                       ("confusion_by_frequency.png", "Confusion by frequency bin"),
                       ("cluster_purity.png", "Cluster purity and size")):
        summary += [f"## {title}", "", f"![{title}]({png})", ""]
    (out / "report.md").write_text("\n".join(summary))
    return out
