"""The whole comparison once per seed, summarised as mean +- std per method and shot group.

Layout of OUT::

    seed_0/, seed_1/, ...   complete run directories (dlsa-prod eval / export work on each)
    seeds_summary.json      {"seeds": [...], "test": {method: {metric: {mean, std, values}}}, "val": ..., "best_on_val": [...]}
    seeds_summary.md        the mean +- std table of the test split
    .dlsa_prod              marker (kind "seeds")

std is the sample standard deviation (n - 1); with one seed it is 0.  Built in a staging
directory and renamed into place, like a run.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from .config import RunConfig
from .metrics import display_name, method_metrics
from .run_dir import StagingDir, write_json
from .selection import shipped_model

log = logging.getLogger("dlsa_prod")

SUMMARY_KEYS = (("accuracy", "overall"), ("many_shot", "many"), ("medium_shot", "medium"), ("few_shot", "few"),
                ("balanced_accuracy", "balanced"))


def check_not_seeds_dir(path: str | Path) -> None:
    """A ``--seeds`` output given where one run is expected: name a seed run to use instead."""
    from .run_dir import RunDirError

    path = Path(path)
    if (path / "meta.json").is_file():
        return
    runs = sorted((p for p in path.glob("seed_*") if (p / "meta.json").is_file()),
                  key=lambda p: (len(p.name), p.name))
    if runs:
        raise RunDirError(f"{path}: holds one run per seed (train --seeds); give one of them, e.g. {runs[0]}")


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; a one-line error naming --seeds otherwise."""
    from .errors import ConfigError

    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if any(not 0 <= s < 2 ** 63 for s in seeds):
        raise ConfigError(f"--seeds {text!r}: seeds must be non-negative integers below 2**63, e.g. 0,1,2")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: expected distinct comma-separated integers, e.g. 0,1,2")
    return seeds


def mean_std(values: list) -> dict:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0, "values": values}
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "n": int(v.size), "values": values}


def summarise(per_seed: dict[int, dict], split: str = "test") -> dict:
    """{method key: {metric: mean_std}} over the seeds' metrics of `split`."""
    methods = list(method_metrics(next(iter(per_seed.values()))[split]))
    return {m: {key: mean_std([per_seed[s][split][m].get(key) for s in per_seed]) for key, _ in SUMMARY_KEYS}
            for m in methods}


def format_summary(summary: dict, title: str, best_counts: dict[str, int] | None = None) -> str:
    """Markdown table: method | overall | many | medium | few | balanced, each mean +- std (points)."""
    head = "| method | " + " | ".join(label for _, label in SUMMARY_KEYS) + " |"
    lines = [title, "", head, "|---|" + "---:|" * len(SUMMARY_KEYS)]
    for m, row in summary.items():
        cells = []
        for key, _ in SUMMARY_KEYS:
            s = row[key]
            cells.append("n/a" if s["mean"] is None else f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}")
        lines.append(f"| {display_name(m)} | " + " | ".join(cells) + " |")
    if best_counts:
        lines += ["", "best on val per seed: " + ", ".join(f"{k} {v}x" for k, v in best_counts.items())]
    return "\n".join(lines)


def run_seeds(cfg: RunConfig, out: Path, seeds: list[int], force: bool = False, cache=None) -> dict:
    """Train cfg once per seed into OUT/seed_<s>/ and write the summary; returns it.  cache: a
    training.train_cache.TrainCache shared with other calls (benchmarks), or None."""
    from .logs import setup_logging
    from .pipeline import run_training

    from . import distributed

    setup_logging()
    distributed.join_for_run(cfg.device)  # torchrun: only rank 0 writes OUT (see distributed.RankStaging)
    staging = distributed.RankStaging(lambda: StagingDir(out, force, kind="seeds", protected_paths=cfg.input_paths()))
    try:
        per_seed = {}
        for seed in seeds:
            log.info("===== seed %d (%d of %d) =====", seed, len(per_seed) + 1, len(seeds))
            run_cfg = cfg.model_copy(update={"seed": seed, "seeds": None}, deep=True)
            per_seed[seed] = run_training(run_cfg, staging.path / f"seed_{seed}", cache=cache)
        summary = {"seeds": seeds, "test": summarise(per_seed, "test"), "val": summarise(per_seed, "val"),
                   "best_on_val": [shipped_model(per_seed[s]["best_on_val"]) for s in seeds]}
        counts = Counter(summary["best_on_val"])
        table = format_summary(summary["test"], f"test split, mean ± std over seeds {seeds} (accuracy %)", counts)
        write_json(staging.path / "seeds_summary.json", summary)
        (staging.path / "seeds_summary.md").write_text(table + "\n")
        staging.commit()
    except BaseException:
        staging.abort()
        raise
    log.info("\n%s\nseeds written to %s", table, out)
    return summary
