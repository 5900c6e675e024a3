"""`dlsa-prod tune CONFIG`: choose DLSA's configuration on validation data only.

The val split is halved per class (seeded): the *epoch half* selects every classifier's and
flow's epoch (it is the val split the trainers see), the *selection half* compares the
candidate configurations and the baselines and is never used to pick an epoch.  Halving keeps
the cost at one training per candidate; k-fold over train + val would multiply it by k and
re-split the long tail's few tail samples again and again (docs/benchmarks.md).

Search: the config itself plus ``candidates - 1`` configurations drawn (seeded) from SPACE
(depth, K, per-depth llh_proportion, classifier loss / type / sampler / learning rate / training
length, cascade preset, cross-fitted routing or not); a candidate changes DLSA only, the baselines
are always the config as given's,
by successive halving: every candidate trains with a third of the epochs, the best third
(at least 2, always including the config as given) train with the full epochs; a candidate
replaces the config as given only if it beats it on the selection half by more than one standard
error (``pick_final``).  Every finished evaluation is stored in
``tune_state.json`` at once, so an interrupted tune resumes where it stopped.

Writes into OUT: chosen_config.yaml, tune_result.json (every score, the choice, the chosen
configuration's test metrics), and run/ -- the chosen configuration's run directory, whose
meta.json ``best_on_val`` names DLSA only if it is shown better than the best baseline on the selection
half (selection.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from pathlib import Path

import numpy as np

from .cascade_presets import PRESETS
from .config import RunConfig, config_from_dict, config_to_yaml
from .data import FeatureSet, Splits, data_digest
from .errors import ConfigError, RunDirError
from .evaluation import cascade_predictions
from .metrics import display_name, method_metrics
from .pipeline import (TrainedModels, comparison_report, load_data, save_models, score_models, seed_everything,
                       train_models)
from .progress import progress
from .selection import shipped_model, small_split_warning
from .training.options import TrainOptions
from .training.train_cache import TrainCache

log = logging.getLogger("dlsa_prod")

STATE = "tune_state.json"
RUNG_FRACTIONS = (1 / 3, 1.0)

# dotted key -> choices; llh_proportions entries are per depth (the last repeats)
SPACE = {
    "max_depth": [1, 2],
    "gmflow.model.num_cluster": ["K", "K/2"],
    "cascade.llh_proportions": [[0.2], [0.3], [0.5], [0.2, 0.4], [0.4, 0.2]],
    "classifier.loss": ["BSM", "CE"],
    "classifier.type": ["linear", "cosine"],
    "classifier.sampler": ["none", "class-balanced"],
    "cascade.preset": ["research", "route_prior", "on_BSM", "on_cRT"],
    "cascade.crossfit_folds": [0, 2],
    "classifier.lr_scale": [1.0, 0.5, 2.0],  # x the config's cacls / regcls learning rate
    "classifier.length_scale": [1.0, 0.5, 2.0],  # x their optim.updates (or optim.epoch when not set)
}
# cascade options (see CascadeConfig): the research method, and the variants that won on val in docs/benchmarks.md

def split_val(val: FeatureSet, num_classes: int, seed: int) -> tuple[FeatureSet, FeatureSet]:
    """(epoch half, selection half): each class's val samples shuffled and halved (epoch half gets the odd one)."""
    rng = np.random.default_rng([seed, 7211])
    a, b = [], []
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(val.labels == c))
        k = (idx.size + 1) // 2
        a.append(idx[:k])
        b.append(idx[k:])
    a, b = np.sort(np.concatenate(a)), np.sort(np.concatenate(b))
    return val.subset(a, f"{val.source} (epoch half)"), val.subset(b, f"{val.source} (selection half)")


