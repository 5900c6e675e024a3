"""Training precision (fp32 vs bf16 / tf32) on a feature set: accuracy, routing agreement, selected
flow epochs and good clusters, over several seeds.

For each seed the DLSA cascade is trained once per precision (same seed, same data); routing
agreement is the share of test samples that exit at the same depth as under fp32 with the same
seed.  The last line says whether each setting's accuracy change is within the fp32 seed std.

    nice python benchmarks/precision_compare.py --features bench_out/features/fmnist_lt_r100 \
        --precisions fp32,bf16 --seeds 0,1,2 --json bench_out/precision_fmnist.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from dlsa_prod.config import config_from_dict
from dlsa_prod.data import load_splits
from dlsa_prod.evaluation import cascade_predictions
from dlsa_prod.logs import setup_logging
from dlsa_prod.pipeline import seed_everything
from dlsa_prod.training import train_dlsa
from dlsa_prod.training.options import TrainOptions


def fmnist_config(feat_dir: Path, seed: int, precision: str, device: str) -> dict:
    """The Fashion-MNIST-LT DLSA settings of benchmarks/fmnist_lt.py (depth 2) at one precision."""
    fm = _fmnist_benchmark()
    return {**fm.dlsa_config(feat_dir, 2, seed), "device": device, "precision": precision, "baselines": ["BSM"]}


def _fmnist_benchmark():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import fmnist_lt

    return fmnist_lt


def build_fmnist_features(out: Path, seed: int = 0, backbone_epochs: int = 6) -> Path:
    """Fashion-MNIST-LT features as benchmarks/fmnist_lt.py makes them (its backbone and splits)."""
    fm = _fmnist_benchmark()

    from dlsa_prod.data import FeatureSet, write_features
    from dlsa_prod.data.idx import read_idx_split
    from dlsa_prod.data.longtail import draw_longtail, longtail_counts
    from dlsa_prod.data.splits import carve_val

    images, labels = read_idx_split(fm.DATA, "train")
    test_images, test_labels = read_idx_split(fm.DATA, "t10k")
    counts = longtail_counts(int(np.bincount(labels).min()), 10, 100.0, "exponential")
    lt = draw_longtail(labels, counts, np.random.default_rng(seed))
    tr_part, va_part = carve_val(FeatureSet(lt[:, None].astype(np.float32), labels[lt]), 10, per_class=20,
                                 max_fraction=0.2, seed=seed)
    tr, va = tr_part.features[:, 0].astype(np.int64), va_part.features[:, 0].astype(np.int64)
    x_all, y_all = fm.to_tensor(images), torch.from_numpy(labels)
    backbone = fm.train_backbone(x_all[tr], y_all[tr], backbone_epochs, seed)
    for split, (x, y) in {"train": (x_all[tr], labels[tr]), "val": (x_all[va], labels[va]),
                          "test": (fm.to_tensor(test_images), test_labels)}.items():
        write_features(out / f"feature_{split}.h5", FeatureSet(fm.extract(backbone, x), y))
    return out


def run_one(feat_dir: Path, seed: int, precision: str, device: str) -> dict:
    cfg = config_from_dict(fmnist_config(feat_dir, seed, precision, device))
    splits = load_splits(cfg.data, cfg.seed)
    t0 = time.perf_counter()
    res = train_dlsa(splits, cfg, torch.device(device), seed_everything(seed), options=TrainOptions.from_config(cfg))
    seconds = time.perf_counter() - t0
    pred, exits = cascade_predictions(res.model, splits.test.features, device)
    return {"seed": seed, "precision": precision, "seconds": seconds,
            "accuracy": float((pred == splits.test.labels).mean()), "exits": exits.tolist(),
            "flow_epochs": [d["flow_epoch"] for d in res.depth_reports if "flow_epoch" in d],
            "good_clusters": [d["pure_clusters"] for d in res.depth_reports if "pure_clusters" in d]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", type=Path, required=True, help="directory with feature_{train,val,test}.h5")
    p.add_argument("--make-fmnist-features", action="store_true",
                   help="first write Fashion-MNIST-LT features (benchmarks/fmnist_lt.py's backbone) into --features")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    setup_logging()
    if args.make_fmnist_features and not (args.features / "feature_test.h5").is_file():
        build_fmnist_features(args.features)
    precisions = args.precisions.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {(s, pr): run_one(args.features, s, pr, args.device) for s in seeds for pr in precisions}
    ref = precisions[0]
    acc_ref = [runs[(s, ref)]["accuracy"] for s in seeds]
    std = statistics.stdev(acc_ref) if len(seeds) > 1 else 0.0
    lines = [f"| precision | test accuracy % (mean +- std over seeds {args.seeds}) | change vs {ref} | "
             f"routing agreement with {ref} | selected flow epochs | good clusters | train seconds |",
             "|---|---:|---:|---:|---|---|---:|"]
    summary = {}
    for pr in precisions:
        accs = [runs[(s, pr)]["accuracy"] for s in seeds]
        agree = [float(np.mean(np.asarray(runs[(s, pr)]["exits"]) == np.asarray(runs[(s, ref)]["exits"])))
                 for s in seeds]
        change = statistics.mean(accs) - statistics.mean(acc_ref)
        summary[pr] = {"accuracy_mean": statistics.mean(accs), "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                       "change": change, "within_seed_std": abs(change) <= std, "routing_agreement": agree,
                       "flow_epochs": [runs[(s, pr)]["flow_epochs"] for s in seeds],
                       "good_clusters": [runs[(s, pr)]["good_clusters"] for s in seeds],
                       "seconds": [round(runs[(s, pr)]["seconds"], 1) for s in seeds]}
        r = summary[pr]
        lines.append(f"| {pr} | {100 * r['accuracy_mean']:.2f} +- {100 * r['accuracy_std']:.2f} | {100 * change:+.2f} | "
                     f"{', '.join(f'{a:.3f}' for a in agree)} | {r['flow_epochs']} | {r['good_clusters']} | "
                     f"{statistics.mean(r['seconds']):.0f} |")
    table = "\n".join(lines)
    print(table)
    print(f"{ref} seed std: {100 * std:.2f} points; within: "
          + ", ".join(f"{pr} {'yes' if summary[pr]['within_seed_std'] else 'no'}" for pr in precisions[1:]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"summary": summary, "table": table, "seed_std": std,
                                         "device": args.device, "torch": torch.__version__}, indent=2))


if __name__ == "__main__":
    main()
