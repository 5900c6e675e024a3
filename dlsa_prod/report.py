"""`dlsa-prod report RUN_DIR`: PNG plots and a short markdown summary of a trained run.

Plots (the run's test split unless told otherwise; feature and image runs alike):
  per_class_accuracy.png   per-class accuracy against training frequency, DLSA vs plain classifiers
  routing_by_class.png     share of each class exiting at each depth
  loglik_hist.png          log-likelihood histograms per depth with the thresholds
  confusion_by_frequency.png   confusion matrix with classes binned by training frequency
  cluster_purity.png       purity and size of the clusters of each depth's flow filter (train)

The report directory is built under a temporary name and renamed into place, replacing only an
earlier report (never a directory this package did not write).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import FeatureSet, read_features
from .errors import DLSAError
from .evaluation import cascade_predictions, classifier_predictions
from .metrics import classification_metrics, format_table, routing_by_class, run_shot_thresholds, shot_groups
from .run_dir import LoadedRun, StagingDir, check_replaceable, load_run
from .training.cluster_stats import cluster_class_histogram

log = logging.getLogger("dlsa_prod")

PLOTS = (("per_class_accuracy.png", "Per-class accuracy vs training frequency"),
         ("routing_by_class.png", "Where each class exits"),
         ("loglik_hist.png", "Log-likelihoods and thresholds"),
         ("confusion_by_frequency.png", "Confusion by frequency bin"),
         ("cluster_purity.png", "Cluster purity and size"))


@dataclass
class Scored:
    """The cascade's pass over the evaluation split, and every method's metrics."""

    labels: np.ndarray
    pred: np.ndarray
    exits: np.ndarray
    loglik: np.ndarray
    rows: dict[str, dict]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    _plt().close(fig)


def _freq_bins(counts: np.ndarray, n_bins: int) -> list[np.ndarray]:
    order = np.argsort(-counts, kind="stable")
    return [b for b in np.array_split(order, min(n_bins, len(counts))) if b.size]


# ----------------------------------------------------------------------------- steps
def evaluation_data(run: LoadedRun, features: str | Path | None) -> tuple[FeatureSet, FeatureSet | None]:
    """(evaluation split, train split or None): FEATURES if given, else the run's own test split."""
    from .run_data import load_run_splits

    c, dim = int(run.meta["num_classes"]), int(run.meta["dim"])
    test = read_features(features, c, dim) if features is not None else None
    try:
        splits = load_run_splits(run)
    except DLSAError as exc:
        if test is None:
            raise
        log.warning("cluster purity plot left empty: the run's training data cannot be read (%s)", exc)
        return test, None
    return (test if test is not None else splits.test), splits.train


def score(run: LoadedRun, test: FeatureSet) -> Scored:
    counts = np.asarray(run.meta["train_class_counts"])
    many, few = run_shot_thresholds(run.meta)
    pred, exits, loglik = cascade_predictions(run.model, test.features, "cpu", with_loglik=True)
    rows = {"DLSA": classification_metrics(test.labels, pred, counts, many, few)}
    for loss, clf in run.baselines.items():
        rows[f"plain {loss}"] = classification_metrics(test.labels, classifier_predictions(clf, test.features, "cpu"),
                                                       counts, many, few)
    return Scored(test.labels, pred, exits, loglik, rows)


def plot_per_class_accuracy(s: Scored, counts: np.ndarray, path: Path) -> None:
    plt, c = _plt(), len(counts)
    order = np.argsort(-counts, kind="stable")
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, m in s.rows.items():
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
    _save(fig, path)


def plot_routing_by_class(s: Scored, counts: np.ndarray, depth: int, path: Path) -> None:
    plt, c = _plt(), len(counts)
    order = np.argsort(-counts, kind="stable")
    # [class, exit]; a class without samples shows no bar
    share = np.nan_to_num(np.array(routing_by_class(s.exits, s.labels, depth, c), dtype=float).T)
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
    _save(fig, path)


