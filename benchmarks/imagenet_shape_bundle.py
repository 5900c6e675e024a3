"""Serving latency at the research code's ImageNet-LT shape: dim 2048, K 500, 1000 classes,
depth 3, on synthetic long-tailed features (latency does not depend on what was learned).

Trains a short run (1 flow epoch per depth), exports the bundle (parity-gated) and runs the
same measurement as `dlsa-prod bench`: PyTorch eager vs ONNX Runtime fused and staged.

    python benchmarks/imagenet_shape_bundle.py --out bench_out/imagenet_shape
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dlsa_prod.bench import format_rows, run_bench
from dlsa_prod.config import config_from_dict
from dlsa_prod.data import FeatureSet, write_features
from dlsa_prod.data.longtail import longtail_counts
from dlsa_prod.export.bundle import export_bundle
from dlsa_prod.logs import setup_logging
from dlsa_prod.pipeline import run_training


def synthetic(counts, dim, rng, centres):
    y = np.repeat(np.arange(len(counts)), counts)
    x = centres[y] + rng.standard_normal((len(y), dim)).astype(np.float32)
    return FeatureSet(x.astype(np.float32), y)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench_out/imagenet_shape"))
    p.add_argument("--batch", default="1,64,256")
    p.add_argument("--duration", type=float, default=3.0)
    args = p.parse_args(argv)
    setup_logging()
    rng = np.random.default_rng(0)
    dim, classes = 2048, 1000
    centres = (rng.standard_normal((classes, dim)) * 0.5).astype(np.float32)
    feat = args.out / "features"
    write_features(feat / "feature_train.h5", synthetic(longtail_counts(40, classes, 20), dim, rng, centres))
    write_features(feat / "feature_val.h5", synthetic(np.full(classes, 2), dim, rng, centres))
    write_features(feat / "feature_test.h5", synthetic(np.full(classes, 2), dim, rng, centres))
    cls = {"eval_freq": 1, "model": {"type": "linear"}, "loss": {"type": "BSM"}, "data": {"batchsize": 256},
           "optim": {"lr": 0.01, "epoch": 2, "momentum": 0.9}}
    cfg = config_from_dict({
        "seed": 0, "device": "cpu", "max_depth": 3, "baselines": ["BSM"], "data": {"feat_dir": str(feat)},
        "gmflow": {"model": {"num_cluster": 500, "gmm_center_std": 0.05}, "data": {"batchsize": 1024},
                   "optim": {"lr": 0.2, "epoch": 1}},
        "filter": {"llh_proportion": 0.3, "min_remaining": 1},
        "cacls": {**cls, "model": {"type": "linear", "inputs": "XZP"}},
        "regcls": {**cls, "model": {"type": "linear", "inputs": "XZ"}},
    })
    run_training(cfg, args.out / "run", force=True)
    export_bundle(args.out / "run", args.out / "run" / "bundle", force=True)
    rows = run_bench(args.out / "run" / "bundle", [int(b) for b in args.batch.split(",")], ["fused", "staged"],
                     ["cpu"], warmup=1.0, duration=args.duration, run_dir=args.out / "run")
    table = format_rows(rows)
    print(table)
    by = {(r["method"], r["batch"]): r for r in rows}
    big = max(int(b) for b in args.batch.split(","))
    ratio = by[("onnxruntime staged", big)]["throughput"] / by[("onnxruntime fused", big)]["throughput"]
    print(f"staged / fused throughput at batch {big}: {ratio:.2f}x")
    (args.out / "bench.json").write_text(json.dumps(rows, indent=2))
    (args.out / "bench.md").write_text(table + f"\n\nstaged / fused throughput at batch {big}: {ratio:.2f}x\n")


if __name__ == "__main__":
    main()
