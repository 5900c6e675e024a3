"""How far any combination of the trained models gets on one benchmark's features (issue 17,
deliverable 5): every ensemble of up to three of a variant's runs' models (the DLSA cascade and each
baseline), log-probabilities averaged, scored on val and test for every seed.

The row marked "picked on test" is an upper bound, not a method: it is the ensemble with the highest
mean test accuracy, chosen on test.  The row marked "picked on val" is what a val-only choice
(class-balanced val log-loss, the selection rule's criterion: dlsa_prod/selection.py) would ship.

    python benchmarks/ensemble_ceiling.py --bench fmnist_lt_r100 --variant kept_latent_all

reads bench_out/longtail_suite/<bench>/<variant>/seed_*/ (written by longtail_suite.py) and the
features under bench_out/features/<bench>/, prints a markdown table and writes it to
ensemble_ceiling.md beside the seeds.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

from dlsa_prod.data import read_features
from dlsa_prod.errors import DLSAError
from dlsa_prod.run_dir import load_run
from dlsa_prod.selection import DLSA, method_val_logits, val_scores


def fail(message: str):
    """One line on stderr, exit code 2 (bad input), as the CLI does."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def seed_dirs(root: Path) -> list[Path]:
    dirs = sorted(root.glob("seed_*"), key=lambda p: int(p.name.split("_")[1]))
    if not dirs:
        fail(f"{root}: no seed_* run directories (run benchmarks/longtail_suite.py first)")
    return dirs


def log_probs(run, fs) -> dict[str, np.ndarray]:
    """{model name: (N, C) log-probabilities} of the cascade and every baseline of one run."""
    logits = method_val_logits(run.model, run.baselines, fs, "cpu")
    return {k: torch.log_softmax(torch.from_numpy(v).double(), 1).numpy() for k, v in logits.items()}


def ensembles(names: list[str], max_members: int) -> list[tuple[str, ...]]:
    return [c for r in range(1, max_members + 1) for c in itertools.combinations(sorted(names), r)]


def score_seed(run, val, test, combos, num_classes: int) -> dict[tuple[str, ...], dict]:
    """Per ensemble: test accuracy, val accuracy and class-balanced val log-loss of one seed."""
    lv, lt = log_probs(run, val), log_probs(run, test)
    out = {}
    for combo in combos:
        pv = np.mean([lv[k] for k in combo], 0)
        pt = np.mean([lt[k] for k in combo], 0)
        sv = val_scores(pv, val.labels, num_classes)
        out[combo] = {"test": float((pt.argmax(1) == test.labels).mean()), "val": sv["accuracy"],
                      "val_log_loss": sv["balanced_log_loss"]}
    return out


def table(per_seed: list[dict], baselines: list[str]) -> str:
    combos = list(per_seed[0])
    mean = {c: {k: np.mean([s[c][k] for s in per_seed]) for k in ("test", "val", "val_log_loss")} for c in combos}
    std = {c: np.std([s[c]["test"] for s in per_seed], ddof=1) if len(per_seed) > 1 else 0.0 for c in combos}
    best_base = max(((b,) for b in baselines), key=lambda c: mean[c]["test"])
    on_test = max(combos, key=lambda c: mean[c]["test"])
    on_val = min(combos, key=lambda c: mean[c]["val_log_loss"])
    shown = sorted(set(sorted(combos, key=lambda c: -mean[c]["test"])[:8]) | {best_base, (DLSA,), on_val},
                   key=lambda c: -mean[c]["test"])
    lines = [f"seeds: {len(per_seed)}; test accuracy %, mean ± std; 'vs best baseline' against "
             f"{best_base[0]} (the best single baseline on test)", "",
             "| ensemble (log-probabilities averaged) | test | vs best baseline | val | class-balanced val log-loss | |",
             "|---|---:|---:|---:|---:|---|"]
    for c in shown:
        tag = ", ".join(t for t, hit in (("picked on test", c == on_test), ("picked on val", c == on_val),
                                         ("best baseline", c == best_base)) if hit)
        lines.append(f"| {' + '.join(c)} | {100 * mean[c]['test']:.2f} ± {100 * std[c]:.2f} | "
                     f"{100 * (mean[c]['test'] - mean[best_base]['test']):+.2f} | {100 * mean[c]['val']:.2f} | "
                     f"{mean[c]['val_log_loss']:.4f} | {tag} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", default="fmnist_lt_r100")
    p.add_argument("--variant", default="kept_latent_all")
    p.add_argument("--out", type=Path, default=Path("bench_out/longtail_suite"))
    p.add_argument("--features", type=Path, default=Path("bench_out/features"))
    p.add_argument("--max-members", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    root = args.out / args.bench / args.variant
    feat = args.features / args.bench
    try:
        val, test = read_features(feat / "feature_val.h5"), read_features(feat / "feature_test.h5")
    except DLSAError as exc:
        fail(str(exc))
    if args.max_members < 1:
        fail(f"--max-members: expected at least 1, got {args.max_members}")
    per_seed, baselines = [], []
    for d in seed_dirs(root):
        try:
            run = load_run(d)
        except DLSAError as exc:
            fail(str(exc))
        baselines = list(run.baselines)
        if not baselines:
            fail(f"{d}: the run trained no baselines (nothing to compare DLSA with)")
        c = int(run.meta["num_classes"])
        per_seed.append(score_seed(run, val, test, ensembles([DLSA, *baselines], args.max_members), c))
    text = f"### {args.bench} / {args.variant}\n\n" + table(per_seed, baselines)
    print(text)
    (root / "ensemble_ceiling.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