def plot_loglik_hist(s: Scored, thresholds: list[float], path: Path) -> None:
    plt, depth = _plt(), len(thresholds)
    fig, axes = plt.subplots(1, depth, figsize=(4 * depth, 3), squeeze=False)
    for d in range(depth):
        ll = s.loglik[:, d]
        ll = ll[np.isfinite(ll)]
        ax = axes[0, d]
        ax.hist(ll, bins=40, color="tab:blue", alpha=0.8)
        ax.axvline(thresholds[d], color="tab:red", ls="--", label="threshold")
        ax.set_title(f"depth {d + 1}: {ll.size} samples reach it")
        ax.set_xlabel("log-likelihood")
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_confusion_by_frequency(s: Scored, counts: np.ndarray, bins: int, path: Path) -> None:
    plt = _plt()
    groups = _freq_bins(counts, bins)
    gid = np.empty(len(counts), dtype=int)
    for i, g in enumerate(groups):
        gid[g] = i
    conf = np.zeros((len(groups), len(groups)))
    np.add.at(conf, (gid[s.labels], gid[s.pred]), 1)
    conf = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5, 4.3))
    im = ax.imshow(conf, cmap="Blues", vmin=0, vmax=1)
    ax.set_xlabel("predicted class bin (head -> tail)")
    ax.set_ylabel("true class bin (head -> tail)")
    ax.set_title("DLSA confusion, classes binned by frequency")
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, path)


def plot_cluster_purity(run: LoadedRun, train: FeatureSet | None, path: Path) -> None:
    """Purity and size of each depth's clusters over the training samples reaching that depth."""
    plt, model, c = _plt(), run.model, int(run.meta["num_classes"])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if train is not None:
        _, tr_exits = cascade_predictions(model, train.features, "cpu")
        for d, stage in enumerate(model.stages):
            reach = tr_exits >= d + 1
            with torch.no_grad():
                cl = stage.filter(torch.from_numpy(train.features[reach])).cluster
            hist = cluster_class_histogram(cl, torch.from_numpy(train.labels[reach]), stage.filter.num_cluster, c).numpy()
            size = hist.sum(1)
            used = size > 0
            ax.scatter(size[used], hist.max(1)[used] / size[used], s=10, alpha=0.6, label=f"depth {d + 1}")
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "training data not available", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("cluster size (training samples)")
    ax.set_ylabel("cluster purity")
    ax.set_title("Flow-filter clusters")
    _save(fig, path)


def summary_markdown(run: LoadedRun, s: Scored) -> str:
    counts = np.asarray(run.meta["train_class_counts"])
    depth, thresholds = run.model.depth, run.model.thresholds
    groups = shot_groups(counts, *run_shot_thresholds(run.meta))
    share = np.bincount(s.exits, minlength=depth + 2)[1:] / len(s.exits)
    lines = [f"# DLSA report: {Path(run.path).name}", "",
             f"{len(s.labels)} evaluation samples, {len(counts)} classes "
             f"({', '.join(f'{k} {v.size}' for k, v in groups.items())}), depth {depth}, "
             f"thresholds {', '.join(f'{t:.3g}' for t in thresholds)}.", "", "```",
             format_table(s.rows, "accuracy %"), "```", "",
             f"Routing share (depth 1..{depth}, regular): " + ", ".join(f"{100 * v:.1f}%" for v in share), ""]
    for png, title in PLOTS:
        lines += [f"## {title}", "", f"![{title}]({png})", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command
def write_report(run_dir: str | Path, out: str | Path | None = None, features: str | Path | None = None,
                 bins: int = 10, force: bool = False) -> Path:
    """Write the five plots and report.md to OUT (default RUN_DIR/report); return OUT."""
    if int(bins) < 1:
        raise DLSAError(f"--bins must be at least 1, got {bins}")
    out = Path(out or Path(run_dir) / "report")
    # an earlier report is replaced only with ``force``; anything else (and the run itself) is refused
    # before any work, and nothing is created for a run that cannot be loaded
    check_replaceable(out, "report", [run_dir, features], force=force)
    run = load_run(run_dir)
    with StagingDir(out, force=force, kind="report", tag="reporting", protected_paths=[run_dir, features]) as staging:
        test, train = evaluation_data(run, features)
        scored = score(run, test)
        counts = np.asarray(run.meta["train_class_counts"])
        work = staging.path
        plot_per_class_accuracy(scored, counts, work / "per_class_accuracy.png")
        plot_routing_by_class(scored, counts, run.model.depth, work / "routing_by_class.png")
        plot_loglik_hist(scored, run.model.thresholds, work / "loglik_hist.png")
        plot_confusion_by_frequency(scored, counts, int(bins), work / "confusion_by_frequency.png")
        plot_cluster_purity(run, train, work / "cluster_purity.png")
        (work / "report.md").write_text(summary_markdown(run, scored))
        staging.commit()
    return out
