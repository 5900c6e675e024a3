"""The `train` job: data -> DLSA cascade + plain baselines -> metrics -> run directory."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from . import __version__
from .config import RunConfig
from .data import load_splits
from .device import resolve_device
from .evaluation import evaluate
from .logs import close_handler, setup_logging
from .metrics import display_rows, format_table
from .run_dir import StagingDir, save_run
from .training import train_baseline, train_dlsa

log = logging.getLogger("dlsa_prod")


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def results_table(metrics: dict, split: str) -> str:
    return format_table(display_rows(metrics[split]), f"{split} split (accuracy %, selected on val)")


def run_training(cfg: RunConfig, out: Path, force: bool = False) -> dict:
    staging = StagingDir(out, force)
    handler = setup_logging(staging.path / "train.log")
    try:
        with logging_redirect_tqdm(loggers=[log]):
            metrics = _train(cfg, staging.path)
        close_handler(handler)
        staging.commit()
    except BaseException:
        close_handler(handler)
        staging.abort()
        raise
    log.info("run written to %s", out)
    return metrics


def _train(cfg: RunConfig, workdir: Path) -> dict:
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    generator = seed_everything(cfg.seed)
    log.info("dlsa_prod %s, torch %s, device %s, seed %d", __version__, torch.__version__, device, cfg.seed)
    backbone = None
    if cfg.data.source == "images":
        from .images.stage import image_splits

        splits, backbone = image_splits(cfg, workdir, device, generator)
    else:
        splits = load_splits(cfg.data, cfg.seed)
    counts = splits.train_counts()
    log.info("data: %d train / %d val / %d test samples, dim %d, %d classes, train counts %d..%d (ratio %.1f)",
             len(splits.train), len(splits.val), len(splits.test), splits.dim, splits.num_classes,
             counts.max(), counts.min(), counts.max() / counts.min())
    result = train_dlsa(splits, cfg, device, generator)
    baselines = {loss: train_baseline(splits, cfg, loss, device, generator) for loss in cfg.baseline_losses}
    many, few = cfg.data.many_shot, cfg.data.few_shot
    metrics = {
        "val": evaluate(result.model, baselines, splits.val, counts, device, many, few),
        "test": evaluate(result.model, baselines, splits.test, counts, device, many, few),
        "depths": result.depth_reports,
        "train_routing_share": np.bincount(result.train_exit_depth, minlength=result.model.depth + 2)[1:].tolist(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    meta = {"dlsa_prod_version": __version__, "torch_version": torch.__version__, "dim": splits.dim,
            "num_classes": splits.num_classes, "depth": result.model.depth, "train_class_counts": counts.tolist(),
            "baselines": list(baselines), "seed": cfg.seed, "many_shot": many, "few_shot": few,
            "backbone": backbone}
    save_run(workdir, cfg, meta, result.model.cpu(), {k: v.cpu() for k, v in baselines.items()}, metrics)
    (workdir / "history.json").write_text(json.dumps(result.histories))
    log.info("\n%s\nrouting share (depth 1..%d, regular): %s\n", results_table(metrics, "test"), result.model.depth,
             ", ".join(f"{100 * s:.1f}%" for s in metrics["test"]["dlsa"]["routing_share"]))
    log.info("trained in %.1f s", metrics["seconds"])
    return metrics

