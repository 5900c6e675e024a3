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
from .input_guard import InputGuard
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


def class_names(run: LoadedRun) -> list[str] | None:
    """Class names recorded by an image run (ImageFolder), else None (ticks show class ids)."""
    names = (run.meta.get("backbone") or {}).get("class_names")
    return list(names) if names and len(names) == int(run.meta["num_classes"]) else None


def _class_ticks(ax, counts: np.ndarray, names: list[str] | None) -> None:
    """X ticks: class ids (or names) in order of training frequency, every k-th one when there are many."""
    order = np.argsort(-counts, kind="stable")
    step = max(1, int(np.ceil(len(order) / 40)))
    pos = np.arange(0, len(order), step)
    ax.set_xticks(pos)
    ax.set_xticklabels([names[order[i]] if names else str(order[i]) for i in pos],
                       rotation=90 if names or len(pos) > 20 else 0, fontsize=7 if len(pos) > 20 else 8)
    what = "class" if names else "class id"
    ax.set_xlabel(f"{what}, sorted by training frequency (head -> tail)" + (f"; every {step}th shown" if step > 1 else ""))
    ax.set_xlim(-0.6, len(order) - 0.4)


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


def plot_per_class_accuracy(s: Scored, counts: np.ndarray, path: Path, names: list[str] | None = None) -> None:
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
    _class_ticks(ax, counts, names)
    ax.set_ylabel("test accuracy of the class")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("Per-class accuracy vs training frequency")
    _save(fig, path)


def plot_routing_by_class(s: Scored, counts: np.ndarray, depth: int, path: Path,
                          names: list[str] | None = None) -> None:
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
    _class_ticks(ax, counts, names)
    ax.set_ylabel("share of the class's test samples")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("Where each class exits")
    _save(fig, path)


def robust_range(ll: np.ndarray, *marks: float) -> tuple[float, float]:
    """The x range of a log-likelihood histogram: from the 1st percentile (at most 3 interquartile ranges
    below the lower quartile) to the maximum, widened to show the
    MARKS (threshold, guard quantile); the few far-out low values (flows give -3000 to outliers)
    would squash the rest."""
    if ll.size:
        q1, q25, q75 = np.percentile(ll, [1, 25, 75], method="higher")
        lo, hi = float(max(q1, q25 - 3 * (q75 - q25))), float(ll.max())
    else:
        lo, hi = marks[0] - 1, marks[0] + 1
    lo, hi = min(lo, *marks), max(hi, *marks)
    pad = 0.05 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def plot_loglik_hist(s: Scored, thresholds: list[float], path: Path, guard_q001: float | None = None) -> None:
    plt, depth = _plt(), len(thresholds)
    fig, axes = plt.subplots(1, depth, figsize=(4.5 * depth, 3.3), squeeze=False)
    for d in range(depth):
        ll = s.loglik[:, d]
        ll = ll[np.isfinite(ll)]
        ax = axes[0, d]
        guard = guard_q001 if d == 0 and guard_q001 is not None else None
        lo, hi = robust_range(ll, thresholds[d], *([] if guard is None else [guard]))
        below = int((ll < lo).sum())
        ax.hist(np.clip(ll, lo, hi), bins=40, range=(lo, hi), color="tab:blue", alpha=0.8)
        ax.axvspan(thresholds[d], hi, color="tab:green", alpha=0.12, label="exits here (>= threshold)")
        ax.axvline(thresholds[d], color="tab:red", ls="--", label=f"threshold {thresholds[d]:.3g}")
        if guard is not None:
            ax.axvline(guard, color="0.3", ls=":", label=f"input guard {guard:.3g} (train 0.1%)")
        ax.set_xlim(lo, hi)
        nxt = f"depth {d + 2}" if d + 1 < depth else "regular classifier"
        ax.set_title(f"depth {d + 1}: {ll.size} test samples reach it", fontsize=10)
        ax.set_xlabel(f"log-likelihood (<- on to {nxt} | exit ->)" + (f"\n{below} below the range, in the "
                                                                     f"first bin" if below else ""), fontsize=9)
        ax.set_ylabel("test samples")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
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
    n = len(groups)
    fig, ax = plt.subplots(figsize=(5.2, 4.5))
    im = ax.imshow(conf, cmap="Blues", vmin=0, vmax=1)
    one = all(g.size == 1 for g in groups)  # one class per bin: the ticks are class ids
    labels = [str(int(g[0])) if one else str(i) for i, g in enumerate(groups)]
    ax.set_xticks(np.arange(n))
    ax.set_yticks(np.arange(n))
    ax.set_xticklabels(labels, fontsize=8, rotation=90 if n > 15 else 0)
    ax.set_yticklabels(labels, fontsize=8)
    sizes = sorted({int(g.size) for g in groups})
    what = "class id (sorted by training frequency)" if one else \
        f"frequency bin (0 = head; {'-'.join(map(str, sorted({sizes[0], sizes[-1]})))} classes each)"
    ax.set_xlabel(f"predicted {what}", fontsize=9)
    ax.set_ylabel(f"true {what}", fontsize=9)
    ax.set_title("DLSA confusion, classes binned by frequency", fontsize=10)
    bar = fig.colorbar(im, ax=ax, fraction=0.046)
    bar.set_label(f"share of the true {'class' if one else 'bin'}'s test samples")
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
        f = run.cfg.filter
        ax.axhline(f.min_purity, color="tab:red", ls="--", lw=1, label=f"min_purity {f.min_purity:g}")
        ax.axvline(f.min_size, color="0.4", ls=":", lw=1, label=f"min_size {f.min_size}")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7, loc="lower right")
    else:
        ax.text(0.5, 0.5, "training data not available", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("cluster size (training samples, log)")
    ax.set_ylabel("cluster purity (largest class share)")
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
        names = class_names(run)
        guard = InputGuard.from_dict(run.meta.get("input_guard"))
        plot_per_class_accuracy(scored, counts, work / "per_class_accuracy.png", names)
        plot_routing_by_class(scored, counts, run.model.depth, work / "routing_by_class.png", names)
        plot_loglik_hist(scored, run.model.thresholds, work / "loglik_hist.png", guard.q001 if guard else None)
        plot_confusion_by_frequency(scored, counts, int(bins), work / "confusion_by_frequency.png")
        plot_cluster_purity(run, train, work / "cluster_purity.png")
        (work / "report.md").write_text(summary_markdown(run, scored))
        staging.commit()
    return out
