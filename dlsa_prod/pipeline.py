"""The `train` job in named steps: load_data -> train_models (baselines, DLSA cascade) -> score_models
-> save_models (run directory)."""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from . import __version__, distributed
from .config import RunConfig
from .data import FeatureSet, Splits, load_splits
from .device import resolve_device
from .evaluation import cascade_predictions, evaluate
from .input_guard import InputGuard
from .logs import close_handler, setup_logging
from .metrics import display_name, display_rows, format_routing_by_class, format_table, gap_line, routing_by_class
from .progress import reset_clock
from .models import FeatureClassifier
from .run_dir import StagingDir, save_run
from .selection import method_val_logits, select_model, shipped_model, small_split_warning
from .training import Baseline, DLSATrainResult, dropped_baselines, train_baselines, train_dlsa, uses_base
from .training.options import TrainOptions, run_options
from .training.train_cache import TrainCache

log = logging.getLogger("dlsa_prod")


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def run_training(cfg: RunConfig, out: Path, force: bool = False, cache: TrainCache | None = None) -> dict:
    """The `train` job into run directory `out`.  cache: trained flows and baselines to reuse across
    calls (the benchmarks' variants; `train` itself passes None and trains everything)."""
    distributed.join_for_run(cfg.device)  # torchrun: join the process group; only rank 0 writes `out`
    staging = distributed.RankStaging(lambda: StagingDir(out, force, kind="run", protected_paths=cfg.input_paths()))
    handler = setup_logging(staging.path / "train.log")
    reset_clock()  # progress lines (outside a terminal) every progress.INTERVAL seconds from now
    try:
        with logging_redirect_tqdm(loggers=[log]):
            metrics = _train(cfg, staging.path, run_options(cfg), cache)
        close_handler(handler)
        staging.commit()
    except BaseException:
        close_handler(handler, discard=True)
        staging.abort()
        raise
    log.info("run written to %s", out)
    return metrics


@dataclass
class TrainedModels:
    dlsa: DLSATrainResult
    baselines: dict[str, Baseline]
    dropped: dict[str, str] = field(default_factory=dict)  # baselines the config cannot run: {name: why}
    baseline_model: dict | None = None  # regcls.model the baselines were trained with (run_meta)

    @property
    def baseline_models(self) -> dict[str, FeatureClassifier]:
        return {k: v.model for k, v in self.baselines.items()}


def load_data(cfg: RunConfig, workdir: Path, device: torch.device, generator: torch.Generator) -> tuple[Splits, dict | None]:
    """Step 1: the train / val / test features (images: the backbone stage first) and the backbone info."""
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
    return splits, backbone


def baseline_names(cfg: RunConfig) -> list[str]:
    names = list(cfg.baseline_losses)
    if uses_base(cfg) and cfg.cascade.base not in names:
        names.append(cfg.cascade.base)
    return names


def train_models(splits: Splits, cfg: RunConfig, device: torch.device, generator: torch.Generator,
                 dlsa_cfg: RunConfig | None = None, options: TrainOptions | None = None,
                 cache: TrainCache | None = None) -> TrainedModels:
    """Step 2: the baselines (each in its own random streams), then the DLSA cascade.  The baselines are
    always cfg's; `dlsa_cfg` (tune's chosen candidate) changes DLSA only, its cascade base included.
    options / cache: see training/options.py and training/train_cache.py."""
    dcfg = dlsa_cfg or cfg
    baselines = train_baselines(splits, cfg, device, baseline_names(cfg), options=options, cache=cache)
    base = None
    if uses_base(dcfg):
        pool = baselines if dcfg.regcls == cfg.regcls else train_baselines(splits, dcfg, device, [dcfg.cascade.base],
                                                                           options=options, cache=cache)
        base = pool[dcfg.cascade.base].model if dcfg.cascade.base in pool else None
    dlsa = train_dlsa(splits, dcfg, device, generator, base, options=options, cache=cache)
    return TrainedModels(dlsa, baselines,
                         dropped_baselines(cfg, baseline_names(cfg)), cfg.regcls.model.model_dump(mode="json"))


def best_on_val(models: TrainedModels, fs: FeatureSet, num_classes: int, device, seed: int) -> dict:
    """The selection record of selection.py (which model ships, why, the scores and the interval) on fs;
    its note, when val cannot separate DLSA from the best baseline, is logged as one line."""
    record = select_model(method_val_logits(models.dlsa.model, models.baseline_models, fs, device), fs.labels,
                          num_classes, seed)
    if record["note"]:
        log.warning("%s", record["note"])
    return record


def score_models(models: TrainedModels, splits: Splits, cfg: RunConfig, device: torch.device,
                 select: FeatureSet | None = None) -> dict:
    """Step 3: val and test metrics; the best method on val (on `select` when given: a val part that
    selected no epoch, see tune.py)."""
    counts = splits.train_counts()
    many, few = cfg.data.many_shot, cfg.data.few_shot
    model, bl = models.dlsa.model, models.baseline_models
    metrics = {"val": evaluate(model, bl, splits.val, counts, device, many, few),
               "test": evaluate(model, bl, splits.test, counts, device, many, few)}
    if select is not None:
        metrics["select"] = evaluate(model, bl, select, counts, device, many, few)
    metrics["best_on_val"] = best_on_val(models, select if select is not None else splits.val, splits.num_classes,
                                         device, cfg.seed)
    warning = small_split_warning(select if select is not None else splits.val, splits.num_classes,
                                  "between DLSA and the baselines")
    if warning:
        log.warning(warning)
        metrics["small_val_warning"] = warning
    metrics["dropped_baselines"] = dict(models.dropped)
    metrics["baseline_info"] = {k: {"epoch": v.epoch, "val_accuracy": v.val_accuracy, **v.info}
                                for k, v in models.baselines.items()}
    metrics["depths"] = models.dlsa.depth_reports
    metrics["train_routing_share"] = np.bincount(models.dlsa.train_exit_depth,
                                                 minlength=model.depth + 2)[1:].tolist()
    metrics["train_routing_by_class"] = routing_by_class(models.dlsa.train_exit_depth, splits.train.labels,
                                                         model.depth, splits.num_classes)
    return metrics


