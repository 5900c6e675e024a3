"""Measure the input guard on quickstart runs: the share of rows it flags (depth-1 log p(x) below the
training set's 0.1% quantile) on the in-distribution test split and on shifted inputs, through the
exported bundle's Runtime (the serving path).

    dlsa-prod train configs/quickstart.yaml --seeds 0,1,2 --out runs/qs_seeds
    python benchmarks/input_guard.py runs/qs_seeds/seed_0 runs/qs_seeds/seed_1 runs/qs_seeds/seed_2 \\
        [--fashion-mnist /usr/share/datasets/fashion-mnist]

Shifted inputs (all 64-d, the digits' 8x8 pixels): the test split scaled x16 (sklearn's raw 0..16
pixels), with Gaussian noise (sigma 0.1 and 0.3), uniform random pixels, and Fashion-MNIST test
images box-downsampled to 8x8 and scaled to 0..1 (another data set with the same feature layout).
Each run is exported (fused + staged) into RUN/bundle if it has none.  Prints a markdown table,
mean +- std over the runs of the share flagged, and how many batches of 64 get the one-line warning.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from dlsa_prod.input_guard import WARN_SHARE
from dlsa_prod.run_data import load_run_splits
from dlsa_prod.run_dir import load_run
from dlsa_prod.runtime import Runtime

BATCH = 64


def fashion_mnist_pixels(directory: Path, n: int = 2000) -> np.ndarray:
    from PIL import Image

    from dlsa_prod.data.idx import read_idx_split

    images, _labels = read_idx_split(directory, "t10k")
    small = [np.asarray(Image.fromarray(im).resize((8, 8), Image.Resampling.BOX), dtype=np.float32) / 255.0
             for im in images[:n]]
    return np.stack(small).reshape(len(small), 64)


def inputs(test: np.ndarray, fmnist: np.ndarray | None, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sets = {"test split (in distribution)": test,
            "test x16 (0..16 pixels)": test * 16,
            "test + Gaussian noise, sigma 0.1": test + rng.normal(0, 0.1, test.shape),
            "test + Gaussian noise, sigma 0.3": test + rng.normal(0, 0.3, test.shape),
            "uniform random pixels 0..1": rng.uniform(0, 1, test.shape)}
    if fmnist is not None:
        sets["Fashion-MNIST test, 8x8, 0..1"] = fmnist
    return {k: v.astype(np.float32) for k, v in sets.items()}


def measure(run_dir: Path, fmnist) -> dict[str, tuple[float, float]]:
    bundle = run_dir / "bundle"
    if not (bundle / "manifest.json").is_file():
        from dlsa_prod.export.bundle import export_bundle

        export_bundle(run_dir, bundle)
    rt = Runtime(bundle, threads=1)
    test = load_run_splits(load_run(run_dir)).test.features
    out = {}
    for name, x in inputs(test, fmnist).items():
        flags = ~rt.predict(x).in_distribution
        batches = [flags[i:i + BATCH] for i in range(0, len(flags), BATCH)]
        warned = np.mean([b.mean() > WARN_SHARE for b in batches])
        out[name] = (float(flags.mean()), float(warned), len(x))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--fashion-mnist", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    args = p.parse_args(argv)
    fmnist = fashion_mnist_pixels(args.fashion_mnist) if args.fashion_mnist.is_dir() else None
    per_run = [measure(r, fmnist) for r in args.runs]
    print(f"| input | rows | rows flagged (mean ± std over {len(per_run)} runs) | batches of {BATCH} warned |")
    print("|---|---:|---:|---:|")
    for name in per_run[0]:
        flagged = np.array([r[name][0] for r in per_run]) * 100
        warned = np.array([r[name][1] for r in per_run]) * 100
        print(f"| {name} | {per_run[0][name][2]} | {flagged.mean():.1f}% ± {flagged.std():.1f} | "
              f"{warned.mean():.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
