"""Fashion-MNIST-LT benchmark: DLSA (depth 1 and 2) vs the plain BSM and CE classifiers (one seed).

Kept for the single-seed numbers of earlier rounds; the current benchmark (four baselines,
3 seeds, the backbone from the project's own image stage, every measured change) is
benchmarks/longtail_suite.py, reported in docs/benchmarks.md.

1. Long-tailed train split (imbalance ratio 100, exponential profile, seeded) from the
   Fashion-MNIST train set; the balanced 10k test set.  A class-balanced val split is
   carved from the long-tailed train split before anything is trained.
2. Backbone: a small CNN trained with cross-entropy on the LT train split (val/test
   unseen), then frozen; 128-d features are written in the research HDF5 layout.
3. DLSA at depth 1 and 2 with balanced-softmax classifiers, plus the plain BSM and CE
   linear classifiers with identical optimisers, every epoch selected on val.

    python benchmarks/fmnist_lt.py --out bench_out/fmnist_lt      (about 5 minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from dlsa_prod.config import config_from_dict
from dlsa_prod.data import FeatureSet, write_features
from dlsa_prod.data.idx import read_idx_split
from dlsa_prod.data.longtail import draw_longtail, longtail_counts
from dlsa_prod.data.splits import carve_val
from dlsa_prod.metrics import format_table
from dlsa_prod.pipeline import run_training

DATA = Path("/usr/share/datasets/fashion-mnist")


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, dim: int = 128):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return ((torch.from_numpy(images).float() / 255.0 - 0.286) / 0.353).unsqueeze(1)


def train_backbone(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps = epochs * ((len(y) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="backbone (CE)", unit="ep"):
        model.train()
        for idx in torch.randperm(len(y), generator=g).split(128):
            xb = x[idx]
            if torch.rand(1, generator=g).item() < 0.5:  # flip augmentation, per batch
                xb = xb.flip(3)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def extract(model: SmallCNN, x: torch.Tensor) -> np.ndarray:
    return torch.cat([model.features(c) for c in x.split(1024)]).numpy()


def dlsa_config(feat_dir: Path, depth: int, seed: int) -> dict:
    cls = {"eval_freq": 2, "model": {"type": "linear"}, "loss": {"type": "BSM"}, "data": {"batchsize": 128},
           "optim": {"lr": 0.02, "epoch": 30, "momentum": 0.9}}
    return {
        "seed": seed, "device": "cpu", "max_depth": depth, "baselines": ["BSM", "CE"],
        "data": {"feat_dir": str(feat_dir), "many_shot": 1000, "few_shot": 200},
        "gmflow": {"model": {"num_cluster": 100, "gmm_center_std": 0.05}, "data": {"batchsize": 512},
                   "optim": {"lr": 0.05, "epoch": 15}, "eval_freq": 3},
        "filter": {"llh_proportion": 0.3, "min_size": 10},
        "cacls": {**cls, "model": {"type": "linear", "inputs": "XZP"}},
        "regcls": {**cls, "model": {"type": "linear", "inputs": "XZ"}},
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--out", type=Path, default=Path("bench_out/fmnist_lt"))
    p.add_argument("--imbalance", type=float, default=100.0)
    p.add_argument("--backbone-epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    images, labels = read_idx_split(args.data, "train")
    test_images, test_labels = read_idx_split(args.data, "t10k")
    counts = longtail_counts(int(np.bincount(labels).min()), 10, args.imbalance, "exponential")
    lt = draw_longtail(labels, counts, rng)
    idx = FeatureSet(lt[:, None].astype(np.float32), labels[lt])
    train_part, val_part = carve_val(idx, 10, per_class=20, max_fraction=0.2, seed=args.seed)
    tr, va = train_part.features[:, 0].astype(np.int64), val_part.features[:, 0].astype(np.int64)
    print(f"train {len(tr)} (counts {np.bincount(labels[tr]).tolist()}), val {len(va)}, test {len(test_labels)}")
    x_all, y_all = to_tensor(images), torch.from_numpy(labels)
    backbone = train_backbone(x_all[tr], y_all[tr], args.backbone_epochs, args.seed)
    feat_dir = args.out / "features"
    for split, (x, y) in {"train": (x_all[tr], labels[tr]), "val": (x_all[va], labels[va]),
                          "test": (to_tensor(test_images), test_labels)}.items():
        write_features(feat_dir / f"feature_{split}.h5", FeatureSet(extract(backbone, x), y))
    rows, report = {}, {}
    for depth in (1, 2):
        cfg = config_from_dict(dlsa_config(feat_dir, depth, args.seed))
        metrics = run_training(cfg, args.out / f"dlsa_depth{depth}", force=True)
        rows[f"DLSA depth {depth}"] = metrics["test"]["dlsa"]
        report[f"depth{depth}"] = metrics
    rows["plain BSM"] = report["depth1"]["test"]["plain_BSM"]
    rows["plain CE"] = report["depth1"]["test"]["plain_CE"]
    table = format_table(rows, f"Fashion-MNIST-LT (ratio {args.imbalance:g}), balanced test, accuracy % "
                               f"(many > 1000, few < 200 train images)")
    print(table)
    print(f"total {time.perf_counter() - t0:.0f} s")
    (args.out / "results.json").write_text(json.dumps({k: {m: v[m] for m in ("accuracy", "many_shot", "medium_shot",
                                                                            "few_shot", "balanced_accuracy", "mcc")}
                                                       for k, v in rows.items()}, indent=2))
    (args.out / "results.md").write_text(table + "\n")


if __name__ == "__main__":
    sys.exit(main())