def comparison_report(metrics: dict, split: str = "test") -> str:
    """The table (best on val marked), DLSA's gap to the best baseline, and the routing per class."""
    record = metrics["best_on_val"]
    shipped = shipped_model(record)
    key = lambda name: name if name == "dlsa" else f"plain_{name}"  # noqa: E731
    rows = display_rows(metrics[split])
    rows.update({f"plain {name} (not run)": {} for name in metrics.get("dropped_baselines", {})})
    lines = [format_table(rows, f"{split} split (accuracy %, selected on val)", best=display_name(key(shipped)))]
    top_baseline = record.get("best_baseline") if isinstance(record, dict) else None
    if top_baseline is not None:
        lines.append(f"best baseline on val (lowest class-balanced log-loss): {display_name(key(top_baseline))}; "
                     + gap_line(metrics[split], key(top_baseline)))
        if shipped != "dlsa":
            lines.append(f"DLSA is not shown better than the best baseline on val: {display_name(key(shipped))} "
                         f"ships (meta.json best_on_val model = {shipped!r})")
    for name, why in metrics.get("dropped_baselines", {}).items():
        lines.append(f"baseline {name} not run: {why}")
    d = metrics[split]["dlsa"]
    lines.append("routing share (depth 1..%d, regular): %s" % (len(d["routing_share"]) - 1,
                 ", ".join(f"{100 * s:.1f}%" for s in d["routing_share"])))
    lines.append(f"routing per class ({split}, share of each class 0..C-1 exiting at each depth):")
    lines.append(format_routing_by_class(d["routing_by_class"]))
    return "\n".join(lines)


def run_meta(cfg: RunConfig, splits: Splits, models: TrainedModels, backbone: dict | None, metrics: dict) -> dict:
    return {"dlsa_prod_version": __version__, "torch_version": torch.__version__, "dim": splits.dim,
            "num_classes": splits.num_classes, "depth": models.dlsa.model.depth,
            "train_class_counts": splits.train_counts().tolist(), "baselines": list(models.baselines),
            "baseline_model": models.baseline_model, "dropped_baselines": dict(models.dropped),
            "seed": cfg.seed, "many_shot": cfg.data.many_shot, "few_shot": cfg.data.few_shot,
            "backbone": backbone, "best_on_val": metrics["best_on_val"],  # selection.py's record
            "input_guard": input_guard(models.dlsa.model, splits.train)}


def input_guard(model, train: FeatureSet) -> dict | None:
    """The training set's 0.1% / 1% quantiles of depth-1 log p(x) (``dlsa_prod.input_guard``)."""
    if model.depth == 0:
        return None
    device = next(model.parameters()).device
    _pred, _exits, loglik = cascade_predictions(model, train.features, device, with_loglik=True)
    return InputGuard.from_loglik(loglik[:, 0]).to_dict()


def save_models(workdir: Path, cfg: RunConfig, splits: Splits, models: TrainedModels, backbone: dict | None,
                metrics: dict) -> None:
    """Step 4: the run directory (meta.json's best_on_val names the model `export --best` ships)."""
    save_run(workdir, cfg, run_meta(cfg, splits, models, backbone, metrics), models.dlsa.model.cpu(),
             {k: v.cpu() for k, v in models.baseline_models.items()}, metrics)
    (workdir / "history.json").write_text(json.dumps(models.dlsa.histories))
    if cfg.output.tensorboard:
        from .tensorboard_log import DIRNAME, write_tensorboard

        write_tensorboard(workdir / DIRNAME, models.dlsa.histories, metrics)


def _train(cfg: RunConfig, workdir: Path, options: TrainOptions, cache: TrainCache | None) -> dict:
    """The four steps; with cfg.cpu_threads, torch's intra-op thread count is fixed for the run and restored."""
    threads = torch.get_num_threads()
    if cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)
    try:
        return _train_steps(cfg, workdir, options, cache)
    finally:
        torch.set_num_threads(threads)


def _train_steps(cfg: RunConfig, workdir: Path, options: TrainOptions, cache: TrainCache | None) -> dict:
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    generator = seed_everything(cfg.seed)
    log.info("dlsa_prod %s, torch %s, device %s, seed %d", __version__, torch.__version__, device, cfg.seed)
    from .ops import gmm_path

    # both change CPU results in the last bits (docs/kernels.md, reproducibility)
    log.info("GMM op: %s; CPU threads: %d", gmm_path(device, cfg.gmflow.model.gmm_backend), torch.get_num_threads())
    splits, backbone = load_data(cfg, workdir, device, generator)
    models = train_models(splits, cfg, device, generator, options=options, cache=cache)
    metrics = score_models(models, splits, cfg, device)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    save_models(workdir, cfg, splits, models, backbone, metrics)
    log.info("\n%s\n", comparison_report(metrics, "test"))
    log.info("trained in %.1f s", metrics["seconds"])
    return metrics