def candidate_overrides(choice: dict, cfg: RunConfig) -> dict:
    """A SPACE point -> dotted config overrides."""
    k = cfg.gmflow.model.num_cluster
    out = {"max_depth": choice["max_depth"],
           "gmflow.model.num_cluster": k if choice["gmflow.model.num_cluster"] == "K" else max(2, k // 2),
           "cascade.llh_proportions": choice["cascade.llh_proportions"],
           "cascade.crossfit_folds": choice["cascade.crossfit_folds"]}
    for section in ("cacls", "regcls"):
        optim = getattr(cfg, section).optim
        scale = choice["classifier.lr_scale"]
        out[f"{section}.optim.lr"] = [lr * scale for lr in optim.lr] if isinstance(optim.lr, list) else optim.lr * scale
        if optim.updates is not None:
            out[f"{section}.optim.updates"] = max(1, round(optim.updates * choice["classifier.length_scale"]))
        else:
            out[f"{section}.optim.epoch"] = max(1, round(optim.epoch * choice["classifier.length_scale"]))
        out[f"{section}.loss.type"] = choice["classifier.loss"]
        out[f"{section}.model.type"] = choice["classifier.type"]
        out[f"{section}.data.sampler"] = choice["classifier.sampler"]
    out.update(PRESETS[choice["cascade.preset"]])
    return out


def draw_candidates(cfg: RunConfig, n: int, seed: int) -> list[dict]:
    """The config itself ({}), then n - 1 distinct SPACE points drawn with `seed`."""
    keys = list(SPACE)
    total = math.prod(len(SPACE[k]) for k in keys)
    rng = random.Random(seed)
    picked, seen = [{}], set()
    while len(picked) < min(n, total + 1):
        flat = rng.randrange(total)
        if flat in seen:
            continue
        seen.add(flat)
        choice = {}
        for k in keys:
            flat, i = divmod(flat, len(SPACE[k]))
            choice[k] = SPACE[k][i]
        picked.append(candidate_overrides(choice, cfg))
    return picked


def apply_overrides(cfg: RunConfig, overrides: dict, epoch_fraction: float = 1.0) -> RunConfig:
    """cfg with the dotted overrides, and every epoch count scaled by epoch_fraction (at least 1)."""
    tree = cfg.model_dump(mode="json")
    out = config_from_dict(tree, "tune candidate", [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    if out.cascade.regular == "prior_shift" and out.regcls.model.type != "linear":
        out.cascade.regular = "train"  # prior shift bakes a bias: linear heads only
    if epoch_fraction < 1.0:
        for section in (out.cacls, out.regcls):
            section.optim.epoch = max(1, round(section.optim.epoch * epoch_fraction))
            if section.optim.updates is not None:
                section.optim.updates = max(1, round(section.optim.updates * epoch_fraction))
            section.eval_freq = min(section.eval_freq, section.optim.epoch)
        out.gmflow.optim.epoch = max(1, round(out.gmflow.optim.epoch * epoch_fraction))
        out.gmflow.eval_freq = min(out.gmflow.eval_freq, out.gmflow.optim.epoch)
    return out


def _key(overrides: dict) -> str:
    return json.dumps(overrides, sort_keys=True)


def prepare_tune_dir(out: Path) -> None:
    """Create OUT (marked as a tune directory), or reuse one an earlier tune wrote; refuse anything else."""
    from .run_dir import read_marker, write_marker

    if out.exists():
        marker = read_marker(out)
        if marker is None or marker["kind"] != "tune":
            raise RunDirError(f"{out}: exists and is not a dlsa-prod tune directory; choose another --out")
    else:
        out.mkdir(parents=True)
        write_marker(out, "tune")


class TuneState:
    """Scores per (rung, candidate) in OUT/tune_state.json, written after every evaluation."""

    def __init__(self, out: Path, fingerprint: dict):
        from .run_dir import write_json

        self.path = out / STATE
        self._write = write_json
        self.data = {"fingerprint": fingerprint, "scores": {}}
        if self.path.is_file():
            try:
                old = json.loads(self.path.read_text(encoding="utf-8"))
                if not isinstance(old, dict) or not isinstance(old.get("scores"), dict):
                    raise ValueError("not a tune state")
            except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
                log.warning("tune: %s is unreadable (%s); starting afresh", self.path, str(exc).splitlines()[0])
                old = {}
            if old.get("fingerprint") == fingerprint:
                self.data = old
                log.info("tune: resuming (%d evaluations done)", len(old["scores"]))
            elif old:
                log.info("tune: config, seed or data changed since the last tune in %s; starting afresh", out)

    def get(self, rung: int, key: str):
        return self.data["scores"].get(f"{rung}|{key}")

    def put(self, rung: int, key: str, score: float) -> None:
        self.data["scores"][f"{rung}|{key}"] = score
        self._write(self.path, self.data)


def base_for(cfg: RunConfig, splits: Splits, device, options: TrainOptions, cache: TrainCache):
    """The classifier cfg's cascade options build on, trained with cfg's own regular-classifier settings
    (each candidate's loss / type / sampler / epochs; identical settings are reused from the tune's cache)."""
    from .training import train_baselines, uses_base

    if not uses_base(cfg):
        return None
    trained = train_baselines(splits, cfg, device, [cfg.cascade.base], options=options, cache=cache)
    return trained[cfg.cascade.base].model if cfg.cascade.base in trained else None


def evaluate_candidate(cfg: RunConfig, splits: Splits, select: FeatureSet, device, options: TrainOptions,
                       cache: TrainCache) -> float:
    """Train DLSA with cfg on splits (val = epoch half) and return its accuracy on the selection half.
    cache: the tune's own (candidates that share a flow or a base classifier train it once)."""
    from .training import train_dlsa

    generator = seed_everything(cfg.seed)
    result = train_dlsa(splits, cfg, device, generator, base_for(cfg, splits, device, options, cache),
                        options=options, cache=cache)
    pred, _ = cascade_predictions(result.model, select.features, device)
    return float((pred == select.labels).mean())


def pick_final(final: dict[int, float], n_select: int) -> tuple[int, str | None]:
    """The final rung's choice by the one-standard-error rule: the best-scoring candidate only if it
    beats the config as given (candidate 0) by more than one binomial standard error of that
    config's selection-half accuracy, sqrt(p (1 - p) / n); otherwise the config as given.  On a
    small selection half (100 images: SE about 3.5 points at 85 %) this keeps tune from swapping
    the config for whichever candidate the noise favoured.  Returns (index, a log note or None)."""
    best = min(final, key=lambda j: (-final[j], j))
    if best == 0 or 0 not in final:
        return best, None
    p = final[0]
    se = math.sqrt(max(p * (1 - p), 0.0) / max(n_select, 1))
    if final[best] - p > se:
        return best, None
    return 0, (f"candidate {best} scored {100 * final[best]:.2f} vs {100 * p:.2f} for the config as given on the "
               f"selection half, within one standard error ({100 * se:.2f} points, n = {n_select}): "
               f"keeping the config as given")


def run_tune(cfg: RunConfig, out: Path, candidates: int = 8) -> dict:
    """Successive-halving search on the selection half; writes OUT (see the module doc).  A tune
    directory this call created is removed again if it fails before writing anything into it."""
    from .device import resolve_device
    from .logs import setup_logging
    from .run_dir import MARKER

    if candidates < 1:
        raise ConfigError(f"candidates: expected at least 1 (the config itself), got {candidates}")
    setup_logging()
    out = Path(out)
    device = resolve_device(cfg.device)
    created = not out.exists()
    prepare_tune_dir(out)
    try:
        return _search(cfg, out, candidates, device)
    except BaseException:
        if created and [p.name for p in out.iterdir()] == [MARKER]:
            (out / MARKER).unlink()
            out.rmdir()
        raise


def _search(cfg: RunConfig, out: Path, candidates: int, device) -> dict:
    from .run_dir import StagingDir, write_json

    splits, backbone = load_data(cfg, out, device, seed_everything(cfg.seed))
    epoch_half, select_half = split_val(splits.val, splits.num_classes, cfg.seed)
    warning = small_split_warning(select_half, splits.num_classes, "between configurations")
    if warning:
        log.warning(warning)
    tsplits = Splits(splits.train, epoch_half, splits.test, splits.num_classes)
    fingerprint = {"config": config_to_yaml(cfg), "candidates": candidates,
                   "train": int(len(splits.train)), "val": int(len(splits.val)), "data": data_digest(splits)}
    state = TuneState(out, fingerprint)
    options, cache = TrainOptions.from_config(cfg), TrainCache()
    cands = draw_candidates(cfg, candidates, cfg.seed)
    alive = list(range(len(cands)))
    keep = [max(2, math.ceil(len(cands) / 3)), 1]
    total = len(cands) + min(keep[0], len(cands))
    scores: dict[int, dict[int, float]] = {}
    with progress(total=total, desc="tune", unit="candidate run", leave=True) as bar:
        for rung, frac in enumerate(RUNG_FRACTIONS):
            scores[rung] = {}
            for i in alive:
                key = _key(cands[i])
                score = state.get(rung, key)
                if score is None:
                    ccfg = apply_overrides(cfg, cands[i], frac)
                    score = evaluate_candidate(ccfg, tsplits, select_half, device, options, cache)
                    state.put(rung, key, score)
                scores[rung][i] = score
                bar.update(1)
                bar.set_postfix(rung=rung, best=f"{max(scores[rung].values()):.4f}")
                log.info("tune rung %d (%.0f%% epochs) candidate %d: selection-half acc %.4f  %s",
                         rung, 100 * frac, i, score, key if cands[i] else "(the config as given)")
            ranked = sorted(alive, key=lambda j: (-scores[rung][j], j))  # ties: the earlier candidate
            alive = ranked[:keep[rung]]
            if rung < len(RUNG_FRACTIONS) - 1 and 0 not in alive:  # the config as given reaches the final rung
                alive = alive[:-1] + [0]
    chosen, note = pick_final(scores[len(RUNG_FRACTIONS) - 1], len(select_half))
    if note:
        log.info("tune: %s", note)
    chosen_cfg = apply_overrides(cfg, cands[chosen])

    # the chosen configuration and the baselines, trained with the epoch half, compared on the selection half
    run_dir = out / "run"
    staging = StagingDir(run_dir, True, kind="run")
    try:
        # the baselines are exactly those `train` runs with the config as given; the candidate changes DLSA only
        models: TrainedModels = train_models(tsplits, cfg, device, seed_everything(chosen_cfg.seed), chosen_cfg,
                                             options=options, cache=cache)
        metrics = score_models(models, tsplits, chosen_cfg, device, select=select_half)
        save_models(staging.path, chosen_cfg, tsplits, models, backbone, metrics)
        staging.commit()
    except BaseException:
        staging.abort()
        raise
    sel = metrics["select"]
    record = metrics["best_on_val"]
    best_base = None if record["best_baseline"] is None else f"plain_{record['best_baseline']}"
    beats = shipped_model(record) == "dlsa"
    result = {
        "seed": cfg.seed, "chosen": cands[chosen], "chosen_index": chosen,
        "selection_scores": {str(r): {_key(cands[i]): s for i, s in sc.items()} for r, sc in scores.items()},
        "selection_accuracy": {k: v["accuracy"] for k, v in method_metrics(sel).items()},
        "best_baseline_on_val": None if best_base is None else best_base.removeprefix("plain_"),
        "dlsa_beats_best_baseline_on_val": beats, "best_on_val": record,
        "test": metrics["test"], "small_val_warning": warning, "dropped_baselines": metrics["dropped_baselines"],
        "val_split": "halves: epochs on the epoch half, configurations and baselines on the selection half",
    }
    write_json(out / "tune_result.json", result)
    tmp = out / f".chosen_config.yaml.tmp{os.getpid()}"  # nothing half-written: temp file, then rename
    tmp.write_text(config_to_yaml(chosen_cfg))
    os.replace(tmp, out / "chosen_config.yaml")
    t = metrics["test"]
    log.info("\n%s\n", comparison_report(metrics, "test"))
    log.info("tune: chosen candidate %d %s; test acc DLSA %.2f, %s %.2f", chosen, cands[chosen] or "(as given)",
             100 * t["dlsa"]["accuracy"], display_name(best_base) if best_base else "-",
             100 * t[best_base]["accuracy"] if best_base else float("nan"))
    if not beats:
        log.warning("tuned DLSA is not shown better than the best baseline on the selection half (%s: %.2f vs DLSA "
                    "%.2f); best_on_val = %r, so `export --best` ships the baseline",
                    display_name(best_base), 100 * sel[best_base]["accuracy"], 100 * sel["dlsa"]["accuracy"],
                    shipped_model(record))
    return result
